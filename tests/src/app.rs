//! The app under test as a process: the project's `spin-runner up`, or the real Spin CLI's
//! `spin up`, on the same `spin.toml` and the same `.wasm` files. Tests say which with
//! [`Runtime`] and otherwise cannot tell them apart: both are started, addressed, read and
//! stopped the same way.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{build_all, release_bin};

include!("spin_bin.rs");

/// What runs the components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// `target/release/spin-runner` (crates/runner).
    Runner,
    /// The Spin CLI (`SPIN_BIN`, else `spin` on PATH; `scripts/dev-services env` finds it).
    Spin,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runner => "spin-runner",
            Runtime::Spin => "spin",
        }
    }
}

/// Runs each listed test function (`fn name(runtime: Runtime)`) once on the runner and once on
/// Spin, as `on_runner::name` and `on_spin::name`. Without a Spin CLI (a machine where it is
/// not installed) the Spin half is reported as ignored, with the reason; `CI=true` makes a
/// missing Spin a build error instead (see tests/build.rs).
#[macro_export]
macro_rules! on_each_runtime {
    ($($test:ident),* $(,)?) => {
        mod on_runner {
            $(
                #[test]
                fn $test() {
                    super::$test($crate::Runtime::Runner)
                }
            )*
        }
        mod on_spin {
            $(
                #[test]
                #[cfg_attr(
                    spin_missing,
                    ignore = "no Spin CLI: set SPIN_BIN or put spin 3.x on PATH (scripts/dev-services spin)"
                )]
                fn $test() {
                    super::$test($crate::Runtime::Spin)
                }
            )*
        }
    };
}

/// The runtimes this machine has: the runner, and Spin when a Spin CLI is found (the benchmarks
/// measure both; without Spin they say so and measure the runner).
pub fn available_runtimes() -> Vec<Runtime> {
    match find_spin_bin() {
        Some(_) => vec![Runtime::Runner, Runtime::Spin],
        None => {
            eprintln!("no Spin CLI found (SPIN_BIN, PATH): measuring the runner only");
            vec![Runtime::Runner]
        }
    }
}

/// The Spin CLI the tests run, or a panic saying how to get one.
pub fn spin_bin() -> PathBuf {
    find_spin_bin().unwrap_or_else(|| {
        panic!("no Spin CLI: set SPIN_BIN or put spin on PATH (`scripts/dev-services spin` unpacks one)")
    })
}

/// The per-request memory limit of the Kubernetes manifests (`invocationLimits.memory: 64Mi`).
pub const INSTANCE_MEMORY: usize = 64 << 20;

/// How to start the app.
pub struct AppConfig {
    pub manifest: PathBuf,
    pub runtime: Runtime,
    /// Extra environment (e.g. `SPIN_VARIABLE_*`); the test process's own SPIN_VARIABLE_* are removed.
    pub env: Vec<(String, String)>,
    /// Arguments both CLIs take the same way (`--variable name=value`).
    pub args: Vec<String>,
    /// `--listen` address; by default a free loopback port.
    pub listen: Option<String>,
    /// `--state-dir` (where the default key-value store lives); by default unset, so nothing is
    /// written beside the manifest and the store is in memory.
    pub state_dir: Option<PathBuf>,
}

impl AppConfig {
    pub fn new(manifest: impl Into<PathBuf>, runtime: Runtime) -> Self {
        Self {
            manifest: manifest.into(),
            runtime,
            env: Vec::new(),
            args: Vec::new(),
            listen: None,
            state_dir: None,
        }
    }

