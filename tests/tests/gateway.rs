//! The gateway as clients use it: the project's spin.toml on the runner and on Spin, real RabbitMQ
//! (a virtual host per test) and MongoDB (FerretDB, the instance that requires logins, as
//! Kubernetes' MongoDB does), HTTP from the outside. Tokens are minted with the test's JWT
//! secret, which validate checks like any other.

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongo_wire::bson::oid::ObjectId;
use mongo_wire::bson::{self, doc};
use mongo_wire::{Bucket, Client};
use mp3_auth::{issue, TokenConfig};
use mp3_model::{
    Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION, JOBS_COLLECTION, MP3S_DB,
    NOTIFY_CLAIMS_COLLECTION, UPLOADS_COLLECTION, UPLOAD_LEASES_COLLECTION, VIDEOS_DB,
};
use system_tests::http::{send_raw, Body, RawReply};
use system_tests::memory::{memory_mib, reset_peak};
use system_tests::services::{closed_port, TcpProxy, Vhost};
use system_tests::{
    admin, on_each_runtime, service_env, unique, App, AppConfig, Runtime, TempDir, TestDb,
};

on_each_runtime!(
    upload_stores_the_video_records_the_job_and_queues_one_message,
    tokens_are_checked_through_validate,
    forms_without_exactly_one_video_are_refused_and_leave_nothing,
    uploads_over_the_limit_are_413_and_leave_nothing,
    rabbitmq_gone_mid_upload_is_503_and_leaves_nothing,
    a_rabbitmq_connection_lost_mid_upload_is_replaced,
    rabbitmq_or_mongodb_unreachable_is_503,
    a_hung_mongodb_or_rabbitmq_is_503_within_its_timeout_and_recovers,
    a_confirm_that_never_comes_is_503_and_the_late_message_is_dropped,
    a_confirm_that_never_comes_while_a_converter_takes_the_job_is_202,
    a_hung_user_database_is_503_after_the_auth_timeout_and_recovers,
    downloads_stream_the_owners_mp3_with_ranges,
    unknown_paths_and_methods,
    split_deployment_forwards_login_and_validates_remotely,
    mongodb_logins_reuse_the_keys_derived_from_the_password,
    hostile_multipart_bodies_are_refused_in_bounded_memory,
    jobs_are_listed_newest_first_a_page_at_a_time,
    jobs_are_deleted_with_their_files_by_their_owner_only,
    resumable_uploads_speak_tus_resume_after_a_break_and_leave_nothing_behind,
);

const SECRET: &str = "gateway-test-secret-long-enough-for-hs256-0123456789";

fn token_for(user: &str, secret: &str) -> String {
    let config = TokenConfig::new(
        secret,
        "mp3-converter",
        "mp3-converter",
        Duration::from_secs(3600),
    )
    .expect("token config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    issue(&config, user, false, 0, now).expect("issuing a token")
}

/// The app under test and the database of its users (validate checks a token's user there).
struct Gateway {
    app: App,
    users: std::sync::Arc<TestDb>,
}

impl std::ops::Deref for Gateway {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

/// A user of its own for each test, with a token.
fn user(gateway: &Gateway) -> (String, String) {
    let email = format!("user{}@example.com", unique());
    gateway.users.add_token_user(&email);
    let token = token_for(&email, SECRET);
    (email, format!("Bearer {token}"))
}

/// The MongoDB that requires SCRAM logins (`MONGODB_AUTH_URL`), as in production.
fn mongo_url() -> String {
    service_env("MONGODB_AUTH_URL")
}

/// `host:port` of that MongoDB.
fn mongo_address() -> String {
    system_tests::services::host_port(&mongo_url())
}

/// The app with the test's secret, its own vhost and users; `configure` adds or overrides
/// variables.
fn start(
    runtime: Runtime,
    vhost: &Vhost,
    configure: impl FnOnce(AppConfig) -> AppConfig,
) -> Gateway {
    start_with_users(
        runtime,
        vhost,
        std::sync::Arc::new(TestDb::migrated()),
        configure,
    )
}

/// [`start`] with the users of another app.
fn start_with_users(
    runtime: Runtime,
    vhost: &Vhost,
    users: std::sync::Arc<TestDb>,
    configure: impl FnOnce(AppConfig) -> AppConfig,
) -> Gateway {
    let config = AppConfig::app(runtime)
        .env("SPIN_VARIABLE_DB_URL", users.url())
        .env("SPIN_VARIABLE_DB_HOST", users.host_port())
        .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
        .env("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url())
        .env("SPIN_VARIABLE_AMQP_HOST", Vhost::broker_address())
        .env("SPIN_VARIABLE_MONGODB_URL", mongo_url())
        .env("SPIN_VARIABLE_MONGODB_HOST", mongo_address());
    Gateway {
        app: configure(config).start(),
        users,
    }
}

fn mongo() -> Client<std::net::TcpStream> {
    mongo_wire::connect(&mongo_url()).expect("connecting to MongoDB")
}

/// A real little MP4 (MPEG-4 video and AAC audio, several GridFS chunks), made once by ffmpeg.
fn video() -> &'static [u8] {
    static VIDEO: OnceLock<Vec<u8>> = OnceLock::new();
    VIDEO.get_or_init(|| {
        let dir = TempDir::new("video");
        let path = dir.path().join("clip.mp4");
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc=size=640x480:rate=25:duration=10")
            .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=10"])
            .args(["-c:v", "mpeg4", "-q:v", "1", "-c:a", "aac", "-shortest"])
            .arg(&path)
            .status()
            .expect("ffmpeg runs (the test videos are made with it)");
        assert!(status.success(), "ffmpeg failed");
        let bytes = std::fs::read(&path).expect("reading the video");
        assert!(bytes.len() > 2 * 255 * 1024, "want several GridFS chunks");
        bytes
    })
}

const BOUNDARY: &str = "gateway-test-boundary-7MA4YWxkTrZu0gW";

enum Part<'a> {
    Field(&'a str, &'a str),
    File(&'a str, &'a [u8]),
}

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Field(name, value) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            ),
            Part::File(filename, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn upload(app: &App, auth: Option<&str>, body: Body) -> RawReply {
    let ct = content_type();
    let mut headers = vec![("Content-Type", ct.as_str())];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    send_raw("POST", &app.url("/upload"), &headers, body).expect("POST /upload")
}

fn get(app: &App, path: &str, auth: &str, extra: &[(&str, &str)]) -> RawReply {
    let mut headers = vec![("Authorization", auth)];
    headers.extend_from_slice(extra);
    send_raw("GET", &app.url(path), &headers, Body::Empty).expect("GET")
}

/// How many GridFS files in `videos` and job documents carry `filename`.
fn stored_with_name(client: &mut Client<std::net::TcpStream>, filename: &str) -> (usize, usize) {
    let files = client
        .find(
            VIDEOS_DB,
            "fs.files",
            doc! {"filename": filename},
            Default::default(),
        )
        .expect("querying fs.files")
        .count();
    let jobs = client
        .find(
            VIDEOS_DB,
            JOBS_COLLECTION,
            doc! {"filename": filename},
            Default::default(),
        )
        .expect("querying jobs")
        .count();
    (files, jobs)
}

/// Deletes what a successful upload stored.
fn forget_upload(client: &mut Client<std::net::TcpStream>, job_id: &str, video_fid: &str) {
    let _ = client.delete_many(VIDEOS_DB, JOBS_COLLECTION, doc! {"_id": job_id});
    if let Ok(id) = ObjectId::parse_str(video_fid) {
        let _ = Bucket::new(VIDEOS_DB).delete(client, id);
    }
}

/// The broker's `channel.close-ok` on channel 1: the last frame of the gateway's RabbitMQ
/// setup (connect, declare the queues, close the channel), which it does before reading the
/// upload's body.
const CHANNEL_CLOSE_OK: [u8; 12] = [1, 0, 1, 0, 0, 0, 4, 0, 0x14, 0, 0x29, 0xCE];

/// A reader that hands out `data` in pieces and runs `at_half` once half of it is read.
struct Interrupting {
    data: Vec<u8>,
    pos: usize,
    at_half: Option<Box<dyn FnOnce() + Send>>,
}

impl Read for Interrupting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() / 2 {
            if let Some(hook) = self.at_half.take() {
                hook();
            }
        }
        let n = buf.len().min(16 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn upload_stores_the_video_records_the_job_and_queues_one_message(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (email, auth) = user(&app);
    let filename = format!("holiday-{}.mp4", unique());
    let body = form(&[
        Part::Field("title", "holiday"),
        Part::File(&filename, video()),
    ]);
    let reply = upload(&app, Some(&auth), Body::Bytes(body));
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), app.log());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let job_id = json["job_id"].as_str().expect("job_id").to_owned();
    let video_fid = json["video_fid"].as_str().expect("video_fid").to_owned();
    assert_eq!(json["status_url"], format!("/jobs/{job_id}"));
    assert_eq!(ObjectId::parse_str(&job_id).unwrap().to_hex(), job_id);
    // Ids are a time and random bytes: two made by the same instance share nothing past the
    // time (a driver's ObjectIds share a per-process value and count up).
    let tail = |id: &str| ObjectId::parse_str(id).unwrap().bytes()[4..].to_vec();
    let (a, b) = (tail(&job_id), tail(&video_fid));
    assert!(
        a.iter().zip(&b).filter(|(x, y)| x == y).count() < 4,
        "{job_id} {video_fid}"
    );

    // The file, byte for byte, in GridFS `videos` (default bucket, standard layout).
    let mut client = mongo();
    let id = ObjectId::parse_str(&video_fid).unwrap();
    let bucket = Bucket::new(VIDEOS_DB);
    let info = bucket.file_info(&mut client, id).expect("files document");
    assert_eq!(info.filename.as_deref(), Some(filename.as_str()));
    assert_eq!(info.chunk_size, 255 * 1024);
    let mut stored = Vec::new();
    bucket
        .open_download(&mut client, id)
        .unwrap()
        .read_to_end(&mut stored)
        .unwrap();
    assert!(stored == video(), "stored video differs from the upload");

    // The job document.
    let doc = client
        .find_one(VIDEOS_DB, JOBS_COLLECTION, doc! {"_id": &job_id})
        .unwrap()
        .expect("job document");
    let job: Job = bson::from_document(doc).expect("a Job");
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(
        (
            job.owner.as_str(),
            job.video_fid.as_str(),
            job.filename.as_str()
        ),
        (email.as_str(), video_fid.as_str(), filename.as_str())
    );
    assert!(job.created_at > 1_600_000_000_000 && job.created_at == job.updated_at);

    // Exactly one persistent JSON message in `video`, and the queues declared as the
    // topology says.
    let messages = vhost.take_messages("video", 10);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message: JobMessage =
        serde_json::from_str(messages[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(message, JobMessage::for_job(&job));
    assert_eq!(
        (message.job_id.as_str(), message.video_fid.as_str()),
        (job_id.as_str(), video_fid.as_str())
    );
    assert_eq!(messages[0]["properties"]["delivery_mode"], 2);
    assert_eq!(
        messages[0]["properties"]["content_type"],
        "application/json"
    );
    let queue = vhost.queue("video").expect("video queue");
    assert_eq!(queue["durable"], true);
    assert_eq!(queue["arguments"]["x-dead-letter-exchange"], "");
    assert_eq!(
        queue["arguments"]["x-dead-letter-routing-key"],
        "video.dead"
    );
    // What `video` dead-letters to; the retry tiers and `mp3` are the workers' to declare.
    for name in ["video.retry", "video.dead"] {
        assert!(vhost.queue(name).is_some(), "queue {name} declared");
    }
    for name in ["video.retry.1s", "mp3"] {
        assert!(
            vhost.queue(name).is_none(),
            "queue {name} declared by the gateway"
        );
    }

    // The job is the owner's to see, no one else's.
    let reply = get(&app, &format!("/jobs/{job_id}"), &auth, &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(status["status"], "queued");
    assert_eq!(status["created_at"], job.created_at);
    // To anyone else it is exactly as if it did not exist.
    let (_, other) = user(&app);
    let theirs = get(&app, &format!("/jobs/{job_id}"), &other, &[]);
    let unknown = get(
        &app,
        &format!("/jobs/{}", ObjectId::new().to_hex()),
        &other,
        &[],
    );
    assert_eq!(
        (theirs.status, theirs.text().as_str()),
        (404, "job not found")
    );
    assert_same_answer(&theirs, &unknown);
    let unknown = ObjectId::new().to_hex();
    assert_eq!(
        get(&app, &format!("/jobs/{unknown}"), &auth, &[]).status,
        404
    );
    assert_eq!(get(&app, "/jobs/not-an-id", &auth, &[]).status, 404);

    let log = app.wait_for_log("outcome=queued");
    assert!(log.contains("component=gateway"), "{log}");
    forget_upload(&mut client, &job_id, &video_fid);
}

fn tokens_are_checked_through_validate(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    // Small bodies: a refusal comes before the body is read, and a big one might still be
    // on its way when the connection closes.
    let body = || Body::Bytes(form(&[Part::File("a.mp4", &video()[..20_000])]));
    let reply = upload(&app, None, body());
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (401, "missing token")
    );
    assert!(reply.header("www-authenticate").is_some());

    let forged = format!(
        "Bearer {}",
        token_for("a@example.com", "another-secret-another-secret-another-01")
    );
    let reply = upload(&app, Some(&forged), body());
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (403, "invalid token: bad signature")
    );
    let reply = get(&app, "/jobs/0123456789abcdef01234567", "Bearer x.y.z", &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (403, "invalid token: malformed")
    );
    assert_eq!(get(&app, "/download?fid=x", "Basic YTpi", &[]).status, 401);
    assert!(vhost.drain("video").is_empty());
}

fn forms_without_exactly_one_video_are_refused_and_leave_nothing(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (_, auth) = user(&app);
    let mut client = mongo();

    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::Field("title", "x")])),
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (400, "no file in the form")
    );

    let name = format!("twice-{}.mp4", unique());
    let part = &video()[..30_000];
    let body = form(&[Part::File(&name, part), Part::File(&name, part)]);
    let reply = upload(&app, Some(&auth), Body::Bytes(body));
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (400, "exactly one file expected, got several")
    );
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));

    let name = format!("notes-{}.txt", unique());
    let text = b"Dear diary, today I uploaded a text file instead of a video.".repeat(100);
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, &text)])),
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (415, "the file is not a video")
    );
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));

    let reply = send_raw(
        "POST",
        &app.url("/upload"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Body::Bytes(b"{}".to_vec()),
    )
    .unwrap();
    assert_eq!(reply.status, 400);
    assert!(vhost.drain("video").is_empty());
}

