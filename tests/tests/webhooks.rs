//! Webhooks end to end: a receiver in the test gets one correctly signed event per job (done
//! or failed), from the job's callback or the user's default, retried after 500s, and after a
//! notifier killed in the middle of a delivery; a callback to a refused address is never
//! called and the job says why; a rotated secret signs alongside the old one. Real services,
//! on the runner and on Spin (the gateway's `/webhook` routes).

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp3_webhook::Secret;
use system_tests::http::{send, send_raw, Body};
use system_tests::system::{make_video, System};
use system_tests::webhook_receiver::{Receiver, Request};
use system_tests::{on_each_runtime, Runtime, TempDir};

on_each_runtime!(each_job_gets_one_signed_event_and_refused_callbacks_none);

/// Where the receiver listens: a loopback address the notifier is told to allow. Every other
/// loopback address stays refused, as in production.
const RECEIVER_IP: &str = "127.0.0.2";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Counts the connections made to a listener that must never be called.
fn tripwire() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for _ in listener.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("127.0.0.1:{port}"), calls)
}

fn until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The job once its webhook is settled (`webhook` set and not failed).
fn settled(system: &System, token: &str, job_id: &str) -> serde_json::Value {
    until(
        &format!("job {job_id}'s webhook"),
        Duration::from_secs(90),
        || {
            let reply = system.get(token, &format!("/jobs/{job_id}"));
            let job: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
            job.get("webhook").filter(|w| w["state"] != "failed")?;
            Some(job)
        },
    )
}

/// The event of a request, checked against `secrets` (one of them must have signed it).
fn verified(request: &Request, secret: &Secret) -> serde_json::Value {
    mp3_webhook::verify(
        secret,
        &request.id,
        &request.timestamp,
        &request.body,
        &request.signature,
        now_secs(),
    )
    .unwrap_or_else(|e| panic!("{} on {}: {e}", request.signature, request.path));
    serde_json::from_slice(&request.body).expect("the event is JSON")
}

