//! A conversion job: the document the gateway and the workers share in MongoDB, and the message
//! they pass through RabbitMQ.

use serde::{Deserialize, Serialize};

use crate::Options;

/// Where a job is. Serialized lowercase (`"queued"`, ...), in the job document and in
/// `GET /jobs/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Stored and published to `video`; no converter has taken it yet.
    Queued,
    /// A converter is working on it (or was, and the message will be redelivered).
    Converting,
    /// The MP3 is in GridFS `mp3s` under `mp3_fid`.
    Done,
    /// Given up after the allowed attempts; `error` says why.
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Converting => "converting",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Done or failed: nothing will change it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// A job document in `videos.jobs`. Ids are 24-hex-digit strings: `id` is the job's own id,
/// `video_fid` and `mp3_fid` are the ObjectIds of the GridFS files, as hex.
///
/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    #[serde(rename = "_id")]
    pub id: String,
    /// The uploader's email (the JWT's `username`): the only user who may see the job or
    /// download its MP3.
    pub owner: String,
    pub video_fid: String,
    /// The uploaded file's name, as the client sent it.
    #[serde(default)]
    pub filename: String,
    pub status: JobStatus,
    #[serde(default)]
    pub mp3_fid: Option<String>,
    /// Why the job failed (set with `status: failed`), one line.
    #[serde(default)]
    pub error: Option<String>,
    /// Conversion attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// What the user asked of the conversion (none for the seed system's jobs).
    #[serde(default, skip_serializing_if = "Options::is_default")]
    pub options: Options,
    /// What became of the job's webhook, once the notifier knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::webhook::Delivery>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Job {
    /// A new job, queued: `id`, its owner, the stored video and the name it was uploaded as.
    pub fn queued(id: &str, owner: &str, video_fid: &str, filename: &str, now_ms: i64) -> Self {
        Self {
            id: id.to_owned(),
            owner: owner.to_owned(),
            video_fid: video_fid.to_owned(),
            filename: filename.to_owned(),
            status: JobStatus::Queued,
            mp3_fid: None,
            error: None,
            attempts: 0,
            options: Options::default(),
            webhook: None,
            created_at: now_ms,
            updated_at: now_ms,
        }
    }

    /// The job with `options`.
    pub fn with_options(self, options: Options) -> Self {
        Self { options, ..self }
    }

    /// The job as its owner sees it (`GET /jobs/{id}`, webhook events), without links: status,
    /// file ids and name, times in ms, the options and the webhook's outcome when there are
    /// any, `mp3_fid` once done, `error` (one line) once failed.
    pub fn public_view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "job_id": self.id,
            "status": self.status.as_str(),
            "video_fid": self.video_fid,
            "filename": self.filename,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if !self.options.is_default() {
            v["options"] = serde_json::to_value(&self.options).unwrap_or_default();
        }
        if let Some(delivery) = &self.webhook {
            v["webhook"] = serde_json::to_value(delivery).unwrap_or_default();
        }
        match (self.status, &self.mp3_fid) {
            (JobStatus::Done, Some(fid)) => v["mp3_fid"] = fid.as_str().into(),
            (JobStatus::Failed, _) => {
                v["error"] = self.error.as_deref().unwrap_or("conversion failed").into()
            }
            _ => {}
        }
        v
    }

    /// The job a seed-format message stands for (see [`JobMessage::is_seed`]): named after its
    /// video, owned by its `username`, queued.
    pub fn for_seed_message(message: &JobMessage, filename: &str, now_ms: i64) -> Self {
        Self::queued(
            &message.job_id,
            &message.username,
            &message.video_fid,
            filename,
            now_ms,
        )
        .with_options(message.options.clone())
    }
}

/// The JSON body of the messages on the `video` and `mp3` queues.
///
/// The seed system's fields (`video_fid`, `mp3_fid`, `username`) plus the job id. On `video`,
/// `mp3_fid` is `null`. On `mp3`, a converted job has `mp3_fid`; a failed one has `mp3_fid: null`
/// and `error`, so the notifier can tell the user either way.
///
/// A message in the seed system's own format has no `job_id`: its job is named after its video
/// (`job_id` = `video_fid`, see [`is_seed`](Self::is_seed)), so every delivery of it, on either
/// queue, means the same job, which the workers create when they first meet it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireMessage")]
pub struct JobMessage {
    pub job_id: String,
    pub video_fid: String,
    pub mp3_fid: Option<String>,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The job's options, so that the converter needs no other read (absent: none asked).
    #[serde(default, skip_serializing_if = "Options::is_default")]
    pub options: Options,
}

/// [`JobMessage`] as received: `job_id` may be missing.
#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    job_id: Option<String>,
    video_fid: String,
    #[serde(default)]
    mp3_fid: Option<String>,
    username: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    options: Options,
}