fn uploads_over_the_limit_are_413_and_leave_nothing(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| {
        c.env("SPIN_VARIABLE_MAX_UPLOAD_BYTES", "300000")
    });
    let (_, auth) = user(&app);
    let mut client = mongo();

    // Declared too large: refused before a byte of the body is sent.
    let mut stream = std::net::TcpStream::connect(app.base().trim_start_matches("http://"))
        .expect("connecting to the app");
    let ct = content_type();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: {ct}\r\n\
         Content-Length: 5000000000\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server closes the connection after its answer.
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("an answer without the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("upload exceeds the limit of 300000 bytes"),
        "{answer}"
    );

    // Chunked, no length: found out while streaming, after part of the file is stored.
    let name = format!("streamed-{}.mp4", unique());
    let body = form(&[Part::File(&name, &video()[..310_000])]);
    let reply = upload(
        &app,
        Some(&auth),
        Body::Stream(Box::new(std::io::Cursor::new(body))),
    );
    assert_eq!(reply.status, 413, "{}\n{}", reply.text(), app.log());
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));

    // Under the limit is fine.
    let small = &video()[..200_000];
    let name = format!("small-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Stream(Box::new(std::io::Cursor::new(form(&[Part::File(
            &name, small,
        )])))),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    forget_upload(
        &mut client,
        json["job_id"].as_str().unwrap(),
        json["video_fid"].as_str().unwrap(),
    );
}

fn rabbitmq_gone_mid_upload_is_503_and_leaves_nothing(runtime: Runtime) {
    let vhost = Vhost::new();
    let proxy = std::sync::Arc::new(TcpProxy::start(&Vhost::broker_address()));
    let app = start(runtime, &vhost, |c| {
        c.env(
            "SPIN_VARIABLE_AMQP_URL",
            vhost.amqp_url_via(&proxy.address()),
        )
        .env("SPIN_VARIABLE_AMQP_HOST", proxy.address())
    });
    let (_, auth) = user(&app);
    let mut client = mongo();
    let name = format!("cut-{}.mp4", unique());
    let cutter = proxy.clone();
    let body = Interrupting {
        data: form(&[Part::File(&name, video())]),
        pos: 0,
        at_half: Some(Box::new(move || {
            // The gateway connects to RabbitMQ (and declares the queues) before it reads the
            // body: wait for that to be over, so the cut falls in the middle of the upload.
            assert!(cutter.wait_for_service_bytes(&CHANNEL_CLOSE_OK, Duration::from_secs(20)));
            cutter.cut();
            // Give the gateway's side of the socket time to see the close.
            std::thread::sleep(Duration::from_millis(200));
        })),
    };
    let ct = content_type();
    let reply = send_raw(
        "POST",
        &app.url("/upload"),
        &[("Content-Type", &ct), ("Authorization", &auth)],
        Body::Stream(Box::new(body)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", app.log()));
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "queue unavailable"),
        "{}",
        app.log()
    );
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));
    assert!(vhost.drain("video").is_empty());
}

