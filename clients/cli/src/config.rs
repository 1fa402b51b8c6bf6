//! Where the CLI keeps things: the login (`<config dir>/mp3/credentials.json`, mode 0600) and
//! the uploads under way (`<cache dir>/mp3/uploads.json`), so an interrupted `mp3 convert`
//! resumes where it stopped. The directories follow the platform's rules (`XDG_CONFIG_HOME`,
//! `XDG_CACHE_HOME` on Linux).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The server when neither `--server`, `MP3_SERVER` nor a login names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:3000";

/// What `mp3 login` saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub server: String,
    pub email: String,
    pub token: String,
}

fn config_dir() -> anyhow::Result<PathBuf> {
    Ok(dirs::config_dir()
        .context("no configuration directory (set HOME or XDG_CONFIG_HOME)")?
        .join("mp3"))
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    Ok(dirs::cache_dir()
        .context("no cache directory (set HOME or XDG_CACHE_HOME)")?
        .join("mp3"))
}

pub fn credentials_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("credentials.json"))
}

/// The saved login, if any.
pub fn load_credentials() -> anyhow::Result<Option<Credentials>> {
    let path = credentials_path()?;
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a saved login; delete it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Saves the login, readable by its owner only (written to a new file, then renamed over).
pub fn save_credentials(credentials: &Credentials) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    write_private(&path, &serde_json::to_vec_pretty(credentials)?)?;
    Ok(path)
}

pub fn forget_credentials() -> anyhow::Result<()> {
    let path = credentials_path()?;
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("deleting {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("saving {}", path.display()))
}

/// The uploads under way: a file (by path, size and modification time) and its server to its
/// upload's path there.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Uploads {
    uploads: BTreeMap<String, String>,
}

/// What identifies one file's upload to one server with its options: a file changed since,
/// or other options, make a new upload.
pub fn upload_key(server: &str, file: &Path, options: &[(&str, String)]) -> anyhow::Result<String> {
    let canonical = file
        .canonicalize()
        .with_context(|| format!("{}", file.display()))?;
    let meta = fs::metadata(&canonical).with_context(|| format!("{}", file.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    // Other options make another MP3: another upload, not the old one resumed.
    let options: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!(
        "{server} {} {} {modified} {}",
        canonical.display(),
        meta.len(),
        options.join("&")
    ))
}

impl Uploads {
    fn path() -> anyhow::Result<PathBuf> {
        Ok(cache_dir()?.join("uploads.json"))
    }

    /// The saved uploads; an unreadable file counts as none (they can always start over).
    pub fn load() -> Self {
        Self::path()
            .ok()
            .and_then(|p| fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.uploads.get(key).map(String::as_str)
    }

    /// Records or forgets (`None`) the upload of `key`, re-reading the file first so parallel
    /// uploads of this process and others lose nothing but a race's last write.
    pub fn update(key: &str, upload: Option<&str>) -> anyhow::Result<()> {
        // One writer at a time, in this process (threads) and across processes (a lock file).
        static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let lock_path = Self::path()?.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let mut current = Self::load();
        match upload {
            Some(path) => current.uploads.insert(key.to_owned(), path.to_owned()),
            None => current.uploads.remove(key),
        };
        write_private(&Self::path()?, &serde_json::to_vec_pretty(&current)?)
    }
}
