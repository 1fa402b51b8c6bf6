//! The store's lifecycle, run by every converter now and then ([`Sweeper::run`]):
//! - a final job's source video is deleted (unless configured to keep it);
//! - a final job past the retention is deleted with its MP3 and video, and the record of a job
//!   its owner deleted is dropped;
//! - a job left `queued` or `converting` with no progress for a while (its message lost: a
//!   gateway killed between storing the job and publishing, a message dead-lettered by an
//!   older release) is published again, a few times, then failed and its owner told;
//! - a final job whose owner was not emailed a while after it ended (its announcement
//!   dead-lettered while the notifier could not send) is announced again, a few times;
//! - a resumable upload past its expiry is deleted with its chunks;
//! - files no job or upload names, and chunks no files document owns (an upload or conversion
//!   killed mid-write), are deleted once older than an age no live write reaches.
//!
//! Safe on any number of replicas at once: every deletion is idempotent, and a stuck job is
//! republished only by the replica whose update moved its `updated_at` on (the others' filters
//! then no longer match).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::{Client, Collection, Database};
use mp3_model::topology::{MP3_QUEUE, VIDEO_QUEUE};
use mp3_model::{
    Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION, JOBS_COLLECTION, MP3S_DB,
    NOTIFY_CLAIMS_COLLECTION, UPLOADS_COLLECTION, UPLOAD_LEASES_COLLECTION, VIDEOS_DB,
};
use mp3_worker::Publisher;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::store::{delete_file, Store};

/// How long a sweep under way may go on once the converter is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long one of the sweeper's publishes waits for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(20);

/// Jobs looked at per step and sweep: a large backlog is worked off over several sweeps.
const BATCH: i64 = 500;

/// How long past its expiry (and past its last lease renewal) an upload is left alone: more
/// than a PATCH's lease, and some clock difference between the gateway and the converters.
const UPLOAD_GRACE_MS: i64 = 5 * 60 * 1000;

/// The statuses of a job that is over.
const FINAL: [&str; 2] = ["done", "failed"];

/// What the owner of a job that was lost is told.
pub const LOST_REASON: &str = "the job was lost on the way; please upload the video again";

/// The field recording when a final job's video was deleted.
const VIDEO_DELETED_AT: &str = "video_deleted_at";
/// The field counting the times a stuck job was published again.
const REPUBLISHED: &str = "republished";
/// The field recording when a final job was last announced again, and the count.
const REANNOUNCED_AT: &str = "reannounced_at";
const REANNOUNCED: &str = "reannounced";

/// How the sweeper treats the store.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Time between sweeps (each replica; a random tenth more or less).
    pub interval: Duration,
    /// Delete a job's source video once the job is done or failed.
    pub delete_video_when_final: bool,
    /// How long a done or failed job, its MP3 and its video are kept.
    pub retention: Duration,
    /// A job queued or converting with no progress for this long has lost its message.
    pub stuck_after: Duration,
    /// Times a stuck job is published again before it is failed.
    pub max_republish: u32,
    /// Files and chunks without an owner are deleted once this old (longer than any upload
    /// or conversion takes).
    pub orphan_age: Duration,
    /// Leave files no job names alone (chunks without a file are still deleted): for a store
    /// shared with another system, such as the seed system's during a migration.
    pub keep_unowned_files: bool,
}

/// The orphan step reads every files document and chunk owner: it runs on one sweep in this
/// many (and on the first).
const ORPHAN_SWEEP_EVERY: u64 = 12;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub videos_of_final_jobs: u64,
    pub expired_jobs: u64,
    /// Records of deleted jobs past the retention (no message for them is still around).
    pub expired_tombstones: u64,
    /// Resumable uploads past their expiry: unfinished ones with the bytes they had.
    pub expired_uploads: u64,
    pub republished: u64,
    pub failed_stuck: u64,
    pub reannounced: u64,
    pub orphan_files: u64,
    pub orphan_chunk_sets: u64,
}

