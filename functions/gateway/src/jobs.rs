//! `GET /jobs/{job_id}`: where a job is, for its owner only.

use component_http::Reply;
use mp3_model::{Job, JobStatus};

/// A job or file id as sent by a client: 24 hex digits, returned lower-case; `None` otherwise.
pub fn parse_id(text: &str) -> Option<String> {
    (text.len() == 24 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// The job as the API shows it: status, file ids, the reason of a failure, times in ms.
pub fn view(job: &Job) -> serde_json::Value {
    let mut v = serde_json::json!({
        "job_id": job.id,
        "status": job.status.as_str(),
        "video_fid": job.video_fid,
        "filename": job.filename,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    });
    match job.status {
        JobStatus::Done => {
            if let Some(fid) = &job.mp3_fid {
                v["mp3_fid"] = fid.as_str().into();
                v["download_url"] = format!("/download?fid={fid}").into();
            }
        }
        JobStatus::Failed => {
            v["error"] = job.error.as_deref().unwrap_or("conversion failed").into();
        }
        JobStatus::Queued | JobStatus::Converting => {}
    }
    v
}

/// 404 for a job that does not exist (or whose id is malformed): the same answer, so ids
/// cannot be probed by their shape.
pub fn not_found() -> Reply {
    Reply::text(404, "job not found", "job_not_found")
}

/// The reply for `user` asking about `job` (looked up by a well-formed id). Another user's job
/// answers exactly as an unknown one, so ids cannot be probed for existence; only the log
/// tells them apart.
pub fn status_reply(job: Option<&Job>, user: &str) -> Reply {
    let Some(job) = job else {
        return not_found().user(user);
    };
    if job.owner != user {
        let mut reply = not_found().user(user);
        reply.outcome = "not_owner".into();
        return reply;
    }
    Reply::new(200, "application/json", view(job).to_string(), "ok")
        .header("cache-control", "no-store")
        .user(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus) -> Job {
        Job {
            id: "0123456789abcdef01234567".into(),
            owner: "a@example.com".into(),
            video_fid: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
            filename: "clip.mp4".into(),
            status,
            mp3_fid: (status == JobStatus::Done).then(|| "bbbbbbbbbbbbbbbbbbbbbbbb".into()),
            error: (status == JobStatus::Failed).then(|| "no audio stream".into()),
            attempts: 1,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn ids_are_24_hex_digits() {
        assert_eq!(
            parse_id("0123456789ABCDEF01234567").as_deref(),
            Some("0123456789abcdef01234567")
        );
        for bad in [
            "",
            "123",
            "0123456789abcdef0123456g",
            "0123456789abcdef012345678",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn owner_sees_status_others_get_what_an_unknown_id_gets() {
        let queued = job(JobStatus::Queued);
        let reply = status_reply(Some(&queued), "a@example.com");
        assert_eq!(reply.status, 200);
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["status"], "queued");
        assert_eq!(
            (v["created_at"].as_i64(), v["updated_at"].as_i64()),
            (Some(1), Some(2))
        );
        assert!(v.get("mp3_fid").is_none() && v.get("error").is_none());

        let theirs = status_reply(Some(&queued), "b@example.com");
        let unknown = status_reply(None, "b@example.com");
        assert_eq!(
            (theirs.status, &theirs.body, &theirs.headers),
            (404, &unknown.body, &unknown.headers)
        );
        assert_eq!(
            (theirs.outcome.as_str(), unknown.outcome.as_str()),
            ("not_owner", "job_not_found")
        );
    }

    #[test]
    fn done_shows_the_mp3_and_failed_the_reason() {
        let v = view(&job(JobStatus::Done));
        assert_eq!(v["mp3_fid"], "bbbbbbbbbbbbbbbbbbbbbbbb");
        assert_eq!(v["download_url"], "/download?fid=bbbbbbbbbbbbbbbbbbbbbbbb");
        let v = view(&job(JobStatus::Failed));
        assert_eq!(
            (v["status"].as_str(), v["error"].as_str()),
            (Some("failed"), Some("no audio stream"))
        );
        assert_eq!(view(&job(JobStatus::Converting))["status"], "converting");
    }
}
