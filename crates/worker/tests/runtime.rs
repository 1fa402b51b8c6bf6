//! The runtime against the dev services' RabbitMQ (a vhost per test), with a scripted handler:
//! panics, deadlines, retry tiers, mandatory publishes. Run after
//! `eval "$(scripts/dev-services env)"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use mp3_model::topology::VIDEO;
use mp3_worker::testing::{env, free_port, host_port, http_get, wait_for, TcpProxy, Vhost};
use mp3_worker::{Context, Failure, GivenUp, Handler, Worker, WorkerOptions};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// A message telling the handler what to do on each attempt, by attempt number (the last entry
/// repeats).
#[derive(Debug, Deserialize)]
struct Script {
    id: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Step {
    Ok,
    Panic,
    /// Sleeps (asynchronously) this many milliseconds, then succeeds.
    Sleep(u64),
    Retry,
    Defer(u64),
}

/// What the handler saw: for each message id, the time of each attempt and whether it was
/// given up.
#[derive(Default)]
struct Log {
    attempts: HashMap<String, Vec<(u32, Instant)>>,
    given_up: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<Log>>);

impl Scripted {
    fn attempts(&self, id: &str) -> Vec<(u32, Instant)> {
        self.0
            .lock()
            .unwrap()
            .attempts
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    fn given_up(&self, id: &str) -> Option<String> {
        self.0.lock().unwrap().given_up.get(id).cloned()
    }
}

impl Handler for Scripted {
    type Message = Script;

    async fn handle(&self, message: &Script, cx: &Context) -> Result<(), Failure> {
        let index = usize::try_from(cx.attempt - 1).unwrap_or(usize::MAX);
        let step = *message
            .steps
            .get(index)
            .or(message.steps.last())
            .expect("a script has steps");
        self.0
            .lock()
            .unwrap()
            .attempts
            .entry(message.id.clone())
            .or_default()
            .push((cx.attempt, Instant::now()));
        match step {
            Step::Ok => Ok(()),
            Step::Panic => panic!("scripted panic in {}", message.id),
            Step::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Step::Retry => Err(Failure::retry(anyhow!("scripted failure"))),
            Step::Defer(ms) => Err(Failure::Defer {
                after: Duration::from_millis(ms),
                reason: "scripted".into(),
            }),
        }
    }

    async fn give_up(
        &self,
        message: &Script,
        error: &anyhow::Error,
        _cx: &Context,
    ) -> anyhow::Result<GivenUp> {
        self.0
            .lock()
            .unwrap()
            .given_up
            .insert(message.id.clone(), format!("{error:#}"));
        // A message named `done-…` stands for one whose work got done after all.
        Ok(if message.id.starts_with("done-") {
            GivenUp::Done
        } else {
            GivenUp::DeadLetter
        })
    }
}

struct Running {
    vhost: Vhost,
    handler: Scripted,
    metrics_url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(what: &str, concurrency: u16, max_attempts: u32, job_timeout: Duration) -> Self {
        Self::start_via(None, what, concurrency, max_attempts, job_timeout).await
    }

    /// [`Running::start`], reaching RabbitMQ through `proxy` if given.
    async fn start_via(
        proxy: Option<&TcpProxy>,
        what: &str,
        concurrency: u16,
        max_attempts: u32,
        job_timeout: Duration,
    ) -> Self {
        let vhost = Vhost::new(what);
        let handler = Scripted::default();
        let port = free_port();
        let amqp_url = match proxy {
            Some(proxy) => {
                let url = vhost.amqp_url();
                url.replacen(&host_port(&url), &proxy.address(), 1)
            }
            None => vhost.amqp_url(),
        };
        let options = WorkerOptions {
            name: "scripted",
            queue: VIDEO[0],
            amqp_url,
            concurrency,
            max_attempts,
            retry_base_delay: Duration::from_millis(500),
            metrics_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            shutdown_timeout: Duration::from_secs(5),
            job_timeout,
            // Short only where a test holds the confirms: elsewhere a slow confirm on a loaded
            // machine must not turn a retry into a reconnection.
            confirm_timeout: if proxy.is_some() {
                Duration::from_secs(2)
            } else {
                mp3_worker::DEFAULT_CONFIRM_TIMEOUT
            },
        };
        let stop = CancellationToken::new();
        let worker = Worker::new(options, handler.clone(), Registry::with_prefix("scripted"));
        let task = tokio::spawn(worker.run_until(stop.clone()));
        let metrics_url = format!("http://127.0.0.1:{port}");
        let url = format!("{metrics_url}/healthz");
        tokio::task::spawn_blocking(move || {
            wait_for("the worker to consume", Duration::from_secs(20), || {
                (http_get(&url).0 == 200).then_some(())
            })
        })
        .await
        .unwrap();
        Self {
            vhost,
            handler,
            metrics_url,
            stop,
            task,
        }
    }

