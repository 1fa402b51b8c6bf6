//! What the converter does with one `video` message.

use std::time::Instant;

use anyhow::{anyhow, Context as _};
use futures_util::io::{AsyncReadExt as _, AsyncWriteExt as _};
use mongodb::bson::oid::ObjectId;
use mp3_model::topology::MP3_QUEUE;
use mp3_model::{new_object_id, Job, JobMessage, Options};
use mp3_worker::{Context, Failure, GivenUp, Handler, Interrupted};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::Instrument as _;

use crate::convert::{ConvertError, Source};
use crate::layout::{self, Layout};
use crate::reason::public_reason;
use crate::store::{Claim, MarkFailed, Store};
use crate::tags;
use crate::warm::WarmEncoders;

/// The converter's own metrics (the runtime adds retries, dead letters, in flight).
#[derive(Clone)]
pub struct Metrics {
    done: Counter,
    failed: Counter,
    duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            done: Counter::default(),
            failed: Counter::default(),
            // 0.25 s to about 17 minutes.
            duration: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
        };
        registry.register("jobs_done", "Jobs converted", metrics.done.clone());
        registry.register(
            "jobs_failed",
            "Jobs given up and marked failed",
            metrics.failed.clone(),
        );
        registry.register(
            "conversion_duration_seconds",
            "Time to convert one video, from reading it to storing the MP3",
            metrics.duration.clone(),
        );
        registry.register("bytes_in", "Video bytes read", metrics.bytes_in.clone());
        registry.register("bytes_out", "MP3 bytes written", metrics.bytes_out.clone());
        metrics
    }
}

pub struct Converter {
    store: Store,
    encoders: WarmEncoders,
    metrics: Metrics,
}

impl Converter {
    /// Starts the waiting ffmpeg processes: needs the Tokio runtime.
    pub fn new(store: Store, encoders: WarmEncoders, metrics: Metrics) -> Self {
        encoders.refill();
        Self {
            store,
            encoders,
            metrics,
        }
    }

