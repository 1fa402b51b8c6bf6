//! Webhooks: when a job ends, its event is POSTed to the job's callback (or its owner's
//! default), signed with the owner's secret, once.
//!
//! - Once: a [`Ledger`] in `webhook_claims`, as for emails. A delivery holds a lease on the
//!   job's webhook while it sends, and records it once the receiver answered 2xx; a redelivery
//!   of the message after that sends nothing. Killed between the receiver's answer and the
//!   record (a few milliseconds), the event is sent again after the lease, with the same
//!   `webhook-id`, which receivers use to drop repeats (as the Standard Webhooks scheme asks).
//! - Signed: `webhook-id`, `webhook-timestamp` and `webhook-signature` (see `mp3-webhook`);
//!   within a day of a rotation, signed with the old secret too.
//! - Retried: anything but a 2xx (or no answer within the timeout) fails the attempt, and the
//!   message is retried with the worker's backoff, then dead-lettered; the job then records
//!   the webhook `failed` with the last reason.
//! - Contained: no redirects, no proxy, and every address the callback's host resolves to is
//!   checked against the [`Policy`] before connecting (loopback, private, link-local and other
//!   special-use addresses refused by default): a refused callback is never called, and the
//!   job records why.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::doc;
use mongodb::{Client, Collection};
use mp3_model::webhook::{
    Delivery, DeliveryState, Settings, CLAIMS_COLLECTION, JOB_DONE, JOB_FAILED, SETTINGS_COLLECTION,
};
use mp3_model::{Job, JobMessage, JobStatus, JOBS_COLLECTION, VIDEOS_DB};
use mp3_webhook::{Policy, Refusal, Secret};
use mp3_worker::Failure;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::email::{download_url, Links};
use crate::store::{is_duplicate_key, now_ms, Ledger, Take};

/// The most bytes of a receiver's answer read (it is only logged).
const ANSWER_BYTES: usize = 1024;

/// Deliveries by outcome (`delivered`, `refused`, `failed`: an attempt that did not get a 2xx).
#[derive(Clone, Default)]
pub struct Metrics {
    deliveries: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts, by outcome",
            metrics.deliveries.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.deliveries
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }
}

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How long one delivery may take, connecting included.
    pub timeout: Duration,
    pub policy: Policy,
    /// The first retry's delay: later ones wait [`RETRY_FACTORS`] times it.
    pub retry_base: Duration,
    /// Attempts before the message is given up.
    pub max_attempts: u32,
}

/// The delays between attempts, in units of the first: with 10 s, 10 s, 30 s, 2 min, 10 min,
/// 30 min, 1 h, 2 h and 4 h (about 8 hours in all).
pub const RETRY_FACTORS: [u32; 8] = [1, 3, 12, 60, 180, 360, 720, 1440];

pub struct Webhooks {
    client: reqwest::Client,
    policy: Arc<Policy>,
    timeout: Duration,
    retry_base: Duration,
    max_attempts: u32,
    jobs: Collection<Job>,
    settings: Collection<Settings>,
    /// The ledger's collection, which also counts each job's failed attempts.
    claims: Collection<mongodb::bson::Document>,
    ledger: Ledger,
    links: Links,
    metrics: Metrics,
}

/// Why an attempt did not deliver.
enum Attempt {
    Delivered { status: u16 },
    Refused(String),
    Failed { error: String },
}

impl Webhooks {
    pub fn new(
        mongo: &Client,
        settings: &WebhookSettings,
        links: Links,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let policy = Arc::new(settings.policy.clone());
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent("mp3-converter-webhooks")
            .dns_resolver(Arc::new(CheckedResolver(policy.clone())))
            .build()
            .context("building the webhook HTTP client")?;
        let db = mongo.database(VIDEOS_DB);
        Ok(Self {
            client,
            policy,
            timeout: settings.timeout,
            retry_base: settings.retry_base,
            max_attempts: settings.max_attempts,
            jobs: db.collection(JOBS_COLLECTION),
            settings: db.collection(SETTINGS_COLLECTION),
            claims: db.collection(CLAIMS_COLLECTION),
            // Longer than an attempt and its record together (each bounded by the timeout),
            // so a live sender always finishes first.
            ledger: Ledger::new(
                db.collection(CLAIMS_COLLECTION),
                lease(settings.timeout),
                "webhook",
            ),
            links,
            metrics,
        })
    }

