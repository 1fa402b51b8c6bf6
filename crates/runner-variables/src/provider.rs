//! Where variable values come from: the environment (`SPIN_VARIABLE_<NAME>`, then a `.env`
//! file) and static values (`--variable`), mirroring Spin's env and static providers.

use std::collections::{BTreeMap, HashMap};
use std::env::VarError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use runner_manifest::{validate_variable_name, App};

/// A source of application variable values, asked by variable name (`db_url`).
pub trait Provider: Send + Sync {
    /// The value of `name`, or `None` when this provider has none.
    fn get(&self, name: &str) -> Result<Option<String>>;
}

type Lookup = Box<dyn Fn(&str) -> Result<String, VarError> + Send + Sync>;

/// Spin's environment provider: `db_url` is read from `SPIN_VARIABLE_DB_URL`; when that is
/// not set, from the same key in a dotenv file (Spin reads `.env` in the current directory).
pub struct EnvProvider {
    lookup: Lookup,
    dotenv_path: Option<PathBuf>,
    dotenv: OnceLock<Result<HashMap<String, String>, String>>,
}

impl EnvProvider {
    /// The prefix Spin puts before the upper-cased variable name.
    pub const PREFIX: &'static str = "SPIN_VARIABLE_";

    /// The environment variable that sets `name`: `SPIN_VARIABLE_` + `name` upper-cased.
    pub fn env_var_name(name: &str) -> String {
        format!("{}{}", Self::PREFIX, name.to_ascii_uppercase())
    }

    /// Reads variables through `lookup` (an environment), then from `dotenv_path` if given.
    /// A missing dotenv file is no error; a malformed one is.
    pub fn new(
        lookup: impl Fn(&str) -> Result<String, VarError> + Send + Sync + 'static,
        dotenv_path: Option<PathBuf>,
    ) -> Self {
        Self {
            lookup: Box::new(lookup),
            dotenv_path,
            dotenv: OnceLock::new(),
        }
    }

    /// What `spin up` does: the process environment, then `.env` in the current directory.
    pub fn from_process() -> Self {
        Self::new(|key| std::env::var(key), Some(PathBuf::from(".env")))
    }

    /// A fixed environment and no dotenv file (for tests).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::new(
            move |key| vars.get(key).cloned().ok_or(VarError::NotPresent),
            None,
        )
    }

    fn dotenv_value(&self, key: &str) -> Result<Option<String>> {
        let Some(path) = &self.dotenv_path else {
            return Ok(None);
        };
        match self.dotenv.get_or_init(|| load_dotenv(path)) {
            Ok(vars) => Ok(vars.get(key).cloned()),
            Err(message) => bail!("{message}"),
        }
    }
}

impl Provider for EnvProvider {
    fn get(&self, name: &str) -> Result<Option<String>> {
        let key = Self::env_var_name(name);
        match (self.lookup)(&key) {
            Ok(value) => Ok(Some(value)),
            Err(VarError::NotPresent) => self.dotenv_value(&key),
            Err(VarError::NotUnicode(_)) => bail!("environment variable {key} is not valid UTF-8"),
        }
    }
}

impl fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvProvider")
            .field("prefix", &Self::PREFIX)
            .field("dotenv_path", &self.dotenv_path)
            .finish()
    }
}

/// Reads a dotenv file as Spin does (with `dotenvy`). Errors never quote the file's lines,
/// which may hold secrets.
fn load_dotenv(path: &Path) -> Result<HashMap<String, String>, String> {
    let Ok(lines) = dotenvy::from_path_iter(path) else {
        return Ok(HashMap::new()); // no file: nothing to read, as in Spin
    };
    lines
        .map(|line| {
            line.map_err(|err| match err {
                dotenvy::Error::LineParse(_, index) => format!(
                    "malformed dotenv file {} (parse error at character {index} of a line)",
                    path.display()
                ),
                dotenvy::Error::Io(io) => {
                    format!("cannot read dotenv file {}: {io}", path.display())
                }
                other => format!("bad dotenv file {}: {other}", path.display()),
            })
        })
        .collect()
}

/// Fixed values, e.g. from `spin up --variable`; Spin gives them the highest priority.
/// `Debug` never shows the values.
#[derive(Clone, Default)]
pub struct StaticProvider {
    values: BTreeMap<String, String>,
}

impl StaticProvider {
    /// Values by variable name.
    pub fn new<K: Into<String>, V: Into<String>>(values: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Parses `--variable` arguments as `spin up` documents them: `key=value`,
    /// `key=@file` (the file's text), `@file.json` or `@file.toml` (a map of string values).
    /// Later arguments override earlier ones. Relative paths are read from the current directory.
    pub fn from_cli_args<S: AsRef<str>>(args: &[S]) -> Result<Self> {
        let mut values = BTreeMap::new();
        for arg in args {
            let arg = arg.as_ref();
            if let Some(file) = arg.strip_prefix('@') {
                values.extend(read_variables_file(Path::new(file))?);
                continue;
            }
            let Some((name, value)) = arg.split_once('=') else {
                bail!("invalid --variable {arg:?}: expected NAME=VALUE, NAME=@FILE, @FILE.json or @FILE.toml");
            };
            validate_variable_name(name).map_err(|e| anyhow!("invalid --variable name: {e}"))?;
            let value = match value.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("--variable {name}: cannot read {file}"))?,
                None => value.to_owned(),
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Self { values })
    }

    /// The variable names this provider sets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Names this provider sets that the app does not declare: they have no effect (a typo?).
    pub fn undeclared<'a>(&'a self, app: &App) -> Vec<&'a str> {
        self.names()
            .filter(|n| !app.variables.contains_key(*n))
            .collect()
    }
}

impl Provider for StaticProvider {
    fn get(&self, name: &str) -> Result<Option<String>> {
        Ok(self.values.get(name).cloned())
    }
}

impl fmt::Debug for StaticProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.keys().map(|k| (k, "***")))
            .finish()
    }
}

fn read_variables_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--variable @{}: cannot read the file", path.display()))?;
    let map: BTreeMap<String, serde_json::Value> = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text)
            .map_err(|e| anyhow!("--variable @{}: not a JSON object: {e}", path.display()))?,
        Some("toml") => {
            let table: toml::Table = text
                .parse()
                .map_err(|e| anyhow!("--variable @{}: not valid TOML: {e}", path.display()))?;
            table
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => serde_json::Value::String(s),
                        _ => serde_json::Value::Null, // refused below
                    };
                    (k, v)
                })
                .collect()
        }
        _ => bail!(
            "--variable @{}: the file must end in .json or .toml",
            path.display()
        ),
    };
    map.into_iter()
        .map(|(name, value)| {
            validate_variable_name(&name)
                .map_err(|e| anyhow!("--variable @{}: invalid name: {e}", path.display()))?;
            match value {
                serde_json::Value::String(s) => Ok((name, s)),
                _ => bail!("--variable @{}: `{name}` must be a string", path.display()),
            }
        })
        .collect()
}
