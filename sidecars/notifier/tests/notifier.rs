//! The notifier binary against real RabbitMQ, FerretDB (or MongoDB) and Mailpit:
//! `eval "$(scripts/dev-services env)"` first. Each test has its own RabbitMQ vhost, job ids
//! and recipient addresses, and finds its emails in Mailpit by recipient.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::Client;
use mp3_model::{Job, JobMessage, JobStatus, JOBS_COLLECTION, MP3S_DB, VIDEOS_DB};
use mp3_worker::testing::{
    env, free_port, host_port, http_get, unique, wait_for, TcpProxy, Vhost, WorkerProcess,
};

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.as_millis() as i64).unwrap_or_default()
}

const NOTIFIER: &str = env!("CARGO_BIN_EXE_notifier");
const TIMEOUT: Duration = Duration::from_secs(30);
const BASE_URL: &str = "https://mp3.test:8443";

struct Fixture {
    vhost: Vhost,
    client: Client,
    /// Job ids made, deleted on drop.
    made: std::sync::Mutex<Vec<String>>,
    /// MP3 ids stored, deleted on drop.
    mp3s: std::sync::Mutex<Vec<String>>,
}

impl Fixture {
    async fn new(what: &str) -> Self {
        Self {
            vhost: Vhost::new(what),
            client: Client::with_uri_str(env("MONGODB_URL"))
                .await
                .expect("MongoDB client"),
            made: Default::default(),
            mp3s: Default::default(),
        }
    }

    /// A worker whose every message is given up at its first attempt: the email cannot go
    /// (the SMTP port is closed) and one attempt is all there is. Webhooks may call loopback,
    /// within 1 s (their claims' lease: 3 * 1 + 5 = 8 s).
    fn start_giving_up_at_once(&self) -> WorkerProcess {
        self.start(&[
            ("SMTP_PORT", free_port().to_string()),
            ("MAX_ATTEMPTS", "1".to_owned()),
            ("WEBHOOK_TIMEOUT_SECS", "1".to_owned()),
            ("WEBHOOK_ALLOW", "127.0.0.1".to_owned()),
        ])
    }

    fn start(&self, extra: &[(&str, String)]) -> WorkerProcess {
        let mut envs = vec![
            ("AMQP_URL", self.vhost.amqp_url()),
            ("MONGODB_URL", env("MONGODB_URL")),
            ("SMTP_HOST", env("SMTP_HOST")),
            ("SMTP_PORT", env("SMTP_PORT")),
            ("SMTP_TLS", "none".to_owned()),
            ("DOWNLOAD_BASE_URL", BASE_URL.to_owned()),
            // Plain links, whatever the shell exports (the system tests cover signed ones).
            ("DOWNLOAD_KEY", String::new()),
            ("RETRY_BASE_DELAY_MS", "100".to_owned()),
        ];
        envs.extend(extra.iter().cloned());
        let mut worker = WorkerProcess::start(NOTIFIER, &envs);
        worker.wait_healthy();
        worker
    }

    /// A job in `status` with a fresh owner address; returns it and its `mp3` message.
    async fn job(&self, status: JobStatus) -> (Job, JobMessage) {
        let id = ObjectId::new().to_hex();
        let video_fid = ObjectId::new().to_hex();
        let owner = format!("{}@example.com", unique("notify"));
        let queued = JobMessage::queued(&id, &video_fid, &owner);
        let (mp3_fid, error, message) = match status {
            JobStatus::Done => {
                let fid = ObjectId::new().to_hex();
                (Some(fid.clone()), None, queued.converted(&fid))
            }
            _ => {
                let reason = "ffmpeg could not convert the video: Invalid data";
                (None, Some(reason.to_owned()), queued.failed(reason))
            }
        };
        let job = Job {
            id,
            owner,
            video_fid,
            filename: "clip.mp4".into(),
            status,
            mp3_fid,
            error,
            attempts: 1,
            options: Default::default(),
            webhook: None,
            created_at: now_ms(),
            updated_at: now_ms(),
        };
        self.client
            .database(VIDEOS_DB)
            .collection::<Job>(JOBS_COLLECTION)
            .insert_one(&job)
            .await
            .expect("inserting the job");
        self.made.lock().unwrap().push(job.id.clone());
        (job, message)
    }

    fn publish(&self, message: &JobMessage) {
        self.vhost
            .publish("mp3", &serde_json::to_string(message).unwrap());
    }

    /// Does what the seed system's converter does once it has an MP3 (the seed converter itself,
    /// Python with moviepy and pika, is not installed here): stores it in GridFS `mp3s` with an
    /// official driver, without touching any job, and returns its id.
    async fn store_mp3_as_the_seed_does(&self, bytes: &[u8]) -> String {
        use futures_util::io::AsyncWriteExt as _;
        let bucket = self.client.database(MP3S_DB).gridfs_bucket(None);
        let mut upload = bucket.open_upload_stream("seed.mp3").await.unwrap();
        upload.write_all(bytes).await.unwrap();
        upload.close().await.unwrap();
        let id = upload.id().as_object_id().expect("an ObjectId").to_hex();
        self.mp3s.lock().unwrap().push(id.clone());
        id
    }