fn a_rabbitmq_connection_lost_mid_upload_is_replaced(runtime: Runtime) {
    let vhost = Vhost::new();
    let proxy = std::sync::Arc::new(TcpProxy::start(&Vhost::broker_address()));
    let app = start(runtime, &vhost, |c| {
        c.env(
            "SPIN_VARIABLE_AMQP_URL",
            vhost.amqp_url_via(&proxy.address()),
        )
        .env("SPIN_VARIABLE_AMQP_HOST", proxy.address())
    });
    let (email, auth) = user(&app);
    let name = format!("severed-{}.mp4", unique());
    let severer = proxy.clone();
    let body = Interrupting {
        data: form(&[Part::File(&name, video())]),
        pos: 0,
        at_half: Some(Box::new(move || {
            assert!(severer.wait_for_service_bytes(&CHANNEL_CLOSE_OK, Duration::from_secs(20)));
            severer.sever();
            std::thread::sleep(Duration::from_millis(200));
        })),
    };
    let reply = upload(&app, Some(&auth), Body::Stream(Box::new(body)));
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), app.log());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let job_id = json["job_id"].as_str().unwrap();
    let video_fid = json["video_fid"].as_str().unwrap();
    let messages = vhost.take_messages("video", 10);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message: JobMessage =
        serde_json::from_str(messages[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        message,
        queued_with_defaults(job_id, video_fid, &email, &name)
    );
    forget_upload(&mut mongo(), job_id, video_fid);
}

/// `url` (a `mongodb://` URL) pointed at `address` instead, with `option` added.
fn mongo_url_via(url: &str, address: &str, option: &str) -> String {
    let url = url.replacen(&system_tests::services::host_port(url), address, 1);
    let has_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    match (url.contains('?'), has_path) {
        (true, _) => format!("{url}&{option}"),
        (false, true) => format!("{url}?{option}"),
        (false, false) => format!("{url}/?{option}"),
    }
}

/// A service that hangs (accepts, then never answers) costs each request its client's timeout,
/// not the request's life: 503 with the usual reason within it, nothing half-written, and the
/// next request after the service wakes up is served again.
fn a_hung_mongodb_or_rabbitmq_is_503_within_its_timeout_and_recovers(runtime: Runtime) {
    let vhost = Vhost::new();
    let store = TcpProxy::start(&mongo_address());
    let broker = TcpProxy::start(&Vhost::broker_address());
    let app = start(runtime, &vhost, |c| {
        c.env(
            "SPIN_VARIABLE_MONGODB_URL",
            mongo_url_via(&mongo_url(), &store.address(), "socketTimeoutMS=2000"),
        )
        .env("SPIN_VARIABLE_MONGODB_HOST", store.address())
        .env(
            "SPIN_VARIABLE_AMQP_URL",
            vhost.amqp_url_via(&broker.address()),
        )
        .env("SPIN_VARIABLE_AMQP_HOST", broker.address())
    });
    let (_, auth) = user(&app);
    let mut client = mongo();
    let upload_clip = |name: &str| {
        upload(
            &app,
            Some(&auth),
            Body::Bytes(form(&[Part::File(name, &video()[..50_000])])),
        )
    };
    let reply = upload_clip(&format!("before-{}.mp4", unique()));
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), app.log());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let job = format!("/jobs/{}", json["job_id"].as_str().expect("job_id"));
    assert_eq!(get(&app, &job, &auth, &[]).status, 200);

    // Timed: a 503 after about the client's timeout (2 s for MongoDB, 10 s for RabbitMQ), not
    // a request that waits for the service as long as it hangs.
    let timed = |what: &str, expected: &str, limit: Duration, send: &dyn Fn() -> RawReply| {
        let started = Instant::now();
        let reply = send();
        let took = started.elapsed();
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (503, expected),
            "{what}\n{}",
            app.log()
        );
        assert!(took < limit, "{what} took {took:?}\n{}", app.log());
    };
    store.freeze();
    let hung_store = format!("hung-store-{}.mp4", unique());
    let limit = Duration::from_secs(12);
    timed("a job", "storage unavailable", limit, &|| {
        get(&app, &job, &auth, &[])
    });
    timed("the job list", "storage unavailable", limit, &|| {
        get(&app, "/jobs", &auth, &[])
    });
    timed("a download", "storage unavailable", limit, &|| {
        get(&app, "/download?fid=0123456789abcdef01234567", &auth, &[])
    });
    timed("an upload", "storage unavailable", limit, &|| {
        upload_clip(&hung_store)
    });
    store.thaw();
    assert_eq!(get(&app, &job, &auth, &[]).status, 200, "{}", app.log());

    broker.freeze();
    let hung_broker = format!("hung-broker-{}.mp4", unique());
    timed(
        "an upload",
        "queue unavailable",
        Duration::from_secs(30),
        &|| upload_clip(&hung_broker),
    );
    broker.thaw();
    let reply = upload_clip(&format!("after-{}.mp4", unique()));
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), app.log());

    // What the hung services were sent, delivered once they woke, stored nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stored_with_name(&mut client, &hung_store), (0, 0));
    assert_eq!(stored_with_name(&mut client, &hung_broker), (0, 0));
    assert_eq!(
        vhost.drain("video").len(),
        2,
        "the uploads before and after"
    );
}

/// validate waits for MariaDB as long as it hangs (Spin's MySQL client has no timeout): the
/// gateway waits for validate only `auth_timeout_secs`, then 503, instead of Spin's 600 s.
fn a_hung_user_database_is_503_after_the_auth_timeout_and_recovers(runtime: Runtime) {
    let vhost = Vhost::new();
    let users = std::sync::Arc::new(TestDb::migrated());
    let database = TcpProxy::start(&users.host_port());
    let url = users
        .url()
        .replacen(&users.host_port(), &database.address(), 1);
    let app = start_with_users(runtime, &vhost, users.clone(), |c| {
        c.env("SPIN_VARIABLE_DB_URL", &url)
            .env("SPIN_VARIABLE_DB_HOST", database.address())
            .env("SPIN_VARIABLE_AUTH_TIMEOUT_SECS", "2")
    });
    // A token validate has not seen: it must read the user's token generation in MariaDB.
    let (_, auth) = user(&app);
    database.freeze();
    let started = Instant::now();
    let reply = get(&app, "/jobs", &auth, &[]);
    let took = started.elapsed();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "authentication service unavailable"),
        "{}",
        app.log()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    database.thaw();
    assert_eq!(get(&app, "/jobs", &auth, &[]).status, 200, "{}", app.log());
}

/// The app behind a broker whose confirm of a job message comes after the gateway's 10 s (the
/// end of its body frame: the JSON's last brace and the AMQP frame end), on the store the
/// workers can log in to (see README: FerretDB and the official driver): its vhost, the proxy,
/// the store's URL and the app.
fn unconfirming(runtime: Runtime) -> (Vhost, TcpProxy, String, Gateway) {
    let vhost = Vhost::new();
    let broker = TcpProxy::start(&Vhost::broker_address());
    broker.hold_replies_to(b"}\xCE", Duration::from_secs(12));
    let store = service_env("MONGODB_URL");
    let app = start(runtime, &vhost, |c| {
        c.env(
            "SPIN_VARIABLE_AMQP_URL",
            vhost.amqp_url_via(&broker.address()),
        )
        .env("SPIN_VARIABLE_AMQP_HOST", broker.address())
        .env("SPIN_VARIABLE_MONGODB_URL", &store)
        .env(
            "SPIN_VARIABLE_MONGODB_HOST",
            system_tests::services::host_port(&store),
        )
    });
    (vhost, broker, store, app)
}

