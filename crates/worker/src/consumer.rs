//! Consuming one work queue: bounded concurrency, the retry policy, dead-lettering, graceful
//! shutdown.
//!
//! A delivery is settled exactly one way:
//! - the handler succeeded: ack;
//! - the body is not a valid message: reject without requeue, so RabbitMQ dead-letters it to
//!   `<queue>.dead` (no retry can fix it);
//! - the handler failed with [`Failure::Retry`] (or panicked, or ran past the job deadline) and
//!   attempts remain: publish a copy to the retry tier of its backoff (`<queue>.retry.<n>s`)
//!   with the attempt header incremented, wait for the confirm, then ack (RabbitMQ
//!   dead-letters the copy back to `<queue>` when the tier's TTL expires);
//! - the handler failed permanently, or the last attempt failed: run the handler's
//!   [`Handler::give_up`], then reject without requeue (to `<queue>.dead`);
//! - shutdown caught it before or during handling: nack with requeue.
//!
//! Attempts are counted in the attempt header on retry copies, which a crash never writes: a
//! message whose worker died on it comes back `redelivered` with the count it had. RabbitMQ also
//! marks every recovered message `redelivered` after an unclean broker restart, so that flag
//! cannot be charged as an attempt; a handler that must bound crashes counts its attempts
//! durably (the converter counts claims on the job document, the notifier its sends).
//!
//! A retry copy that cannot be published (its channel broke) ends the session: the consumer
//! reconnects, and the message, nacked, comes back.
//!
//! A copy is published before the original is acked, so a crash in between can duplicate a
//! message but never lose one: the handlers are idempotent per job.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{FutureExt as _, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use mp3_model::topology::{self, QueueSpec, ATTEMPT_HEADER};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Publisher};
use crate::retry::{backoff, previous_attempts};
use crate::server::{self, Health};

/// Why a handler's run ended without its own verdict: an attempt that failed all the same.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("no result within the job deadline ({} s)", .0.as_secs())]
    TimedOut(Duration),
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// The attempts a handler counts durably are used up by attempts that never finished (their
    /// worker died: a crash, the OOM killer).
    #[error("attempts kept stopping before finishing (the worker died)")]
    WorkerStopped,
}

/// How long to wait, after cancelling the consumer, for the deliveries RabbitMQ had already
/// pushed (prefetched, not started) so they can be requeued; and for aborted jobs to settle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a handler did not finish a message.
#[derive(Debug)]
pub enum Failure {
    /// Transient (a service down, a timeout): try again after a backoff; give up after the
    /// configured number of attempts.
    Retry(anyhow::Error),
    /// Can never succeed (a file that is not a video, a job that does not exist): give up now.
    Permanent(anyhow::Error),
    /// Not this message's fault and not an attempt (another worker holds the job): try again
    /// after `after` without counting an attempt.
    Defer { after: Duration, reason: String },
}

impl Failure {
    pub fn retry(error: impl Into<anyhow::Error>) -> Self {
        Self::Retry(error.into())
    }

    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(error.into())
    }
}

/// What a handler knows about the delivery it handles.
#[derive(Clone)]
pub struct Context {
    /// Publishes with confirms on the worker's connection.
    pub publisher: Publisher,
    /// This attempt, from 1.
    pub attempt: u32,
    /// The configured maximum: the attempt with `attempt == max_attempts` is the last.
    pub max_attempts: u32,
    /// RabbitMQ's redelivered flag: an earlier delivery of this very message was not settled
    /// (a worker died or shut down).
    pub redelivered: bool,
    /// How long an attempt, and a give-up, may take (`WorkerOptions::job_timeout`).
    pub deadline: Duration,
}

/// What a give-up found (see [`Handler::give_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenUp {
    /// The message failed for good: it is dead-lettered to `<queue>.dead` for an operator.
    DeadLetter,
    /// Its work got done after all (by an attempt abandoned at its deadline that went on to
    /// finish): the message is acked, nobody is paged.
    Done,
}