    /// Sends the job's event if it has a callback and it was not sent yet. A receiver that
    /// does not take it is tried again on the webhook's own schedule (deferring the message,
    /// which does not use the email's attempts up), then the message is given up.
    pub async fn deliver(&self, message: &JobMessage) -> Result<(), Failure> {
        let Some((job, url)) = self.due(&message.job_id).await.map_err(Failure::retry)? else {
            return Ok(());
        };
        let token = mongodb::bson::oid::ObjectId::new().to_hex();
        match self
            .ledger
            .take(&job.id, &token)
            .await
            .map_err(Failure::retry)?
        {
            Take::Claimed => {}
            Take::Done => return self.show_recorded(&job).await.map_err(Failure::retry),
            Take::Held { retry_after, .. } => {
                return Err(Failure::Defer {
                    after: retry_after,
                    reason: "another delivery is sending this job's webhook".into(),
                })
            }
        }
        // Bounded well under the claim's lease, store reads included: no other delivery takes
        // over while this one may still send.
        let bound = self.timeout + Duration::from_secs(4);
        let attempt = match tokio::time::timeout(bound, self.attempt(&job, &url)).await {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(error)) => {
                self.release(&job.id, &token).await;
                return Err(Failure::Retry(error));
            }
            Err(_) => Attempt::Failed {
                error: format!("no answer within {} s", bound.as_secs()),
            },
        };
        match attempt {
            Attempt::Delivered { status } => {
                self.metrics.count("delivered");
                tracing::info!(%url, status, "webhook delivered");
                let delivered = delivery(DeliveryState::Delivered, &url, Some(status), None);
                self.settle(&job, &token, delivered).await
            }
            Attempt::Refused(reason) => {
                self.metrics.count("refused");
                tracing::warn!(%url, %reason, "webhook refused");
                let refused = delivery(DeliveryState::Refused, &url, None, Some(reason));
                self.settle(&job, &token, refused).await
            }
            Attempt::Failed { error } => {
                self.metrics.count("failed");
                self.release(&job.id, &token).await;
                let error = format!("webhook to {url}: {error}");
                let failures = self.count_failure(&job.id).await.map_err(Failure::retry)?;
                if failures >= self.max_attempts {
                    return Err(Failure::Permanent(anyhow::anyhow!(
                        "{error} (given up after {failures} attempts)"
                    )));
                }
                let factor = RETRY_FACTORS[(failures as usize - 1).min(RETRY_FACTORS.len() - 1)];
                Err(Failure::Defer {
                    after: self.retry_base * factor,
                    reason: format!("{error}; attempt {failures} of {}", self.max_attempts),
                })
            }
        }
    }

    /// Whether nothing is left to deliver for the job: no callback, or its outcome recorded
    /// (and then shown on the job, if its notifier stopped before showing it).
    pub async fn settled(&self, job_id: &str) -> anyhow::Result<bool> {
        let Some((job, _)) = self.due(job_id).await? else {
            return Ok(true);
        };
        if !self.ledger.done(&job.id).await? {
            return Ok(false);
        }
        self.show_recorded(&job).await?;
        Ok(true)
    }

    /// After the message was given up: a webhook not delivered is recorded `failed`, and its
    /// count of attempts starts again (an operator may send the dead letter back). `until`
    /// bounds the wait for another give-up of the job; past it, the worker tries the give-up
    /// again later, after a delivery (which may send the webhook again).
    pub async fn give_up(
        &self,
        message: &JobMessage,
        error: &str,
        until: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        let Some((job, url)) = self.due(&message.job_id).await? else {
            return Ok(());
        };
        // The give-up takes the claim like a delivery: while another delivery (another
        // replica's) holds it, that one's outcome is what the job shows, and the worker tries
        // the give-up again later (the lease bounds the wait); while the give-up holds it, no
        // delivery can send and then be shown as failed. Another give-up's claim (two of the
        // job's messages at their last attempt at once) is waited for, and what it recorded
        // stands: tried again later instead, this message would start a fresh schedule.
        let token = mongodb::bson::oid::ObjectId::new().to_hex();
        let began = now_ms();
        let mut pause = Duration::from_millis(50);
        let mut waited = false;
        loop {
            match self.ledger.take_to_give_up(&job.id, &token).await? {
                Take::Claimed => break,
                Take::Done => return self.show_recorded(&job).await,
                Take::Held {
                    giving_up: true, ..
                } => {
                    if tokio::time::Instant::now() + pause >= until {
                        anyhow::bail!(
                            "another give-up of job {} still holds its webhook's claim",
                            job.id
                        );
                    }
                    if !waited {
                        tracing::info!(%url, "waiting for another give-up of the job's webhook");
                        waited = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Take::Held { .. } => {
                    anyhow::bail!("another delivery is sending job {}'s webhook", job.id)
                }
            }
        }
        if waited && self.failed_since(&job.id, began).await? {
            self.release(&job.id, &token).await;
            return Ok(());
        }
        tracing::error!(%url, %error, "webhook given up");
        let failed = delivery(DeliveryState::Failed, &url, None, Some(error.to_owned()));
        // Shown before its count of attempts starts again: a give-up stopped in between is
        // made again, and a redelivery meanwhile does not start the schedule over.
        let shown = async {
            self.show(&job.id, &failed).await?;
            self.claims
                .delete_one(doc! { "_id": failures_id(&job.id) })
                .await
                .context("resetting the webhook's attempts")?;
            // A delivery that outlived its claim may have recorded its outcome meanwhile: the
            // record is what the job shows.
            if self.ledger.done(&job.id).await? {
                self.show_recorded(&job).await?;
            }
            Ok(())
        }
        .await;
        self.release(&job.id, &token).await;
        shown
    }

    /// Gives the claim back; one that cannot be lapses after its lease.
    async fn release(&self, job_id: &str, token: &str) {
        if let Err(release) = self.ledger.release(job_id, token).await {
            tracing::warn!(error = format!("{release:#}"), "cannot release the claim");
        }
    }

    /// Whether job `job_id` shows its webhook failed by a give-up made since `since` (ms).
    async fn failed_since(&self, job_id: &str, since: i64) -> anyhow::Result<bool> {
        Ok(self
            .job(job_id)
            .await?
            .and_then(|job| job.webhook)
            .is_some_and(|shown| shown.state == DeliveryState::Failed && shown.at >= since))
    }

    /// Counts a failed attempt; the attempts failed so far.
    async fn count_failure(&self, job_id: &str) -> anyhow::Result<u32> {
        let id = failures_id(job_id);
        self.claims
            .update_one(
                doc! { "_id": &id },
                doc! { "$inc": { "count": 1 }, "$set": { "job_id": job_id } },
            )
            .upsert(true)
            .await
            .with_context(|| format!("counting the webhook attempts of job {job_id}"))?;
        let counted = self
            .claims
            .find_one(doc! { "_id": &id })
            .await
            .with_context(|| format!("reading the webhook attempts of job {job_id}"))?;
        let count = counted
            .and_then(|doc| match doc.get("count") {
                Some(mongodb::bson::Bson::Int32(n)) => u32::try_from(*n).ok(),
                Some(mongodb::bson::Bson::Int64(n)) => u32::try_from(*n).ok(),
                _ => None,
            })
            .unwrap_or(1);
        Ok(count)
    }

    /// Records the outcome, so that no redelivery sends it again (retried for a while if the
    /// store is away: the event is out), then shows it on the job.
    async fn settle(&self, job: &Job, token: &str, delivery: Delivery) -> Result<(), Failure> {
        let marker = mongodb::bson::to_document(&delivery)
            .context("encoding the delivery")
            .map_err(Failure::retry)?;
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(250);
        loop {
            match self.ledger.record(&job.id, token, marker.clone()).await {
                Ok(()) => break,
                Err(error) if std::time::Instant::now() + pause < deadline => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot record the webhook yet"
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "cannot record the webhook: it may be sent again"
                    );
                    return Err(Failure::Retry(error));
                }
            }
        }
        self.show(&job.id, &delivery).await.map_err(Failure::retry)
    }

    /// A job whose outcome was recorded but not shown (its notifier stopped in between):
    /// shown now, from the record.
    async fn show_recorded(&self, job: &Job) -> anyhow::Result<()> {
        // A job showing `failed` (a give-up's) may have been delivered since, by a dead letter
        // sent back: the record says.
        if job
            .webhook
            .as_ref()
            .is_some_and(|shown| shown.state != DeliveryState::Failed)
        {
            return Ok(());
        }
        let Some(marker) = self.ledger.marker(&job.id).await? else {
            return Ok(());
        };
        match mongodb::bson::from_document::<Delivery>(marker) {
            Ok(delivery) => self.show(&job.id, &delivery).await,
            Err(_) => Ok(()),
        }
    }

    /// Job `job_id`, if it exists.
    async fn job(&self, job_id: &str) -> anyhow::Result<Option<Job>> {
        self.jobs
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading job {job_id}"))
    }

    /// The final job with its callback, if it has one and its webhook is not settled.
    async fn due(&self, job_id: &str) -> anyhow::Result<Option<(Job, String)>> {
        let Some(job) = self.job(job_id).await? else {
            return Ok(None);
        };
        if !job.status.is_final()
            || job
                .webhook
                .as_ref()
                .is_some_and(|d| d.state != DeliveryState::Failed)
        {
            return Ok(None);
        }
        let url = match &job.options.callback_url {
            Some(url) => Some(url.clone()),
            None => self.settings_of(&job.owner).await?.and_then(|s| s.url),
        };
        Ok(url.map(|url| (job, url)))
    }

    async fn settings_of(&self, owner: &str) -> anyhow::Result<Option<Settings>> {
        self.settings
            .find_one(doc! { "_id": owner })
            .await
            .with_context(|| format!("reading the webhook settings of {owner}"))
    }

    /// The owner's settings, made (with a new secret) if they have none yet: a job may name a
    /// callback before its owner ever asked for the secret.
    async fn signing_settings(&self, owner: &str) -> anyhow::Result<Settings> {
        if let Some(settings) = self.settings_of(owner).await? {
            return Ok(settings);
        }
        let settings = Settings {
            owner: owner.to_owned(),
            secret: Secret::generate().map_err(anyhow::Error::msg)?.encode(),
            previous_secret: None,
            previous_until: None,
            url: None,
            updated_at: now_ms(),
        };
        match self.settings.insert_one(&settings).await {
            Ok(_) => Ok(settings),
            // Made meanwhile (the owner asked for it): theirs counts.
            Err(error) if is_duplicate_key(&error) => self
                .settings_of(owner)
                .await?
                .context("the webhook settings vanished"),
            Err(error) => Err(error).context("storing webhook settings"),
        }
    }

    /// One POST of the job's event; `Err` when it could not even be tried (the store).
    async fn attempt(&self, job: &Job, url: &str) -> anyhow::Result<Attempt> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => {
                return Ok(Attempt::Refused(format!(
                    "the callback URL is invalid: {error}"
                )))
            }
        };
        // A literal address is never resolved: checked here.
        if let Some(refusal) = literal_refusal(&parsed, &self.policy) {
            return Ok(Attempt::Refused(format!("callback refused: {refusal}")));
        }
        let settings = self.signing_settings(&job.owner).await?;
        let now = now_ms();
        let secrets: Vec<Secret> = settings
            .signing_secrets(now)
            .into_iter()
            .filter_map(Secret::parse)
            .collect();
        anyhow::ensure!(
            !secrets.is_empty(),
            "the webhook secret of {} is unreadable",
            job.owner
        );
        let (id, body) = event(job, &self.links, now);
        let timestamp = u64::try_from(now / 1000).unwrap_or(0);
        let signature = mp3_webhook::sign(
            &secrets.iter().collect::<Vec<_>>(),
            &id,
            timestamp,
            body.as_bytes(),
        );
        let sent = self
            .client
            .post(parsed)
            .header("content-type", "application/json")
            .header(mp3_webhook::ID_HEADER, &id)
            .header(mp3_webhook::TIMESTAMP_HEADER, timestamp.to_string())
            .header(mp3_webhook::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                if let Some(refusal) = refusal_in(&error) {
                    return Ok(Attempt::Refused(format!("callback refused: {refusal}")));
                }
                return Ok(Attempt::Failed {
                    error: mp3_worker::one_line(&anyhow::Error::new(error)),
                });
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(Attempt::Delivered { status });
        }
        // Only the first bytes: a receiver may answer with any amount.
        let mut response = response;
        let mut answer = Vec::new();
        while answer.len() < ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
                _ => break,
            }
        }
        answer.truncate(ANSWER_BYTES);
        let answer = String::from_utf8_lossy(&answer);
        Ok(Attempt::Failed {
            error: format!(
                "the receiver answered {status}: {}",
                answer.lines().next().unwrap_or("").trim()
            ),
        })
    }

    async fn show(&self, job_id: &str, delivery: &Delivery) -> anyhow::Result<()> {
        let delivery = mongodb::bson::to_bson(delivery).context("encoding the delivery")?;
        self.jobs
            .update_one(
                doc! { "_id": job_id },
                doc! { "$set": { "webhook": delivery } },
            )
            .await
            .with_context(|| format!("recording the webhook of job {job_id}"))?;
        Ok(())
    }
}

