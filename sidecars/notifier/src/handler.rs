//! What the notifier does with one `mp3` message.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mp3_model::{JobMessage, JobStatus};
use mp3_worker::{one_line, Context, Failure, GivenUp, Handler};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::email::{render, Links};
use crate::mailer::{Mailer, SendError};
use crate::running::Running;
use crate::store::{Adopt, Claim, Store, LEASE};
use crate::webhook::Webhooks;

/// What the record of a sent email leaves of the claim's lease: it is retried until then (past
/// the worker's deadline for the attempt if need be, as the handling runs in a task of its own);
/// after it, another delivery may send.
const RECORD_MARGIN: Duration = Duration::from_secs(2);

/// What a give-up's wait for an abandoned attempt leaves of the worker's deadline for it, to
/// answer with its own error rather than be cut off.
const GIVE_UP_MARGIN: Duration = Duration::from_secs(2);

/// The notifier's own metrics (the runtime adds retries, dead letters, in flight).
#[derive(Clone, Default)]
pub struct Metrics {
    sent: Counter,
    failed: Counter,
    duplicates: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "emails_sent",
            "Emails accepted by the SMTP server",
            metrics.sent.clone(),
        );
        registry.register(
            "emails_failed",
            "Sends that failed (each attempt counts)",
            metrics.failed.clone(),
        );
        registry.register(
            "duplicates_skipped",
            "Messages for a job whose email was already sent",
            metrics.duplicates.clone(),
        );
        metrics
    }
}

/// The handler. Its state is shared with the task each message runs in (see `handle`).
pub struct Notifier {
    parts: Arc<Parts>,
    tasks: TaskTracker,
    running: Arc<Running>,
}

struct Parts {
    store: Store,
    mailer: Mailer,
    links: Links,
    metrics: Metrics,
    webhooks: Webhooks,
}

impl Notifier {
    pub fn new(
        store: Store,
        mailer: Mailer,
        links: Links,
        metrics: Metrics,
        webhooks: Webhooks,
    ) -> Self {
        Self {
            parts: Arc::new(Parts {
                store,
                mailer,
                links,
                metrics,
                webhooks,
            }),
            tasks: TaskTracker::new(),
            running: Arc::default(),
        }
    }

    /// The tasks messages are handled in, to wait for at exit (see [`finish`]).
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

/// Waits, up to `bound`, for the handling the worker gave up on at shutdown (past its
/// `SHUTDOWN_TIMEOUT_SECS`), so that what went out is recorded before the store is closed.
pub async fn finish(tasks: &TaskTracker, bound: Duration) {
    tasks.close();
    if tokio::time::timeout(bound, tasks.wait()).await.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "exiting with notifications still running: they may be sent again"
        );
    }
}