impl Swept {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Default)]
struct Metrics {
    swept: Family<[(&'static str, &'static str); 1], Counter>,
    sweeps_failed: Counter,
}

pub struct Sweeper {
    store: Store,
    sweeps: std::sync::atomic::AtomicU64,
    jobs: Collection<Document>,
    videos: Database,
    mp3s: Database,
    policy: Policy,
    metrics: Metrics,
}

impl Sweeper {
    pub fn new(client: &Client, store: Store, policy: Policy, registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register(
            "swept",
            "What the store sweeper deleted, republished or failed, by kind",
            metrics.swept.clone(),
        );
        registry.register(
            "sweeps_failed",
            "Sweeps that stopped on an error (retried at the next interval)",
            metrics.sweeps_failed.clone(),
        );
        let videos = client.database(VIDEOS_DB);
        Self {
            store,
            sweeps: Default::default(),
            jobs: videos.collection(JOBS_COLLECTION),
            videos,
            mp3s: client.database(MP3S_DB),
            policy,
            metrics,
        }
    }

    /// Sweeps every interval until `stop`, with its own RabbitMQ connection (to publish stuck
    /// jobs again and announce the ones it fails).
    pub async fn run(self, amqp_url: String, stop: CancellationToken) {
        let mut connection = None;
        loop {
            let pause = jittered(self.policy.interval);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            if connection.is_none() {
                let Some(fresh) =
                    mp3_worker::amqp::connect_with_retry(&amqp_url, "converter-sweeper", &stop)
                        .await
                else {
                    break;
                };
                connection = Some(fresh);
            }
            let Some(open) = connection.as_ref() else {
                continue;
            };
            let outcome = {
                let sweeping = async {
                    // Under STOP_GRACE: a sweep stopped while it waits still undoes its count.
                    let publisher = Publisher::open(open)
                        .await?
                        .with_confirm_timeout(CONFIRM_TIMEOUT);
                    let swept = self.sweep(&publisher).await;
                    publisher.close().await;
                    swept
                };
                tokio::pin!(sweeping);
                tokio::select! {
                    () = stop.cancelled() => {
                        // Not dropped halfway: a sweep stopped between counting a republication
                        // and publishing it (or undoing the count) would leave a try counted
                        // that was never made. Finished, within reason.
                        if tokio::time::timeout(STOP_GRACE, &mut sweeping).await.is_err() {
                            tracing::warn!("stopping in the middle of a sweep");
                        }
                        break;
                    }
                    outcome = &mut sweeping => outcome,
                }
            };
            match outcome {
                Ok(swept) if swept.is_empty() => tracing::debug!("swept: nothing to do"),
                Ok(swept) => tracing::info!(?swept, "swept the store"),
                Err(error) => {
                    self.metrics.sweeps_failed.inc();
                    tracing::warn!(error = format!("{error:#}"), "sweeping the store");
                    // A fresh connection next time: this one may be what failed.
                    if let Some(stale) = connection.take() {
                        let _ = tokio::time::timeout(
                            mp3_worker::amqp::CLOSE_TIMEOUT,
                            stale.close(200, "bye".into()),
                        )
                        .await;
                    }
                }
            }
        }
        if let Some(connection) = connection {
            let close = connection.close(200, "bye".into());
            let _ = tokio::time::timeout(mp3_worker::amqp::CLOSE_TIMEOUT, close).await;
        }
    }

