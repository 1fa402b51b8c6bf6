//! What a job's owner is told when their job failed: a short reason in their terms, kept in
//! the job and the email. The error itself (ffmpeg's output, database errors, ids) goes only
//! to the log, where operators read it.

use mp3_worker::Interrupted;

use crate::convert::ConvertError;
use crate::store::VideoError;

/// The owner's reason for a job given up with `error`.
pub fn public_reason(error: &anyhow::Error) -> &'static str {
    match error.downcast_ref::<ConvertError>() {
        Some(ConvertError::Rejected { .. }) => {
            return "the file has no audio track that could be converted, or it is damaged"
        }
        Some(ConvertError::Empty { trimmed: true }) => {
            return "the part of the video asked for holds no audio: start is past its end"
        }
        Some(ConvertError::Empty { trimmed: false }) => return "the video's audio track is empty",
        Some(ConvertError::TooLong) => {
            return "the MP3 would be over 2 GiB: ask for a part of the video, or a lower bitrate"
        }
        _ => {}
    }
    if let Some(Interrupted::TimedOut(_)) = error.downcast_ref::<Interrupted>() {
        return "the conversion took longer than allowed";
    }
    match error.downcast_ref::<VideoError>() {
        Some(VideoError::Invalid(..)) => "the uploaded video is damaged",
        Some(VideoError::Missing(_) | VideoError::BadId(_)) => "the uploaded video is gone",
        None => "the conversion kept failing; please upload the video again later",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn reasons_name_the_cause_and_nothing_internal() {
        let rejected = anyhow::Error::new(ConvertError::Rejected {
            status: ExitStatus::from_raw(256),
            message: "pipe:0: Invalid data found when processing input /tmp/x".into(),
        })
        .context("converting job 0123");
        let reason = public_reason(&rejected);
        assert!(
            reason.starts_with("the file has no audio track"),
            "{reason}"
        );
        let invalid = anyhow::Error::new(VideoError::Invalid(ObjectId::new(), "length"));
        assert_eq!(public_reason(&invalid), "the uploaded video is damaged");
        let missing = anyhow::Error::new(VideoError::Missing(ObjectId::new()));
        assert_eq!(public_reason(&missing), "the uploaded video is gone");
        let slow = anyhow::Error::new(Interrupted::TimedOut(std::time::Duration::from_secs(9)));
        assert_eq!(
            public_reason(&slow),
            "the conversion took longer than allowed"
        );
        let empty = anyhow::Error::new(ConvertError::Empty { trimmed: true });
        assert!(public_reason(&empty).contains("start is past its end"));
        let silent = anyhow::Error::new(ConvertError::Empty { trimmed: false });
        assert_eq!(public_reason(&silent), "the video's audio track is empty");
        let long = anyhow::Error::new(ConvertError::TooLong);
        assert!(public_reason(&long).contains("over 2 GiB"));
        let crashed = anyhow::Error::new(Interrupted::WorkerStopped);
        assert!(public_reason(&crashed).contains("kept failing"));
        let other = anyhow::anyhow!("MongoDB at 10.0.0.5:27017: connection refused");
        let reason = public_reason(&other);
        assert!(!reason.contains("10.0.0.5") && reason.contains("kept failing"));
    }
}
