//! Helpers for the workers' integration tests, against the dev services
//! (`eval "$(scripts/dev-services env)"`): a RabbitMQ vhost per test, the worker binary as a
//! child process, HTTP through `curl`. Panics with a clear message on any failure: test code.

mod proxy;

pub use proxy::TcpProxy;

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An environment variable the tests need, or a panic that says how to get it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the dev services. Run `scripts/dev-services \
             start` and `eval \"$(scripts/dev-services env)\"` first"
        )
    })
}

/// The `host:port` of a service URL (`scheme://[user:password@]host:port[/path][?query]`): what
/// a [`TcpProxy`] forwards to.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// A name no other test, process or run uses: `<what>-<pid>-<nanos>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `curl` with `args`; returns (HTTP status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// `GET url`: (status, body); status 0 when nothing answers.
pub fn http_get(url: &str) -> (u16, String) {
    curl(&[url])
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port free right now on 127.0.0.1 (for a worker's metrics address).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A RabbitMQ virtual host of its own, created through the management API and deleted on drop,
/// so a test's queues and messages cannot meet another's.
pub struct Vhost {
    pub name: String,
    mgmt: String,
}

impl Vhost {
    pub fn new(what: &str) -> Self {
        let name = unique(&format!("mp3-test-{what}"));
        let mgmt = env("RABBITMQ_MGMT_URL");
        let user = amqp_user(&env("AMQP_URL"));
        let (status, body) = curl(&["-X", "PUT", &format!("{mgmt}/api/vhosts/{name}")]);
        assert!(
            matches!(status, 201 | 204),
            "creating vhost {name}: {status} {body}"
        );
        let permissions = r#"{"configure":".*","write":".*","read":".*"}"#;
        let (status, body) = curl(&[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "-d",
            permissions,
            &format!("{mgmt}/api/permissions/{name}/{user}"),
        ]);
        assert!(
            matches!(status, 201 | 204),
            "granting {user} on {name}: {status} {body}"
        );
        Self { name, mgmt }
    }

    /// `AMQP_URL` pointed at this vhost.
    pub fn amqp_url(&self) -> String {
        let base = env("AMQP_URL");
        let authority_end = base
            .strip_prefix("amqp://")
            .and_then(|rest| rest.find('/').map(|i| i + "amqp://".len()))
            .unwrap_or(base.len());
        format!("{}/{}", &base[..authority_end], self.name)
    }

    /// Messages in `queue` (ready + unacked), per the management API; `None` while the queue
    /// does not exist or its statistics are not in yet.
    pub fn queue_len(&self, queue: &str) -> Option<u64> {
        let (status, body) = http_get(&format!("{}/api/queues/{}/{queue}", self.mgmt, self.name));
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json.get("messages")?.as_u64()
    }

    /// Takes up to `count` messages from `queue` (acked: removed), as the management API shows
    /// them (`payload`, `properties`, ...).
    pub fn take(&self, queue: &str, count: u32) -> Vec<serde_json::Value> {
        let body = format!(
            r#"{{"count":{count},"ackmode":"ack_requeue_false","encoding":"auto","truncate":1000000}}"#
        );
        let (status, text) = curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            &format!("{}/api/queues/{}/{queue}/get", self.mgmt, self.name),
        ]);
        assert_eq!(status, 200, "getting from {queue}: {text}");
        serde_json::from_str(&text).expect("management API answers JSON")
    }

    /// Publishes `payload` to `queue` on the default exchange, persistent JSON, through the
    /// management API; panics unless it was routed.
    pub fn publish(&self, queue: &str, payload: &str) {
        let body = serde_json::json!({
            "properties": {"delivery_mode": 2, "content_type": "application/json"},
            "routing_key": queue,
            "payload": payload,
            "payload_encoding": "string",
        });
        let (status, text) = curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
            &format!(
                "{}/api/exchanges/{}/amq.default/publish",
                self.mgmt, self.name
            ),
        ]);
        assert_eq!(status, 200, "publishing to {queue}: {text}");
        assert!(
            text.contains(r#""routed":true"#),
            "not routed to {queue}: {text}"
        );
    }
}

impl Vhost {
    /// Force-closes every client connection to this vhost through the management API, as a
    /// broker restart or a network cut would; returns how many there were.
    pub fn close_connections(&self) -> usize {
        let (status, body) = http_get(&format!(
            "{}/api/vhosts/{}/connections",
            self.mgmt, self.name
        ));
        assert_eq!(status, 200, "listing connections: {body}");
        let connections: Vec<serde_json::Value> =
            serde_json::from_str(&body).expect("management API answers JSON");
        for connection in &connections {
            let name = connection["name"].as_str().expect("a connection name");
            let encoded: String = name
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let (status, body) = curl(&[
                "-X",
                "DELETE",
                &format!("{}/api/connections/{encoded}", self.mgmt),
            ]);
            assert!(
                matches!(status, 204 | 404),
                "closing {name}: {status} {body}"
            );
        }
        connections.len()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = curl(&[
            "-X",
            "DELETE",
            &format!("{}/api/vhosts/{}", self.mgmt, self.name),
        ]);
    }
}

fn amqp_user(url: &str) -> String {
    let rest = url.strip_prefix("amqp://").unwrap_or(url);
    let userinfo = rest.split_once('@').map(|(u, _)| u).unwrap_or("guest");
    userinfo.split(':').next().unwrap_or("guest").to_owned()
}

/// A worker binary running as a child process, its stderr in a log file that is printed when
/// the test fails. Killed (SIGKILL) on drop if still running.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
    pub metrics_url: String,
}

impl WorkerProcess {
    /// Starts `binary` with `envs` (on top of an environment cleared of the worker variables)
    /// and `METRICS_ADDR` on a free port.
    pub fn start(binary: &str, envs: &[(&str, String)]) -> Self {
        Self::start_as(&[], binary, envs)
    }

    /// [`WorkerProcess::start`] through `prefix` (`setpriv --reuid=...`, to run it as another
    /// user).
    pub fn start_as(prefix: &[&str], binary: &str, envs: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("mp3-worker-test")));
        let file = std::fs::File::create(&log).expect("creating the worker log");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Self {
            child,
            log,
            metrics_url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/healthz` answers 200 (connected and consuming).
    pub fn wait_healthy(&mut self) {
        let url = format!("{}/healthz", self.metrics_url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(&url).0 == 200 {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the worker exited ({status}) before becoming healthy:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker not healthy after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of the metric sample `name` (exact name with labels, as in the text format).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(&format!("{}/metrics", self.metrics_url));
        if status != 200 {
            return None;
        }
        body.lines().find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the worker.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether the worker has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the worker to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the worker") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- worker log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_user_is_read_from_the_url() {
        assert_eq!(amqp_user("amqp://mp3:secret@127.0.0.1:5672/%2f"), "mp3");
        assert_eq!(amqp_user("amqp://127.0.0.1"), "guest");
    }
}