    /// One sweep: every step, each over at most [`BATCH`] jobs. A step that fails does not
    /// keep the others from running; the first error is returned once all have run.
    pub async fn sweep(&self, publisher: &Publisher) -> anyhow::Result<Swept> {
        let now = now_ms();
        let sweep = self
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut swept = Swept::default();
        let mut first_error = None;
        let mut note = |step: &str, result: anyhow::Result<()>| {
            if let Err(error) = result {
                tracing::warn!(step, error = format!("{error:#}"), "a sweep step failed");
                first_error.get_or_insert(error);
            }
        };
        // Expired jobs first: nobody needs to hear of a job about to be deleted.
        note("expired jobs", self.expired_jobs(now, &mut swept).await);
        note(
            "expired uploads",
            self.expired_uploads(now, &mut swept).await,
        );
        note(
            "stuck jobs",
            self.stuck_jobs(publisher, now, &mut swept).await,
        );
        note(
            "unannounced jobs",
            self.unannounced_jobs(publisher, now, &mut swept).await,
        );
        if self.policy.delete_video_when_final {
            note(
                "videos of final jobs",
                self.videos_of_final_jobs(now, &mut swept).await,
            );
        }
        if sweep.is_multiple_of(ORPHAN_SWEEP_EVERY) {
            note("orphans", self.orphans(now, &mut swept).await);
        }
        for (kind, count) in [
            ("video_of_final_job", swept.videos_of_final_jobs),
            ("expired_job", swept.expired_jobs),
            ("expired_tombstone", swept.expired_tombstones),
            ("expired_upload", swept.expired_uploads),
            ("republished_job", swept.republished),
            ("failed_stuck_job", swept.failed_stuck),
            ("reannounced_job", swept.reannounced),
            ("orphan_file", swept.orphan_files),
            ("orphan_chunks", swept.orphan_chunk_sets),
        ] {
            self.metrics
                .swept
                .get_or_create(&[("kind", kind)])
                .inc_by(count);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(swept),
        }
    }

    /// Up to [`BATCH`] documents of `videos.jobs` matching `filter`, each with the job it is;
    /// one that is not a valid job is logged and skipped, never stopping the others.
    async fn jobs_matching(
        &self,
        filter: Document,
        what: &str,
    ) -> anyhow::Result<Vec<(Document, Job)>> {
        let documents: Vec<Document> = self
            .jobs
            .find(filter)
            .limit(BATCH)
            .await
            .with_context(|| format!("finding {what}"))?
            .try_collect()
            .await
            .with_context(|| format!("finding {what}"))?;
        Ok(documents
            .into_iter()
            .filter_map(|document| match mongodb::bson::from_document::<Job>(document.clone()) {
                Ok(job) => Some((document, job)),
                Err(error) => {
                    tracing::warn!(%error, id = ?document.get("_id"), "not a job document; left alone");
                    None
                }
            })
            .collect())
    }

    async fn stuck_jobs(
        &self,
        publisher: &Publisher,
        now: i64,
        swept: &mut Swept,
    ) -> anyhow::Result<()> {
        let cutoff = now - millis(self.policy.stuck_after);
        // With a backlog on `video`, a queued job may just be waiting its turn: only converting
        // jobs (whose attempt outlived every deadline) are judged until the queue drains.
        let backlog = publisher.queue_depth(VIDEO_QUEUE).await? > 0;
        let statuses: Vec<&str> = if backlog {
            vec![JobStatus::Converting.as_str()]
        } else {
            vec![JobStatus::Queued.as_str(), JobStatus::Converting.as_str()]
        };
        let filter = doc! { "status": { "$in": statuses }, "updated_at": { "$lt": cutoff } };
        for (document, job) in self.jobs_matching(filter, "stuck jobs").await? {
            let republished = count(&document, REPUBLISHED);
            if republished >= u64::from(self.policy.max_republish) {
                // Only if nobody touched it since it was read: a converter may have claimed it.
                if let Some((job, leftover)) = self.store.fail_unchanged(&job, LOST_REASON).await? {
                    if let Some(leftover) = leftover {
                        self.store.delete_mp3(leftover).await?;
                    }
                    let message = JobMessage::for_job(&job);
                    publisher
                        .publish_json(MP3_QUEUE, &message.failed(LOST_REASON), &job.id)
                        .await?;
                    tracing::warn!(job_id = %job.id, republished, "failed a stuck job");
                    swept.failed_stuck += 1;
                }
                continue;
            }
            // Only the replica whose update matches the `updated_at` it read republishes.
            let moved = self
                .jobs
                .update_one(
                    doc! { "_id": &job.id, "status": job.status.as_str(), "updated_at": job.updated_at },
                    doc! { "$set": { "updated_at": now }, "$inc": { REPUBLISHED: 1 } },
                )
                .await
                .with_context(|| format!("marking job {} republished", job.id))?;
            if moved.modified_count == 1 {
                let message = JobMessage::for_job(&job);
                if let Err(error) = publisher.publish_json(VIDEO_QUEUE, &message, &job.id).await {
                    // Not republished after all: the try is not used up, nor the wait begun.
                    self.jobs
                        .update_one(
                            doc! { "_id": &job.id, "updated_at": now },
                            doc! { "$set": { "updated_at": job.updated_at }, "$inc": { REPUBLISHED: -1 } },
                        )
                        .await
                        .with_context(|| format!("undoing the republication of job {}", job.id))?;
                    return Err(error);
                }
                tracing::warn!(job_id = %job.id, status = job.status.as_str(), "republished a stuck job");
                swept.republished += 1;
            }
        }
        Ok(())
    }