    /// The job document once the notifier has recorded its email. It records it after the SMTP
    /// server has taken the email, so a test that has just seen the email may be a moment early.
    async fn notified_job(&self, id: &str) -> Document {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let job = self.job_document(id).await;
            if job.contains_key("notified_kind") || std::time::Instant::now() > deadline {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives job `id` a callback URL, as the gateway does for an upload that asks for one.
    async fn set_callback(&self, id: &str, callback: &str) {
        self.client
            .database(VIDEOS_DB)
            .collection::<Document>(JOBS_COLLECTION)
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "options.callback_url": callback } },
            )
            .await
            .expect("setting the callback");
    }

    /// The webhook ledger's collection: claims, markers, counts of attempts.
    fn webhook_claims(&self) -> mongodb::Collection<Document> {
        self.client
            .database(VIDEOS_DB)
            .collection(mp3_model::webhook::CLAIMS_COLLECTION)
    }

    /// Another replica's live claim on job `id`'s webhook (`{id}/1`), as a delivery takes
    /// one to send, or a give-up to record it failed.
    async fn claim_webhook_elsewhere(&self, id: &str, giving_up: bool) {
        let mut claim = doc! {
            "_id": format!("{id}/1"),
            "job_id": id,
            "n": 1_i64,
            "token": "another-replica",
            "claimed_at": now_ms(),
        };
        if giving_up {
            claim.insert("giving_up", true);
        }
        self.webhook_claims()
            .insert_one(claim)
            .await
            .expect("claiming the webhook");
    }

    /// Sets what job `id` shows of its webhook.
    async fn show_webhook(&self, id: &str, shown: Document) {
        self.client
            .database(VIDEOS_DB)
            .collection::<Document>(JOBS_COLLECTION)
            .update_one(doc! { "_id": id }, doc! { "$set": { "webhook": shown } })
            .await
            .expect("showing a webhook state");
    }

    /// The webhook state job `id` shows, if any.
    async fn webhook_state(&self, id: &str) -> Option<String> {
        let job = self.job_document(id).await;
        let state = job.get_document("webhook").ok()?.get_str("state").ok()?;
        Some(state.to_owned())
    }

    async fn job_document(&self, id: &str) -> Document {
        self.client
            .database(VIDEOS_DB)
            .collection::<Document>(JOBS_COLLECTION)
            .find_one(doc! { "_id": id })
            .await
            .expect("reading the job")
            .expect("the job exists")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        let mp3s: Vec<ObjectId> = std::mem::take(&mut *self.mp3s.lock().unwrap())
            .iter()
            .filter_map(|id| ObjectId::parse_str(id).ok())
            .collect();
        // The shared database outlives the test: delete its jobs, on a runtime of its own
        // (drop cannot await).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = Client::with_uri_str(env("MONGODB_URL")).await?;
                client
                    .database(VIDEOS_DB)
                    .collection::<Document>(JOBS_COLLECTION)
                    .delete_many(doc! { "_id": { "$in": made } })
                    .await?;
                let mp3s_db = client.database(MP3S_DB);
                mp3s_db
                    .collection::<Document>("fs.files")
                    .delete_many(doc! { "_id": { "$in": &mp3s } })
                    .await?;
                mp3s_db
                    .collection::<Document>("fs.chunks")
                    .delete_many(doc! { "files_id": { "$in": &mp3s } })
                    .await?;
                Ok::<_, mongodb::error::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("cleaning up the test's jobs: {error}");
        }
    }
}