/// What a worker does with one message.
pub trait Handler: Send + Sync + 'static {
    /// The JSON body of the queue's messages.
    type Message: DeserializeOwned + Send + Sync + 'static;

    /// Processes `message`. Must be idempotent: a message can be delivered more than once.
    fn handle(
        &self,
        message: &Self::Message,
        cx: &Context,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Called once the message is given up, before it is settled, with the last error (already
    /// logged); it says whether to dead-letter the message. An error here keeps the message in
    /// the retry loop so the give-up is retried.
    fn give_up(
        &self,
        message: &Self::Message,
        error: &anyhow::Error,
        cx: &Context,
    ) -> impl Future<Output = anyhow::Result<GivenUp>> + Send;
}

/// A worker's runtime settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Names the AMQP connection and consumer, and prefixes the metrics (`<name>_...`).
    pub name: &'static str,
    /// The work queue consumed (with its `.retry` and `.dead` companions).
    pub queue: QueueSpec,
    pub amqp_url: String,
    /// Jobs handled at once; also the consumer's prefetch.
    pub concurrency: u16,
    /// Attempts before giving a message up (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles with each further one.
    pub retry_base_delay: Duration,
    pub metrics_addr: SocketAddr,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish before they are requeued.
    pub shutdown_timeout: Duration,
    /// How long one attempt may take (the handler's run, and apart from it the give-up): then
    /// it is dropped, which kills what it started, and counts as a failed attempt. Keep it
    /// under RabbitMQ's `consumer_timeout` (30 minutes by default), which closes the channel
    /// of a consumer holding a message longer.
    pub job_timeout: Duration,
    /// How long a publish (a retry copy, a hand-back) may wait for the broker's confirm; past
    /// it, the channel counts as broken ([`crate::amqp::DEFAULT_CONFIRM_TIMEOUT`] unless a test
    /// needs less).
    pub confirm_timeout: Duration,
}

/// Past its deadline, how much longer a job may run before `/healthz` calls the worker stuck:
/// the deadline drops an attempt at the next await, so a job still there this long after it
/// blocks a thread.
const STUCK_GRACE: Duration = Duration::from_secs(30);

/// The runtime's own metrics (the handlers register theirs in the same registry).
#[derive(Clone, Default)]
struct RuntimeMetrics {
    in_flight: Gauge,
    retried: Counter,
    dead_lettered: Counter,
    done_on_give_up: Counter,
    unparseable: Counter,
    requeued: Counter,
}

impl RuntimeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "jobs_in_flight",
            "Messages being handled now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "jobs_retried",
            "Messages sent to the retry queue after a failed attempt",
            metrics.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages rejected to the dead-letter queue (given up or unparseable)",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "messages_done_on_give_up",
            "Messages given up whose work the give-up found done after all (acked)",
            metrics.done_on_give_up.clone(),
        );
        registry.register(
            "messages_unparseable",
            "Messages whose body is not a valid message (dead-lettered at once)",
            metrics.unparseable.clone(),
        );
        registry.register(
            "messages_requeued",
            "Messages handed back to the queue at shutdown",
            metrics.requeued.clone(),
        );
        metrics
    }
}

/// Consumes [`WorkerOptions::queue`] with a [`Handler`], serving `/healthz` and `/metrics`,
/// until SIGTERM or SIGINT.
pub struct Worker<H> {
    options: WorkerOptions,
    handler: Arc<H>,
    registry: Registry,
    metrics: RuntimeMetrics,
}

/// What one delivery's handling decided.
enum Verdict {
    Ack,
    /// Publish to the retry queue with this attempt count and expiration, then ack.
    Retry {
        attempts: u32,
        delay: Duration,
    },
    DeadLetter,
    Requeue,
}

/// How a session on one connection ended.
enum SessionEnd {
    Stopped,
    Lost(String),
}

impl<H: Handler> Worker<H> {
    /// `registry` should be made with `Registry::with_prefix(options.name)` and hold the
    /// handler's metrics; the runtime adds its own.
    pub fn new(options: WorkerOptions, handler: H, mut registry: Registry) -> Self {
        let metrics = RuntimeMetrics::register(&mut registry);
        Self {
            options,
            handler: Arc::new(handler),
            registry,
            metrics,
        }
    }

    /// Runs until a termination signal, then shuts down gracefully and returns `Ok`. Fails only
    /// when it cannot start (for example, the metrics address is taken).
    pub async fn run(self) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        self.run_until(stop).await
    }

    /// [`run`](Self::run), stopping when `stop` fires instead of on a signal.
    pub async fn run_until(self, stop: CancellationToken) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.options.concurrency > 0,
            "concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.options.max_attempts > 0,
            "max attempts must be at least 1"
        );
        // A job is its attempt, then possibly its give-up: each has the deadline.
        let health = Health::new(self.options.job_timeout * 2 + STUCK_GRACE);
        let server_stop = CancellationToken::new();
        let server = server::serve(
            self.options.metrics_addr,
            health.clone(),
            Arc::new(self.registry),
            server_stop.clone(),
        )
        .await?;
        let shared = Arc::new(Shared {
            options: self.options,
            handler: self.handler,
            metrics: self.metrics,
            health: health.clone(),
        });
        shared.consume_until_stopped(&stop, &health).await;
        server_stop.cancel();
        let _ = server.await;
        tracing::info!("stopped");
        Ok(())
    }
}