impl From<WireMessage> for JobMessage {
    fn from(wire: WireMessage) -> Self {
        Self {
            job_id: wire.job_id.unwrap_or_else(|| wire.video_fid.clone()),
            video_fid: wire.video_fid,
            mp3_fid: wire.mp3_fid,
            username: wire.username,
            error: wire.error,
            options: wire.options,
        }
    }
}

impl JobMessage {
    /// Whether this is a seed-format message (or another for the same job): its job is named
    /// after its video. The gateway's jobs have ids of their own, never a video's.
    pub fn is_seed(&self) -> bool {
        self.job_id == self.video_fid
    }

    /// A `video` message for a job without options (see [`for_job`](Self::for_job)).
    pub fn queued(job_id: &str, video_fid: &str, username: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            video_fid: video_fid.to_owned(),
            mp3_fid: None,
            username: username.to_owned(),
            error: None,
            options: Options::default(),
        }
    }

    /// The message published to `video` for `job`, with its options.
    pub fn for_job(job: &Job) -> Self {
        Self {
            options: job.options.clone(),
            ..Self::queued(&job.id, &job.video_fid, &job.owner)
        }
    }

    /// The message the converter publishes to `mp3` once the MP3 is stored.
    pub fn converted(&self, mp3_fid: &str) -> Self {
        Self {
            mp3_fid: Some(mp3_fid.to_owned()),
            error: None,
            ..self.clone()
        }
    }

    /// The message the converter publishes to `mp3` when it gives a job up.
    pub fn failed(&self, error: &str) -> Self {
        Self {
            mp3_fid: None,
            error: Some(error.to_owned()),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_message_has_the_seed_fields_with_null_mp3_fid() {
        let msg = JobMessage::queued("j1", "v1", "a@example.com");
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"job_id": "j1", "video_fid": "v1", "mp3_fid": null, "username": "a@example.com"})
        );
    }

    #[test]
    fn converted_and_failed_messages_keep_the_job_and_user() {
        let msg = JobMessage::queued("j1", "v1", "a@example.com");
        let done = msg.converted("m1");
        assert_eq!((done.mp3_fid.as_deref(), done.error), (Some("m1"), None));
        let failed = msg.failed("no audio stream");
        assert_eq!(failed.mp3_fid, None);
        assert_eq!(failed.error.as_deref(), Some("no audio stream"));
        assert_eq!(
            (failed.job_id.as_str(), failed.username.as_str()),
            ("j1", "a@example.com")
        );
    }

    #[test]
    fn seed_messages_name_their_job_after_their_video() {
        let seed = r#"{"video_fid": "v", "mp3_fid": null, "username": "u"}"#;
        let message: JobMessage = serde_json::from_str(seed).unwrap();
        assert_eq!(message, JobMessage::queued("v", "v", "u"));
        assert!(message.is_seed());
        let converted = r#"{"video_fid": "v", "mp3_fid": "m", "username": "u"}"#;
        let message: JobMessage = serde_json::from_str(converted).unwrap();
        assert_eq!(
            (message.job_id.as_str(), message.mp3_fid.as_deref()),
            ("v", Some("m"))
        );
        assert!(!JobMessage::queued("j1", "v1", "u").is_seed());
        // What the seed's own notifier reads is all there, as it expects it.
        let ours =
            serde_json::to_value(JobMessage::queued("j1", "v1", "u").converted("m")).unwrap();
        assert_eq!(
            (&ours["video_fid"], &ours["mp3_fid"], &ours["username"]),
            (&"v1".into(), &"m".into(), &"u".into())
        );
        for missing in [
            r#"{"mp3_fid": null, "username": "u"}"#,
            r#"{"video_fid": "v", "mp3_fid": null}"#,
            r#"{"video_fid": 5, "username": "u"}"#,
        ] {
            assert!(
                serde_json::from_str::<JobMessage>(missing).is_err(),
                "{missing}"
            );
        }
    }

    #[test]
    fn messages_carry_their_jobs_options() {
        let options = Options::from_fields([("preset", "voice"), ("start", "2")], "a.mp4").unwrap();
        let job = Job::queued("j1", "u", "v1", "a.mp4", 0).with_options(options.clone());
        let message = JobMessage::for_job(&job);
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["options"]["bitrate"], 64);
        assert_eq!(json["options"]["start"], 2.0);
        let back: JobMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back.options, options);
        // The outcome keeps them; a job without any sends none, as before.
        assert_eq!(message.converted("m").options, options);
        let plain = serde_json::to_value(JobMessage::queued("j1", "v1", "u")).unwrap();
        assert!(plain.get("options").is_none());
        let stored = serde_json::to_value(Job::queued("j1", "u", "v1", "a", 0)).unwrap();
        assert!(stored.get("options").is_none());
    }

    #[test]
    fn status_serializes_lowercase() {
        for s in [
            JobStatus::Queued,
            JobStatus::Converting,
            JobStatus::Done,
            JobStatus::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(JobStatus::Done.is_final() && !JobStatus::Converting.is_final());
    }
}