    async fn unannounced_jobs(
        &self,
        publisher: &Publisher,
        now: i64,
        swept: &mut Swept,
    ) -> anyhow::Result<()> {
        let cutoff = now - millis(self.policy.stuck_after);
        let max = i64::from(self.policy.max_republish);
        let filter = doc! {
            "status": { "$in": FINAL.as_slice() },
            "notified_at": { "$exists": false },
            "updated_at": { "$lt": cutoff },
            "$and": [
                { "$or": [
                    { REANNOUNCED_AT: { "$exists": false } },
                    { REANNOUNCED_AT: { "$lt": cutoff } },
                ] },
                { "$or": [
                    { REANNOUNCED: { "$exists": false } },
                    { REANNOUNCED: { "$lt": max } },
                ] },
            ],
        };
        for (document, job) in self.jobs_matching(filter, "unannounced jobs").await? {
            // The notifier's own record of the email (see its store): `notified_at` on the job
            // can be lost to a concurrent update on FerretDB.
            let sent = self
                .videos
                .collection::<Document>(NOTIFY_CLAIMS_COLLECTION)
                .find_one(doc! { "_id": format!("{}/sent", job.id) })
                .await
                .with_context(|| format!("reading the sent marker of job {}", job.id))?;
            if sent.is_some() {
                continue;
            }
            let previous = document.get(REANNOUNCED_AT).cloned().unwrap_or(Bson::Null);
            let filter = match previous {
                Bson::Null => doc! { "_id": &job.id, REANNOUNCED_AT: { "$exists": false } },
                at => doc! { "_id": &job.id, REANNOUNCED_AT: at },
            };
            let moved = self
                .jobs
                .update_one(
                    filter,
                    doc! { "$set": { REANNOUNCED_AT: now }, "$inc": { REANNOUNCED: 1 } },
                )
                .await
                .with_context(|| format!("marking job {} announced again", job.id))?;
            if moved.modified_count != 1 {
                continue;
            }
            let queued = JobMessage::for_job(&job);
            let message = match (&job.status, &job.mp3_fid) {
                (JobStatus::Done, Some(mp3_fid)) => queued.converted(mp3_fid),
                _ => queued.failed(job.error.as_deref().unwrap_or("conversion failed")),
            };
            if let Err(error) = publisher.publish_json(MP3_QUEUE, &message, &job.id).await {
                // Not announced after all: the try is not used up, nor the wait begun.
                let undo = match document.get(REANNOUNCED_AT) {
                    Some(at) => {
                        doc! { "$set": { REANNOUNCED_AT: at.clone() }, "$inc": { REANNOUNCED: -1 } }
                    }
                    None => doc! { "$unset": { REANNOUNCED_AT: "" }, "$inc": { REANNOUNCED: -1 } },
                };
                self.jobs
                    .update_one(doc! { "_id": &job.id, REANNOUNCED_AT: now }, undo)
                    .await
                    .with_context(|| format!("undoing the announcement of job {}", job.id))?;
                return Err(error);
            }
            tracing::warn!(job_id = %job.id, "announced a job whose owner was not told");
            swept.reannounced += 1;
        }
        Ok(())
    }

