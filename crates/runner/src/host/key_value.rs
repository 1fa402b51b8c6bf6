//! `fermyon:spin/key-value@2.0.0`: key-value stores as Spin 3.6's `factor-key-value` with its
//! built-in `spin` store type gives them: SQLite, one table `spin_key_value(store, key, value)`,
//! the `default` store in `<state dir>/sqlite_key_value.db` (in memory when the state directory
//! is unset), other labels from the runtime config file's `[key_value_store.<label>]`. A component
//! opens only the labels its `key_value_stores` lists (else `access-denied`), at most 256 at once
//! (else `store-table-full`), and a value or key list over 128 MiB is an `other` error.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use wasmtime::component::Resource;

use super::bindings::fermyon::spin::key_value::{Error, Host, HostStore};
use crate::state::RequestState;

/// Spin's `MAX_HOST_BUFFERED_BYTES`.
const MAX_RESULT_BYTES: usize = 128 << 20;
/// Stores one instance may hold open at once.
const STORE_TABLE_CAPACITY: usize = 256;
/// Where Spin keeps the default store inside the state directory.
const DEFAULT_STORE_FILE: &str = "sqlite_key_value.db";

/// Where a store's SQLite database lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    InMemory,
    File(PathBuf),
}

/// One SQLite database, opened on first use and shared by every store label that lives in it.
/// A failed open is not remembered: the next `open` tries again, as Spin's does.
struct Database {
    location: Location,
    connection: OnceLock<Mutex<Connection>>,
}

impl Database {
    fn connection(&self) -> Result<&Mutex<Connection>, Error> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection);
        }
        let opened = self.open().map_err(|e| Error::Other(format!("{e:#}")))?;
        // Two first opens at once: one wins, the other's connection is dropped.
        Ok(self.connection.get_or_init(|| Mutex::new(opened)))
    }

    fn open(&self) -> Result<Connection> {
        let connection = match &self.location {
            Location::InMemory => Connection::open_in_memory(),
            Location::File(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                create_private(path)?;
                Connection::open(path)
            }
        }
        .context("opening the key-value database")?;
        connection.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL,
                key   TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (store, key)
            )",
            [],
        )?;
        Ok(connection)
    }
}

/// Creates the database file readable by its owner only, if it does not exist yet: what
/// components keep there may be secret (the gateway keeps keys derived from a password).
fn create_private(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Every store label the app may use, and where each lives.
pub struct KeyValueStores {
    stores: HashMap<String, Arc<Database>>,
}

impl KeyValueStores {
    /// The stores Spin would define: `default` (in `state_dir`, or in memory without one) and
    /// each `[key_value_store.<label>]` of the runtime config, relative paths taken from the
    /// runtime config file's directory.
    pub fn new(
        state_dir: Option<&Path>,
        configured: Vec<(String, Option<PathBuf>)>,
        config_dir: Option<&Path>,
    ) -> Self {
        let mut stores = HashMap::new();
        let default = match state_dir {
            Some(dir) => Location::File(dir.join(DEFAULT_STORE_FILE)),
            None => Location::InMemory,
        };
        stores.insert("default".to_owned(), default);
        for (label, path) in configured {
            let location = match path {
                Some(path) if path.is_relative() => {
                    Location::File(config_dir.map_or(path.clone(), |dir| dir.join(&path)))
                }
                Some(path) => Location::File(path),
                None => Location::InMemory,
            };
            stores.insert(label, location);
        }
        // Labels in the same file share one connection, as one SQLite file should.
        let mut databases: HashMap<Location, Arc<Database>> = HashMap::new();
        let stores = stores
            .into_iter()
            .map(|(label, location)| {
                let database = match &location {
                    Location::InMemory => Arc::new(Database {
                        location,
                        connection: OnceLock::new(),
                    }),
                    Location::File(_) => databases
                        .entry(location.clone())
                        .or_insert_with(|| {
                            Arc::new(Database {
                                location,
                                connection: OnceLock::new(),
                            })
                        })
                        .clone(),
                };
                (label, database)
            })
            .collect();
        Self { stores }
    }

    /// Refuses, as Spin does at start-up, a component that lists a label no store has.
    pub fn check_component(&self, component: &str, labels: &[String]) -> Result<()> {
        for label in labels {
            if !self.stores.contains_key(label) {
                bail!("unknown key_value_stores label {label:?} for component {component:?}");
            }
        }
        Ok(())
    }

    /// Where `label` lives (for the start-up summary).
    pub fn location(&self, label: &str) -> Option<&Location> {
        self.stores.get(label).map(|d| &d.location)
    }
}

/// The guest's `store` resource: an open label.
pub struct Store {
    label: String,
    database: Arc<Database>,
}

impl Store {
    /// Runs `f` on the store's connection. (Each call is one small SQLite statement on a local
    /// file or in memory, so it runs in place.)
    fn with<T>(&self, f: impl FnOnce(&Connection, &str) -> Result<T, Error>) -> Result<T, Error> {
        let connection = self.database.connection()?;
        let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
        f(&connection, &self.label)
    }
}

/// What the component may open, fixed when its instance is made.
#[derive(Default)]
pub struct KeyValueAccess {
    allowed: HashSet<String>,
    open: usize,
}

impl KeyValueAccess {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().cloned().collect(),
            open: 0,
        }
    }
}

fn other(error: rusqlite::Error) -> Error {
    Error::Other(error.to_string())
}