    async fn convert_job(
        &self,
        job: &Job,
        options: &Options,
        mp3_fid: ObjectId,
    ) -> Result<(), Failure> {
        let video = match self
            .store
            .video(&job.video_fid)
            .await
            .map_err(Failure::retry)?
        {
            Ok(video) => video,
            Err(error) => return Err(Failure::permanent(error)),
        };
        let started = Instant::now();
        let mut reader = self.store.open_video(video).await.map_err(Failure::retry)?;
        let (layout, prefix) = layout::sniff(&mut reader, video.len)
            .await
            .context("reading the start of the video")
            .map_err(Failure::retry)?;
        tracing::info!(video = %video.id, bytes = video.len, ?layout, "converting");
        let reader = futures_util::io::Cursor::new(prefix).chain(reader);
        let source = match layout {
            Layout::Streamable => Source::Stdin,
            Layout::NeedsSeek => Source::SeekableStdin,
        };
        let encoding = options.encoding();
        let encoder = self
            .encoders
            .take(source, &encoding)
            .map_err(Failure::retry)?;

        let mut upload = self
            .store
            .create_mp3(mp3_fid, &mp3_filename(job), job)
            .await
            .map_err(Failure::retry)?;
        let tag = tags::id3(options).map_err(Failure::retry)?;
        let converted = match upload.write_all(&tag).await {
            Ok(()) => encoder.encode(&encoding, reader, &mut upload).await,
            Err(e) => Err(ConvertError::Transient(
                anyhow::Error::new(e).context("writing the MP3's tag"),
            )),
        };
        let converted = match converted {
            Ok(converted) => converted,
            Err(error) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(error = %abort, "aborting the MP3 upload");
                }
                return Err(match error {
                    ConvertError::Rejected { .. }
                    | ConvertError::Empty { .. }
                    | ConvertError::TooLong => Failure::permanent(error),
                    ConvertError::Transient(error) => Failure::Retry(error),
                });
            }
        };
        upload
            .close()
            .await
            .context("storing the MP3")
            .map_err(Failure::retry)?;
        self.metrics.bytes_in.inc_by(converted.bytes_in);
        self.metrics.bytes_out.inc_by(converted.bytes_out);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            mp3_fid = %mp3_fid,
            bytes_in = converted.bytes_in,
            bytes_out = converted.bytes_out,
            seconds = started.elapsed().as_secs_f64(),
            "converted"
        );
        Ok(())
    }

    async fn handle_job(&self, message: &JobMessage, cx: &Context) -> Result<(), Failure> {
        let mp3_fid = new_object_id().map_err(|e| Failure::retry(anyhow::anyhow!(e)))?;
        let mp3_fid = ObjectId::from_bytes(mp3_fid);
        let mut claim = self
            .store
            .claim(&message.job_id, mp3_fid)
            .await
            .map_err(Failure::retry)?;
        if matches!(claim, Claim::NotFound)
            && self
                .store
                .is_deleted(&message.job_id)
                .await
                .map_err(Failure::retry)?
        {
            tracing::info!("the job was deleted by its owner; dropping its message");
            return Ok(());
        }
        if matches!(claim, Claim::NotFound)
            && message.is_seed()
            && self
                .store
                .create_seed_job(message)
                .await
                .map_err(Failure::retry)?
        {
            claim = self
                .store
                .claim(&message.job_id, mp3_fid)
                .await
                .map_err(Failure::retry)?;
        }
        let (job, leftover) = match claim {
            Claim::Claimed { job, leftover } => (job, leftover),
            Claim::Done { job, mp3_fid } => {
                // A redelivery after the MP3 was stored: announce it again (the notifier
                // de-duplicates), never convert twice.
                tracing::info!(%mp3_fid, "already converted; publishing it again");
                return announce(cx, &job, Some(&mp3_fid), None).await;
            }
            Claim::Failed { job, error } => {
                tracing::info!(%error, "already failed; publishing the failure again");
                return announce(cx, &job, None, Some(&error)).await;
            }
            Claim::NotFound => {
                return Err(Failure::permanent(anyhow!(
                    "job {} does not exist",
                    message.job_id
                )));
            }
        };
        if job.video_fid != message.video_fid {
            tracing::warn!(
                message_video = %message.video_fid,
                job_video = %job.video_fid,
                "the message and the job disagree on the video; using the job's"
            );
        }
        if let Some(leftover) = leftover {
            tracing::info!(%leftover, "deleting the MP3 of an earlier, interrupted attempt");
            self.store
                .delete_mp3(leftover)
                .await
                .map_err(Failure::retry)?;
        }
        // Claims are counted on the job, whatever became of them: attempts whose converter died
        // (no retry copy counted them) use the allowance up too, so a video that kills its
        // converter is given up instead of looping.
        if job.attempts >= cx.max_attempts {
            return Err(Failure::permanent(Interrupted::WorkerStopped));
        }

        // The job's options, read with the claim anyway: a message republished by an older
        // release may lack them.
        if message.options != job.options {
            tracing::warn!("the message and the job disagree on the options; using the job's");
        }
        if let Err(failure) = self.convert_job(&job, &job.options, mp3_fid).await {
            // Best effort: the next claim or the give-up deletes it otherwise.
            if let Err(error) = self.store.delete_mp3(mp3_fid).await {
                tracing::warn!(error = format!("{error:#}"), "deleting a partial MP3");
            }
            // Deleted by its owner mid-conversion (its video went first): nothing to retry. A
            // tombstone beside a job still there (a withdrawal taken back) is no deletion: the
            // owner's delete removes the job last, so at most this costs one retry.
            if self.store.is_deleted(&job.id).await.unwrap_or(false)
                && matches!(self.store.job(&job.id).await, Ok(None))
            {
                tracing::info!("the job was deleted by its owner while converting");
                return Ok(());
            }
            // Its retry may wait in the queues a while: the job shows it is waiting, not
            // converting. (Best effort: the sweeper judges a job left converting by its age.)
            if matches!(failure, Failure::Retry(_)) {
                if let Err(error) = self.store.release(&job.id, mp3_fid).await {
                    tracing::warn!(error = format!("{error:#}"), "handing the job back");
                }
            }
            return Err(failure);
        }
        if !self
            .store
            .mark_done(&job.id, mp3_fid)
            .await
            .map_err(Failure::retry)?
        {
            // Another attempt claimed the job meanwhile (its MP3 is the one that counts), or its
            // owner deleted it.
            tracing::warn!(%mp3_fid, "the job was taken over or deleted; deleting this MP3");
            self.store
                .delete_mp3(mp3_fid)
                .await
                .map_err(Failure::retry)?;
            return Ok(());
        }
        self.metrics.done.inc();
        announce(cx, &job, Some(&mp3_fid.to_hex()), None).await
    }
}

