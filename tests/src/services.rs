//! The backing services as the gateway tests see them: a RabbitMQ virtual host per test (so no
//! test shares a queue with another, or with a worker running on the same broker), MongoDB
//! through `mongo-wire`, and a TCP proxy a test can cut to make a service vanish mid-request.

use std::net::TcpListener;
use std::process::Command;

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

pub use mp3_worker::testing::{host_port, TcpProxy};

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener.local_addr().expect("address").port()
}
