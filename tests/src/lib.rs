//! Harness for the black-box tests: checks the binaries and components are built, gives each
//! test a fresh database and its own app process (the runner or real Spin, see [`app`]) on a
//! free port, and talks to it over HTTP.
//!
//! The backing services come from `scripts/dev-services start`; the tests read their addresses
//! from the environment it prints (`eval "$(scripts/dev-services env)"`, as `scripts/test` does).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub mod app;
pub mod db;
pub mod http;
pub mod memory;
pub mod services;
pub mod system;
pub mod tus;
pub mod webhook_receiver;

pub use app::{available_runtimes, App, AppConfig, Runtime};
pub use db::TestDb;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Checks, once per test binary, that the runner, the workers, the admin CLI and the components
/// are built.
///
/// They come from `scripts/test`, which builds the components for wasm32-wasip2 and then runs
/// `cargo test --release --workspace --all-targets`: that one command also builds the
/// `spin-runner`, `converter`, `notifier` and `mp3-admin` binaries (their packages have
/// integration tests), so the tests
/// always run the binaries of the current source. Building them here with another cargo command
/// would compile wasmtime again with differently unified features.
pub fn build_all() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let needed = ["spin-runner", "mp3-admin", "converter", "notifier"]
            .map(release_bin)
            .into_iter()
            .chain(["gateway", "login", "validate", "probe", "unhosted"].map(wasm));
        for path in needed {
            assert!(
                path.exists(),
                "{} is missing: run the tests with `scripts/test` (or build the components with \
                 `cargo build --release --target wasm32-wasip2 -p gateway -p login -p validate -p web -p probe -p unhosted` \
                 and run `cargo test --release --workspace`)",
                path.display()
            );
        }
    });
}

pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

pub fn wasm(name: &str) -> PathBuf {
    root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// An environment variable the dev services set; its absence means they are not running.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the services with `scripts/dev-services start` and `eval \"$(scripts/dev-services env)\"` (scripts/test does both)")
    })
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mp3-test-{label}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("writing a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A number unique within this process, for names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 16) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `mp3-admin` with `args`, feeding `stdin`; returns (success, stdout+stderr).
pub fn admin(database_url: &str, args: &[&str], stdin: &str) -> (bool, String) {
    build_all();
    let mut child = Command::new(release_bin("mp3-admin"))
        .args(args)
        .env("MP3_DATABASE_URL", database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning mp3-admin");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let output = child.wait_with_output().expect("waiting for mp3-admin");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
