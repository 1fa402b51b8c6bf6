//! The notification record, so a job's email is sent once however often its `mp3` message is
//! delivered: `notified_at` on the job document (`videos.jobs`, set once the SMTP server
//! accepted the email), and claims in `videos.notify_claims` (a lease held while one delivery
//! sends it).
//!
//! A claim is an insert of `{_id: "<job id>/<n>"}`, the n-th claim of the job: of two deliveries
//! claiming at once, the unique `_id` lets exactly one in. A conditional update could not do
//! that on FerretDB, whose `findAndModify` and updates read and then write in two steps, so two
//! claimants could both win (seen in the chaos suite as a second email).
//!
//! The trade-off. Sending an email and recording it cannot be one atomic step, so a crash
//! between the two must resolve one way:
//! - a claim that never expired would make the email at-most-once: a notifier killed after
//!   claiming but before sending would leave the job claimed forever and the user never told;
//! - so the claim is a lease ([`LEASE`]): once it lapses another delivery may send. A notifier
//!   killed after the SMTP server accepted the email but before `notified_at` was written
//!   therefore causes one duplicate email, after the lease. That window is a few milliseconds
//!   per email; a duplicate is the lesser harm than a user never told.
//!
//! The lease is much longer than the SMTP timeout, so a live sender always finishes (or fails
//! and releases the claim) before anyone else may take over.

use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::{Client, Collection};
use mp3_model::{
    Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION, JOBS_COLLECTION, MP3S_DB,
    NOTIFY_CLAIMS_COLLECTION, VIDEOS_DB,
};

/// How long a claim keeps other deliveries from sending the same job's email.
pub const LEASE: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Store {
    jobs: Collection<Job>,
    /// The emails sent, in `notify_claims`.
    emails: Ledger,
    /// Tombstones of the jobs their owners deleted.
    deleted: Collection<Document>,
    /// GridFS `mp3s` files documents, to check an announced MP3 exists.
    mp3_files: Collection<Document>,
}

/// The outcome of [`Store::adopt`].
#[derive(Debug, PartialEq, Eq)]
pub enum Adopt {
    /// The job is done with an MP3 (now, or already).
    Done,
    /// The announced MP3 is not in GridFS `mp3s`.
    NoSuchMp3,
    /// No job by that id, and the message is not a seed-format one to make it from.
    NotFound,
}

/// The outcome of [`Store::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This delivery may send; it must then mark the job sent or release the claim.
    Claimed {
        job: Box<Job>,
    },
    /// The email was sent already.
    AlreadySent,
    /// Another delivery is sending it now; look again after this long.
    Held {
        retry_after: Duration,
    },
    NotFound,
}

impl Store {
    pub fn new(client: &Client) -> Self {
        Self {
            jobs: client.database(VIDEOS_DB).collection(JOBS_COLLECTION),
            emails: Ledger::new(
                client
                    .database(VIDEOS_DB)
                    .collection(NOTIFY_CLAIMS_COLLECTION),
                LEASE,
                "email",
            ),
            deleted: client
                .database(VIDEOS_DB)
                .collection(DELETED_JOBS_COLLECTION),
            mp3_files: client.database(MP3S_DB).collection("fs.files"),
        }
    }

