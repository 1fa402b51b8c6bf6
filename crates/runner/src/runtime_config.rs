//! The runtime config file (`--runtime-config-file`, as `spin up` takes it): the part of Spin's
//! format the runner implements, `[key_value_store.<label>]` of type `spin`. Every other
//! section, store type or key is refused by name, so a file that means something to Spin never
//! silently means less here.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// What a runtime config file says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `[key_value_store.<label>]`: the label and the SQLite file (`None`: in memory).
    pub key_value_stores: Vec<(String, Option<PathBuf>)>,
    /// The file's directory, which relative paths in it are resolved against.
    pub dir: Option<PathBuf>,
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read runtime config file '{}'", path.display()))?;
        let mut config = Self::parse(&text)
            .with_context(|| format!("runtime config file '{}'", path.display()))?;
        config.dir = path.parent().map(Path::to_path_buf);
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).context("not valid TOML")?;
        let mut config = Self::default();
        for (section, value) in table {
            match section.as_str() {
                "key_value_store" => {
                    let stores = value
                        .as_table()
                        .ok_or_else(|| anyhow!("`key_value_store` must be a table"))?;
                    for (label, store) in stores {
                        config
                            .key_value_stores
                            .push((label.clone(), key_value_store(label, store)?));
                    }
                }
                other => bail!(
                    "`{other}` is not supported by this runner (only [key_value_store.<label>] \
                     is); run the app with Spin itself for it"
                ),
            }
        }
        Ok(config)
    }
}

fn key_value_store(label: &str, store: &toml::Value) -> Result<Option<PathBuf>> {
    let store = store
        .as_table()
        .ok_or_else(|| anyhow!("[key_value_store.{label}] must be a table"))?;
    match store.get("type").and_then(toml::Value::as_str) {
        Some("spin") => {}
        Some(other) => bail!(
            "[key_value_store.{label}]: store type `{other}` is not supported by this runner \
             (only `spin`, SQLite)"
        ),
        None => bail!("[key_value_store.{label}] has no `type`"),
    }
    let mut path = None;
    for (key, value) in store {
        match key.as_str() {
            "type" => {}
            "path" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| anyhow!("[key_value_store.{label}]: `path` must be a string"))?;
                path = Some(PathBuf::from(text));
            }
            other => bail!("[key_value_store.{label}]: unknown key `{other}`"),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spin_key_value_stores() {
        let config = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"spin\"\n\n\
             [key_value_store.cache]\ntype = \"spin\"\npath = \"data/cache.db\"\n",
        )
        .unwrap();
        let mut stores = config.key_value_stores;
        stores.sort();
        assert_eq!(
            stores,
            [
                ("cache".to_owned(), Some(PathBuf::from("data/cache.db"))),
                ("default".to_owned(), None),
            ]
        );
    }

    #[test]
    fn refuses_what_it_does_not_implement_by_name() {
        for (text, expected) in [
            (
                "[sqlite_database.default]\ntype = \"spin\"\n",
                "`sqlite_database`",
            ),
            (
                "[key_value_store.x]\ntype = \"redis\"\nurl = \"redis://h\"\n",
                "`redis`",
            ),
            ("[key_value_store.x]\npath = \"a.db\"\n", "has no `type`"),
            (
                "[key_value_store.x]\ntype = \"spin\"\nsize = 3\n",
                "unknown key `size`",
            ),
            ("max_instance_memory = 1\n", "`max_instance_memory`"),
            ("not toml [", "not valid TOML"),
        ] {
            let err = format!("{:#}", RuntimeConfig::parse(text).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