/// A publish the broker took but never confirmed: the upload is refused (503) and withdrawn,
/// and the message the broker queued all the same is dropped by the converter as a deleted
/// job's, not converted, dead-lettered or announced to its owner.
fn a_confirm_that_never_comes_is_503_and_the_late_message_is_dropped(runtime: Runtime) {
    let (vhost, _broker, store, app) = unconfirming(runtime);
    let (_, auth) = user(&app);
    let mut client = mongo_wire::connect(&store).expect("connecting to MongoDB");
    let name = format!("unconfirmed-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, &video()[..50_000])])),
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "queue unavailable"),
        "{}",
        app.log()
    );
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));
    // The gateway tried twice (its connection, then a fresh one): each copy reached the queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    let queued = || {
        vhost
            .queue("video")
            .and_then(|q| q["messages"].as_u64())
            .unwrap_or(0)
    };
    while queued() < 2 {
        assert!(Instant::now() < deadline, "the late messages never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }

    let converter = system_tests::system::Worker::start(
        "converter",
        &[
            ("AMQP_URL", vhost.amqp_url()),
            ("MONGODB_URL", store.clone()),
            ("RETRY_BASE_DELAY_MS", "200".into()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while vhost.queue("video").map(|q| {
        (
            q["messages"].as_u64(),
            q["messages_unacknowledged"].as_u64(),
        )
    }) != Some((Some(0), Some(0)))
    {
        assert!(Instant::now() < deadline, "the converter never took them");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Taken and acknowledged on the first attempt, as a deleted job's messages are.
    let metrics = converter.metrics();
    for counter in ["jobs_retried_total", "messages_dead_lettered_total"] {
        let line = metrics
            .lines()
            .find(|l| l.contains(counter) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("no {counter} in\n{metrics}"));
        assert!(line.ends_with(" 0"), "{line}");
    }
    drop(converter);
    assert!(vhost.drain("video.dead").is_empty(), "dead-lettered");
    assert!(vhost.drain("mp3").is_empty(), "announced to the notifier");
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));
}

/// The same unconfirmed publish, with a converter running: the broker hands the message on
/// before its confirm, so the job is converted while the gateway waits. Withdrawing it then
/// would delete a converted job whose owner was told: the upload is accepted instead.
fn a_confirm_that_never_comes_while_a_converter_takes_the_job_is_202(runtime: Runtime) {
    let (vhost, _broker, store, app) = unconfirming(runtime);
    let (_, auth) = user(&app);
    let converter = system_tests::system::Worker::start(
        "converter",
        &[
            ("AMQP_URL", vhost.amqp_url()),
            ("MONGODB_URL", store.clone()),
            ("RETRY_BASE_DELAY_MS", "200".into()),
        ],
    );
    let name = format!("converted-meanwhile-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, video())])),
    );
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), app.log());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let job_id = json["job_id"].as_str().expect("job_id").to_owned();
    let mut client = mongo_wire::connect(&store).expect("connecting to MongoDB");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job = client
            .find_one(VIDEOS_DB, JOBS_COLLECTION, doc! {"_id": &job_id})
            .expect("reading the job")
            .expect("the job is there");
        if job.get_str("status") == Ok("done") {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mp3s = client
        .find(
            MP3S_DB,
            "fs.files",
            doc! {"metadata.job_id": &job_id},
            Default::default(),
        )
        .expect("listing MP3s")
        .count();
    assert_eq!(mp3s, 1, "{done}");
    let tombstone = client
        .find_one(VIDEOS_DB, DELETED_JOBS_COLLECTION, doc! {"_id": &job_id})
        .expect("reading tombstones");
    assert!(tombstone.is_none(), "{tombstone:?}");
    drop(converter);
    assert!(vhost.drain("video.dead").is_empty(), "dead-lettered");
}

fn rabbitmq_or_mongodb_unreachable_is_503(runtime: Runtime) {
    let vhost = Vhost::new();
    let mut client = mongo();
    let port = closed_port();
    let closed = format!("127.0.0.1:{port}");

    let app = start(runtime, &vhost, |c| {
        c.env("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url_via(&closed))
            .env("SPIN_VARIABLE_AMQP_HOST", &closed)
    });
    let (_, auth) = user(&app);
    let users = app.users.clone();
    let name = format!("noamqp-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, &video()[..50_000])])),
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "queue unavailable")
    );
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));
    drop(app);

    let app = start_with_users(runtime, &vhost, users.clone(), |c| {
        c.env("SPIN_VARIABLE_MONGODB_URL", format!("mongodb://{closed}"))
            .env("SPIN_VARIABLE_MONGODB_HOST", &closed)
    });
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File("x.mp4", &video()[..50_000])])),
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "storage unavailable")
    );
    let reply = get(&app, "/jobs/0123456789abcdef01234567", &auth, &[]);
    assert_eq!(reply.status, 503);
    let reply = get(&app, "/download?fid=0123456789abcdef01234567", &auth, &[]);
    assert_eq!(reply.status, 503);
    assert_eq!(get(&app, "/jobs", &auth, &[]).status, 503);
    let reply = delete(&app, "/jobs/0123456789abcdef01234567", &auth);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "storage unavailable")
    );
    drop(app);

    // MongoDB is there, but refuses the password.
    let url = mongo_url();
    let (head, tail) = url
        .split_once('@')
        .expect("MONGODB_AUTH_URL has credentials");
    let user = head.rsplit_once(':').expect("user:password").0;
    let app = start_with_users(runtime, &vhost, users, |c| {
        c.env(
            "SPIN_VARIABLE_MONGODB_URL",
            format!("{user}:not-the-password@{tail}"),
        )
    });
    let reply = get(&app, "/jobs/0123456789abcdef01234567", &auth, &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "storage unavailable")
    );
    assert!(vhost.drain("video").is_empty());
}