/// A proxy to the SMTP server whose "250" to the end of an email's data comes `delay` late (the
/// email is in Mailpit, the notifier does not know yet), and the settings that send through it.
fn smtp_answering_late(delay: Duration) -> (TcpProxy, [(&'static str, String); 2]) {
    let smtp = TcpProxy::start(&format!("{}:{}", env("SMTP_HOST"), env("SMTP_PORT")));
    smtp.hold_replies_to(b"\r\n.\r\n", delay);
    let address = smtp.address();
    let (host, port) = address.split_once(':').unwrap();
    let settings = [
        ("SMTP_HOST", host.to_owned()),
        ("SMTP_PORT", port.to_owned()),
    ];
    (smtp, settings)
}

/// The Mailpit messages sent to `address` (summaries: `ID`, `Subject`, `To`, ...).
fn mails_to(address: &str) -> Vec<serde_json::Value> {
    let url = format!("{}/api/v1/search?query=to:{address}", env("MAILPIT_URL"));
    let (status, body) = http_get(&url);
    assert_eq!(status, 200, "Mailpit search: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("Mailpit JSON");
    json["messages"].as_array().cloned().unwrap_or_default()
}

/// The full Mailpit message (`Text`, `From`, ...).
fn mail(id: &str) -> serde_json::Value {
    let (status, body) = http_get(&format!("{}/api/v1/message/{id}", env("MAILPIT_URL")));
    assert_eq!(status, 200, "Mailpit message: {body}");
    serde_json::from_str(&body).expect("Mailpit JSON")
}

fn wait_for_one_mail(address: &str) -> serde_json::Value {
    let summary = wait_for(&format!("an email to {address}"), TIMEOUT, || {
        mails_to(address).into_iter().next()
    });
    mail(summary["ID"].as_str().expect("a message ID"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_job_gets_one_email_with_the_download_link_even_when_redelivered() {
    let fx = Fixture::new("ready").await;
    let worker = fx.start(&[]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);

    let email = wait_for_one_mail(&job.owner);
    let fid = job.mp3_fid.as_deref().unwrap();
    assert_eq!(email["Subject"], "MP3 Download");
    assert_eq!(email["To"][0]["Address"], job.owner.as_str());
    assert_eq!(email["From"]["Address"], "noreply@mp3converter.local");
    let text = email["Text"].as_str().unwrap();
    assert!(text.contains(&format!("MP3 id: {fid}")), "{text}");
    assert!(
        text.contains(&format!("{BASE_URL}/download?fid={fid}")),
        "{text}"
    );
    let recorded = fx.notified_job(&job.id).await;
    assert!(recorded.contains_key("notified_at"));
    assert!(!recorded.contains_key("notify_claim"));
    assert_eq!(recorded.get_str("notified_kind").unwrap(), "ready");
    wait_for("the ack", TIMEOUT, || {
        (fx.vhost.queue_len("mp3")? == 0).then_some(())
    });

    // The same message again (a redelivery, or the converter announcing a done job again).
    fx.publish(&message);
    wait_for("the duplicate to be skipped", TIMEOUT, || {
        (worker.metric("notifier_duplicates_skipped_total")? == 1.0).then_some(())
    });
    assert_eq!(mails_to(&job.owner).len(), 1, "no second email");
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(1.0));
    assert_eq!(worker.metric("notifier_emails_failed_total"), Some(0.0));
    assert_eq!(fx.vhost.queue_len("mp3.dead"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_gets_a_failure_email_with_the_reason() {
    let fx = Fixture::new("failed").await;
    let worker = fx.start(&[]);
    let (job, message) = fx.job(JobStatus::Failed).await;
    fx.publish(&message);

    let email = wait_for_one_mail(&job.owner);
    assert_eq!(email["Subject"], "MP3 conversion failed");
    let text = email["Text"].as_str().unwrap();
    assert!(text.contains(&format!("Job: {}", job.id)), "{text}");
    assert!(
        text.contains("Reason: ffmpeg could not convert the video: Invalid data"),
        "{text}"
    );
    assert!(!text.contains("download?fid"), "{text}");
    assert_eq!(
        fx.notified_job(&job.id)
            .await
            .get_str("notified_kind")
            .unwrap(),
        "failed"
    );
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_smtp_server_is_retried_then_the_message_is_dead_lettered() {
    let fx = Fixture::new("smtp-down").await;
    let closed = free_port();
    let worker = fx.start(&[
        ("SMTP_PORT", closed.to_string()),
        ("MAX_ATTEMPTS", "3".to_owned()),
    ]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);
    fx.vhost.publish("mp3", "[]");

    wait_for("two messages in mp3.dead", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 2).then_some(())
    });
    let dead = fx.vhost.take("mp3.dead", 10);
    assert!(dead.iter().any(|m| m["payload"] == "[]"));
    let retried = dead
        .iter()
        .find(|m| m["payload"] != "[]")
        .expect("the job's message");
    assert_eq!(retried["properties"]["headers"]["x-attempt"], 2);
    assert_eq!(worker.metric("notifier_emails_failed_total"), Some(3.0));
    assert_eq!(worker.metric("notifier_jobs_retried_total"), Some(2.0));
    assert_eq!(
        worker.metric("notifier_messages_dead_lettered_total"),
        Some(2.0)
    );
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(0.0));
    // The claims were released and nothing was recorded as sent: a replay can still send.
    let recorded = fx.job_document(&job.id).await;
    assert!(!recorded.contains_key("notified_at"));
    assert!(!recorded.contains_key("notify_claim"));
    assert!(mails_to(&job.owner).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_of_a_job_not_over_sends_nothing() {
    let fx = Fixture::new("not-over").await;
    let worker = fx.start(&[]);
    // A job still converting, and a message that says it failed (stray or forged): the owner
    // must not be told it failed, nor the real outcome be taken for already told later.
    let (job, message) = fx.job(JobStatus::Converting).await;
    assert!(message.error.is_some());
    fx.publish(&message);
    wait_for("the message in mp3.dead", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    assert!(mails_to(&job.owner).is_empty());
    let recorded = fx.job_document(&job.id).await;
    assert!(!recorded.contains_key("notified_at"), "{recorded}");
    assert!(!recorded.contains_key("notify_claim"), "{recorded}");
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(0.0));

    // Once it ends, its owner hears how.
    fx.client
        .database(VIDEOS_DB)
        .collection::<Document>(JOBS_COLLECTION)
        .update_one(
            doc! { "_id": &job.id },
            doc! { "$set": { "status": "failed", "error": "the video's audio track is empty" } },
        )
        .await
        .unwrap();
    fx.publish(&message);
    wait_for("the failure email", TIMEOUT, || {
        (mails_to(&job.owner).len() == 1).then_some(())
    });
}

/// A Mailpit of the test's own that takes logins from one user only, and mail only for
/// addresses that start with `allowed-`; stopped on drop.
struct StrictSmtp {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl StrictSmtp {
    const USER: &'static str = "mailer";
    const PASSWORD: &'static str = "the-right-password";

    fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let auth = dir.path().join("smtp-auth");
        std::fs::write(&auth, format!("{}:{}\n", Self::USER, Self::PASSWORD)).unwrap();
        let port = free_port();
        // `mailpit` from .dev/bin, on PATH after `scripts/dev-services env`.
        let child = std::process::Command::new("mailpit")
            .arg("--smtp")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--database")
            .arg(dir.path().join("mailpit.db"))
            .arg("--smtp-auth-file")
            .arg(&auth)
            .args(["--smtp-auth-allow-insecure", "--disable-version-check"])
            .args(["--smtp-allowed-recipients", "^allowed-"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting mailpit (scripts/dev-services install puts it in .dev/bin)");
        wait_for("mailpit's SMTP port", TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for StrictSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_retried_and_only_a_refused_recipient_is_given_up_at_once() {
    let fx = Fixture::new("smtp-refusals").await;
    let smtp = StrictSmtp::start();
    let settings = |password: &str| {
        vec![
            ("SMTP_PORT", smtp.port.to_string()),
            ("SMTP_USERNAME", StrictSmtp::USER.to_owned()),
            ("SMTP_PASSWORD", password.to_owned()),
            ("MAX_ATTEMPTS", "3".to_owned()),
        ]
    };

    // 535 to the login: the notifier's configuration (a password rotated on the server only),
    // which a fixed Secret puts right; not a reason to drop the email at once.
    let worker = fx.start(&settings("an-old-password"));
    let (_, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);
    wait_for("the message in mp3.dead", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    assert_eq!(worker.metric("notifier_jobs_retried_total"), Some(2.0));
    assert_eq!(worker.metric("notifier_emails_failed_total"), Some(3.0));
    assert!(worker.log().contains("535"), "{}", worker.log());
    drop(worker);

    // 550 to the recipient: no retry changes it.
    let worker = fx.start(&settings(StrictSmtp::PASSWORD));
    let (_, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);
    wait_for("the second message in mp3.dead", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 2).then_some(())
    });
    assert_eq!(worker.metric("notifier_jobs_retried_total"), Some(0.0));
    assert_eq!(worker.metric("notifier_emails_failed_total"), Some(1.0));
    assert!(
        worker.log().contains("refused the recipient"),
        "{}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_turns_unhealthy_then_reconnects_and_consumes() {
    let fx = Fixture::new("reconnect").await;
    let worker = fx.start(&[]);
    let healthz = format!("{}/healthz", worker.metrics_url);
    wait_for("the worker's connection to show", TIMEOUT, || {
        (fx.vhost.close_connections() > 0).then_some(())
    });
    wait_for("/healthz to report 503", TIMEOUT, || {
        (http_get(&healthz).0 == 503).then_some(())
    });
    wait_for("/healthz to recover", TIMEOUT, || {
        (http_get(&healthz).0 == 200).then_some(())
    });
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);
    let email = wait_for_one_mail(&job.owner);
    assert_eq!(email["Subject"], "MP3 Download");
    assert!(worker.log().contains("reconnecting"), "{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_idle_exits_zero_promptly_and_logs_json() {
    let fx = Fixture::new("sigterm").await;
    let mut worker = fx.start(&[("LOG_FORMAT", "json".to_owned())]);
    assert_eq!(http_get(&format!("{}/healthz", worker.metrics_url)).0, 200);
    let started = std::time::Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}:\n{}", worker.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Past its shutdown timeout the worker stops waiting for a send; the notifier still lets it
/// finish and be recorded before it exits, so the email is not sent again by the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_send_past_the_shutdown_timeout_records_it_before_exiting() {
    let fx = Fixture::new("sigterm-mid-send").await;
    let (_smtp, [host, port]) = smtp_answering_late(Duration::from_secs(4));
    let mut worker = fx.start(&[host, port, ("SHUTDOWN_TIMEOUT_SECS", "1".to_owned())]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);

    wait_for_one_mail(&job.owner);
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}:\n{}", worker.log());
    let log = worker.log();
    let (requeued, sent) = (log.find("shutdown timeout"), log.find("email sent"));
    assert!(
        matches!((requeued, sent), (Some(r), Some(s)) if r < s),
        "the worker stopped waiting before the email was known sent: {log}"
    );
    let recorded = fx.job_document(&job.id).await;
    assert_eq!(
        recorded.get_str("notified_kind").ok(),
        Some("ready"),
        "recorded before exiting: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mp3_another_converter_announced_makes_its_job_done() {
    let fx = Fixture::new("adopt").await;
    let worker = fx.start(&[]);
    // Our upload, converted by the seed's converter: it announces our message with its MP3.
    let (job, queued) = fx.job(JobStatus::Queued).await;
    let mp3_fid = fx.store_mp3_as_the_seed_does(b"ID3 not really audio").await;
    let announced = JobMessage::queued(&job.id, &job.video_fid, &job.owner).converted(&mp3_fid);
    assert_eq!(queued.job_id, announced.job_id);
    fx.publish(&announced);
    let email = wait_for_one_mail(&job.owner);
    assert_eq!(email["Subject"], "MP3 Download");
    let text = email["Text"].as_str().unwrap();
    assert!(text.contains(&format!("/download?fid={mp3_fid}")), "{text}");
    let done = fx.job_document(&job.id).await;
    assert_eq!(done.get_str("status").unwrap(), "done");
    assert_eq!(done.get_str("mp3_fid").unwrap(), mp3_fid);
    assert!(!done.contains_key("error"));

    // A seed-format announcement (no job id): its job is made, named after the video.
    let owner = format!("{}@example.com", unique("seed"));
    let video_fid = ObjectId::new().to_hex();
    let mp3_fid = fx.store_mp3_as_the_seed_does(b"ID3 also not audio").await;
    fx.made.lock().unwrap().push(video_fid.clone());
    let seed = serde_json::json!({"video_fid": video_fid, "mp3_fid": mp3_fid, "username": owner});
    fx.vhost.publish("mp3", &seed.to_string());
    let email = wait_for_one_mail(&owner);
    assert!(email["Text"].as_str().unwrap().contains(&mp3_fid));
    let made = fx.job_document(&video_fid).await;
    assert_eq!(made.get_str("status").unwrap(), "done");
    assert_eq!(made.get_str("owner").unwrap(), owner);
    assert_eq!(made.get_str("mp3_fid").unwrap(), mp3_fid);
    assert_eq!(
        worker.metric("notifier_messages_dead_lettered_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_mp3_that_does_not_exist_changes_nothing() {
    let fx = Fixture::new("adopt-missing").await;
    let worker = fx.start(&[]);
    let (job, _) = fx.job(JobStatus::Queued).await;
    let bogus = ObjectId::new().to_hex();
    fx.publish(&JobMessage::queued(&job.id, &job.video_fid, &job.owner).converted(&bogus));
    // A seed-format one for no job and no file either.
    let owner = format!("{}@example.com", unique("seed"));
    let seed = serde_json::json!({"video_fid": ObjectId::new().to_hex(), "mp3_fid": bogus, "username": owner});
    fx.vhost.publish("mp3", &seed.to_string());
    // An MP3 our converter made for another job (its metadata names that job).
    let other = ObjectId::new().to_hex();
    let foreign = {
        use futures_util::io::AsyncWriteExt as _;
        let bucket = fx.client.database(MP3S_DB).gridfs_bucket(None);
        let options = mongodb::options::GridFsUploadOptions::builder()
            .metadata(doc! { "job_id": &other })
            .build();
        let mut upload = bucket
            .open_upload_stream("other.mp3")
            .with_options(options)
            .await
            .unwrap();
        upload.write_all(b"not yours").await.unwrap();
        upload.close().await.unwrap();
        let id = upload.id().as_object_id().unwrap().to_hex();
        fx.mp3s.lock().unwrap().push(id.clone());
        id
    };
    fx.publish(&JobMessage::queued(&job.id, &job.video_fid, &job.owner).converted(&foreign));
    wait_for("all three dead-lettered", TIMEOUT, || {
        (worker.metric("notifier_messages_dead_lettered_total")? == 3.0).then_some(())
    });
    assert_eq!(
        fx.job_document(&job.id).await.get_str("status").unwrap(),
        "queued"
    );
    assert!(mails_to(&job.owner).is_empty() && mails_to(&owner).is_empty());

    // A failed job already told, then announced with an MP3 that does not exist: still for an
    // operator to see, its earlier email being no work of this message's.
    let (failed, message) = fx.job(JobStatus::Failed).await;
    fx.publish(&message);
    let told = fx.notified_job(&failed.id).await;
    assert_eq!(told.get_str("notified_kind").ok(), Some("failed"));
    fx.publish(&JobMessage::queued(&failed.id, &failed.video_fid, &failed.owner).converted(&bogus));
    wait_for("the fourth dead-lettered", TIMEOUT, || {
        (worker.metric("notifier_messages_dead_lettered_total")? == 4.0).then_some(())
    });
    assert_eq!(
        worker.metric("notifier_messages_done_on_give_up_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deliveries_of_one_job_at_once_send_one_email() {
    let fx = Fixture::new("claims").await;
    // Two notifiers, four deliveries each at once: every claim races every other.
    let workers = [
        fx.start(&[("CONCURRENCY", "4".to_owned())]),
        fx.start(&[("CONCURRENCY", "4".to_owned())]),
    ];
    let (job, message) = fx.job(JobStatus::Done).await;
    for _ in 0..8 {
        fx.publish(&message);
    }
    wait_for_one_mail(&job.owner);
    // The others find it sent, or held by the sender and come back later (deferred).
    wait_for("every other delivery settled", TIMEOUT, || {
        let settled: f64 = workers
            .iter()
            .flat_map(|w| {
                [
                    "notifier_duplicates_skipped_total",
                    "notifier_jobs_retried_total",
                ]
                .map(|m| w.metric(m).unwrap_or(0.0))
            })
            .sum();
        (settled == 7.0).then_some(())
    });
    assert_eq!(mails_to(&job.owner).len(), 1, "one email");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_right_after_the_email_went_out_still_records_it_once() {
    let fx = Fixture::new("record-outage").await;
    let mongo = TcpProxy::start(&host_port(&env("MONGODB_URL")));
    let (_smtp, [host, port]) = smtp_answering_late(Duration::from_secs(2));
    let worker = fx.start(&[
        // Fail fast while the store is gone, as against a MongoDB that answers with errors.
        (
            "MONGODB_URL",
            format!(
                "mongodb://{}/?serverSelectionTimeoutMS=500",
                mongo.address()
            ),
        ),
        host,
        port,
    ]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);

    // The email is out; the store goes away before the notifier can record it, for 4 s.
    wait_for_one_mail(&job.owner);
    mongo.go_down();
    tokio::time::sleep(Duration::from_secs(4)).await;
    mongo.come_up();

    let recorded = fx.notified_job(&job.id).await;
    assert_eq!(
        recorded.get_str("notified_kind").ok(),
        Some("ready"),
        "the email was recorded once the store was back: {}",
        worker.log()
    );
    assert!(
        worker.log().contains("cannot record the sent email yet"),
        "{}",
        worker.log()
    );
    // A later delivery (the sweeper's, a redelivery) finds it sent.
    fx.publish(&message);
    wait_for("the duplicate to be skipped", TIMEOUT, || {
        (worker.metric("notifier_duplicates_skipped_total")? == 1.0).then_some(())
    });
    assert_eq!(mails_to(&job.owner).len(), 1, "one email");
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(1.0));
}

/// Seen in the chaos suite: RabbitMQ went away while an email was going out, the worker dropped
/// the attempt (its message is requeued with the channel), the email was never recorded, and
/// the redelivery sent a second one once the claim's lease had lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rabbitmq_connection_while_the_email_goes_out_still_records_it_once() {
    let fx = Fixture::new("lost-mid-send").await;
    let amqp_url = fx.vhost.amqp_url();
    let amqp = TcpProxy::start(&host_port(&amqp_url));
    // The notifier still waits for the SMTP server's answer when its connection to RabbitMQ
    // goes.
    let (_smtp, [host, port]) = smtp_answering_late(Duration::from_secs(3));
    let worker = fx.start(&[
        (
            "AMQP_URL",
            amqp_url.replace(&host_port(&amqp_url), &amqp.address()),
        ),
        host,
        port,
    ]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.publish(&message);

    wait_for_one_mail(&job.owner);
    amqp.sever();

    // Recorded within seconds (not after the claim's two-minute lease), by the attempt that
    // sent it.
    let recorded = fx.notified_job(&job.id).await;
    assert_eq!(
        recorded.get_str("notified_kind").ok(),
        Some("ready"),
        "the email was recorded: {}",
        worker.log()
    );
    wait_for("the worker to reconnect", TIMEOUT, || {
        worker.log().contains("reconnecting").then_some(())
    });
    // The attempt was dropped while the SMTP server's answer was held, before the email was
    // known to be sent.
    let log = worker.log();
    let (lost, sent) = (log.find("lost the consumer"), log.find("email sent"));
    assert!(
        matches!((lost, sent), (Some(l), Some(s)) if l < s),
        "the connection was lost before the email was known sent: {log}"
    );
    // Any later delivery (the requeued one, the sweeper's) finds it sent.
    fx.publish(&message);
    wait_for("the duplicate to be skipped", TIMEOUT, || {
        (worker.metric("notifier_duplicates_skipped_total")? >= 1.0).then_some(())
    });
    assert_eq!(mails_to(&job.owner).len(), 1, "one email: {}", worker.log());
    assert_eq!(worker.metric("notifier_emails_sent_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_by_its_owner_gets_no_email_and_no_dead_letter() {
    let fx = Fixture::new("deleted").await;
    let worker = fx.start(&[]);
    let (job, message) = fx.job(JobStatus::Done).await;
    let videos = fx.client.database(VIDEOS_DB);
    let deleted = videos.collection::<Document>(mp3_model::DELETED_JOBS_COLLECTION);
    deleted
        .insert_one(doc! { "_id": &job.id, "owner": &job.owner, "deleted_at": now_ms() })
        .await
        .unwrap();
    videos
        .collection::<Document>(JOBS_COLLECTION)
        .delete_one(doc! { "_id": &job.id })
        .await
        .unwrap();
    // And a job that never was: that one is for an operator.
    let (ghost, ghost_message) = fx.job(JobStatus::Failed).await;
    videos
        .collection::<Document>(JOBS_COLLECTION)
        .delete_one(doc! { "_id": &ghost.id })
        .await
        .unwrap();
    fx.publish(&message);
    fx.publish(&ghost_message);

    wait_for("the unknown job dead-lettered", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    let dead = fx.vhost.take("mp3.dead", 10);
    assert!(dead[0]["payload"].as_str().unwrap().contains(&ghost.id));
    wait_for("the deleted job's message acked", TIMEOUT, || {
        (fx.vhost.queue_len("mp3")? == 0).then_some(())
    });
    assert!(
        worker
            .log()
            .contains("the job was deleted by its owner; no email"),
        "{}",
        worker.log()
    );
    assert!(mails_to(&job.owner).is_empty());
    assert!(mails_to(&ghost.owner).is_empty());
    deleted.delete_one(doc! { "_id": &job.id }).await.unwrap();
}

/// A webhook receiver that answers 200 to every request; the requests it got.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut head, mut length) = (String::new(), 0);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push(head);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_attempt_that_finishes_past_its_deadline_is_neither_shown_failed_nor_dead_lettered()
{
    let fx = Fixture::new("late-last").await;
    let (callback, requests) = webhook_receiver();
    // The email outlasts the attempt's deadline (10 s), and the attempt is the only one: the
    // worker gives the message up while the email, then the webhook, still go out (the give-up
    // waits for them up to 8 s).
    let (_smtp, [host, port]) = smtp_answering_late(Duration::from_secs(13));
    let worker = fx.start(&[
        host,
        port,
        ("JOB_TIMEOUT_SECS", "10".to_owned()),
        ("WEBHOOK_TIMEOUT_SECS", "1".to_owned()),
        ("MAX_ATTEMPTS", "1".to_owned()),
        ("WEBHOOK_ALLOW", "127.0.0.1".to_owned()),
    ]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.set_callback(&job.id, &callback).await;
    fx.publish(&message);

    // Until the webhook is recorded, the job never shows it failed.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match fx.webhook_state(&job.id).await.as_deref() {
            Some("delivered") => break,
            None => {}
            Some(other) => panic!("the job shows its webhook {other}: {}", worker.log()),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        worker.log().contains("no result within the job deadline"),
        "the attempt was abandoned at its deadline: {}",
        worker.log()
    );
    assert_eq!(requests.lock().unwrap().len(), 1);
    assert_eq!(mails_to(&job.owner).len(), 1);
    // The give-up finds both recorded: the message is acked, nobody is paged.
    wait_for("the give-up", TIMEOUT, || {
        worker
            .log()
            .contains("an abandoned attempt finished the notification after all")
            .then_some(())
    });
    wait_for("the ack", TIMEOUT, || {
        (fx.vhost.queue_len("mp3")? == 0).then_some(())
    });
    assert_eq!(fx.vhost.queue_len("mp3.dead"), Some(0), "{}", worker.log());
    assert!(!worker.log().contains("could not notify the user"));
    assert_eq!(
        fx.webhook_state(&job.id).await.as_deref(),
        Some("delivered")
    );
    assert_eq!(
        fx.notified_job(&job.id)
            .await
            .get_str("notified_kind")
            .unwrap(),
        "ready"
    );
    assert_eq!(requests.lock().unwrap().len(), 1);
    assert_eq!(mails_to(&job.owner).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_leaves_a_webhook_another_delivery_is_sending_to_it() {
    let fx = Fixture::new("held-webhook").await;
    let (callback, requests) = webhook_receiver();
    // The message is given up at once; the webhook is another's meanwhile.
    let worker = fx.start_giving_up_at_once();
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.set_callback(&job.id, &callback).await;
    // Another replica's live claim on the job's webhook, as it takes one to send.
    fx.claim_webhook_elsewhere(&job.id, false).await;
    let claims = fx.webhook_claims();
    fx.publish(&message);

    // While the claim lives, the give-up does not write over it.
    wait_for("a give-up refused", TIMEOUT, || {
        worker
            .log()
            .contains("another delivery is sending")
            .then_some(())
    });
    assert_eq!(fx.webhook_state(&job.id).await, None);
    // Once it lapsed (its sender gone), a later attempt sends the webhook; the email still
    // cannot go, and the message ends in mp3.dead.
    wait_for("the message dead-lettered", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    assert_eq!(
        fx.webhook_state(&job.id).await.as_deref(),
        Some("delivered"),
        "{}",
        worker.log()
    );
    assert_eq!(requests.lock().unwrap().len(), 1);
    claims
        .delete_many(doc! { "job_id": &job.id })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_meeting_another_give_up_of_the_job_ends_the_same_way() {
    let fx = Fixture::new("two-give-ups").await;
    let (callback, requests) = webhook_receiver();
    // The message is given up at once, while another replica is giving up another message of
    // the same job.
    let worker = fx.start_giving_up_at_once();
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.set_callback(&job.id, &callback).await;
    fx.claim_webhook_elsewhere(&job.id, true).await;
    let claims = fx.webhook_claims();
    fx.publish(&message);
    wait_for("the give-up waiting", TIMEOUT, || {
        worker
            .log()
            .contains("waiting for another give-up")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile this one has written nothing and its message is still in hand.
    assert_eq!(fx.webhook_state(&job.id).await, None);
    assert_eq!(fx.vhost.queue_len("mp3.dead").unwrap_or(0), 0);
    // The other give-up ends: the job shows failed, the claim is given back.
    let failed = doc! {
        "state": "failed", "url": &callback, "at": now_ms(), "error": "given up elsewhere",
    };
    fx.show_webhook(&job.id, failed).await;
    let released = claims
        .delete_one(doc! { "_id": format!("{}/1", job.id) })
        .await
        .unwrap();
    assert_eq!(released.deleted_count, 1);

    // This give-up waited for it and ended the same way: dead-lettered, and no webhook sent on
    // a fresh schedule after the end was recorded.
    wait_for("the message dead-lettered", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    // What the other recorded stands: one failure shown, with its reason.
    let shown = fx.job_document(&job.id).await;
    let shown = shown.get_document("webhook").unwrap();
    assert_eq!(
        (shown.get_str("state"), shown.get_str("error")),
        (Ok("failed"), Ok("given up elsewhere")),
        "{}",
        worker.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(requests.lock().unwrap().is_empty(), "{}", worker.log());
    let left = claims
        .count_documents(doc! { "job_id": &job.id })
        .await
        .unwrap();
    assert_eq!(left, 0, "claims or a count of attempts left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_webhook_is_shown_failed_and_its_claim_released() {
    let fx = Fixture::new("given-up-webhook").await;
    // The message is given up at once, the webhook with it (its receiver does not answer).
    let worker = fx.start_giving_up_at_once();
    let (job, message) = fx.job(JobStatus::Done).await;
    let callback = format!("http://127.0.0.1:{}/hook", free_port());
    fx.set_callback(&job.id, &callback).await;
    fx.publish(&message);

    wait_for("the message dead-lettered", TIMEOUT, || {
        (fx.vhost.queue_len("mp3.dead")? == 1).then_some(())
    });
    assert_eq!(
        fx.webhook_state(&job.id).await.as_deref(),
        Some("failed"),
        "{}",
        worker.log()
    );
    // The give-up took the webhook's claim to write that, and gave it back: a dead letter sent
    // back by an operator may deliver at once. Its count of attempts starts again too.
    let left = fx
        .webhook_claims()
        .count_documents(doc! { "job_id": &job.id })
        .await
        .unwrap();
    assert_eq!(left, 0, "claims or a count of attempts left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_shown_failed_but_recorded_delivered_is_shown_delivered() {
    let fx = Fixture::new("failed-then-delivered").await;
    let (callback, requests) = webhook_receiver();
    let worker = fx.start(&[("WEBHOOK_ALLOW", "127.0.0.1".to_owned())]);
    let (job, message) = fx.job(JobStatus::Done).await;
    fx.set_callback(&job.id, &callback).await;
    // A give-up showed it failed; the dead letter sent back delivered it, and that delivery
    // recorded it but stopped before showing it.
    let failed = doc! { "state": "failed", "url": &callback, "at": now_ms(), "error": "given up" };
    fx.show_webhook(&job.id, failed).await;
    let marker = doc! {
        "_id": format!("{}/sent", job.id), "job_id": &job.id, "sent_at": now_ms(),
        "state": "delivered", "url": &callback, "at": now_ms(), "status": 200,
    };
    let claims = fx.webhook_claims();
    claims.insert_one(marker).await.unwrap();
    fx.publish(&message);

    wait_for_one_mail(&job.owner);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while fx.webhook_state(&job.id).await.as_deref() != Some("delivered") {
        assert!(
            std::time::Instant::now() < deadline,
            "still shown failed: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(requests.lock().unwrap().is_empty(), "sent again");
    claims
        .delete_many(doc! { "job_id": &job.id })
        .await
        .unwrap();
}
