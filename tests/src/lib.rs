//! Harness for the black-box tests: builds the binaries and components once, gives each test a
//! fresh database and its own runner process on a free port, and talks to it over HTTP.
//!
//! The backing services come from `scripts/dev-services start`; the tests read their addresses
//! from the environment it prints (`eval "$(scripts/dev-services env)"`, as `scripts/test` does).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod db;
pub mod http;
pub mod services;
pub mod system;

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
                 `cargo build --release --target wasm32-wasip2 -p gateway -p login -p validate -p probe -p unhosted` \
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

/// How to start a runner.
pub struct RunnerConfig {
    pub manifest: PathBuf,
    /// Extra environment (e.g. `SPIN_VARIABLE_*`); the test process's own SPIN_VARIABLE_* are removed.
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl RunnerConfig {
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// The project's `spin.toml`, with the variables every test shares already set from the
    /// dev services' environment: `mongodb_url` and `amqp_url` (required by the gateway).
    pub fn app() -> Self {
        Self::new(root().join("spin.toml"))
            .env("SPIN_VARIABLE_MONGODB_URL", service_env("MONGODB_URL"))
            .env("SPIN_VARIABLE_AMQP_URL", service_env("AMQP_URL"))
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn command(&self) -> Command {
        build_all();
        let mut command = Command::new(release_bin("spin-runner"));
        command
            .arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&self.args);
        for (name, _) in std::env::vars() {
            if name.starts_with("SPIN_VARIABLE_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts the runner and waits until it prints the address it serves on.
    pub fn start(self) -> Runner {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning spin-runner");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Serving ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => Runner {
                child,
                base,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "spin-runner did not start; its stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// Runs the runner expecting it to refuse to start; returns its exit status and stderr.
    pub fn start_expecting_failure(self) -> (ExitStatus, String) {
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning spin-runner");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for spin-runner") {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .expect("piped stderr")
                    .read_to_string(&mut stderr)
                    .expect("reading stderr");
                return (status, stderr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("spin-runner kept running although it should have refused to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `spin-runner up`; sends SIGTERM and waits on drop.
pub struct Runner {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Runner {
    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the runner wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`, for log lines written after a response.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        signal_term(self.child.id())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("spin-runner did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal_term(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    Ok(())
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