/// The SCRAM keys derived from the MongoDB password are kept in Spin's default key-value store,
/// so each request's new instance logs in without the derivation; an entry the server refuses
/// costs one more round and is replaced, never a failed request.
fn mongodb_logins_reuse_the_keys_derived_from_the_password(runtime: Runtime) {
    let vhost = Vhost::new();
    let state = TempDir::new("gateway-state");
    let app = start(runtime, &vhost, |c| c.state_dir(state.path()));
    let (_, auth) = user(&app);
    let unknown = "/jobs/0123456789abcdef01234567";
    assert_eq!(get(&app, unknown, &auth, &[]).status, 404);

    let store = rusqlite::Connection::open(state.path().join("sqlite_key_value.db"))
        .expect("the default store is in the state directory");
    store
        .busy_timeout(Duration::from_secs(5))
        .expect("a busy timeout");
    let entries = || -> Vec<(String, Vec<u8>)> {
        let mut query = store
            .prepare(
                "SELECT key, value FROM spin_key_value \
                 WHERE store = 'default' AND key LIKE 'mongo-wire/%'",
            )
            .unwrap();
        let rows = query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    let cached = entries();
    assert_eq!(cached.len(), 1, "one entry: {cached:?}");
    let (key, keys) = &cached[0];
    assert!(key.starts_with("mongo-wire/scram-sha-256/"), "{key}");
    assert_eq!(keys.len(), 64, "the client and server keys");

    // From here on, every write of the key cache is recorded: it must be read, not written.
    // (validate keeps users' token generations in the same store.)
    store
        .execute_batch(
            "CREATE TABLE audit (op TEXT NOT NULL);
             CREATE TRIGGER audit_insert AFTER INSERT ON spin_key_value
                 WHEN NEW.key LIKE 'mongo-wire/%'
                 BEGIN INSERT INTO audit VALUES ('insert'); END;
             CREATE TRIGGER audit_update AFTER UPDATE ON spin_key_value
                 WHEN NEW.key LIKE 'mongo-wire/%'
                 BEGIN INSERT INTO audit VALUES ('update'); END;
             CREATE TRIGGER audit_delete AFTER DELETE ON spin_key_value
                 WHEN OLD.key LIKE 'mongo-wire/%'
                 BEGIN INSERT INTO audit VALUES ('delete'); END;",
        )
        .unwrap();
    let writes = || -> Vec<String> {
        let mut query = store
            .prepare("SELECT op FROM audit ORDER BY rowid")
            .unwrap();
        let rows = query.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    for _ in 0..3 {
        assert_eq!(get(&app, unknown, &auth, &[]).status, 404);
    }
    assert_eq!(
        writes(),
        Vec::<String>::new(),
        "the keys were read, not derived again"
    );
    assert_eq!(&entries(), &cached);

    store
        .execute(
            "UPDATE spin_key_value SET value = ?1 WHERE key = ?2",
            rusqlite::params![vec![7u8; 64], key],
        )
        .unwrap();
    store.execute("DELETE FROM audit", []).unwrap();
    assert_eq!(get(&app, unknown, &auth, &[]).status, 404);
    // Read, refused by the server, dropped, derived again and stored once the server agreed.
    assert_eq!(writes(), ["delete", "insert"]);
    assert_eq!(&entries(), &cached, "the damaged entry was replaced");
}

/// An MP3-like file in GridFS `mp3s` and the done job that produced it, as the converter
/// leaves them; removed on drop.
struct Converted {
    job_id: String,
    mp3_fid: ObjectId,
    data: Vec<u8>,
}

impl Converted {
    fn new(owner: &str, upload_name: &str) -> Self {
        let mut data = b"ID3\x04\0\0\0\0\0\x0f".to_vec();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while data.len() < 600_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push((x >> 32) as u8);
        }
        let mut client = mongo();
        let mp3_fid = Bucket::new(MP3S_DB)
            .upload(&mut client, data.as_slice(), "x.mp3", None, 1 << 30)
            .expect("storing the mp3");
        let job = Job {
            id: ObjectId::new().to_hex(),
            owner: owner.to_owned(),
            video_fid: ObjectId::new().to_hex(),
            filename: upload_name.to_owned(),
            status: JobStatus::Done,
            mp3_fid: Some(mp3_fid.to_hex()),
            error: None,
            attempts: 1,
            options: Default::default(),
            webhook: None,
            // Now: a converter's sweeper expires old done jobs.
            created_at: now_ms(),
            updated_at: now_ms(),
        };
        client
            .insert_one(
                VIDEOS_DB,
                JOBS_COLLECTION,
                bson::to_document(&job).expect("job as BSON"),
            )
            .expect("inserting the job");
        Converted {
            job_id: job.id,
            mp3_fid,
            data,
        }
    }
}

impl Drop for Converted {
    fn drop(&mut self) {
        let mut client = mongo();
        let _ = client.delete_many(VIDEOS_DB, JOBS_COLLECTION, doc! {"_id": &self.job_id});
        let _ = Bucket::new(MP3S_DB).delete(&mut client, self.mp3_fid);
    }
}

fn downloads_stream_the_owners_mp3_with_ranges(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (email, auth) = user(&app);
    let converted = Converted::new(&email, "Summer Trip.mov");
    let fid = converted.mp3_fid.to_hex();
    let path = format!("/download?fid={fid}");

    let reply = get(&app, &path, &auth, &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.body == converted.data, "downloaded bytes differ");
    assert_eq!(reply.header("content-type"), Some("audio/mpeg"));
    assert_eq!(reply.header("content-length"), Some("600000"));
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    let disposition = reply.header("content-disposition").unwrap_or("");
    assert!(
        disposition.starts_with("attachment;") && disposition.contains("Summer Trip.mp3"),
        "{disposition}"
    );

    // One range, across a chunk boundary.
    let reply = get(&app, &path, &auth, &[("Range", "bytes=261000-262999")]);
    assert_eq!(reply.status, 206);
    assert_eq!(
        reply.header("content-range"),
        Some("bytes 261000-262999/600000")
    );
    assert!(reply.body == converted.data[261_000..263_000]);
    let reply = get(&app, &path, &auth, &[("Range", "bytes=-100")]);
    assert_eq!(reply.status, 206);
    assert!(reply.body == converted.data[599_900..]);

    let reply = get(&app, &path, &auth, &[("Range", "bytes=600000-")]);
    assert_eq!(reply.status, 416);
    assert_eq!(reply.header("content-range"), Some("bytes */600000"));

    // Only the owner; unknown and malformed ids.
    let (_, other) = user(&app);
    let theirs = get(&app, &path, &other, &[]);
    let unknown = format!("/download?fid={}", ObjectId::new().to_hex());
    assert_eq!(
        (theirs.status, theirs.text().as_str()),
        (404, "mp3 not found")
    );
    assert_same_answer(&theirs, &get(&app, &unknown, &other, &[]));
    assert_eq!(get(&app, &unknown, &auth, &[]).status, 404);
    let reply = get(&app, "/download", &auth, &[]);
    assert_eq!((reply.status, reply.text().as_str()), (400, "missing fid"));
    let reply = get(&app, "/download?fid=nope", &auth, &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (400, "malformed fid")
    );

    // The job shows where the MP3 is.
    let reply = get(&app, &format!("/jobs/{}", converted.job_id), &auth, &[]);
    let status: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{e}: {} {}\n{}", reply.status, reply.text(), app.log()));
    assert_eq!(status["status"], "done");
    assert_eq!(status["mp3_fid"], fid);
}

/// `GET /jobs` walks the caller's jobs, newest first (equal times by id), in pages whose `next`
/// link leads on; nobody else's job appears, and bad parameters get 400 with the reason.
fn jobs_are_listed_newest_first_a_page_at_a_time(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (mine, auth) = user(&app);
    let (theirs, other) = user(&app);
    let mut client = mongo();
    let job = |owner: &str, created_at: i64, status: JobStatus| Job {
        id: ObjectId::new().to_hex(),
        owner: owner.to_owned(),
        video_fid: ObjectId::new().to_hex(),
        filename: format!("clip-{created_at}.mp4"),
        status,
        mp3_fid: (status == JobStatus::Done).then(|| ObjectId::new().to_hex()),
        error: None,
        attempts: 1,
        options: Default::default(),
        webhook: None,
        created_at,
        updated_at: created_at,
    };
    // Seven of mine, two created in the same millisecond across the first page's end (so the
    // second page starts between them), and one of someone else's in between.
    let base = now_ms();
    let mut jobs: Vec<Job> = [0, 1, 2, 3, 3, 4, 5]
        .iter()
        .map(|t| job(&mine, base + t, JobStatus::Done))
        .collect();
    jobs[6].status = JobStatus::Queued;
    jobs[6].mp3_fid = None;
    let foreign = job(&theirs, base + 3, JobStatus::Done);
    for j in jobs.iter().chain([&foreign]) {
        client
            .insert_one(VIDEOS_DB, JOBS_COLLECTION, bson::to_document(j).unwrap())
            .unwrap();
    }
    let mut expected = jobs.clone();
    expected.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut listed = Vec::new();
    let mut next = "/jobs?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let reply = get(&app, &next, &auth, &[]);
        assert_eq!(reply.status, 200, "{}: {}", next, reply.text());
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let page: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let rows = page["jobs"].as_array().unwrap();
        assert!(rows.len() <= 3, "{page}");
        listed.extend(rows.iter().cloned());
        pages += 1;
        match page["next"].as_str() {
            Some(link) => next = link.to_owned(),
            None => break,
        }
        assert!(pages < 10, "the pages do not end");
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = listed
        .iter()
        .map(|v| v["job_id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = expected.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, want);
    assert_eq!(listed[0]["status"], "queued");
    let done = &listed[1];
    let fid = expected[1].mp3_fid.as_deref().unwrap();
    assert_eq!(done["download_url"], format!("/download?fid={fid}"));

    // Someone else sees only their own.
    let reply = get(&app, "/jobs", &other, &[]);
    let page: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["jobs"][0]["job_id"], foreign.id.as_str());

    // A job still moving says when to ask again; a finished one does not.
    let moving = get(&app, &format!("/jobs/{}", expected[0].id), &auth, &[]);
    assert_eq!(moving.header("retry-after"), Some("2"));
    let finished = get(&app, &format!("/jobs/{}", expected[1].id), &auth, &[]);
    assert_eq!(finished.header("retry-after"), None);

    for (query, reason) in [
        ("limit=0", "limit must be a whole number from 1 to 100"),
        ("limit=1000", "limit must be a whole number from 1 to 100"),
        ("cursor=x", "malformed cursor"),
    ] {
        let reply = get(&app, &format!("/jobs?{query}"), &auth, &[]);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (400, reason),
            "{query}"
        );
    }
    let reply = send_raw("GET", &app.url("/jobs"), &[], Body::Empty).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(get(&app, "/jobs", "Bearer x.y.z", &[]).status, 403);

    for owner in [&mine, &theirs] {
        client
            .delete_many(VIDEOS_DB, JOBS_COLLECTION, doc! {"owner": owner})
            .unwrap();
    }
}

fn delete(app: &App, path: &str, auth: &str) -> RawReply {
    send_raw(
        "DELETE",
        &app.url(path),
        &[("Authorization", auth)],
        Body::Empty,
    )
    .expect("DELETE")
}

/// How many documents of `collection` in `db` match `filter`.
fn count(
    client: &mut Client<std::net::TcpStream>,
    db: &str,
    collection: &str,
    filter: bson::Document,
) -> usize {
    client
        .find(db, collection, filter, Default::default())
        .expect("querying")
        .count()
}

/// `DELETE /jobs/{id}` takes the job with its video, its MP3 and the notifier's records, leaves
/// a tombstone the workers read, and answers anyone but the owner as for an unknown job.
fn jobs_are_deleted_with_their_files_by_their_owner_only(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (email, auth) = user(&app);
    let (_, other) = user(&app);
    let mut client = mongo();

    // A queued job with its stored video, and a done one with its MP3 and a sent email.
    let name = format!("delete-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, &video()[..100_000])])),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let queued = json["job_id"].as_str().unwrap().to_owned();
    let video_fid = ObjectId::parse_str(json["video_fid"].as_str().unwrap()).unwrap();
    let converted = Converted::new(&email, "done.mov");
    client
        .insert_one(
            VIDEOS_DB,
            NOTIFY_CLAIMS_COLLECTION,
            doc! {"_id": format!("{}/sent", converted.job_id), "job_id": &converted.job_id},
        )
        .unwrap();

    // Nobody else, no token, no such job: nothing changes.
    let path = format!("/jobs/{queued}");
    let theirs = delete(&app, &path, &other);
    assert_eq!(
        (theirs.status, theirs.text().as_str()),
        (404, "job not found")
    );
    assert_same_answer(
        &theirs,
        &delete(&app, &format!("/jobs/{}", ObjectId::new().to_hex()), &other),
    );
    assert_eq!(delete(&app, "/jobs/not-an-id", &auth).status, 404);
    let reply = send_raw("DELETE", &app.url(&path), &[], Body::Empty).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(stored_with_name(&mut client, &name), (1, 1));
    let reply = send_raw(
        "PUT",
        &app.url(&path),
        &[("Authorization", &auth)],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, DELETE"));

    // The owner deletes the queued job: gone with its video, a tombstone left for the workers.
    let reply = delete(&app, &path, &auth);
    assert_eq!(reply.status, 204, "{}\n{}", reply.text(), app.log());
    assert!(reply.body.is_empty());
    assert_eq!(get(&app, &path, &auth, &[]).status, 404);
    assert_eq!(stored_with_name(&mut client, &name), (0, 0));
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            "fs.chunks",
            doc! {"files_id": video_fid}
        ),
        0
    );
    let tombstone = client
        .find_one(VIDEOS_DB, DELETED_JOBS_COLLECTION, doc! {"_id": &queued})
        .unwrap()
        .expect("a tombstone");
    assert_eq!(tombstone.get_str("owner"), Ok(email.as_str()));
    assert_eq!(delete(&app, &path, &auth).status, 404, "twice");

    // The done job: its MP3 goes too, and with it every way to download it.
    let path = format!("/jobs/{}", converted.job_id);
    assert_eq!(delete(&app, &path, &auth).status, 204);
    let mp3 = converted.mp3_fid;
    assert_eq!(
        count(&mut client, MP3S_DB, "fs.files", doc! {"_id": mp3}),
        0
    );
    assert_eq!(
        count(&mut client, MP3S_DB, "fs.chunks", doc! {"files_id": mp3}),
        0
    );
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            NOTIFY_CLAIMS_COLLECTION,
            doc! {"job_id": &converted.job_id}
        ),
        0
    );
    let download = get(&app, &format!("/download?fid={}", mp3.to_hex()), &auth, &[]);
    assert_eq!(download.status, 404);
    let listed = get(&app, "/jobs", &auth, &[]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    assert_eq!(listed["jobs"], serde_json::json!([]), "{listed}");
    assert!(app.log().contains("outcome=deleted"), "{}", app.log());

    let _ = client.delete_many(
        VIDEOS_DB,
        DELETED_JOBS_COLLECTION,
        doc! {"_id": {"$in": [&queued, &converted.job_id]}},
    );
    assert_eq!(vhost.take_messages("video", 10).len(), 1);
}