/// An outcome, now.
fn delivery(
    state: DeliveryState,
    url: &str,
    status: Option<u16>,
    error: Option<String>,
) -> Delivery {
    Delivery {
        state,
        url: url.to_owned(),
        at: now_ms(),
        status,
        error,
    }
}

/// The `_id` of the document counting a job's failed webhook attempts.
fn failures_id(job_id: &str) -> String {
    format!("{job_id}/failures")
}

/// How long a delivery's claim keeps others from sending the same event.
pub fn lease(timeout: Duration) -> Duration {
    timeout * 3 + Duration::from_secs(5)
}

/// The event of a final job: its id (`<job id>.<done|failed>`, the same on every attempt) and
/// its JSON body: `type`, `id`, `created_at` (the job's end, Unix ms) and `data`, the job as
/// `GET /jobs/{id}` shows it, with an absolute `download_url` (signed, working without a token
/// for the links' lifetime, when links are signed).
pub fn event(job: &Job, links: &Links, now_ms: i64) -> (String, String) {
    let (kind, suffix) = match job.status {
        JobStatus::Done => (JOB_DONE, "done"),
        _ => (JOB_FAILED, "failed"),
    };
    let id = format!("{}.{suffix}", job.id);
    let mut data = job.public_view();
    if let (JobStatus::Done, Some(fid)) = (job.status, &job.mp3_fid) {
        match &links.key {
            Some(key) => {
                let now = u64::try_from(now_ms / 1000).unwrap_or(0);
                let expires = now.saturating_add(links.ttl_secs);
                let base = links.base_url.trim_end_matches('/');
                data["download_url"] =
                    format!("{base}/download?{}", key.query(fid, &job.owner, expires)).into();
                data["download_url_expires_at"] = expires.into();
            }
            None => data["download_url"] = download_url(&links.base_url, fid).into(),
        }
    }
    let body = serde_json::json!({
        "type": kind,
        "id": id,
        "created_at": job.updated_at,
        "data": data,
    });
    (id, body.to_string())
}