impl Parts {
    async fn notify(&self, message: &JobMessage) -> Result<(), Failure> {
        let started = Instant::now();
        if let Some(mp3_fid) = &message.mp3_fid {
            match self
                .store
                .adopt(message, mp3_fid)
                .await
                .map_err(Failure::retry)?
            {
                Adopt::Done => {}
                Adopt::NoSuchMp3 => {
                    return Err(Failure::permanent(anyhow::anyhow!(
                        "the announced MP3 {mp3_fid} is not in GridFS"
                    )))
                }
                Adopt::NotFound => return self.unknown_job(message).await,
            }
        }
        let token = mongodb::bson::oid::ObjectId::new().to_hex();
        let job = match self
            .store
            .claim(&message.job_id, &token)
            .await
            .map_err(Failure::retry)?
        {
            Claim::Claimed { job } => job,
            Claim::AlreadySent => {
                tracing::info!("email already sent; skipping the duplicate");
                self.metrics.duplicates.inc();
                return Ok(());
            }
            Claim::Held { retry_after } => {
                return Err(Failure::Defer {
                    after: retry_after,
                    reason: "another delivery is sending this job's email".into(),
                })
            }
            Claim::NotFound => return self.unknown_job(message).await,
        };
        if job.owner != message.username {
            tracing::warn!(
                "the message's username differs from the job's owner; writing to the owner"
            );
        }
        // The job, not the message, says how it ended: a duplicate announcement may name an
        // MP3 that lost the race to be the job's.
        let outcome = match (job.status, &job.mp3_fid) {
            (JobStatus::Done, Some(mp3_fid)) => message.converted(mp3_fid),
            (JobStatus::Failed, _) => message.failed(
                job.error
                    .as_deref()
                    .or(message.error.as_deref())
                    .unwrap_or("conversion failed"),
            ),
            // Not over (or done without an MP3): nothing true to tell its owner, whatever the
            // message claims. Only a stray or forged message gets here; an operator reads it in
            // the dead-letter queue.
            (status, _) => {
                if let Err(release) = self.store.release(&job.id, &token).await {
                    tracing::warn!(error = format!("{release:#}"), "cannot release the claim");
                }
                return Err(Failure::permanent(anyhow::anyhow!(
                    "job {} is {} without an outcome to announce",
                    job.id,
                    status.as_str()
                )));
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let email = render(&outcome, &self.links, &job.owner, now);
        // From here until "email recorded", a process killed leaves an email the next delivery
        // sends again: the one window where delivery is at least once, not exactly once.
        tracing::info!(kind = email.kind.as_str(), "sending email");
        match self.mailer.send(&job.owner, &email).await {
            Ok(()) => {
                self.metrics.sent.inc();
                tracing::info!(kind = email.kind.as_str(), "email sent");
                let deadline = started + LEASE.saturating_sub(RECORD_MARGIN);
                self.record_sent(&job.id, &token, email.kind.as_str(), deadline)
                    .await;
                Ok(())
            }
            Err(error) => {
                self.metrics.failed.inc();
                if let Err(release) = self.store.release(&job.id, &token).await {
                    // The claim then lapses after its lease; the retry is deferred till then.
                    tracing::warn!(error = format!("{release:#}"), "cannot release the claim");
                }
                Err(match error {
                    SendError::Permanent(error) => Failure::Permanent(error),
                    SendError::Transient(error) => Failure::Retry(error),
                })
            }
        }
    }
}

impl Parts {
    /// A message for a job that is not there: dropped if its owner deleted it (nobody wants
    /// that email), otherwise given up (dead-lettered for an operator).
    async fn unknown_job(&self, message: &JobMessage) -> Result<(), Failure> {
        if self
            .store
            .is_deleted(&message.job_id)
            .await
            .map_err(Failure::retry)?
        {
            tracing::info!("the job was deleted by its owner; no email");
            return Ok(());
        }
        Err(Failure::permanent(anyhow::anyhow!(
            "job {} does not exist",
            message.job_id
        )))
    }

    /// Records a sent email. The email is out: retrying the whole message would make a second
    /// one certain, and an unrecorded email is sent again by the next delivery of the job (the
    /// sweeper announces unrecorded jobs again). So the record alone is retried while the store
    /// is unreachable (a MongoDB restart), each try bounded, until `deadline` (before the
    /// worker would cancel the handler), then given up with a log.
    async fn record_sent(&self, job_id: &str, token: &str, kind: &str, deadline: Instant) {
        let mut delay = Duration::from_millis(250);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let error =
                match tokio::time::timeout(left, self.store.mark_sent(job_id, token, kind)).await {
                    Ok(Ok(())) => {
                        tracing::info!(kind, "email recorded");
                        return;
                    }
                    Ok(Err(error)) => format!("{error:#}"),
                    Err(_) => "timed out".to_owned(),
                };
            if Instant::now() + delay >= deadline {
                tracing::error!(%error, "cannot record the sent email: the next delivery may send it again");
                return;
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis(), "cannot record the sent email yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// `notification` (`what`: which), given up after [`LEASE`].
async fn bounded(
    notification: impl std::future::Future<Output = Result<(), Failure>>,
    what: &str,
) -> Result<(), Failure> {
    tokio::time::timeout(LEASE, notification)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::retry(anyhow::anyhow!(
                "the {what} took longer than {} s",
                LEASE.as_secs()
            )))
        })
}

/// The outcome of a message whose email and webhook ended as they did: a retry if either needs
/// one (the other is not repeated), else a deferral, else a give-up.
fn worst(email: Result<(), Failure>, webhook: Result<(), Failure>) -> Result<(), Failure> {
    let rank = |outcome: &Result<(), Failure>| match outcome {
        Err(Failure::Retry(_)) => 3,
        Err(Failure::Defer { .. }) => 2,
        Err(Failure::Permanent(_)) => 1,
        Ok(()) => 0,
    };
    let (kept, dropped) = if rank(&webhook) > rank(&email) {
        (webhook, email)
    } else {
        (email, webhook)
    };
    // The one not returned is still worth a line.
    if let Err(Failure::Retry(error) | Failure::Permanent(error)) = &dropped {
        tracing::warn!(
            error = format!("{error:#}"),
            "another part of the notification failed too"
        );
    }
    kept
}

impl Handler for Notifier {
    type Message = JobMessage;

    async fn handle(&self, message: &JobMessage, cx: &Context) -> Result<(), Failure> {
        let span = tracing::info_span!("job", job_id = %message.job_id, attempt = cx.attempt);
        let parts = Arc::clone(&self.parts);
        let message = message.clone();
        // In a task of its own, which runs to its end even when the worker drops this attempt
        // (its deadline, or a lost RabbitMQ connection, which requeues the message): an email or
        // webhook that went out is then still recorded, and the redelivery (held off by the
        // claim meanwhile) finds it sent rather than sending it again once the claim's lease
        // lapses.
        let entered = self.running.enter(&message.job_id);
        let run = self.tasks.spawn(
            async move {
                let _entered = entered;
                // Each is recorded apart, so a retry for one never repeats the other; each is
                // bounded by its lease, past which another delivery may act anyway.
                let email = bounded(parts.notify(&message), "email").await;
                let webhook = bounded(parts.webhooks.deliver(&message), "webhook").await;
                worst(email, webhook)
            }
            .instrument(span),
        );
        match run.await {
            Ok(outcome) => outcome,
            // The worker counts a panic as a failed attempt.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(Failure::retry(anyhow::anyhow!(
                "the notification stopped: {error}"
            ))),
        }
    }

    async fn give_up(
        &self,
        message: &JobMessage,
        error: &anyhow::Error,
        cx: &Context,
    ) -> anyhow::Result<GivenUp> {
        let job_id = &message.job_id;
        // A last attempt abandoned at its deadline may still be sending: what it does decides
        // what the job shows, not this give-up. Past the wait the worker tries the give-up
        // again later (and the attempt it makes first finds whatever was recorded meanwhile).
        let abandoned = self.running.busy(job_id);
        let until = tokio::time::Instant::now() + cx.deadline.saturating_sub(GIVE_UP_MARGIN);
        if tokio::time::timeout_at(until, self.running.idle(job_id))
            .await
            .is_err()
        {
            anyhow::bail!("an abandoned attempt of job {job_id} is still sending");
        }
        // Only an abandoned attempt's end can make a failed message's work done: any other
        // failure (an announced MP3 that does not exist, say) is an operator's to see.
        if abandoned
            && self.parts.store.email_sent(job_id).await?
            && self.parts.webhooks.settled(job_id).await?
        {
            tracing::info!(%job_id, "an abandoned attempt finished the notification after all");
            return Ok(GivenUp::Done);
        }
        // Nobody else to tell: the message goes to `mp3.dead` for an operator.
        let reason = one_line(error);
        tracing::error!(%job_id, %reason, "could not notify the user");
        self.parts.webhooks.give_up(message, &reason, until).await?;
        Ok(GivenUp::DeadLetter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_for_either_wins_then_a_deferral_then_a_give_up() {
        let retry = || Err(Failure::retry(anyhow::anyhow!("r")));
        let defer = || {
            Err(Failure::Defer {
                after: Duration::from_secs(1),
                reason: "d".into(),
            })
        };
        let permanent = || Err(Failure::permanent(anyhow::anyhow!("p")));
        assert!(matches!(worst(Ok(()), Ok(())), Ok(())));
        assert!(matches!(
            worst(permanent(), retry()),
            Err(Failure::Retry(_))
        ));
        assert!(matches!(worst(retry(), defer()), Err(Failure::Retry(_))));
        assert!(matches!(worst(Ok(()), defer()), Err(Failure::Defer { .. })));
        assert!(matches!(
            worst(permanent(), Ok(())),
            Err(Failure::Permanent(_))
        ));
        assert!(matches!(
            worst(defer(), permanent()),
            Err(Failure::Defer { .. })
        ));
    }
}