/// A tus request: the protocol header, the caller's token, and `extra`.
fn tus(
    app: &App,
    method: &str,
    path: &str,
    auth: &str,
    extra: &[(&str, &str)],
    body: Body,
) -> RawReply {
    let mut headers = vec![("Tus-Resumable", "1.0.0"), ("Authorization", auth)];
    headers.extend_from_slice(extra);
    send_raw(method, &app.url(path), &headers, body)
        .unwrap_or_else(|e| panic!("{e}\n{}", app.log()))
}

/// `POST /uploads` for `length` bytes named `name`; the upload's path.
fn tus_create(app: &App, auth: &str, length: usize, name: &str) -> String {
    use base64::Engine as _;
    let metadata = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    );
    let length = length.to_string();
    let reply = tus(
        app,
        "POST",
        "/uploads",
        auth,
        &[("Upload-Length", &length), ("Upload-Metadata", &metadata)],
        Body::Empty,
    );
    assert_eq!(reply.status, 201, "{}\n{}", reply.text(), app.log());
    assert_eq!(reply.header("tus-resumable"), Some("1.0.0"));
    assert!(reply
        .header("upload-expires")
        .is_some_and(|d| d.ends_with(" GMT")));
    reply.header("location").expect("Location").to_owned()
}

fn tus_patch(
    app: &App,
    path: &str,
    auth: &str,
    offset: usize,
    bytes: &[u8],
    extra: &[(&str, &str)],
) -> RawReply {
    let offset = offset.to_string();
    let mut headers = vec![
        ("Upload-Offset", offset.as_str()),
        ("Content-Type", "application/offset+octet-stream"),
    ];
    headers.extend_from_slice(extra);
    tus(
        app,
        "PATCH",
        path,
        auth,
        &headers,
        Body::Bytes(bytes.to_vec()),
    )
}

fn tus_offset(app: &App, path: &str, auth: &str) -> usize {
    let reply = tus(app, "HEAD", path, auth, &[], Body::Empty);
    assert_eq!(reply.status, 200, "{}", app.log());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    reply
        .header("upload-offset")
        .and_then(|o| o.parse().ok())
        .expect("Upload-Offset")
}

/// A PATCH whose client goes away after `bytes` of the `declared` ones.
fn tus_patch_broken_off(
    app: &App,
    path: &str,
    auth: &str,
    offset: usize,
    bytes: &[u8],
    declared: usize,
) {
    system_tests::tus::break_off(
        app.base(),
        path,
        auth,
        offset as u64,
        bytes,
        declared as u64,
    );
}