    /// Makes the job of an announcement with an MP3 `done` with that MP3, whoever converted it
    /// (the seed system's converter stores the MP3 and announces it without touching the job).
    /// A job done already keeps its MP3. A seed-format announcement without a job gets one.
    pub async fn adopt(&self, message: &JobMessage, mp3_fid: &str) -> anyhow::Result<Adopt> {
        let job_id = message.job_id.as_str();
        let job = self
            .jobs
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading job {job_id}"))?;
        if job
            .as_ref()
            .is_some_and(|job| job.status == JobStatus::Done)
        {
            return Ok(Adopt::Done);
        }
        if job.is_none() && !message.is_seed() {
            return Ok(Adopt::NotFound);
        }
        let Some(file) = self.mp3_file(mp3_fid).await? else {
            return Ok(Adopt::NoSuchMp3);
        };
        // An MP3 our converter made for another job is not this one's to take.
        if let Ok(owner) = file
            .get_document("metadata")
            .and_then(|m| m.get_str("job_id"))
        {
            if owner != job_id {
                return Ok(Adopt::NoSuchMp3);
            }
        }
        let now = now_ms();
        if job.is_none() {
            let filename = file.get_str("filename").unwrap_or_default();
            let job = Job {
                status: JobStatus::Done,
                mp3_fid: Some(mp3_fid.to_owned()),
                ..Job::for_seed_message(message, filename, now)
            };
            match self.jobs.insert_one(&job).await {
                Ok(_) => {
                    tracing::info!("created the job of a seed-format announcement");
                    return Ok(Adopt::Done);
                }
                // Another delivery made it: the update below is then a no-op or finishes it.
                Err(error) if is_duplicate_key(&error) => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("creating job {job_id}"));
                }
            }
        }
        self.jobs
            .update_one(
                doc! { "_id": job_id, "status": { "$ne": JobStatus::Done.as_str() } },
                doc! {
                    "$set": {
                        "status": JobStatus::Done.as_str(),
                        "mp3_fid": mp3_fid,
                        "updated_at": now,
                    },
                    "$unset": { "converting_fid": "", "error": "" },
                },
            )
            .await
            .with_context(|| format!("marking job {job_id} done"))?;
        tracing::info!(%mp3_fid, "marked done with an MP3 another converter announced");
        Ok(Adopt::Done)
    }

    async fn mp3_file(&self, mp3_fid: &str) -> anyhow::Result<Option<Document>> {
        let Ok(id) = ObjectId::parse_str(mp3_fid) else {
            return Ok(None);
        };
        self.mp3_files
            .find_one(doc! { "_id": id })
            .await
            .with_context(|| format!("reading the files document of MP3 {mp3_fid}"))
    }

    /// Claims the job's notification for `token` unless it was sent or is claimed (and the
    /// lease has not lapsed).
    pub async fn claim(&self, job_id: &str, token: &str) -> anyhow::Result<Claim> {
        let Some(job) = self
            .jobs
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading job {job_id}"))?
        else {
            return Ok(Claim::NotFound);
        };
        if job.contains_key("notified_at") {
            return Ok(Claim::AlreadySent);
        }
        let job: Job = mongodb::bson::from_document(job)
            .with_context(|| format!("job {job_id} is not a valid job document"))?;
        Ok(match self.emails.take(job_id, token).await? {
            Take::Claimed => Claim::Claimed { job: Box::new(job) },
            Take::Done => Claim::AlreadySent,
            Take::Held { retry_after, .. } => Claim::Held { retry_after },
        })
    }

    /// Whether the job's email is recorded sent.
    pub async fn email_sent(&self, job_id: &str) -> anyhow::Result<bool> {
        self.emails.done(job_id).await
    }

    /// Whether the owner deleted job `job_id` (the gateway left its tombstone).
    pub async fn is_deleted(&self, job_id: &str) -> anyhow::Result<bool> {
        let tombstone = self
            .deleted
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading whether job {job_id} was deleted"))?;
        Ok(tombstone.is_some())
    }

    /// Records that the email was sent (`kind`: which one), and drops the job's claims.
    /// `notified_at` on the job is kept for people reading it; the marker is what counts.
    pub async fn mark_sent(&self, job_id: &str, token: &str, kind: &str) -> anyhow::Result<()> {
        self.emails
            .record(job_id, token, doc! { "kind": kind })
            .await?;
        self.jobs
            .update_one(
                doc! { "_id": job_id },
                doc! { "$set": { "notified_at": now_ms(), "notified_kind": kind } },
            )
            .await
            .with_context(|| format!("recording the notification of job {job_id}"))?;
        Ok(())
    }

    /// Gives the claim up after a failed send, so a retry can send.
    pub async fn release(&self, job_id: &str, token: &str) -> anyhow::Result<()> {
        self.emails.release(job_id, token).await
    }
}

/// What [`Ledger::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// This delivery may act; it must then [`Ledger::record`] it or [`Ledger::release`].
    Claimed,
    /// It was done already.
    Done,
    /// Another delivery is at it; look again after this long. `giving_up` (told to give-ups
    /// only): it is a give-up's claim (see [`Ledger::take_to_give_up`]), or was given back.
    Held {
        retry_after: Duration,
        giving_up: bool,
    },
}

/// Something done at most once per job by whichever delivery claims it first (an email, a
/// webhook): claims `{_id: "<job id>/<n>"}` leased for `lease`, and a marker
/// `{_id: "<job id>/sent"}` once done, in a collection of its own. See the module's comment for
/// why inserts, and what a crash between acting and recording costs.
#[derive(Clone)]
pub struct Ledger {
    claims: Collection<Document>,
    lease: Duration,
    /// What is recorded, for messages ("email", "webhook").
    what: &'static str,
}

impl Ledger {
    pub fn new(claims: Collection<Document>, lease: Duration, what: &'static str) -> Self {
        Self {
            claims,
            lease,
            what,
        }
    }

    /// The job's latest claim, if any.
    async fn latest(&self, job_id: &str) -> anyhow::Result<Option<Document>> {
        self.claims
            .find_one(doc! { "job_id": job_id, "n": { "$exists": true } })
            .sort(doc! { "n": -1 })
            .await
            .with_context(|| format!("reading the {} claims of job {job_id}", self.what))
    }

    /// What is left of `claim`'s lease at `now`, in ms (0 or less: lapsed).
    fn lease_left(&self, claim: &Document, now: i64) -> i64 {
        let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        integer(claim, "claimed_at").saturating_add(lease) - now
    }