    async fn videos_of_final_jobs(&self, now: i64, swept: &mut Swept) -> anyhow::Result<()> {
        let filter =
            doc! { "status": { "$in": FINAL.as_slice() }, VIDEO_DELETED_AT: { "$exists": false } };
        for (_, job) in self.jobs_matching(filter, "final jobs with videos").await? {
            if let Ok(id) = ObjectId::parse_str(&job.video_fid) {
                delete_file(&self.videos, id).await?;
            }
            self.jobs
                .update_one(
                    doc! { "_id": &job.id },
                    doc! { "$set": { VIDEO_DELETED_AT: now } },
                )
                .await
                .with_context(|| format!("recording the deletion of job {}'s video", job.id))?;
            swept.videos_of_final_jobs += 1;
        }
        Ok(())
    }

    async fn expired_jobs(&self, now: i64, swept: &mut Swept) -> anyhow::Result<()> {
        let cutoff = now - millis(self.policy.retention);
        let filter =
            doc! { "status": { "$in": FINAL.as_slice() }, "updated_at": { "$lt": cutoff } };
        for (_, job) in self.jobs_matching(filter, "expired jobs").await? {
            // The files first: a sweep stopped half-way finds the job again next time.
            if let Some(mp3) = job
                .mp3_fid
                .as_deref()
                .and_then(|h| ObjectId::parse_str(h).ok())
            {
                self.store.delete_mp3(mp3).await?;
            }
            if let Ok(video) = ObjectId::parse_str(&job.video_fid) {
                delete_file(&self.videos, video).await?;
            }
            self.videos
                .collection::<Document>(NOTIFY_CLAIMS_COLLECTION)
                .delete_many(doc! { "job_id": &job.id })
                .await
                .with_context(|| format!("deleting the email claims of job {}", job.id))?;
            self.jobs
                .delete_one(doc! { "_id": &job.id, "updated_at": job.updated_at })
                .await
                .with_context(|| format!("deleting expired job {}", job.id))?;
            swept.expired_jobs += 1;
        }
        let tombstones = self
            .videos
            .collection::<Document>(DELETED_JOBS_COLLECTION)
            .delete_many(doc! { "deleted_at": { "$lt": cutoff } })
            .await
            .context("deleting the records of deleted jobs")?;
        swept.expired_tombstones += tombstones.deleted_count;
        Ok(())
    }

    /// Resumable uploads past `expires_at` (the gateway renews it with every PATCH save) by
    /// more than [`UPLOAD_GRACE_MS`], and with no PATCH holding a fresh lease on them (a long
    /// checksummed PATCH saves only at its end): the upload's document goes first (only if
    /// still expired), then its chunks unless it was finished (its file is its job's then).
    async fn expired_uploads(&self, now: i64, swept: &mut Swept) -> anyhow::Result<()> {
        let uploads = self.videos.collection::<Document>(UPLOADS_COLLECTION);
        let leases = self.videos.collection::<Document>(UPLOAD_LEASES_COLLECTION);
        let cutoff = now - UPLOAD_GRACE_MS;
        let mut cursor = uploads
            .find(doc! { "expires_at": { "$lt": cutoff } })
            .projection(doc! { "video_fid": 1, "done": 1 })
            .limit(BATCH)
            .await
            .context("listing expired uploads")?;
        let mut expired = Vec::new();
        while let Some(upload) = cursor.try_next().await.context("listing expired uploads")? {
            expired.push(upload);
        }
        for upload in expired {
            let Ok(id) = upload.get_str("_id") else {
                continue;
            };
            let written = leases
                .find_one(doc! { "upload": id, "at": { "$gt": now - UPLOAD_GRACE_MS } })
                .await
                .with_context(|| format!("reading the leases of upload {id}"))?;
            if written.is_some() {
                continue;
            }
            let gone = uploads
                .delete_one(doc! { "_id": id, "expires_at": { "$lt": cutoff } })
                .await
                .with_context(|| format!("deleting expired upload {id}"))?;
            if gone.deleted_count == 0 {
                continue;
            }
            if !upload.get_bool("done").unwrap_or(false) {
                if let Some(video) = upload.get_str("video_fid").ok().and_then(parse_id) {
                    delete_file(&self.videos, video).await?;
                }
            }
            leases
                .delete_many(doc! { "upload": id })
                .await
                .with_context(|| format!("deleting the leases of upload {id}"))?;
            tracing::info!(upload = id, "deleted an expired upload");
            swept.expired_uploads += 1;
        }
        Ok(())
    }