struct Shared<H> {
    options: WorkerOptions,
    handler: Arc<H>,
    metrics: RuntimeMetrics,
    health: Health,
}

impl<H: Handler> Shared<H> {
    /// Connects, consumes, reconnects after a lost connection, until `stop`.
    async fn consume_until_stopped(self: &Arc<Self>, stop: &CancellationToken, health: &Health) {
        let mut pause = Duration::from_millis(250);
        loop {
            let Some(connection) =
                amqp::connect_with_retry(&self.options.amqp_url, self.options.name, stop).await
            else {
                return;
            };
            tracing::info!("connected to RabbitMQ");
            let end = self.session(&connection, stop, health).await;
            health.set_consuming(false);
            let close = connection.close(200, "bye".into());
            match tokio::time::timeout(amqp::CLOSE_TIMEOUT, close).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "closing the connection"),
                Err(_) => tracing::debug!("closing the connection: no answer"),
            }
            match end {
                Ok(SessionEnd::Stopped) => return,
                Ok(SessionEnd::Lost(reason)) => {
                    tracing::warn!(%reason, "lost the consumer; reconnecting");
                    pause = Duration::from_millis(250);
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "cannot consume; reconnecting");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(15));
        }
    }

    async fn session(
        self: &Arc<Self>,
        connection: &Connection,
        stop: &CancellationToken,
        health: &Health,
    ) -> anyhow::Result<SessionEnd> {
        let options = &self.options;
        let queue = options.queue.name;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        let specs: Vec<QueueSpec> = topology::all().collect();
        amqp::declare(&setup, &specs).await?;
        let _ =
            tokio::time::timeout(amqp::CLOSE_TIMEOUT, setup.close(200, "declared".into())).await;

        let publisher = Publisher::open(connection)
            .await?
            .with_confirm_timeout(options.confirm_timeout);
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        channel
            .basic_qos(options.concurrency, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let tag = format!("{}-{}", options.name, std::process::id());
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue:?}"))?;
        health.set_consuming(true);
        tracing::info!(
            queue,
            concurrency = options.concurrency,
            max_attempts = options.max_attempts,
            "consuming"
        );

        let permits = Arc::new(Semaphore::new(usize::from(options.concurrency)));
        let abort = CancellationToken::new();
        // Fired by a task whose retry copy could not be published: the channel is broken.
        let broken = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let end = loop {
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break SessionEnd::Stopped,
                () = broken.cancelled() => break SessionEnd::Lost("the publishing channel failed".into()),
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break SessionEnd::Lost("semaphore closed".into()),
                },
            };
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => break SessionEnd::Stopped,
                () = broken.cancelled() => break SessionEnd::Lost("the publishing channel failed".into()),
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let (this, publisher, abort, broken) = (
                        self.clone(),
                        publisher.clone(),
                        abort.clone(),
                        broken.clone(),
                    );
                    tasks.spawn(async move {
                        if this.process(delivery, publisher, permit, abort).await {
                            broken.cancel();
                        }
                    });
                }
                Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
                None => break SessionEnd::Lost("the consumer was cancelled".into()),
            }
            while let Some(done) = tasks.try_join_next() {
                log_join(done);
            }
        };
        health.set_consuming(false);

        match &end {
            SessionEnd::Stopped => {
                tracing::info!(running = tasks.len(), "stopping: no new messages");
                let cancel =
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                match tokio::time::timeout(amqp::CLOSE_TIMEOUT, cancel).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "cancelling the consumer"),
                    Err(_) => tracing::warn!("cancelling the consumer: no answer"),
                }
                self.requeue_prefetched(&mut consumer, &publisher).await;
                let finished = tokio::time::timeout(options.shutdown_timeout, async {
                    while let Some(done) = tasks.join_next().await {
                        log_join(done);
                    }
                })
                .await;
                if finished.is_err() {
                    tracing::warn!(
                        running = tasks.len(),
                        timeout_secs = options.shutdown_timeout.as_secs(),
                        "shutdown timeout: requeueing the jobs still running"
                    );
                }
            }
            SessionEnd::Lost(_) => {}
        }
        // Whatever still runs is requeued (at shutdown, past the timeout) or lost with its
        // channel (RabbitMQ requeues unacked messages of a closed channel).
        abort.cancel();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(done) = tasks.join_next().await {
                log_join(done);
            }
        })
        .await;
        tasks.abort_all();
        // Side by side: each waits up to CLOSE_TIMEOUT for a broker that may not answer.
        let consuming = tokio::time::timeout(amqp::CLOSE_TIMEOUT, channel.close(200, "bye".into()));
        let _ = tokio::join!(publisher.close(), consuming);
        Ok(end)
    }

    /// After the consumer is cancelled, RabbitMQ may already have pushed deliveries that were
    /// never started: give them back at once rather than at channel close.
    async fn requeue_prefetched(&self, consumer: &mut lapin::Consumer, publisher: &Publisher) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(Ok(delivery)) = consumer.next().await {
                self.settle(delivery, Verdict::Requeue, publisher).await;
            }
        })
        .await;
    }

    /// Handles and settles one delivery; `true` when the publishing channel proved broken.
    async fn process(
        &self,
        delivery: Delivery,
        publisher: Publisher,
        _permit: OwnedSemaphorePermit,
        abort: CancellationToken,
    ) -> bool {
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        let _running = self.health.job_started();
        let previous = previous_attempts(&delivery.properties);
        let cx = Context {
            publisher,
            attempt: previous.saturating_add(1),
            max_attempts: self.options.max_attempts,
            redelivered: delivery.redelivered,
            deadline: self.options.job_timeout,
        };
        let message: H::Message = match serde_json::from_slice(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, "unparseable message: dead-lettering it");
                self.metrics.unparseable.inc();
                return self
                    .settle(delivery, Verdict::DeadLetter, &cx.publisher)
                    .await;
            }
        };
        let verdict = tokio::select! {
            biased;
            () = abort.cancelled() => Verdict::Requeue,
            verdict = self.decide(&message, &cx, previous) => verdict,
        };
        self.settle(delivery, verdict, &cx.publisher).await
    }

    /// Runs the handler within the job deadline; a panic or the deadline is a failed attempt.
    async fn attempt(&self, message: &H::Message, cx: &Context) -> Result<(), Failure> {
        let deadline = self.options.job_timeout;
        let run = std::panic::AssertUnwindSafe(self.handler.handle(message, cx)).catch_unwind();
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(Failure::retry(Interrupted::Panicked(panic_message(
                &*panic,
            )))),
            Err(_) => Err(Failure::retry(Interrupted::TimedOut(deadline))),
        }
    }

    /// Runs the give-up within the job deadline; a panic or the deadline is an error.
    async fn give_up(
        &self,
        message: &H::Message,
        error: &anyhow::Error,
        cx: &Context,
    ) -> anyhow::Result<GivenUp> {
        let deadline = self.options.job_timeout;
        let run =
            std::panic::AssertUnwindSafe(self.handler.give_up(message, error, cx)).catch_unwind();
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(Interrupted::Panicked(panic_message(&*panic)).into()),
            Err(_) => Err(Interrupted::TimedOut(deadline).into()),
        }
    }

    async fn decide(&self, message: &H::Message, cx: &Context, previous: u32) -> Verdict {
        let options = &self.options;
        let outcome = self.attempt(message, cx).await;
        let error = match outcome {
            Ok(()) => return Verdict::Ack,
            Err(Failure::Defer { after, reason }) => {
                tracing::info!(%reason, retry_in_ms = after.as_millis() as u64, "deferred");
                return Verdict::Retry {
                    attempts: previous,
                    delay: after,
                };
            }
            Err(Failure::Retry(error)) if cx.attempt < options.max_attempts => {
                let delay = backoff(options.retry_base_delay, cx.attempt);
                tracing::warn!(
                    error = format!("{error:#}"),
                    attempt = cx.attempt,
                    max_attempts = options.max_attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "attempt failed; will retry"
                );
                return Verdict::Retry {
                    attempts: cx.attempt,
                    delay,
                };
            }
            Err(Failure::Retry(error) | Failure::Permanent(error)) => error,
        };
        let reason = one_line(&error);
        tracing::warn!(%reason, attempt = cx.attempt, "giving the message up");
        match self.give_up(message, &error, cx).await {
            Ok(GivenUp::DeadLetter) => {
                tracing::error!(%reason, attempt = cx.attempt, "given up: dead-lettered");
                Verdict::DeadLetter
            }
            Ok(GivenUp::Done) => {
                self.metrics.done_on_give_up.inc();
                tracing::info!("the work was done after all: acked, not dead-lettered");
                Verdict::Ack
            }
            Err(error) => {
                let delay = backoff(options.retry_base_delay, cx.attempt);
                tracing::error!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "giving up failed; will try again"
                );
                Verdict::Retry {
                    attempts: cx.attempt,
                    delay,
                }
            }
        }
    }

    /// Settles a delivery; `true` when a retry copy could not be published (the message is
    /// nacked back, and the session should reconnect).
    async fn settle(&self, delivery: Delivery, verdict: Verdict, publisher: &Publisher) -> bool {
        let mut broken = false;
        let result = match verdict {
            Verdict::Ack => delivery.ack(BasicAckOptions::default()).await,
            Verdict::DeadLetter => {
                self.metrics.dead_lettered.inc();
                delivery.reject(BasicRejectOptions { requeue: false }).await
            }
            Verdict::Requeue => {
                self.metrics.requeued.inc();
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
            Verdict::Retry { attempts, delay } => {
                let (retry_queue, waits) = topology::retry_tier(self.options.queue.name, delay);
                tracing::debug!(
                    queue = retry_queue,
                    waits_ms = waits.as_millis() as u64,
                    "retrying"
                );
                let properties = copy_properties(&delivery.properties, attempts);
                match publisher
                    .publish(&retry_queue, &delivery.data, properties)
                    .await
                {
                    Ok(()) => {
                        self.metrics.retried.inc();
                        delivery.ack(BasicAckOptions::default()).await
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "cannot publish to the retry queue; requeueing and reconnecting"
                        );
                        broken = true;
                        delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await
                    }
                }
            }
        };
        if let Err(error) = result {
            // The channel is gone: RabbitMQ requeues the message itself.
            tracing::warn!(%error, "cannot settle a delivery");
        }
        broken
    }
}

