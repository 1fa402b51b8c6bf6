//! The emails' text: pure, so it is tested without SMTP.

use mp3_download_link::LinkKey;
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

/// How the ready email links to the MP3: the gateway's public base URL, and the key that
/// signs links which work without a login (the gateway's `download_key`) for `ttl_secs`.
#[derive(Debug, Clone)]
pub struct Links {
    pub base_url: String,
    pub key: Option<LinkKey>,
    pub ttl_secs: u64,
}

/// A link's lifetime in words: "24 hours", "90 minutes", "45 seconds".
fn lifetime(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s % 3600 == 0 => (s / 3600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The email for a message on `mp3`: ready when it has an `mp3_fid`, failed otherwise. With a
/// key, the ready email's link is signed for `owner` (the job's) and works from `now` (Unix
/// seconds) for the links' lifetime in a browser, without a token.
pub fn render(message: &JobMessage, links: &Links, owner: &str, now: u64) -> Email {
    match &message.mp3_fid {
        Some(mp3_fid) => {
            let plain = download_url(&links.base_url, mp3_fid);
            let body = match &links.key {
                Some(key) => format!(
                    "Your MP3 is ready.\n\
                     \n\
                     MP3 id: {mp3_fid}\n\
                     Download: {base}/download?{query}\n\
                     \n\
                     The link works without signing in for {lifetime}. After that, download it \
                     with your login token (Authorization: Bearer <token>) from {plain}\n\
                     Job: {job}\n",
                    base = links.base_url.trim_end_matches('/'),
                    query = key.query(mp3_fid, owner, now.saturating_add(links.ttl_secs)),
                    lifetime = lifetime(links.ttl_secs),
                    job = message.job_id,
                ),
                None => format!(
                    "Your MP3 is ready.\n\
                     \n\
                     MP3 id: {mp3_fid}\n\
                     Download: {plain}\n\
                     \n\
                     Download it with your login token (Authorization: Bearer <token>).\n\
                     Job: {job}\n",
                    job = message.job_id,
                ),
            };
            Email {
                kind: Kind::Ready,
                subject: READY_SUBJECT.to_owned(),
                body,
            }
        }
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

    fn links(key: Option<&str>) -> Links {
        Links {
            base_url: "https://mp3.example/".into(),
            key: key.map(|k| LinkKey::new(k).unwrap()),
            ttl_secs: 86_400,
        }
    }

    const KEY: &str = "a download link key of at least 32 bytes";

    #[test]
    fn ready_email_has_the_seed_subject_the_id_and_the_link() {
        let email = render(
            &message().converted("665f1c0e8b3e4a2d9c1b0a03"),
            &links(None),
            "a@example.com",
            1_000,
        );
        assert_eq!(email.kind, Kind::Ready);
        assert_eq!(email.subject, "MP3 Download");
        assert!(email.body.contains("MP3 id: 665f1c0e8b3e4a2d9c1b0a03\n"));
        assert!(email
            .body
            .contains("https://mp3.example/download?fid=665f1c0e8b3e4a2d9c1b0a03\n"));
    }

    #[test]
    fn with_a_key_the_link_is_signed_for_the_owner_and_says_how_long_it_works() {
        let email = render(
            &message().converted("665f1c0e8b3e4a2d9c1b0a03"),
            &links(Some(KEY)),
            "a@example.com",
            1_000,
        );
        let line = email
            .body
            .lines()
            .find_map(|l| l.strip_prefix("Download: "))
            .unwrap();
        let query = line.strip_prefix("https://mp3.example/download?").unwrap();
        let field = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .unwrap()
        };
        assert_eq!(field("fid"), "665f1c0e8b3e4a2d9c1b0a03");
        assert_eq!(field("expires"), "87400");
        let key = LinkKey::new(KEY).unwrap();
        assert_eq!(
            key.verify(
                "665f1c0e8b3e4a2d9c1b0a03",
                "a@example.com",
                "87400",
                field("sig"),
                87_399
            ),
            Ok(())
        );
        assert!(
            email.body.contains("without signing in for 24 hours."),
            "{}",
            email.body
        );
        assert!(email
            .body
            .contains("from https://mp3.example/download?fid=665f1c0e8b3e4a2d9c1b0a03\n"));
    }

    #[test]
    fn lifetimes_read_naturally() {
        assert_eq!(lifetime(86_400), "24 hours");
        assert_eq!(lifetime(3_600), "1 hour");
        assert_eq!(lifetime(5_400), "90 minutes");
        assert_eq!(lifetime(45), "45 seconds");
        assert_eq!(lifetime(1), "1 second");
    }

    #[test]
    fn failed_email_has_the_job_and_the_reason() {
        let email = render(
            &message().failed("no audio stream"),
            &links(Some(KEY)),
            "a@example.com",
            1_000,
        );
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
