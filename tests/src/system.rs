//! The whole system for one test or benchmark: a fresh auth database with one user, a RabbitMQ
//! virtual host of its own, the app (on the runner or on Spin), and the converter and notifier workers,
//! all against the real dev services. Only the MongoDB databases are shared; tests tell their
//! files apart by ids.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::http::{send, send_raw, Body, RawReply, Reply};
use crate::services::Vhost;
use crate::{admin, release_bin, service_env, unique, App, AppConfig, Runtime, TestDb};

pub const JWT_SECRET: &str = "system-test-secret-that-is-long-enough-for-hs256";
pub const PASSWORD: &str = "correct horse battery staple";
/// The key the gateway checks and the notifier signs download links with.
pub const DOWNLOAD_KEY: &str = "system-test-download-link-key-of-32-bytes-or-more";

/// A free loopback port (bound and released: good enough for a child process started next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// A running worker binary (`converter` or `notifier`); killed on drop.
pub struct Worker {
    name: &'static str,
    child: Child,
    metrics: String,
}

impl Worker {
    /// Starts `target/release/<name>` with `env` and waits until `/healthz` answers 200.
    pub fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(release_bin(name))
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("METRICS_ADDR", &metrics)
            // WORKER_LOG=debug (or any RUST_LOG filter) to see more while debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let worker = Worker {
            name,
            child,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while worker.health() != 200 {
            assert!(Instant::now() < deadline, "{name} never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        worker
    }

    pub fn health(&self) -> u16 {
        send_raw(
            "GET",
            &format!("http://{}/healthz", self.metrics),
            &[],
            Body::Empty,
        )
        .map_or(0, |r| r.status)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> String {
        crate::http::get(&format!("http://{}/metrics", self.metrics)).body
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a node failure or the OOM killer would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("stopped {}", self.name);
        }
    }
}

/// The app and its workers, for one user. (Fields drop in order: the processes stop before
/// their vhost and database go away.)
pub struct System {
    pub converter: Option<Worker>,
    pub notifier: Option<Worker>,
    pub app: App,
    pub db: TestDb,
    pub vhost: Vhost,
    /// A unique email, so Mailpit searches find only this test's messages.
    pub email: String,
}

impl System {
    /// Everything, with both workers running.
    pub fn start(runtime: Runtime) -> Self {
        Self::start_with(runtime, |app| app)
    }

    /// Everything, with the app further configured by `configure` (its variables, say).
    pub fn start_with(runtime: Runtime, configure: impl FnOnce(AppConfig) -> AppConfig) -> Self {
        let mut system = Self::app_only(runtime, configure);
        system.converter = Some(system.start_converter());
        system.notifier = Some(system.start_notifier());
        system
    }

    /// The app alone: nothing consumes the queues until a test starts a worker.
    pub fn without_workers(runtime: Runtime) -> Self {
        Self::app_only(runtime, |app| app)
    }

    fn app_only(runtime: Runtime, configure: impl FnOnce(AppConfig) -> AppConfig) -> Self {
        let vhost = Vhost::new();
        let db = TestDb::migrated();
        let email = format!("user-{}@example.com", unique());
        let (ok, output) = admin(
            &db.url(),
            &["user", "add", &email],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "mp3-admin user add failed: {output}");
        let app = configure(
            AppConfig::app(runtime)
                .env("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url())
                .env("SPIN_VARIABLE_DB_URL", db.url())
                .env("SPIN_VARIABLE_DB_HOST", db.host_port())
                .env("SPIN_VARIABLE_JWT_SECRET", JWT_SECRET)
                .env("SPIN_VARIABLE_DOWNLOAD_KEY", DOWNLOAD_KEY),
        )
        .start();
        System {
            converter: None,
            notifier: None,
            app,
            db,
            vhost,
            email,
        }
    }

    fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AMQP_URL", self.vhost.amqp_url()),
            ("MONGODB_URL", service_env("MONGODB_URL")),
            ("RETRY_BASE_DELAY_MS", "200".into()),
        ]
    }