    async fn orphans(&self, now: i64, swept: &mut Swept) -> anyhow::Result<()> {
        let cutoff_secs = (now - millis(self.policy.orphan_age)) / 1000;
        // Read the ids the jobs name before the files: a file stored after this read is too
        // young to be touched.
        let mut videos = HashSet::new();
        let mut mp3s = HashSet::new();
        let mut cursor = self
            .jobs
            .find(doc! {})
            .projection(doc! { "video_fid": 1, "mp3_fid": 1, "converting_fid": 1 })
            .await
            .context("listing the jobs' files")?;
        while let Some(job) = cursor.try_next().await.context("listing the jobs' files")? {
            videos.extend(job.get_str("video_fid").ok().and_then(parse_id));
            for field in ["mp3_fid", "converting_fid"] {
                mp3s.extend(job.get_str(field).ok().and_then(parse_id));
            }
        }
        // A resumable upload's chunks have no files document until its last byte: they are
        // its upload's until it expires.
        let mut cursor = self
            .videos
            .collection::<Document>(UPLOADS_COLLECTION)
            .find(doc! {})
            .projection(doc! { "video_fid": 1 })
            .await
            .context("listing the uploads' files")?;
        while let Some(upload) = cursor
            .try_next()
            .await
            .context("listing the uploads' files")?
        {
            videos.extend(upload.get_str("video_fid").ok().and_then(parse_id));
        }
        // Only what is older than the cutoff can be judged; read by cursor, never as one answer
        // (`distinct` must fit in 16 MB on MongoDB: some 800,000 ids, and the orphan step
        // would fail for good on a store that large).
        let oldest_young = first_id_of(cutoff_secs);
        for (db, named) in [(&self.videos, &videos), (&self.mp3s, &mp3s)] {
            let mut files: HashSet<ObjectId> = HashSet::new();
            let mut cursor = db
                .collection::<Document>("fs.files")
                .find(doc! { "_id": { "$lt": oldest_young } })
                .projection(doc! { "_id": 1 })
                .await
                .with_context(|| format!("listing the files of {}", db.name()))?;
            while let Some(file) = cursor
                .try_next()
                .await
                .with_context(|| format!("listing the files of {}", db.name()))?
            {
                files.extend(file.get_object_id("_id").ok());
            }
            let unowned = files.iter().filter(|id| !named.contains(id));
            for id in unowned.filter(|_| !self.policy.keep_unowned_files) {
                if older_than(id, cutoff_secs) {
                    delete_file(db, *id).await?;
                    tracing::info!(db = db.name(), file = %id, "deleted a file no job names");
                    swept.orphan_files += 1;
                }
            }
            let mut owners: HashSet<ObjectId> = HashSet::new();
            let mut cursor = db
                .collection::<Document>("fs.chunks")
                .aggregate([
                    doc! { "$match": { "files_id": { "$lt": oldest_young } } },
                    doc! { "$group": { "_id": "$files_id" } },
                ])
                .await
                .with_context(|| format!("listing the chunks of {}", db.name()))?;
            while let Some(owner) = cursor
                .try_next()
                .await
                .with_context(|| format!("listing the chunks of {}", db.name()))?
            {
                owners.extend(owner.get_object_id("_id").ok());
            }
            let orphaned: Vec<ObjectId> = owners
                .into_iter()
                .filter(|id| {
                    !files.contains(id) && !named.contains(id) && older_than(id, cutoff_secs)
                })
                .collect();
            if !orphaned.is_empty() {
                db.collection::<Document>("fs.chunks")
                    .delete_many(doc! { "files_id": { "$in": &orphaned } })
                    .await
                    .with_context(|| format!("deleting orphan chunks in {}", db.name()))?;
                tracing::info!(
                    db = db.name(),
                    files = orphaned.len(),
                    "deleted chunks without a file"
                );
                swept.orphan_chunk_sets += orphaned.len() as u64;
            }
        }
        Ok(())
    }
}