impl Handler for Converter {
    type Message = JobMessage;

    async fn handle(&self, message: &JobMessage, cx: &Context) -> Result<(), Failure> {
        let span = tracing::info_span!("job", job_id = %message.job_id, attempt = cx.attempt);
        let outcome = self.handle_job(message, cx).instrument(span).await;
        // For the next job, now that this one no longer needs the CPU.
        self.encoders.refill();
        outcome
    }

    async fn give_up(
        &self,
        message: &JobMessage,
        error: &anyhow::Error,
        cx: &Context,
    ) -> anyhow::Result<GivenUp> {
        let span = tracing::info_span!("job", job_id = %message.job_id, attempt = cx.attempt);
        // The owner reads this one; the error's detail is in the log already.
        let reason = public_reason(error);
        async {
            match self.store.mark_failed(&message.job_id, reason).await? {
                MarkFailed::Marked { job, leftover } => {
                    if let Some(leftover) = leftover {
                        self.store.delete_mp3(leftover).await?;
                    }
                    self.metrics.failed.inc();
                    tracing::warn!(%reason, "job failed");
                    announce_or_error(cx, &job, None, Some(reason)).await
                }
                MarkFailed::AlreadyFailed { job } => {
                    let error = job.error.clone().unwrap_or_else(|| reason.to_owned());
                    announce_or_error(cx, &job, None, Some(&error)).await
                }
                MarkFailed::Done { job } => {
                    // Converted, but its announcement may be what failed: the owner must
                    // still hear of it (the notifier de-duplicates).
                    tracing::info!("the job is done; announcing it instead of the failure");
                    announce_or_error(cx, &job, job.mp3_fid.as_deref(), None).await
                }
                MarkFailed::NotFound => {
                    tracing::warn!(%reason, "the job does not exist: nobody to tell");
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await?;
        // The job is failed (or announced as done): the message itself still failed.
        Ok(GivenUp::DeadLetter)
    }
}

/// Publishes the job's outcome to `mp3`, with confirm.
async fn announce_or_error(
    cx: &Context,
    job: &Job,
    mp3_fid: Option<&str>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let queued = JobMessage::for_job(job);
    let message = match (mp3_fid, error) {
        (Some(fid), _) => queued.converted(fid),
        (None, error) => queued.failed(error.unwrap_or("conversion failed")),
    };
    cx.publisher
        .publish_json(MP3_QUEUE, &message, &job.id)
        .await
        .context("announcing the job on the mp3 queue")
}

async fn announce(
    cx: &Context,
    job: &Job,
    mp3_fid: Option<&str>,
    error: Option<&str>,
) -> Result<(), Failure> {
    announce_or_error(cx, job, mp3_fid, error)
        .await
        .map_err(Failure::Retry)
}

/// The MP3's file name: the upload's name with an `.mp3` extension, or `<job id>.mp3`.
pub fn mp3_filename(job: &Job) -> String {
    let name = job.filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    if stem.trim().is_empty() {
        format!("{}.mp3", job.id)
    } else {
        format!("{stem}.mp3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp3_model::JobStatus;

    fn job(filename: &str) -> Job {
        Job {
            id: "665f1c0e8b3e4a2d9c1b0a01".into(),
            owner: "a@example.com".into(),
            video_fid: "665f1c0e8b3e4a2d9c1b0a02".into(),
            filename: filename.into(),
            status: JobStatus::Queued,
            mp3_fid: None,
            error: None,
            attempts: 0,
            options: Options::default(),
            webhook: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn mp3_names_follow_the_upload() {
        assert_eq!(mp3_filename(&job("holiday.mp4")), "holiday.mp3");
        assert_eq!(mp3_filename(&job("my.trip.mov")), "my.trip.mp3");
        assert_eq!(mp3_filename(&job("noext")), "noext.mp3");
        assert_eq!(mp3_filename(&job("C:\\videos\\a.avi")), "a.mp3");
        assert_eq!(mp3_filename(&job("../../etc/x.mkv")), "x.mp3");
        assert_eq!(mp3_filename(&job(".mp4")), ".mp4.mp3");
        assert_eq!(mp3_filename(&job("")), "665f1c0e8b3e4a2d9c1b0a01.mp3");
        assert_eq!(mp3_filename(&job("dir/")), "665f1c0e8b3e4a2d9c1b0a01.mp3");
    }
}