fn over_limit() -> Error {
    Error::Other(format!(
        "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
    ))
}

impl Host for RequestState {}

impl HostStore for RequestState {
    fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<Store>, Error>> {
        if !self.key_value.allowed.contains(&label) {
            return Ok(Err(Error::AccessDenied));
        }
        let Some(database) = self.runtime.key_value().stores.get(&label).cloned() else {
            return Ok(Err(Error::NoSuchStore));
        };
        if let Err(e) = database.connection() {
            return Ok(Err(e));
        }
        if self.key_value.open >= STORE_TABLE_CAPACITY {
            return Ok(Err(Error::StoreTableFull));
        }
        self.key_value.open += 1;
        Ok(Ok(self.table.push(Store { label, database })?))
    }

    fn get(
        &mut self,
        store: Resource<Store>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let store = self.table.get(&store)?;
        Ok(store.with(|connection, label| {
            let value: Option<Vec<u8>> = connection
                .prepare_cached("SELECT value FROM spin_key_value WHERE store=$1 AND key=$2")
                .map_err(other)?
                .query_map([label, key.as_str()], |row| row.get(0))
                .map_err(other)?
                .next()
                .transpose()
                .map_err(other)?;
            let size = std::mem::size_of::<Option<Vec<u8>>>() + value.as_ref().map_or(0, Vec::len);
            if size > MAX_RESULT_BYTES {
                return Err(over_limit());
            }
            Ok(value)
        }))
    }

    fn set(
        &mut self,
        store: Resource<Store>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.table.get(&store)?;
        Ok(store.with(|connection, label| {
            connection
                .prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT(store, key) DO UPDATE SET value=$3",
                )
                .map_err(other)?
                .execute(rusqlite::params![label, key, value])
                .map(drop)
                .map_err(other)
        }))
    }

    fn delete(
        &mut self,
        store: Resource<Store>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let store = self.table.get(&store)?;
        Ok(store.with(|connection, label| {
            connection
                .prepare_cached("DELETE FROM spin_key_value WHERE store=$1 AND key=$2")
                .map_err(other)?
                .execute([label, key.as_str()])
                .map(drop)
                .map_err(other)
        }))
    }

    fn exists(
        &mut self,
        store: Resource<Store>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let store = self.table.get(&store)?;
        Ok(store.with(|connection, label| {
            connection
                .prepare_cached("SELECT 1 FROM spin_key_value WHERE store=$1 AND key=$2")
                .map_err(other)?
                .exists([label, key.as_str()])
                .map_err(other)
        }))
    }

    fn get_keys(&mut self, store: Resource<Store>) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let store = self.table.get(&store)?;
        Ok(store.with(|connection, label| {
            let mut size = std::mem::size_of::<Vec<String>>();
            let mut statement = connection
                .prepare_cached("SELECT key FROM spin_key_value WHERE store=$1")
                .map_err(other)?;
            let keys = statement
                .query_map([label], |row| row.get::<_, String>(0))
                .map_err(other)?;
            let mut out = Vec::new();
            for key in keys {
                let key = key.map_err(other)?;
                size += std::mem::size_of::<String>() + key.len();
                if size > MAX_RESULT_BYTES {
                    return Err(over_limit());
                }
                out.push(key);
            }
            Ok(out)
        }))
    }

    fn drop(&mut self, store: Resource<Store>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.key_value.open = self.key_value.open.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lives_in_the_state_dir_or_in_memory() {
        let stores = KeyValueStores::new(Some(Path::new("/app/.spin")), Vec::new(), None);
        assert_eq!(
            stores.location("default"),
            Some(&Location::File("/app/.spin/sqlite_key_value.db".into()))
        );
        let stores = KeyValueStores::new(None, Vec::new(), None);
        assert_eq!(stores.location("default"), Some(&Location::InMemory));
    }

    #[test]
    fn configured_labels_resolve_against_the_config_dir() {
        let stores = KeyValueStores::new(
            None,
            vec![
                ("cache".into(), None),
                ("rel".into(), Some("data/kv.db".into())),
                ("abs".into(), Some("/var/kv.db".into())),
                // A configured default replaces the built-in one.
                ("default".into(), Some("d.db".into())),
            ],
            Some(Path::new("/etc/app")),
        );
        assert_eq!(stores.location("cache"), Some(&Location::InMemory));
        assert_eq!(
            stores.location("rel"),
            Some(&Location::File("/etc/app/data/kv.db".into()))
        );
        assert_eq!(
            stores.location("abs"),
            Some(&Location::File("/var/kv.db".into()))
        );
        assert_eq!(
            stores.location("default"),
            Some(&Location::File("/etc/app/d.db".into()))
        );
    }

    #[test]
    fn a_failed_open_is_tried_again_and_the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("kv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A file where the directory should be: the first open fails.
        std::fs::write(&dir, b"").unwrap();
        let database = Database {
            location: Location::File(dir.join("kv.db")),
            connection: OnceLock::new(),
        };
        assert!(database.connection().is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(database.connection().is_ok(), "opened on the next try");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("kv.db"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_label_is_refused_with_spins_words() {
        let stores = KeyValueStores::new(None, Vec::new(), None);
        stores
            .check_component("web", &["default".to_owned()])
            .unwrap();
        let err = stores
            .check_component("web", &["cache".to_owned()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown key_value_stores label "cache" for component "web""#
        );
    }
}