fn parse_id(hex: &str) -> Option<ObjectId> {
    ObjectId::parse_str(hex).ok()
}

/// The smallest ObjectId made at `secs` (Unix seconds): every id made earlier sorts before it.
fn first_id_of(secs: i64) -> ObjectId {
    let mut bytes = [0u8; 12];
    let secs = u32::try_from(secs.max(0)).unwrap_or(u32::MAX);
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// Whether the id was made before `cutoff_secs` (Unix seconds): every writer here and the
/// drivers put the creation time in an ObjectId's first four bytes.
fn older_than(id: &ObjectId, cutoff_secs: i64) -> bool {
    let created = u32::from_be_bytes([id.bytes()[0], id.bytes()[1], id.bytes()[2], id.bytes()[3]]);
    i64::from(created) < cutoff_secs
}

/// A non-negative integer field (0 when absent).
fn count(document: &Document, key: &str) -> u64 {
    match document.get(key) {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

/// `interval` give or take a tenth, so replicas started together do not sweep together.
fn jittered(interval: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // A fraction in [-0.1, 0.1) from the clock's sub-second digits: no need for more.
    let fraction = (f64::from(nanos % 1000) / 1000.0 - 0.5) / 5.0;
    interval.mul_f64(1.0 + fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_at(secs: u32) -> ObjectId {
        let mut bytes = [7u8; 12];
        bytes[..4].copy_from_slice(&secs.to_be_bytes());
        ObjectId::from_bytes(bytes)
    }

    #[test]
    fn final_statuses_are_the_models() {
        let finals: Vec<&str> = [JobStatus::Done, JobStatus::Failed]
            .into_iter()
            .filter(|s| s.is_final())
            .map(JobStatus::as_str)
            .collect();
        assert_eq!(FINAL.as_slice(), finals.as_slice());
    }

    #[test]
    fn age_comes_from_the_id() {
        assert!(older_than(&id_at(100), 101));
        assert!(!older_than(&id_at(101), 101));
        assert!(!older_than(&ObjectId::new(), now_ms() / 1000 - 60));
    }

    #[test]
    fn ids_made_before_a_time_sort_before_its_first_id() {
        let first = first_id_of(101);
        assert!(id_at(100) < first && first <= id_at(101));
        assert!(older_than(&id_at(100), 101) && !older_than(&first, 101));
        assert_eq!(first_id_of(-5), first_id_of(0));
    }

    #[test]
    fn counts_read_any_integer_width_and_default_to_zero() {
        assert_eq!(count(&doc! { "n": 3_i32 }, "n"), 3);
        assert_eq!(count(&doc! { "n": 4_i64 }, "n"), 4);
        assert_eq!(count(&doc! { "n": -1_i32 }, "n"), 0);
        assert_eq!(count(&doc! {}, "n"), 0);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let base = Duration::from_secs(100);
        for _ in 0..50 {
            let pause = jittered(base);
            assert!(pause >= Duration::from_secs(90) && pause <= Duration::from_secs(110));
        }
    }
}