    fn publish(&self, id: &str, steps: &str) {
        self.vhost
            .publish("video", &format!(r#"{{"id":"{id}","steps":{steps}}}"#));
    }

    async fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&Scripted) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(&self.handler) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Vhost {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.vhost
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_failed_attempts_and_do_not_use_up_the_worker() {
    let worker = Running::start("panic", 2, 2, Duration::from_secs(30)).await;
    // More panicking messages than the concurrency: before, each held its slot forever.
    for n in 0..4 {
        worker.publish(&format!("p{n}"), r#"["panic"]"#);
    }
    worker.publish("after", r#"["ok"]"#);
    worker
        .wait(
            "every panic given up and the last message handled",
            Duration::from_secs(30),
            |h| {
                (0..4).all(|n| h.given_up(&format!("p{n}")).is_some())
                    && h.attempts("after").len() == 1
            },
        )
        .await;
    for n in 0..4 {
        let id = format!("p{n}");
        let attempts: Vec<u32> = worker.handler.attempts(&id).iter().map(|a| a.0).collect();
        assert_eq!(attempts, [1, 2], "{id}");
        let reason = worker.handler.given_up(&id).unwrap();
        assert!(reason.contains("panicked: scripted panic in p"), "{reason}");
    }
    assert_eq!(http_get(&format!("{}/healthz", worker.metrics_url)).0, 200);
    let vhost = worker.stop().await;
    wait_for("4 dead letters", Duration::from_secs(10), || {
        (vhost.queue_len("video.dead") == Some(4)).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_that_finds_the_work_done_acks_instead_of_dead_lettering() {
    let worker = Running::start("given-up-done", 2, 2, Duration::from_secs(30)).await;
    worker.publish("done-1", r#"["retry"]"#);
    worker.publish("dead-1", r#"["retry"]"#);
    worker
        .wait("both given up", Duration::from_secs(20), |h| {
            h.given_up("done-1").is_some() && h.given_up("dead-1").is_some()
        })
        .await;
    // Longer than any retry delay here: an ack is final, a retry would come back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in ["done-1", "dead-1"] {
        assert_eq!(worker.handler.attempts(id).len(), 2, "{id}");
    }
    let metrics = http_get(&format!("{}/metrics", worker.metrics_url)).1;
    assert!(
        metrics.contains("scripted_messages_done_on_give_up_total 1\n")
            && metrics.contains("scripted_messages_dead_lettered_total 1\n"),
        "{metrics}"
    );
    let vhost = worker.stop().await;
    wait_for("one dead letter", Duration::from_secs(10), || {
        (vhost.queue_len("video.dead") == Some(1)).then_some(())
    });
    assert_eq!(vhost.queue_len("video"), Some(0), "done-1 was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_the_deadline_is_dropped_and_counted() {
    let worker = Running::start("deadline", 1, 2, Duration::from_millis(700)).await;
    worker.publish("slow", r#"[{"sleep":60000}]"#);
    worker.publish("quick", r#"[{"sleep":10}]"#);
    let started = Instant::now();
    worker
        .wait("the slow message given up", Duration::from_secs(20), |h| {
            h.given_up("slow").is_some() && h.attempts("quick").len() == 1
        })
        .await;
    // Two attempts of 0.7 s and a 1 s retry tier, not a minute.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(worker.handler.attempts("slow").len(), 2);
    let reason = worker.handler.given_up("slow").unwrap();
    assert!(reason.contains("job deadline"), "{reason}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_does_not_wait_behind_a_long_one() {
    let worker = Running::start("tiers", 2, 5, Duration::from_secs(30)).await;
    // Deferred by 30 s first, then one deferred by 1 s: with one retry queue and per-message
    // expirations the second waited for the first.
    worker.publish("long", r#"[{"defer":30000},"ok"]"#);
    worker
        .wait("the long deferral", Duration::from_secs(10), |h| {
            !h.attempts("long").is_empty()
        })
        .await;
    worker.publish("short", r#"[{"defer":1000},"ok"]"#);
    worker
        .wait(
            "the short deferral to come back",
            Duration::from_secs(10),
            |h| h.attempts("short").len() == 2,
        )
        .await;
    let short = worker.handler.attempts("short");
    let waited = short[1].1 - short[0].1;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert_eq!(
        worker.handler.attempts("long").len(),
        1,
        "the long one came back early"
    );
    let vhost = &worker.vhost;
    wait_for(
        "the long one in the 30 s tier",
        Duration::from_secs(10),
        || (vhost.queue_len("video.retry.30s") == Some(1)).then_some(()),
    );
    // A deferral is not an attempt: the same attempt number twice.
    assert_eq!(short[0].0, short[1].0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_missing_queue_is_an_error_not_a_silent_drop() {
    let vhost = Vhost::new("mandatory");
    let connection =
        lapin::Connection::connect(&vhost.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let publisher = mp3_worker::Publisher::open(&connection).await.unwrap();
    let error = publisher
        .publish_json("no-such-queue", &serde_json::json!({"a": 1}), "m1")
        .await
        .expect_err("unroutable");
    assert!(format!("{error:#}").contains("no such queue"), "{error:#}");
    // The channel still works afterwards.
    let channel = connection.create_channel().await.unwrap();
    mp3_worker::amqp::declare(&channel, &VIDEO[..1])
        .await
        .unwrap();
    publisher
        .publish_json("video", &serde_json::json!({"a": 1}), "m2")
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_never_confirmed_ends_the_session_not_the_worker() {
    // A broker that takes the copy but does not answer (its connection blocked by a memory
    // alarm stops reading it, heartbeats go on): the confirm of every retry copy (a script's
    // body ends with `]}`, then the frame end) is held 20 s, past the 2 s the worker waits.
    let broker = TcpProxy::start(&host_port(&env("AMQP_URL")));
    broker.hold_replies_to(b"]}\xCE", Duration::from_secs(20));
    let running =
        Running::start_via(Some(&broker), "unconfirmed", 2, 5, Duration::from_secs(30)).await;
    running.publish("held", r#"["retry","ok"]"#);
    // Not held for 20 s with its slot: the channel counts as broken, the delivery goes back,
    // and a new session handles it again.
    running
        .wait("the message handled again", Duration::from_secs(15), |h| {
            h.attempts("held").len() >= 2
        })
        .await;
    running.stop().await;
}
