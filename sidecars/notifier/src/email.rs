//! The emails' text: pure, so it is tested without SMTP.

use mp3_model::JobMessage;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// The subject of the "your MP3 is ready" email (the seed system's).
pub const READY_SUBJECT: &str = "MP3 Download";
/// The subject of the "your conversion failed" email.
pub const FAILED_SUBJECT: &str = "MP3 conversion failed";

/// Which email a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ready,
    Failed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// An email's subject and plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub kind: Kind,
    pub subject: String,
    pub body: String,
}

/// The download link of an MP3: `{base}/download?fid=<mp3_fid>`.
pub fn download_url(base: &str, mp3_fid: &str) -> String {
    format!(
        "{}/download?fid={}",
        base.trim_end_matches('/'),
        utf8_percent_encode(mp3_fid, NON_ALPHANUMERIC)
    )
}

/// The email for a message on `mp3`: ready when it has an `mp3_fid`, failed otherwise.
pub fn render(message: &JobMessage, download_base_url: &str) -> Email {
    match &message.mp3_fid {
        Some(mp3_fid) => Email {
            kind: Kind::Ready,
            subject: READY_SUBJECT.to_owned(),
            body: format!(
                "Your MP3 is ready.\n\
                 \n\
                 MP3 id: {mp3_fid}\n\
                 Download: {url}\n\
                 \n\
                 Download it with your login token (Authorization: Bearer <token>).\n\
                 Job: {job}\n",
                url = download_url(download_base_url, mp3_fid),
                job = message.job_id,
            ),
        },
        None => Email {
            kind: Kind::Failed,
            subject: FAILED_SUBJECT.to_owned(),
            body: format!(
                "Your video could not be converted to MP3.\n\
                 \n\
                 Job: {job}\n\
                 Reason: {reason}\n\
                 \n\
                 You can upload it again, or another file.\n",
                job = message.job_id,
                reason = message.error.as_deref().unwrap_or("unknown error"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> JobMessage {
        JobMessage::queued(
            "665f1c0e8b3e4a2d9c1b0a01",
            "665f1c0e8b3e4a2d9c1b0a02",
            "a@example.com",
        )
    }

    #[test]
    fn ready_email_has_the_seed_subject_the_id_and_the_link() {
        let email = render(
            &message().converted("665f1c0e8b3e4a2d9c1b0a03"),
            "https://mp3.example/",
        );
        assert_eq!(email.kind, Kind::Ready);
        assert_eq!(email.subject, "MP3 Download");
        assert!(email.body.contains("MP3 id: 665f1c0e8b3e4a2d9c1b0a03\n"));
        assert!(email
            .body
            .contains("https://mp3.example/download?fid=665f1c0e8b3e4a2d9c1b0a03\n"));
    }

    #[test]
    fn failed_email_has_the_job_and_the_reason() {
        let email = render(&message().failed("no audio stream"), "http://x");
        assert_eq!(email.kind, Kind::Failed);
        assert_eq!(email.subject, FAILED_SUBJECT);
        assert!(email.body.contains("Job: 665f1c0e8b3e4a2d9c1b0a01\n"));
        assert!(email.body.contains("Reason: no audio stream\n"));
        assert!(!email.body.contains("download?"));
    }

    #[test]
    fn ids_are_escaped_in_the_link() {
        assert_eq!(
            download_url("http://h:3000", "a&b=c d"),
            "http://h:3000/download?fid=a%26b%3Dc%20d"
        );
        assert_eq!(
            download_url("http://h//", "ab12"),
            "http://h/download?fid=ab12"
        );
    }
}
