//! Ctrl-C, SIGTERM or SIGHUP while MP3s download: their partial files are removed, then the
//! process dies of the signal as it would have without this (so a shell loop running `mp3`
//! stops on Ctrl-C), and no partial file is left behind hidden.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The partial files being written now, by every download thread.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler (once, at start; a failure only means no clean-up on a signal).
pub fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            if let Ok(partial) = PARTIAL.lock() {
                for path in partial.iter() {
                    let _ = std::fs::remove_file(path);
                }
            }
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            // Only if the default action did not end the process.
            std::process::exit(128 + signal);
        }
    });
}

/// A file removed if a signal ends the process while this lives.
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