/// The refusal of a URL whose host is a literal address the policy refuses.
fn literal_refusal(url: &reqwest::Url, policy: &Policy) -> Option<Refusal> {
    let ip: IpAddr = match url.host()? {
        url::Host::Ipv4(v4) => v4.into(),
        url::Host::Ipv6(v6) => v6.into(),
        url::Host::Domain(_) => return None,
    };
    policy.check(ip).err()
}

/// Resolves names with the system's resolver, and refuses a name if any of its addresses is
/// refused: the client then connects only to addresses that were checked.
struct CheckedResolver(Arc<Policy>);

/// A name refused by the policy.
#[derive(Debug)]
struct RefusedName(String);

impl std::fmt::Display for RefusedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedName {}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                if let Err(refusal) = policy.check(address.ip()) {
                    // The address stays in the log: the job's owner learns only that it is not
                    // public (names resolve inside the cluster, with its search domains).
                    tracing::warn!(%host, %refusal, "webhook callback refused");
                    return Err(Box::new(RefusedName(format!(
                        "{host} resolves to a non-public address"
                    )))
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The policy's refusal inside a client error, if that is what it is.
fn refusal_in(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedName>() {
            return Some(refused.0.clone());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp3_download_link::LinkKey;

    fn job(status: JobStatus) -> Job {
        let mut job = Job::queued(
            "665f1c0e8b3e4a2d9c1b0a01",
            "a@example.com",
            "665f1c0e8b3e4a2d9c1b0a02",
            "talk.mp4",
            1_000,
        );
        job.status = status;
        job.updated_at = 2_000;
        match status {
            JobStatus::Done => job.mp3_fid = Some("665f1c0e8b3e4a2d9c1b0a03".into()),
            _ => job.error = Some("no audio".into()),
        }
        job
    }

    #[test]
    fn events_carry_the_job_and_a_link_that_works_without_a_token() {
        let links = Links {
            base_url: "https://mp3.example/".into(),
            key: Some(LinkKey::new(&"k".repeat(32)).unwrap()),
            ttl_secs: 3_600,
        };
        let (id, body) = event(&job(JobStatus::Done), &links, 10_000_000);
        assert_eq!(id, "665f1c0e8b3e4a2d9c1b0a01.done");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&body["type"], &body["id"]),
            (&"job.done".into(), &id.clone().into())
        );
        assert_eq!(body["created_at"], 2_000);
        let data = &body["data"];
        assert_eq!(
            (&data["status"], &data["filename"]),
            (&"done".into(), &"talk.mp4".into())
        );
        let url = data["download_url"].as_str().unwrap();
        assert!(
            url.starts_with(
                "https://mp3.example/download?fid=665f1c0e8b3e4a2d9c1b0a03&expires=13600&sig="
            ),
            "{url}"
        );
        assert_eq!(data["download_url_expires_at"], 13_600);
        assert!(data.get("error").is_none());

        let plain = Links { key: None, ..links };
        let (id, body) = event(&job(JobStatus::Failed), &plain, 10_000_000);
        assert_eq!(id, "665f1c0e8b3e4a2d9c1b0a01.failed");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], "job.failed");
        assert_eq!(body["data"]["error"], "no audio");
        assert!(body["data"].get("download_url").is_none());
        let (_, done) = event(&job(JobStatus::Done), &plain, 10_000_000);
        assert!(
            done.contains(
                r#""download_url":"https://mp3.example/download?fid=665f1c0e8b3e4a2d9c1b0a03""#
            ),
            "{done}"
        );
    }

    #[test]
    fn literal_addresses_are_checked_without_resolving() {
        let policy = Policy::default();
        let refused = |url: &str| literal_refusal(&reqwest::Url::parse(url).unwrap(), &policy);
        assert_eq!(
            refused("http://127.0.0.1:8080/hook")
                .map(|r| r.to_string())
                .as_deref(),
            Some("127.0.0.1 is a loopback address")
        );
        assert!(refused("http://[::ffff:10.0.0.1]/").is_some());
        assert!(refused("http://169.254.169.254/latest/meta-data").is_some());
        assert!(refused("https://93.184.216.34/").is_none());
        assert!(
            refused("https://hooks.example.com/").is_none(),
            "names are checked when resolved"
        );
    }
}
