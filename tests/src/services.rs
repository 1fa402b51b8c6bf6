//! The backing services as the gateway tests see them: a RabbitMQ virtual host per test (so no
//! test shares a queue with another, or with a worker running on the same broker), MongoDB
//! through `mongo-wire`, and a TCP proxy a test can cut to make a service vanish mid-request.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{service_env, unique};

fn curl(method: &str, url: &str, body: Option<&str>) -> (bool, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--fail-with-body", "-m", "20", "-X", method]);
    if let Some(body) = body {
        command.args(["-H", "content-type: application/json", "-d", body]);
    }
    let out = command.arg(url).output().expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A RabbitMQ virtual host of its own, made with the management API (the dev services' `mp3`
/// user is an administrator) and deleted on drop.
pub struct Vhost {
    name: String,
}

impl Vhost {
    pub fn new() -> Self {
        let name = format!("mp3-test-{}", unique());
        let api = service_env("RABBITMQ_MGMT_URL");
        let (ok, out) = curl("PUT", &format!("{api}/api/vhosts/{name}"), None);
        assert!(ok, "creating vhost {name}: {out}");
        let (ok, out) = curl(
            "PUT",
            &format!("{api}/api/permissions/{name}/mp3"),
            Some(r#"{"configure":".*","write":".*","read":".*"}"#),
        );
        assert!(ok, "granting mp3 access to {name}: {out}");
        Vhost { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dev services' `AMQP_URL` pointed at this vhost.
    pub fn amqp_url(&self) -> String {
        let base = service_env("AMQP_URL");
        let root = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(root, _)| root);
        format!("{root}/{}", self.name)
    }

    /// [`Vhost::amqp_url`] through another `host:port` (a proxy, a closed port).
    pub fn amqp_url_via(&self, host_port: &str) -> String {
        let url = self.amqp_url();
        let (scheme_auth, rest) = url.rsplit_once('@').expect("AMQP_URL has credentials");
        let path = rest.split_once('/').map_or("", |(_, path)| path);
        format!("{scheme_auth}@{host_port}/{path}")
    }

    /// `host:port` of RabbitMQ, from `AMQP_URL`.
    pub fn broker_address() -> String {
        let url = service_env("AMQP_URL");
        let rest = url.rsplit_once('@').map_or(url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    /// Takes up to `max` messages off `queue` (acknowledging them) through the management
    /// API: each with `payload` and `properties`.
    pub fn take_messages(&self, queue: &str, max: u32) -> Vec<serde_json::Value> {
        let api = service_env("RABBITMQ_MGMT_URL");
        let body = format!(r#"{{"count":{max},"ackmode":"ack_requeue_false","encoding":"auto"}}"#);
        let (ok, out) = curl(
            "POST",
            &format!("{api}/api/queues/{}/{queue}/get", self.name),
            Some(&body),
        );
        assert!(ok, "getting messages from {queue}: {out}");
        serde_json::from_str(&out).expect("the management API answers JSON")
    }

    /// [`Vhost::take_messages`], or nothing when the queue was never declared.
    pub fn drain(&self, queue: &str) -> Vec<serde_json::Value> {
        if self.queue(queue).is_none() {
            return Vec::new();
        }
        self.take_messages(queue, 10)
    }

    /// The queue's properties (`durable`, `arguments`, ...) from the management API, or
    /// `None` if it does not exist.
    pub fn queue(&self, queue: &str) -> Option<serde_json::Value> {
        let api = service_env("RABBITMQ_MGMT_URL");
        let (ok, out) = curl(
            "GET",
            &format!("{api}/api/queues/{}/{queue}", self.name),
            None,
        );
        ok.then(|| serde_json::from_str(&out).expect("the management API answers JSON"))
    }
}

impl Default for Vhost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let api = service_env("RABBITMQ_MGMT_URL");
        let _ = curl("DELETE", &format!("{api}/api/vhosts/{}", self.name), None);
    }
}

/// A TCP proxy on a free loopback port that forwards every connection to `target`, until
/// [`TcpProxy::cut`] closes the listener and every connection in both directions.
pub struct TcpProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// What the service sent to its clients so far (the first 64 KiB).
    from_service: Arc<Mutex<Vec<u8>>>,
}

impl TcpProxy {
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_owned();
        let (cut2, streams2) = (cut.clone(), streams.clone());
        let from_service: Arc<Mutex<Vec<u8>>> = Arc::default();
        let recorded = from_service.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if cut2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut held = streams2.lock().unwrap();
                for s in [&client, &upstream] {
                    if let Ok(clone) = s.try_clone() {
                        held.push(clone);
                    }
                }
                drop(held);
                for (mut from, mut to, record) in [
                    (client.try_clone(), upstream.try_clone(), None),
                    (
                        upstream.try_clone(),
                        client.try_clone(),
                        Some(recorded.clone()),
                    ),
                ]
                .into_iter()
                .filter_map(|(a, b, r)| Some((a.ok()?, b.ok()?, r)))
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if let Some(record) = &record {
                                let mut record = record.lock().unwrap();
                                let room = (64 * 1024usize).saturating_sub(record.len());
                                record.extend_from_slice(&buf[..n.min(room)]);
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        TcpProxy {
            port,
            cut,
            streams,
            from_service,
        }
    }

    /// `127.0.0.1:<port>`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the service has sent `bytes` (for instance the frame that ends a client's
    /// setup), or `timeout` passes; true if so.
    pub fn wait_for_service_bytes(&self, bytes: &[u8], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self
                .from_service
                .lock()
                .unwrap()
                .windows(bytes.len())
                .any(|w| w == bytes)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stops accepting and closes every proxied connection, as if the service had died.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        self.sever();
    }

    /// Closes every proxied connection but keeps accepting new ones, as if the network had
    /// dropped them (or the service restarted).
    pub fn sever(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener.local_addr().expect("address").port()
}

/// The `host:port` of a service URL (`scheme://[user:password@]host:port[/path][?query]`), for
/// `allowed_outbound_hosts`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}