    pub fn start_converter(&self) -> Worker {
        let mut env = self.worker_env();
        env.push(("CONCURRENCY", "2".into()));
        Worker::start("converter", &env)
    }

    pub fn start_notifier(&self) -> Worker {
        self.start_notifier_with(&[])
    }

    /// [`System::start_notifier`] with more settings (its webhook policy, say).
    pub fn start_notifier_with(&self, extra: &[(&'static str, String)]) -> Worker {
        let mut env = self.worker_env();
        env.extend(extra.iter().cloned());
        env.extend([
            ("SMTP_HOST", service_env("SMTP_HOST")),
            ("SMTP_PORT", service_env("SMTP_PORT")),
            ("SMTP_TLS", "none".into()),
            ("DOWNLOAD_BASE_URL", self.app.base().to_owned()),
            ("DOWNLOAD_KEY", DOWNLOAD_KEY.to_owned()),
        ]);
        Worker::start("notifier", &env)
    }

    /// `POST /login` with the user's credentials; the token.
    pub fn login(&self) -> String {
        self.login_as(&self.email)
    }

    /// `POST /login` as `email` (with the test password); the token.
    pub fn login_as(&self, email: &str) -> String {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{PASSWORD}"));
        let reply = send(
            "POST",
            &self.app.url("/login"),
            &[("Authorization", &format!("Basic {basic}"))],
            Some(b""),
        );
        assert_eq!(reply.status, 200, "login: {}", reply.body);
        reply.body
    }

    /// Uploads `path` with curl (which streams the file as multipart/form-data); the reply.
    pub fn upload(&self, token: &str, path: &Path) -> Reply {
        upload(&self.app.url("/upload"), token, path).0
    }

    /// [`System::upload`] with form fields (conversion options) before the file.
    pub fn upload_with(&self, token: &str, path: &Path, fields: &[(&str, &str)]) -> Reply {
        upload_form(&self.app.url("/upload"), token, path, fields).0
    }

    /// `GET /jobs/{id}` every 10 ms until the job is `done` or `failed`; the final job JSON.
    pub fn wait_for_job(&self, token: &str, job_id: &str, timeout: Duration) -> serde_json::Value {
        self.poll_job(token, job_id, timeout, Duration::from_millis(10))
    }

    /// [`System::wait_for_job`], asking every `every`.
    pub fn poll_job(
        &self,
        token: &str,
        job_id: &str,
        timeout: Duration,
        every: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self.get(token, &format!("/jobs/{job_id}"));
            assert_eq!(reply.status, 200, "job status: {}", reply.body);
            let job: serde_json::Value =
                serde_json::from_str(&reply.body).expect("the job is JSON");
            if matches!(job["status"].as_str(), Some("done" | "failed")) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {job_id} still {job}");
            std::thread::sleep(every);
        }
    }

    /// `GET /download?fid=...` with the body as bytes.
    pub fn download(&self, token: &str, mp3_fid: &str) -> RawReply {
        send_raw(
            "GET",
            &self.app.url(&format!("/download?fid={mp3_fid}")),
            &[("Authorization", &format!("Bearer {token}"))],
            Body::Empty,
        )
        .expect("downloading")
    }

    /// `GET url` as a browser following a link would: no token, an optional `Range`.
    pub fn fetch_link(&self, url: &str, range: Option<&str>) -> RawReply {
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        send_raw("GET", url, &headers, Body::Empty).expect("following a link")
    }

    pub fn get(&self, token: &str, path: &str) -> Reply {
        send(
            "GET",
            &self.app.url(path),
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
    }
}

impl Drop for System {
    /// Deletes the user's jobs and their files, so the shared MongoDB does not grow with every
    /// run (FerretDB scans GridFS chunks, so a big `fs.chunks` slows every later test).
    fn drop(&mut self) {
        // The workers must not write while we clean up.
        self.converter.take();
        self.notifier.take();
        if let Err(error) = delete_jobs_of(&self.email) {
            eprintln!("cleaning up {}'s jobs: {error}", self.email);
        }
    }
}

fn delete_jobs_of(owner: &str) -> mongo_wire::Result<()> {
    use mongo_wire::bson::{doc, oid::ObjectId};
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL"))?;
    let jobs: Vec<_> = client
        .find(
            mp3_model::VIDEOS_DB,
            mp3_model::JOBS_COLLECTION,
            doc! {"owner": owner},
            Default::default(),
        )?
        .collect::<mongo_wire::Result<_>>()?;
    for job in jobs {
        for (db, field) in [
            (mp3_model::VIDEOS_DB, "video_fid"),
            (mp3_model::MP3S_DB, "mp3_fid"),
        ] {
            if let Some(id) = job
                .get_str(field)
                .ok()
                .and_then(|h| ObjectId::parse_str(h).ok())
            {
                // NotFound is fine: a failed job has no MP3.
                let _ = mongo_wire::Bucket::new(db).delete(&mut client, id);
            }
        }
    }
    client.delete_many(
        mp3_model::VIDEOS_DB,
        mp3_model::JOBS_COLLECTION,
        doc! {"owner": owner},
    )?;
    Ok(())
}

/// Uploads `path` to `url` with curl; the reply and the seconds curl spent.
pub fn upload(url: &str, token: &str, path: &Path) -> (Reply, f64) {
    upload_form(url, token, path, &[])
}

/// [`upload`] with form fields before the file (sent as they are, never read from files).
pub fn upload_form(url: &str, token: &str, path: &Path, fields: &[(&str, &str)]) -> (Reply, f64) {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "-", "-w", "\n%{http_code} %{time_total}", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    for (name, value) in fields {
        curl.arg("--form-string").arg(format!("{name}={value}"));
    }
    let out = curl
        .arg("-F")
        .arg(format!("file=@{}", path.display()))
        .arg(url)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, tail) = text.rsplit_once('\n').expect("curl's -w line");
    let (code, secs) = tail.split_once(' ').expect("code and time");
    let reply = Reply {
        status: code.parse().expect("a status code"),
        body: body.to_owned(),
        headers: Vec::new(),
    };
    (reply, secs.parse().expect("a time"))
}

/// Emails in Mailpit matching `query` (Mailpit's search syntax, e.g. `to:a@b.c`).
pub fn mailpit_search(query: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/api/v1/search?query={}",
        service_env("MAILPIT_URL"),
        percent_encode(query)
    );
    let reply = crate::http::get(&url);
    assert_eq!(reply.status, 200, "Mailpit search: {}", reply.body);
    let found: serde_json::Value = serde_json::from_str(&reply.body).expect("Mailpit JSON");
    found["messages"].as_array().cloned().unwrap_or_default()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Makes a video with ffmpeg: `seconds` of test pattern at `size` (e.g. `320x240`) and a
/// 440 Hz tone, H.264 + AAC in MP4.
pub fn make_video(path: &Path, seconds: u32, size: &str) {
    ffmpeg_video(
        path,
        seconds,
        &format!("testsrc=size={size}:rate=25:duration={seconds}"),
    );
}

/// [`make_video`] at 320x240 with noise, which does not compress: a few MB a second, for
/// uploads of several pieces made in little time.
pub fn make_noisy_video(path: &Path, seconds: u32) {
    ffmpeg_video(
        path,
        seconds,
        &format!("testsrc=size=320x240:rate=25:duration={seconds},noise=alls=60:allf=t"),
    );
}

fn ffmpeg_video(path: &Path, seconds: u32, picture: &str) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", picture])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-shortest",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ])
        .arg(path)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make {}", path.display());
}

/// The duration in seconds ffprobe reads from a media file, and its format name.
pub fn probe(path: &Path) -> (f64, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration,format_name",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .expect("running ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let duration = field("duration").parse().unwrap_or(f64::NAN);
    (duration, field("format_name"))
}