/// The properties of a copy of a message (a retry, or a message handed back at shutdown): the
/// original's, minus RabbitMQ's dead-lettering history and any per-message expiration (a retry
/// tier's own TTL is the delay), with `attempts` in the attempt header. Not `user-id`, which
/// RabbitMQ checks against the publishing connection's user.
fn copy_properties(original: &BasicProperties, attempts: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = original.headers() {
        for (key, value) in old.inner() {
            let key = key.as_str();
            if key == "x-death"
                || key.starts_with("x-first-death")
                || key.starts_with("x-last-death")
            {
                continue;
            }
            headers.insert(key.into(), value.clone());
        }
    }
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    let mut copy = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type(
            original
                .content_type()
                .clone()
                .unwrap_or_else(|| "application/json".into()),
        );
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    copy
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// An error chain on one line, at most 500 characters: what the job document and the user's
/// email say.
pub fn one_line(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 500 {
        line = line.chars().take(497).collect::<String>() + "...";
    }
    line
}

fn log_join(result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result {
        if error.is_panic() {
            tracing::error!(%error, "a job panicked");
        }
    }
}

/// Counts a job in the in-flight gauge while it lives.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Fires `stop` on the first SIGTERM or SIGINT.
pub async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_counts_the_attempts_and_drops_the_history_and_expiration() {
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::LongString("history".into()));
        headers.insert("trace".into(), AMQPValue::LongString("t1".into()));
        let original = BasicProperties::default()
            .with_message_id("j1".into())
            .with_expiration("4000".into())
            .with_user_id("guest".into())
            .with_headers(headers);
        let copy = copy_properties(&original, 2);
        assert_eq!(previous_attempts(&copy), 2);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(
            copy.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("j1"));
        let headers = copy
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        assert!(!headers.contains_key("x-death"));
        assert!(headers.contains_key("trace"));
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let text = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(text.as_ref()), "boom 1");
        let literal = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "static");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "(no message)");
    }

    #[test]
    fn one_line_joins_the_chain_and_bounds_the_length() {
        let error = anyhow::anyhow!("ffmpeg said:\nInvalid data\n").context("converting");
        assert_eq!(one_line(&error), "converting: ffmpeg said: Invalid data");
        let long = anyhow::anyhow!("x".repeat(2000));
        let line = one_line(&long);
        assert_eq!(line.chars().count(), 500);
        assert!(line.ends_with("..."));
    }
}