    /// The project's `spin.toml`, with the variables every test shares already set from the
    /// dev services' environment: `mongodb_url` and `amqp_url` (required by the gateway); and
    /// each instance held to the memory the Kubernetes manifests give it
    /// (`invocationLimits.memory`, which SpinKube passes on as `SPIN_MAX_INSTANCE_MEMORY`).
    pub fn app(runtime: Runtime) -> Self {
        Self::new(crate::root().join("spin.toml"), runtime)
            .env("SPIN_MAX_INSTANCE_MEMORY", INSTANCE_MEMORY.to_string())
            .env(
                "SPIN_VARIABLE_MONGODB_URL",
                crate::service_env("MONGODB_URL"),
            )
            .env("SPIN_VARIABLE_AMQP_URL", crate::service_env("AMQP_URL"))
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Keeps the app's state (the default key-value store) in `dir`.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Listens on `address` (`IP:port`) instead of a free loopback port.
    pub fn listen(mut self, address: &str) -> Self {
        self.listen = Some(address.to_owned());
        self
    }

    fn command(&self, listen: &str) -> Command {
        build_all();
        let mut command = match self.runtime {
            Runtime::Runner => Command::new(release_bin("spin-runner")),
            Runtime::Spin => Command::new(spin_bin()),
        };
        command
            .arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .arg("--listen")
            .arg(listen)
            .arg("--state-dir")
            .arg(self.state_dir.as_deref().unwrap_or(Path::new("")))
            .args(&self.args);
        if self.runtime == Runtime::Spin {
            // Component output to the terminal only: the log the tests read.
            command.args(["--log-dir", ""]);
        }
        // Only what the test sets: no variables of the test process's own, and no backtrace
        // settings, which make both hosts append a backtrace to the errors they hand guests.
        for (name, _) in std::env::vars() {
            if name.starts_with("SPIN_VARIABLE_") || name.ends_with("_BACKTRACE") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        // A process group of its own: `spin up` and the `spin trigger http` it starts are
        // stopped together, whichever of them is still there.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// Starts the app and waits until it prints the address it serves on.
    pub fn start(self) -> App {
        // Spin makes self requests (`http://self.alt`) to the address it was told to listen
        // on, so it gets a real port rather than port 0; a port taken in between is retried.
        for attempt in 1.. {
            let listen = match (&self.listen, self.runtime) {
                (Some(address), _) => address.clone(),
                (None, Runtime::Runner) => "127.0.0.1:0".to_owned(),
                (None, Runtime::Spin) => format!("127.0.0.1:{}", crate::system::free_port()),
            };
            match self.try_start(&listen) {
                Ok(app) => return app,
                Err(log) if attempt < 3 && log.contains("already in use") => continue,
                Err(log) => panic!("{} did not start; its output:\n{log}", self.runtime.name()),
            }
        }
        unreachable!()
    }

    fn try_start(&self, listen: &str) -> Result<App, String> {
        let mut child = self
            .command(listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.runtime.name()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let (log, tx) = (log.clone(), tx.clone());
            // Reads to the end whatever the bytes: a reader that stopped would close the pipe,
            // and the app's next write to it would fail.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(url) = text.trim().strip_prefix("Serving ") {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    log.lock().unwrap().push_str(&text);
                    line.clear();
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(base) => {
                    return Ok(App {
                        runtime: self.runtime,
                        child,
                        base,
                        log,
                    })
                }
                Err(_) if Instant::now() > deadline => break,
                Err(_) => {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        // Give the readers a moment to collect the last lines.
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(log.lock().unwrap().clone());
                    }
                }
            }
        }
        stop_tree(&mut child);
        Err(format!("not serving after 180 s\n{}", log.lock().unwrap()))
    }

    /// Runs the app expecting it to refuse to start; returns its exit status and output.
    pub fn start_expecting_failure(self) -> (ExitStatus, String) {
        let listen = format!("127.0.0.1:{}", crate::system::free_port());
        let mut child = self
            .command(&listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.runtime.name()));
        // Drained as the app writes, so a long message cannot fill a pipe and stall it.
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = stream.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        })
        .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the app") {
                break status;
            }
            if Instant::now() > deadline {
                stop_tree(&mut child);
                panic!(
                    "{} kept running although it should have refused to start",
                    self.runtime.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // A trigger process still holding the pipes would keep the readers waiting.
        stop_tree(&mut child);
        let output = readers
            .into_iter()
            .map(|reader| reader.join().unwrap_or_default())
            .collect();
        (status, output)
    }
}

/// A running app; stopped (SIGTERM, then SIGKILL) on drop.
pub struct App {
    runtime: Runtime,
    /// `spin-runner up`, or `spin up` (whose child `spin trigger http` serves).
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl App {
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the app wrote so far (its log and the components' output).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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

    /// The process that serves the requests: the runner itself, or Spin's `spin trigger http`
    /// (the child of `spin up`), whose memory is what a benchmark must measure.
    pub fn server_pid(&self) -> u32 {
        match self.runtime {
            Runtime::Runner => self.child.id(),
            Runtime::Spin => children(self.child.id())
                .first()
                .copied()
                .unwrap_or_else(|| panic!("spin up ({}) has no trigger process", self.child.id())),
        }
    }

    /// SIGKILL to every process of the app at once, as a node failure would; waits for them.
    pub fn crash(mut self) {
        let _ = signal(&format!("-{}", self.child.id()), "KILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM to the process a user would signal (`spin up` passes it on to its
    /// trigger) and waits for the exit status.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        signal(&self.child.id().to_string(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit after SIGTERM", self.runtime.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        stop_tree(&mut self.child);
        // A failing test shows what the app logged last (the components' log lines say why a
        // request failed); libtest prints it with the failure.
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- the app's last {} log lines ({:?}, {}) ---\n{}",
                tail.len(),
                self.runtime,
                self.base,
                tail.join("\n")
            );
        }
    }
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGTERM to `child`'s process group (the runner, or `spin up` and its trigger), a short wait,
/// then SIGKILL to whatever of the group is left, even when `child` itself is gone already.
fn stop_tree(child: &mut Child) {
    let group = format!("-{}", child.id());
    if matches!(child.try_wait(), Ok(None)) {
        let _ = signal(&group, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = signal(&group, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// `kill -<signal> -- <target>`: a pid, or `-<pgid>` for every process of a group.
fn signal(target: &str, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} -- {target} failed");
    }
    Ok(())
}