    /// Claims the job for `token` unless it was done or a live claim holds it.
    pub async fn take(&self, job_id: &str, token: &str) -> anyhow::Result<Take> {
        self.take_as(job_id, token, false).await
    }

    /// Claims the job for `token` to record it given up: a claim marked so, which tells another
    /// give-up of the job meeting it that this one is recording the same end.
    pub async fn take_to_give_up(&self, job_id: &str, token: &str) -> anyhow::Result<Take> {
        self.take_as(job_id, token, true).await
    }

    async fn take_as(&self, job_id: &str, token: &str, giving_up: bool) -> anyhow::Result<Take> {
        if self.done(job_id).await? {
            return Ok(Take::Done);
        }
        let now = now_ms();
        let latest = self.latest(job_id).await?;
        let previous = latest.as_ref().map_or(0, |c| integer(c, "n"));
        if let Some(latest) = &latest {
            let left = self.lease_left(latest, now);
            if left > 0 {
                return Ok(Take::Held {
                    retry_after: Duration::from_millis(u64::try_from(left).unwrap_or(0))
                        + Duration::from_secs(1),
                    giving_up: is_give_up(latest),
                });
            }
        }
        let n = previous + 1;
        let id = format!("{job_id}/{n}");
        let mut claim = doc! {
            "_id": &id,
            "job_id": job_id,
            "n": n,
            "token": token,
            "claimed_at": now,
        };
        if giving_up {
            claim.insert("giving_up", true);
        }
        match self.claims.insert_one(claim).await {
            Ok(_) => Ok(Take::Claimed),
            // Another delivery took this very claim first. Whose it is matters to a give-up
            // only; one given back already is worth taking again at once, as another give-up's.
            Err(error) if is_duplicate_key(&error) => {
                let giving_up = giving_up
                    && match self.claims.find_one(doc! { "_id": &id }).await {
                        Ok(theirs) => theirs.as_ref().is_none_or(is_give_up),
                        Err(_) => false,
                    };
                Ok(Take::Held {
                    retry_after: self.lease + Duration::from_secs(1),
                    giving_up,
                })
            }
            Err(error) => {
                Err(error).with_context(|| format!("claiming the {} of job {job_id}", self.what))
            }
        }
    }

    /// The job's marker, once done.
    pub async fn marker(&self, job_id: &str) -> anyhow::Result<Option<Document>> {
        self.claims
            .find_one(doc! { "_id": sent_marker(job_id) })
            .await
            .with_context(|| format!("reading the {} marker of job {job_id}", self.what))
    }

    /// Whether it was done: the job's marker exists.
    pub async fn done(&self, job_id: &str) -> anyhow::Result<bool> {
        Ok(self.marker(job_id).await?.is_some())
    }

    /// Records it done (with `fields` on the marker) and drops the job's claims. The record
    /// that counts is the marker, which only this insert writes: on FerretDB an update of the
    /// job document can be lost to a concurrent update of it (the sweeper's).
    pub async fn record(&self, job_id: &str, token: &str, fields: Document) -> anyhow::Result<()> {
        let ours = self
            .claims
            .find_one(doc! { "job_id": job_id, "token": token })
            .await
            .with_context(|| format!("reading the {} claim of job {job_id}", self.what))?;
        if ours.is_none() {
            tracing::warn!(
                what = self.what,
                "the claim lapsed while acting: it may be done twice"
            );
        }
        let mut marker = doc! { "_id": sent_marker(job_id), "job_id": job_id, "sent_at": now_ms() };
        marker.extend(fields);
        match self.claims.insert_one(marker).await {
            Ok(_) => {}
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("recording the {} of job {job_id}", self.what))
            }
        }
        self.claims
            .delete_many(doc! { "job_id": job_id, "n": { "$exists": true } })
            .await
            .with_context(|| format!("dropping the {} claims of job {job_id}", self.what))?;
        Ok(())
    }

    /// Gives the claim up after a failure, so a retry can act.
    pub async fn release(&self, job_id: &str, token: &str) -> anyhow::Result<()> {
        self.claims
            .delete_one(doc! { "job_id": job_id, "token": token })
            .await
            .with_context(|| format!("releasing the {} claim of job {job_id}", self.what))?;
        Ok(())
    }
}

/// The `_id` of the document recording that a job's email (or webhook) was sent.
pub fn sent_marker(job_id: &str) -> String {
    format!("{job_id}/sent")
}

/// Whether `claim` was taken by [`Ledger::take_to_give_up`].
fn is_give_up(claim: &Document) -> bool {
    claim.get_bool("giving_up").unwrap_or(false)
}

/// A non-negative integer field, 0 when absent.
fn integer(document: &Document, key: &str) -> i64 {
    match document.get(key) {
        Some(mongodb::bson::Bson::Int64(n)) => *n,
        Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
        _ => 0,
    }
}

/// MongoDB's duplicate key error (11000).
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
