//! Ctrl-C or SIGTERM while MP3s download: their partial files are removed before the process
//! ends (with 130, as a shell reports an interrupted command), so none is left behind hidden.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The partial files being written now, by every download thread.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler (once, at start; a failure only means no clean-up on a signal).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if let Ok(partial) = PARTIAL.lock() {
            for path in partial.iter() {
                let _ = std::fs::remove_file(path);
            }
        }
        std::process::exit(130);
    });
}

/// A partial file removed if a signal ends the process while this lives.
pub struct Partial(PathBuf);

impl Partial {
    pub fn new(path: &Path) -> Self {
        if let Ok(mut partial) = PARTIAL.lock() {
            partial.push(path.to_owned());
        }
        Self(path.to_owned())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Ok(mut partial) = PARTIAL.lock() {
            partial.retain(|p| *p != self.0);
        }
    }
}
