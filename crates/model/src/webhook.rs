//! Webhooks as the gateway and the notifier share them: the callback URLs taken, a user's
//! settings (`videos.webhooks`), a job's delivery record, and the event sent.

use serde::{Deserialize, Serialize};

/// Collection of each user's webhook settings ([`Settings`]), in [`crate::VIDEOS_DB`].
pub const SETTINGS_COLLECTION: &str = "webhooks";
/// Collection of the notifier's claims on jobs' webhook deliveries, in [`crate::VIDEOS_DB`]
/// (as `notify_claims` for emails).
pub const CLAIMS_COLLECTION: &str = "webhook_claims";
/// How long the secret replaced by a rotation still signs deliveries (alongside the new one).
pub const ROTATION_GRACE_MS: i64 = 24 * 60 * 60 * 1000;
/// The longest callback URL taken.
pub const MAX_URL_LEN: usize = 2048;

/// A callback URL's form: absolute `http` or `https`, with a host, without credentials (they
/// would be stored and logged) and without a fragment. The URL as stored, or the rule broken.
/// Where it may connect is the notifier's to check, when it connects.
pub fn check_url(text: &str) -> Result<String, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("an http:// or https:// URL".into());
    }
    if url.host().is_none() {
        return Err("a URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL without a user name or password in it".into());
    }
    if url.fragment().is_some() {
        return Err("a URL without a #fragment".into());
    }
    Ok(url.into())
}

/// A user's webhook settings: the secret that signs their deliveries (`whsec_…`), the one it
/// replaced while that still signs too, and the callback of jobs that name none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(rename = "_id")]
    pub owner: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// Until when (Unix milliseconds) `previous_secret` signs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub updated_at: i64,
}

impl Settings {
    /// The secrets that sign a delivery made at `now_ms`: the current one, and the previous
    /// one within its grace.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_until) {
            if now_ms < until {
                secrets.push(previous);
            }
        }
        secrets
    }
}

/// What became of a job's webhook, on the job (`webhook`) and in `GET /jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: DeliveryState,
    pub url: String,
    /// Unix milliseconds.
    pub at: i64,
    /// The receiver's status code, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it was refused or failed, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// The receiver answered 2xx.
    Delivered,
    /// Never sent: the callback's address is not allowed.
    Refused,
    /// Given up after the allowed attempts.
    Failed,
}

/// The event types.
pub const JOB_DONE: &str = "job.done";
pub const JOB_FAILED: &str = "job.failed";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_for_their_form() {
        assert_eq!(
            check_url("https://hooks.example.com/mp3?x=1").as_deref(),
            Ok("https://hooks.example.com/mp3?x=1")
        );
        assert_eq!(
            check_url("HTTP://Example.COM").as_deref(),
            Ok("http://example.com/")
        );
        assert_eq!(
            check_url("http://127.0.0.1:9/x").as_deref(),
            Ok("http://127.0.0.1:9/x")
        );
        for (bad, rule) in [
            ("ftp://example.com/", "an http:// or https:// URL"),
            ("file:///etc/passwd", "an http:// or https:// URL"),
            ("/relative", "an absolute URL"),
            (
                "https://user:pw@example.com/",
                "without a user name or password",
            ),
            ("https://example.com/#x", "without a #fragment"),
            ("http://", "an absolute URL"),
            ("javascript:alert(1)", "an http:// or https:// URL"),
        ] {
            let refused = check_url(bad).unwrap_err();
            assert!(refused.contains(rule), "{bad}: {refused}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_url(&long).unwrap_err(), "at most 2048 characters");
    }

    #[test]
    fn the_previous_secret_signs_only_within_its_grace() {
        let settings = Settings {
            owner: "a@example.com".into(),
            secret: "new".into(),
            previous_secret: Some("old".into()),
            previous_until: Some(1_000),
            url: None,
            updated_at: 0,
        };
        assert_eq!(settings.signing_secrets(999), ["new", "old"]);
        assert_eq!(settings.signing_secrets(1_000), ["new"]);
    }
}