/// tus 1.0 on `/uploads`: discovery, creation, offsets, checksums, a PATCH broken off and
/// resumed from where the server says, the finished upload becoming the job of the same id;
/// refusals (version, size, offset, type, checksum, not a video, another user); termination;
/// and nothing left of uploads refused or terminated.
fn resumable_uploads_speak_tus_resume_after_a_break_and_leave_nothing_behind(runtime: Runtime) {
    use sha1::{Digest as _, Sha1};
    let sha1 = |bytes: &[u8]| base64_of(&Sha1::digest(bytes));
    let vhost = Vhost::new();
    // One request may carry 300 kB; a resumable upload, sent in pieces, 50 MB.
    let app = start(runtime, &vhost, |c| {
        c.env("SPIN_VARIABLE_MAX_UPLOAD_BYTES", "300000")
            .env("SPIN_VARIABLE_MAX_RESUMABLE_UPLOAD_BYTES", "50000000")
    });
    let (email, auth) = user(&app);
    let (_, other) = user(&app);
    let mut client = mongo();
    let data = video();
    assert!(data.len() > 600_000, "{} bytes", data.len());
    let name = format!("too-large-{}.mp4", unique());
    let reply = upload(
        &app,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, data)])),
    );
    assert_eq!(reply.status, 413, "POST /upload keeps its own limit");

    let reply = send_raw("OPTIONS", &app.url("/uploads"), &[], Body::Empty).unwrap();
    assert_eq!(reply.status, 204, "{}", app.log());
    assert_eq!(reply.header("tus-version"), Some("1.0.0"));
    assert_eq!(
        reply.header("tus-extension"),
        Some("creation,termination,expiration,checksum")
    );
    assert_eq!(reply.header("tus-max-size"), Some("50000000"));
    assert_eq!(reply.header("tus-checksum-algorithm"), Some("sha1"));

    // Refused creations.
    let refused = send_raw(
        "POST",
        &app.url("/uploads"),
        &[("Tus-Resumable", "1.0.0"), ("Upload-Length", "10")],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(refused.status, 401);
    let reply = tus(
        &app,
        "POST",
        "/uploads",
        &auth,
        &[("Upload-Length", "50000001")],
        Body::Empty,
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (413, "upload exceeds the limit of 50000000 bytes")
    );
    let reply = send_raw(
        "POST",
        &app.url("/uploads"),
        &[("Authorization", &auth), ("Upload-Length", "10")],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(reply.status, 412);
    let reply = tus(
        &app,
        "POST",
        "/uploads",
        &auth,
        &[("Upload-Length", "ten")],
        Body::Empty,
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (400, "malformed Upload-Length")
    );

    // An upload in pieces, one broken off.
    let name = format!("tus-{}.mp4", unique());
    let path = tus_create(&app, &auth, data.len(), &name);
    let id = path
        .strip_prefix("/uploads/")
        .expect("/uploads/{id}")
        .to_owned();
    assert_eq!(tus_offset(&app, &path, &auth), 0);
    assert_eq!(
        tus(&app, "HEAD", &path, &other, &[], Body::Empty).status,
        404,
        "another user's"
    );
    let first = 200_000;
    let reply = tus_patch(&app, &path, &auth, 0, &data[..first], &[]);
    assert_eq!(reply.status, 204, "{}\n{}", reply.text(), app.log());
    assert_eq!(reply.header("upload-offset"), Some("200000"));
    let reply = tus_patch(&app, &path, &auth, 0, &data[..10], &[]);
    assert_eq!(
        (reply.status, reply.header("upload-offset")),
        (409, Some("200000"))
    );
    let reply = tus(
        &app,
        "PATCH",
        &path,
        &auth,
        &[("Upload-Offset", "200000"), ("Content-Type", "text/plain")],
        Body::Bytes(b"x".to_vec()),
    );
    assert_eq!(reply.status, 415);
    let wrong = format!("sha1 {}", sha1(b"other bytes"));
    let reply = tus_patch(
        &app,
        &path,
        &auth,
        first,
        &data[first..first + 1000],
        &[("Upload-Checksum", &wrong)],
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (460, "checksum mismatch")
    );
    assert_eq!(tus_offset(&app, &path, &auth), first);

    // The connection is cut at a random offset (printed, to replay a failure).
    let cut = first
        + 1
        + (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize
            % 300_000);
    println!("the PATCH is cut at byte {cut}");
    tus_patch_broken_off(
        &app,
        &path,
        &auth,
        first,
        &data[first..cut],
        data.len() - first,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut offset = tus_offset(&app, &path, &auth);
    while offset == first && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        offset = tus_offset(&app, &path, &auth);
    }
    assert!(
        offset > first && offset <= cut,
        "cut at {cut}, kept {offset}\n{}",
        app.log()
    );
    assert_eq!(
        get(&app, &format!("/jobs/{id}"), &auth, &[]).status,
        404,
        "no job yet"
    );

    // The rest, with its checksum: the upload is whole, and its job is queued.
    let rest = &data[offset..];
    let checksum = format!("sha1 {}", sha1(rest));
    let reply = tus_patch(
        &app,
        &path,
        &auth,
        offset,
        rest,
        &[("Upload-Checksum", &checksum)],
    );
    assert_eq!(reply.status, 204, "{}\n{}", reply.text(), app.log());
    assert_eq!(
        reply.header("upload-offset"),
        Some(data.len().to_string().as_str())
    );
    let job = get(&app, &format!("/jobs/{id}"), &auth, &[]);
    assert_eq!(job.status, 200, "{}", job.text());
    let job: serde_json::Value = serde_json::from_slice(&job.body).unwrap();
    assert_eq!(
        (job["status"].as_str(), job["filename"].as_str()),
        (Some("queued"), Some(name.as_str()))
    );
    let video_fid = ObjectId::parse_str(job["video_fid"].as_str().unwrap()).unwrap();
    let mut stored = Vec::new();
    Bucket::new(VIDEOS_DB)
        .open_download(&mut client, video_fid)
        .unwrap()
        .read_to_end(&mut stored)
        .unwrap();
    assert!(stored == data, "the stored video differs from the upload");
    let messages = vhost.take_messages("video", 10);
    assert_eq!(messages.len(), 1);
    let message: JobMessage =
        serde_json::from_str(messages[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        message,
        queued_with_defaults(&id, &video_fid.to_hex(), &email, &name)
    );
    assert_eq!(
        tus_offset(&app, &path, &auth),
        data.len(),
        "a finished upload says so"
    );
    assert_eq!(
        tus_patch(&app, &path, &auth, data.len(), b"x", &[]).status,
        409
    );
    assert!(app.log().contains("outcome=queued"), "{}", app.log());

    // Not a video: refused on its first bytes, and gone.
    let path = tus_create(&app, &auth, 10_000, "notes.mp4");
    let reply = tus_patch(&app, &path, &auth, 0, &[b'x'; 10_000], &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (415, "the file is not a video")
    );
    assert_eq!(
        tus(&app, "HEAD", &path, &auth, &[], Body::Empty).status,
        404
    );
    let bad_id = path.strip_prefix("/uploads/").unwrap();
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            UPLOADS_COLLECTION,
            doc! {"_id": bad_id}
        ),
        0
    );

    // Terminated half-way: nothing left.
    let path = tus_create(&app, &auth, data.len(), "half.mp4");
    assert_eq!(
        tus_patch(&app, &path, &auth, 0, &data[..600_000], &[]).status,
        204
    );
    let half_id = path.strip_prefix("/uploads/").unwrap().to_owned();
    let state = client
        .find_one(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"_id": &half_id})
        .unwrap()
        .expect("the upload");
    let half_fid = ObjectId::parse_str(state.get_str("video_fid").unwrap()).unwrap();
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            "fs.chunks",
            doc! {"files_id": half_fid}
        ),
        2
    );
    assert_eq!(
        tus(&app, "DELETE", &path, &other, &[], Body::Empty).status,
        404
    );
    assert_eq!(
        tus(&app, "DELETE", &path, &auth, &[], Body::Empty).status,
        204
    );
    assert_eq!(
        tus(&app, "HEAD", &path, &auth, &[], Body::Empty).status,
        404
    );
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            "fs.chunks",
            doc! {"files_id": half_fid}
        ),
        0
    );
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            UPLOADS_COLLECTION,
            doc! {"_id": &half_id}
        ),
        0
    );
    assert_eq!(
        count(
            &mut client,
            VIDEOS_DB,
            UPLOAD_LEASES_COLLECTION,
            doc! {"upload": {"$in": [&half_id, &id]}}
        ),
        0
    );

    // At most 20 unfinished uploads per user: the next waits until one ends.
    let open: Vec<String> = (0..20)
        .map(|i| tus_create(&app, &auth, 1000, &format!("{i}.mp4")))
        .collect();
    let reply = tus(
        &app,
        "POST",
        "/uploads",
        &auth,
        &[("Upload-Length", "1000")],
        Body::Empty,
    );
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert!(
        reply.text().starts_with("20 uploads are under way already"),
        "{}",
        reply.text()
    );
    assert_eq!(
        tus_create(&app, &other, 1000, "theirs.mp4")
            .split('/')
            .count(),
        3,
        "others are not counted"
    );
    assert_eq!(
        tus(&app, "DELETE", &open[0], &auth, &[], Body::Empty).status,
        204
    );
    tus_create(&app, &auth, 1000, "one more.mp4");

    let _ = client.delete_many(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"owner": &email});
    let _ = client.delete_many(
        VIDEOS_DB,
        UPLOADS_COLLECTION,
        doc! {"filename": "theirs.mp4"},
    );
    let _ = client.delete_many(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"_id": &id});
    forget_upload(&mut client, &id, &video_fid.to_hex());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unknown_paths_and_methods(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (_, auth) = user(&app);
    assert_eq!(get(&app, "/nothing-here", &auth, &[]).status, 404);
    let reply = send_raw("GET", &app.url("/upload"), &[], Body::Empty).unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
}