fn upload(
    system: &System,
    token: &str,
    video: &std::path::Path,
    fields: &[(&str, &str)],
) -> String {
    let reply = system.upload_with(token, video, fields);
    assert_eq!(reply.status, 202, "{fields:?}: {}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    json["job_id"].as_str().unwrap().to_owned()
}

fn webhook_call(
    system: &System,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let reply = send(
        method,
        &system.app.url(path),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        (method != "GET").then_some(body.as_bytes()),
    );
    (
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(serde_json::json!(reply.body)),
    )
}

fn each_job_gets_one_signed_event_and_refused_callbacks_none(runtime: Runtime) {
    let receiver = Receiver::start(RECEIVER_IP);
    let (tripwire, calls) = tripwire();
    let mut system = System::without_workers(runtime);
    let notifier_env = [
        ("WEBHOOK_ALLOW", RECEIVER_IP.to_owned()),
        ("WEBHOOK_TIMEOUT_SECS", "5".to_owned()),
        // 0.1 s, 0.3 s, 1.2 s between the attempts, then given up.
        ("WEBHOOK_RETRY_BASE_MS", "100".to_owned()),
        ("WEBHOOK_MAX_ATTEMPTS", "4".to_owned()),
    ];
    system.converter = Some(system.start_converter());
    system.notifier = Some(system.start_notifier_with(&notifier_env));
    let dir = TempDir::new("webhooks");
    let video = dir.path().join("clip.mp4");
    make_video(&video, 2, "160x120");
    let token = system.login();

    // The secret is made on first sight; the default callback is checked, then set.
    let (status, settings) = webhook_call(&system, &token, "GET", "/webhook", "");
    assert_eq!(status, 200, "{settings}");
    let first_secret = Secret::parse(settings["secret"].as_str().unwrap()).expect("whsec_…");
    assert_eq!(settings["url"], serde_json::Value::Null);
    let (status, refused) =
        webhook_call(&system, &token, "PUT", "/webhook", r#"{"url": "ftp://x/"}"#);
    assert_eq!(
        (status, refused),
        (400, "url: an http:// or https:// URL".into())
    );
    let default_url = receiver.url("/default");
    let (status, settings) = webhook_call(
        &system,
        &token,
        "PUT",
        "/webhook",
        &serde_json::json!({ "url": default_url }).to_string(),
    );
    assert_eq!(
        (status, &settings["url"]),
        (200, &default_url.clone().into()),
        "{settings}"
    );
    let anonymous = send("GET", &system.app.url("/webhook"), &[], None);
    assert_eq!(anonymous.status, 401);

    // A done job, a failed one, one on the default callback, one whose receiver fails twice.
    receiver.fail("/retried", 2);
    receiver.fail("/down", 100);
    let done = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/done"))],
    );
    let failed = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/failed")), ("start", "100")],
    );
    let defaulted = upload(&system, &token, &video, &[]);
    let retried = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/retried"))],
    );
    let down = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/down"))],
    );
    // Refused: a loopback address, as written and behind a name.
    let literal = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &format!("http://{tripwire}/hook"))],
    );
    let port = tripwire.rsplit(':').next().unwrap();
    let named = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &format!("http://localhost:{port}/hook"))],
    );

    for (job_id, path, kind) in [
        (&done, "/done", "job.done"),
        (&failed, "/failed", "job.failed"),
        (&defaulted, "/default", "job.done"),
        (&retried, "/retried", "job.done"),
    ] {
        let job = settled(&system, &token, job_id);
        assert_eq!(job["webhook"]["state"], "delivered", "{job}");
        assert_eq!(job["webhook"]["status"], 200, "{job}");
        let requests = receiver.requests(path);
        let answered: Vec<&Request> = requests.iter().filter(|r| r.answered == 200).collect();
        assert_eq!(answered.len(), 1, "{path}: {requests:#?}");
        assert!(
            requests
                .iter()
                .all(|r| r.id == format!("{job_id}.{}", &kind[4..])),
            "{requests:#?}"
        );
        let event = verified(answered[0], &first_secret);
        assert_eq!(
            (&event["type"], &event["data"]["job_id"]),
            (&kind.into(), &job_id.as_str().into())
        );
        assert_eq!(event["data"]["status"], job["status"]);
        if kind == "job.done" {
            // The event's link works without a token.
            let link = event["data"]["download_url"]
                .as_str()
                .expect("download_url");
            let mp3 = send_raw("GET", link, &[], Body::Empty).unwrap();
            assert_eq!(mp3.status, 200, "{link}");
        } else {
            let error = event["data"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("start is past its end"), "{event}");
        }
    }
    assert_eq!(
        receiver.requests("/retried").len(),
        3,
        "two 500s, then the delivery"
    );

    for (job_id, reason) in [
        (
            &literal,
            "callback refused: 127.0.0.1 is a loopback address",
        ),
        (
            &named,
            "callback refused: localhost resolves to a non-public address",
        ),
    ] {
        let job = settled(&system, &token, job_id);
        assert_eq!(job["webhook"]["state"], "refused", "{job}");
        let error = job["webhook"]["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(reason), "{error}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a refused callback was called"
    );

    // A receiver that never takes the event: given up after the attempts, and the job says so.
    let job = until("the webhook given up", Duration::from_secs(60), || {
        let reply = system.get(&token, &format!("/jobs/{down}"));
        let job: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        (job["webhook"]["state"] == "failed").then_some(job)
    });
    let error = job["webhook"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the receiver answered 500") && error.contains("given up after 4 attempts"),
        "{error}"
    );
    assert_eq!(receiver.requests("/down").len(), 4);

    // The notifier killed while the receiver holds its request: the event is sent again,
    // under the same id, and recorded once.
    receiver.hold("/killed", Duration::from_secs(3));
    let killed = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/killed"))],
    );
    until("the held delivery", Duration::from_secs(60), || {
        receiver.holding("/killed").then_some(())
    });
    system.notifier.take().expect("the notifier").kill();
    std::thread::sleep(Duration::from_secs(4));
    system.notifier = Some(system.start_notifier_with(&notifier_env));
    let job = settled(&system, &token, &killed);
    assert_eq!(job["webhook"]["state"], "delivered", "{job}");
    std::thread::sleep(Duration::from_secs(2));
    let requests = receiver.requests("/killed");
    assert!(requests.len() >= 2, "{requests:#?}");
    assert!(requests.iter().all(|r| r.id == requests[0].id));
    let answered: Vec<&Request> = requests.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(answered.len(), 1, "{requests:#?}");
    assert!(!answered[0].held);
    verified(answered[0], &first_secret);

    // A rotation: the new secret signs, and the old one too for a while.
    let (status, rotated) = webhook_call(&system, &token, "POST", "/webhook/rotate", "");
    assert_eq!(status, 200, "{rotated}");
    let new_secret = Secret::parse(rotated["secret"].as_str().unwrap()).unwrap();
    assert_ne!(new_secret, first_secret);
    assert!(
        rotated["previous_secret_expires_at"].as_i64().is_some(),
        "{rotated}"
    );
    let after = upload(
        &system,
        &token,
        &video,
        &[("callback_url", &receiver.url("/rotated"))],
    );
    settled(&system, &token, &after);
    let request = &receiver.requests("/rotated")[0];
    assert_eq!(
        request.signature.split(' ').count(),
        2,
        "{}",
        request.signature
    );
    verified(request, &new_secret);
    verified(request, &first_secret);

    // Nothing more arrives: each job's event was delivered once.
    std::thread::sleep(Duration::from_secs(2));
    for path in ["/done", "/failed", "/default", "/retried", "/rotated"] {
        let answered = receiver
            .requests(path)
            .iter()
            .filter(|r| r.answered == 200)
            .count();
        assert_eq!(answered, 1, "{path}");
    }
}