/// Gateway and auth as two apps, as in Kubernetes: the gateway alone in its manifest, with
/// `auth_url` pointing at another app serving login and validate.
fn split_deployment_forwards_login_and_validates_remotely(runtime: Runtime) {
    let db = TestDb::migrated();
    let email = format!("split{}@example.com", unique());
    let (ok, out) = admin(&db.url(), &["user", "add", &email], "split-password\n");
    assert!(ok, "{out}");
    let wasm = |name: &str| system_tests::wasm(name).display().to_string();
    let dir = TempDir::new("split");
    let auth_manifest = dir.write(
        "auth.toml",
        &format!(
            r#"spin_manifest_version = 2
[application]
name = "auth"
[variables]
db_url = {{ required = true, secret = true }}
db_host = {{ required = true }}
jwt_secret = {{ required = true, secret = true }}
[[trigger.http]]
route = "/login"
component = "login"
[[trigger.http]]
route = "/logout"
component = "login"
[[trigger.http]]
route = "/validate"
component = "validate"
[component.login]
source = "{login}"
allowed_outbound_hosts = ["mysql://{{{{ db_host }}}}"]
key_value_stores = ["default"]
[component.login.variables]
db_url = "{{{{ db_url }}}}"
jwt_secret = "{{{{ jwt_secret }}}}"
jwt_issuer = "mp3-converter"
jwt_audience = "mp3-converter"
jwt_ttl_seconds = "3600"
login_max_failures = "5"
login_address_max_failures = "50"
login_account_max_failures = "20"
login_lockout_seconds = "900"
trusted_proxies = "127.0.0.0/8"
token_check_seconds = "10"
[component.validate]
source = "{validate}"
allowed_outbound_hosts = ["mysql://{{{{ db_host }}}}"]
key_value_stores = ["default"]
[component.validate.variables]
jwt_secret = "{{{{ jwt_secret }}}}"
jwt_issuer = "mp3-converter"
jwt_audience = "mp3-converter"
db_url = "{{{{ db_url }}}}"
token_check_seconds = "10"
"#,
            login = wasm("login"),
            validate = wasm("validate"),
        ),
    );
    let auth_app = AppConfig::new(auth_manifest, runtime)
        .env("SPIN_VARIABLE_DB_URL", db.url())
        .env("SPIN_VARIABLE_DB_HOST", db.host_port())
        .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
        .start();

    let gateway_manifest = dir.write(
        "gateway.toml",
        &format!(
            r#"spin_manifest_version = 2
[application]
name = "gateway"
[variables]
mongodb_url = {{ required = true, secret = true }}
mongodb_host = {{ required = true }}
amqp_url = {{ required = true, secret = true }}
amqp_host = {{ required = true }}
auth_url = {{ required = true }}
[[trigger.http]]
route = "/..."
component = "gateway"
[component.gateway]
source = "{gateway}"
allowed_outbound_hosts = ["tcp://{{{{ mongodb_host }}}}", "tcp://{{{{ amqp_host }}}}", "{{{{ auth_url }}}}"]
[component.gateway.variables]
mongodb_url = "{{{{ mongodb_url }}}}"
amqp_url = "{{{{ amqp_url }}}}"
auth_url = "{{{{ auth_url }}}}"
max_upload_bytes = "10000000"
"#,
            gateway = wasm("gateway"),
        ),
    );
    let vhost = Vhost::new();
    // Between the two, a proxy that can lose a request (see the end).
    let auth_base = auth_app.base();
    let link = TcpProxy::start(auth_base.trim_start_matches("http://"));
    let gateway = AppConfig::new(gateway_manifest, runtime)
        .env("SPIN_VARIABLE_MONGODB_URL", mongo_url())
        .env("SPIN_VARIABLE_MONGODB_HOST", mongo_address())
        .env("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url())
        .env("SPIN_VARIABLE_AMQP_HOST", Vhost::broker_address())
        .env(
            "SPIN_VARIABLE_AUTH_URL",
            format!("http://{}", link.address()),
        )
        .start();

    // Login through the gateway, forwarded to the auth app, which learns the client's address
    // from the gateway's X-Forwarded-For: an attacker's failures (as an ingress in front
    // reports them) do not keep the owner, elsewhere, out.
    let basic = |password: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
        )
    };
    for attempt in 1..=6 {
        let reply = send_raw(
            "POST",
            &gateway.url("/login"),
            &[
                ("Authorization", &basic("guess")),
                ("X-Forwarded-For", "203.0.113.66"),
            ],
            Body::Empty,
        )
        .unwrap();
        let expected = if attempt <= 5 { 401 } else { 429 };
        assert_eq!(reply.status, expected, "{}", reply.text());
        if attempt == 6 {
            assert_eq!(
                reply.text(),
                "too many failed logins for this account from this address"
            );
            assert!(reply.header("retry-after").is_some());
        }
    }
    let reply = send_raw(
        "POST",
        &gateway.url("/login"),
        &[("Authorization", &basic("split-password"))],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), gateway.log());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let auth = format!("Bearer {}", reply.text().trim());

    // POST /validate is public too: the ingress sends it to the gateway, which forwards it.
    let reply = send_raw(
        "POST",
        &gateway.url("/validate"),
        &[("Authorization", &auth)],
        Body::Empty,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let claims: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(claims["username"], email.as_str());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let reply = send_raw("POST", &gateway.url("/validate"), &[], Body::Empty).unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (401, "missing token")
    );
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="mp3""#)
    );
    let reply = send_raw("POST", &gateway.url("/login"), &[], Body::Empty).unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (401, "missing credentials")
    );
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Basic realm="mp3""#)
    );

    // Its token works for an upload, checked by the remote validate.
    let name = format!("split-{}.mp4", unique());
    let reply = upload(
        &gateway,
        Some(&auth),
        Body::Bytes(form(&[Part::File(&name, &video()[..100_000])])),
    );
    assert_eq!(reply.status, 202, "{}\n{}", reply.text(), gateway.log());
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(vhost.take_messages("video", 10).len(), 1);

    // A validate request lost on the way (the auth side closed the kept-alive connection as
    // the gateway sent on it) is sent again on a new one: the caller sees nothing of it.
    link.drop_next_request();
    let reply = get(&gateway, "/jobs", &auth, &[]);
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), gateway.log());
    forget_upload(
        &mut mongo(),
        json["job_id"].as_str().unwrap(),
        json["video_fid"].as_str().unwrap(),
    );
    let reply = get(
        &gateway,
        "/jobs/0123456789abcdef01234567",
        "Bearer a.b.c",
        &[],
    );
    assert_eq!(reply.status, 403);

    // Logging out through the gateway revokes the token, at once where logout ran.
    let reply = send_raw(
        "POST",
        &gateway.url("/logout"),
        &[("Authorization", &auth)],
        Body::Empty,
    )
    .unwrap();
    assert_eq!((reply.status, reply.text().as_str()), (200, "logged out"));
    let reply = get(&gateway, "/jobs/0123456789abcdef01234567", &auth, &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (403, "invalid token: revoked")
    );

    // Every call to the auth app was its head alone: a chunked body, whose end the gateway
    // sends after the head, let the auth app (which never reads it) answer and close first,
    // and the gateway's host then failed the call although the answer had come.
    let sent = String::from_utf8_lossy(&link.client_bytes()).to_ascii_lowercase();
    for call in ["post /login ", "post /validate ", "post /logout "] {
        assert!(sent.contains(call), "no `{call}` among:\n{sent}");
    }
    assert!(
        !sent.contains("transfer-encoding"),
        "the gateway sent the auth app a body:\n{sent}"
    );
    assert_eq!(
        sent.matches("\r\ncontent-length: 0\r\n").count(),
        sent.matches("post /").count(),
        "a call to the auth app without `content-length: 0`:\n{sent}"
    );

    // The auth app gone: 503, not a hang or a 500.
    drop(auth_app);
    let reply = get(&gateway, "/jobs/0123456789abcdef01234567", &auth, &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "authentication service unavailable")
    );
}

/// Two answers alike in everything a client can see but the date.
fn assert_same_answer(a: &RawReply, b: &RawReply) {
    let visible = |r: &RawReply| {
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
            .cloned()
            .collect();
        headers.sort();
        (r.status, r.body.clone(), headers)
    };
    assert_eq!(visible(a), visible(b));
}

/// Sends `POST /upload` whose body is `head` and then `filler` bytes, `total` in all, while
/// reading the answer: its status and body. The server may answer and close before the body is
/// all sent; that is the point.
fn hostile_upload(
    base: &str,
    auth: &str,
    head: Vec<u8>,
    filler: u8,
    total: usize,
) -> (u16, String) {
    let address = base.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connecting to the app");
    let ct = content_type();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: {ct}\r\n\
         Content-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let piece = vec![filler; 64 * 1024];
        let mut sent = head.len();
        if writer.write_all(&head).is_err() {
            return;
        }
        while sent < total {
            let n = piece.len().min(total - sent);
            if writer.write_all(&piece[..n]).is_err() {
                return;
            }
            sent += n;
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let (status, body) = loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                break (status, body[..length].to_owned());
            }
        }
        assert!(
            n > 0,
            "the connection ended without a whole answer: {text:?}"
        );
    };
    drop(stream);
    sender.join().unwrap();
    (status, body)
}

fn hostile_multipart_bodies_are_refused_in_bounded_memory(runtime: Runtime) {
    let vhost = Vhost::new();
    let app = start(runtime, &vhost, |c| c);
    let (_, auth) = user(&app);
    // Warm the gateway up (compiled, one instance run), then measure from here.
    let (status, _) = hostile_upload(app.base(), &auth, Vec::new(), 0, 1000);
    assert_eq!(status, 400);
    let pid = app.server_pid();
    reset_peak(pid);
    let before = memory_mib(pid, "VmRSS");

    const BIG: usize = 200 << 20;
    let field = |name: &str| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
    };
    let cases: Vec<(&str, Vec<u8>, u8, &str)> = vec![
        (
            "no boundary",
            Vec::new(),
            0,
            "no multipart boundary in the first 8192 bytes",
        ),
        (
            "endless part headers",
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"")
                .into_bytes(),
            b'a',
            "multipart part headers over 16384 bytes",
        ),
        (
            "endless field",
            field("title").into_bytes(),
            b'x',
            "form field over 65536 bytes",
        ),
        (
            "a million tiny fields",
            format!("{}x\r\n", field("f"))
                .repeat(1_000_000)
                .into_bytes(),
            b'\n',
            "more than 32 parts in the form",
        ),
    ];
    // All at once, as an attacker would.
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(what, head, filler, reason)| {
            let (base, auth) = (app.base().to_owned(), auth.clone());
            std::thread::spawn(move || {
                (
                    what,
                    reason,
                    hostile_upload(&base, &auth, head, filler, BIG),
                )
            })
        })
        .collect();
    // Huge header lines, meanwhile: the HTTP server's head limit (about 400 KiB) answers 431.
    let heads: Vec<_> = (0..4)
        .map(|_| {
            let address = app.base().trim_start_matches("http://").to_owned();
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(address).expect("connecting");
                let line = "h".repeat(1 << 20);
                let head = format!(
                    "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nX-Huge: {line}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut answer = [0u8; 12];
                stream.read_exact(&mut answer).map(|()| answer.to_vec())
            })
        })
        .collect();
    for head in heads {
        let answer = head.join().unwrap().expect("an answer to a huge head");
        assert_eq!(&answer, b"HTTP/1.1 431");
    }
    for thread in threads {
        let (what, reason, (status, body)) = thread.join().unwrap();
        assert_eq!((status, body.as_str()), (400, reason), "{what}");
    }
    let peak = memory_mib(pid, "VmHWM");
    eprintln!(
        "{}: resident {before:.0} MiB, peak {peak:.0} MiB",
        runtime.name()
    );
    assert!(
        peak - before < 48.0,
        "{} grew from {before:.0} to a peak of {peak:.0} MiB",
        runtime.name()
    );
    assert!(vhost.drain("video").is_empty());
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// The `video` message of an upload named `filename` that asked for no options: the defaults
/// (a title after the file), as the gateway fills them in.
fn queued_with_defaults(job_id: &str, video_fid: &str, email: &str, filename: &str) -> JobMessage {
    JobMessage {
        options: mp3_model::Options::from_fields([], filename).expect("the defaults"),
        ..JobMessage::queued(job_id, video_fid, email)
    }
}
