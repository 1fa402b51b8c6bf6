//! The gateway's settings, from Spin variables.

use component_http::Variables;
use mp3_download_link::LinkKey;

/// Everything the gateway reads from its variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// `mongodb://...`: GridFS `videos` and `mp3s`, and `videos.jobs`.
    pub mongodb_url: String,
    /// `amqp://...`: where the `video` queue lives.
    pub amqp_url: String,
    /// Base URL of the auth service (`/login`, `/validate`), without a trailing slash.
    pub auth_url: String,
    /// Largest request body `POST /upload` accepts.
    pub max_upload_bytes: u64,
    /// Largest `Upload-Length` of a resumable (tus) upload (`max_resumable_upload_bytes`,
    /// default 32 GiB): stored piece by piece, so not bound by what one request may carry.
    pub max_resumable_upload_bytes: u64,
    /// Signed download links: on, off, or misconfigured (which fails only link requests).
    pub links: LinkSettings,
    /// How long a resumable upload lives after its last PATCH (`upload_expiry_secs`,
    /// default a day).
    pub upload_expiry_secs: u64,
    /// How long to wait for the auth service's answer (`auth_timeout_secs`, default 30 s).
    pub auth_timeout_secs: u64,
}

/// Longest wait for the auth service that may be set: Spin's own default for outbound HTTP.
pub const MAX_AUTH_TIMEOUT_SECS: u64 = 600;

/// Longest lifetime a download link may be given: a unit slip (milliseconds for seconds) must
/// not hand out links that work for years.
pub const MAX_LINK_TTL_SECS: u64 = 7 * 24 * 3600;

/// `max_resumable_upload_bytes` when it is not set.
pub const DEFAULT_MAX_RESUMABLE_UPLOAD_BYTES: u64 = 32 << 30;

/// Longest an unfinished resumable upload may be kept without progress.
pub const MAX_UPLOAD_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// Whether the gateway signs and checks download links.
#[derive(Debug, Clone)]
pub enum LinkSettings {
    /// `download_key` is empty or not defined.
    Off,
    On {
        key: LinkKey,
        ttl_secs: u64,
    },
    /// A key or lifetime that cannot be used: link requests get 500 and this detail; every
    /// other route works.
    Misconfigured(String),
}

impl LinkSettings {
    fn load(vars: &impl Variables) -> Self {
        let key = vars.variable("download_key").unwrap_or_default();
        if key.is_empty() {
            return Self::Off;
        }
        let ttl = vars
            .variable("download_link_ttl_secs")
            .unwrap_or_else(|_| "86400".into());
        match (LinkKey::new(&key), positive(&ttl)) {
            (Err(e), _) => Self::Misconfigured(format!("variable download_key: {e}")),
            (_, None) => Self::Misconfigured(format!(
                "variable download_link_ttl_secs: {ttl:?} is not a positive integer"
            )),
            (_, Some(secs)) if secs > MAX_LINK_TTL_SECS => Self::Misconfigured(format!(
                "variable download_link_ttl_secs: {secs} is over the limit of {MAX_LINK_TTL_SECS} (7 days)"
            )),
            (Ok(key), Some(ttl_secs)) => Self::On { key, ttl_secs },
        }
    }
}

impl Config {
    /// Reads `mongodb_url`, `amqp_url`, `auth_url`, `max_upload_bytes` and the optional
    /// `max_resumable_upload_bytes`, `upload_expiry_secs` and `auth_timeout_secs` (the error,
    /// for the log line, names the variable), and the optional `download_key` and
    /// `download_link_ttl_secs`, whose faults only concern links.
    pub fn load(vars: &impl Variables) -> Result<Self, String> {
        let auth_url = vars.require("auth_url")?;
        let auth_url = auth_url.trim().trim_end_matches('/').to_owned();
        if !(auth_url.starts_with("http://") || auth_url.starts_with("https://")) {
            return Err(format!(
                "variable auth_url: {auth_url:?} is not an http(s) URL"
            ));
        }
        let max = vars.require("max_upload_bytes")?;
        let max_upload_bytes = positive(&max).ok_or_else(|| {
            format!("variable max_upload_bytes: {max:?} is not a positive integer")
        })?;
        let resumable = vars
            .variable("max_resumable_upload_bytes")
            .unwrap_or_else(|_| DEFAULT_MAX_RESUMABLE_UPLOAD_BYTES.to_string());
        let max_resumable_upload_bytes = positive(&resumable).ok_or_else(|| {
            format!("variable max_resumable_upload_bytes: {resumable:?} is not a positive integer")
        })?;
        let expiry = vars
            .variable("upload_expiry_secs")
            .unwrap_or_else(|_| "86400".into());
        let upload_expiry_secs = positive(&expiry)
            .filter(|secs| *secs <= MAX_UPLOAD_EXPIRY_SECS)
            .ok_or_else(|| {
                format!(
                    "variable upload_expiry_secs: {expiry:?} is not a whole number of seconds from 1 to {MAX_UPLOAD_EXPIRY_SECS} (30 days)"
                )
            })?;
        let timeout = vars
            .variable("auth_timeout_secs")
            .unwrap_or_else(|_| "30".into());
        let auth_timeout_secs = positive(&timeout)
            .filter(|secs| *secs <= MAX_AUTH_TIMEOUT_SECS)
            .ok_or_else(|| {
                format!(
                    "variable auth_timeout_secs: {timeout:?} is not a whole number of seconds from 1 to {MAX_AUTH_TIMEOUT_SECS}"
                )
            })?;
        Ok(Config {
            upload_expiry_secs,
            auth_timeout_secs,
            mongodb_url: vars.require("mongodb_url")?,
            amqp_url: vars.require("amqp_url")?,
            auth_url,
            max_upload_bytes,
            max_resumable_upload_bytes,
            links: LinkSettings::load(vars),
        })
    }
}

fn positive(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars() -> HashMap<&'static str, String> {
        HashMap::from([
            ("mongodb_url", "mongodb://127.0.0.1:27017".to_owned()),
            ("amqp_url", "amqp://u:p@127.0.0.1:5672/%2f".to_owned()),
            ("auth_url", "http://self.alt/".to_owned()),
            ("max_upload_bytes", "2147483648".to_owned()),
            ("download_key", "k".repeat(32)),
            ("download_link_ttl_secs", "86400".to_owned()),
        ])
    }

    #[test]
    fn reads_all_four_and_trims_the_auth_url() {
        let config = Config::load(&vars()).unwrap();
        assert_eq!(config.auth_url, "http://self.alt");
        assert_eq!(config.max_upload_bytes, 2_147_483_648);
        assert_eq!(config.max_resumable_upload_bytes, 34_359_738_368);
        assert_eq!(config.mongodb_url, "mongodb://127.0.0.1:27017");
        assert_eq!(config.auth_timeout_secs, 30, "the default");
        assert!(matches!(
            config.links,
            LinkSettings::On {
                ttl_secs: 86_400,
                ..
            }
        ));
        let mut without = vars();
        without.insert("download_key", String::new());
        assert!(matches!(
            Config::load(&without).unwrap().links,
            LinkSettings::Off
        ));
        // Undefined (a manifest without them): links off, the rest works.
        without.remove("download_key");
        without.remove("download_link_ttl_secs");
        assert!(matches!(
            Config::load(&without).unwrap().links,
            LinkSettings::Off
        ));
    }

    #[test]
    fn bad_link_settings_fail_only_links() {
        for (name, value, expected) in [
            ("download_key", "too short", "download_key"),
            ("download_link_ttl_secs", "0", "download_link_ttl_secs"),
            ("download_link_ttl_secs", "1d", "download_link_ttl_secs"),
            ("download_link_ttl_secs", "86400000", "over the limit"),
        ] {
            let mut vars = vars();
            vars.insert(name, value.to_owned());
            match Config::load(&vars).unwrap().links {
                LinkSettings::Misconfigured(detail) => {
                    assert!(detail.contains(expected), "{detail}")
                }
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value, expected) in [
            ("max_upload_bytes", "0", "max_upload_bytes"),
            ("max_upload_bytes", "-1", "max_upload_bytes"),
            ("max_upload_bytes", "2GB", "max_upload_bytes"),
            (
                "max_resumable_upload_bytes",
                "0",
                "max_resumable_upload_bytes",
            ),
            (
                "max_resumable_upload_bytes",
                "32GiB",
                "max_resumable_upload_bytes",
            ),
            ("auth_timeout_secs", "0", "auth_timeout_secs"),
            ("auth_timeout_secs", "601", "auth_timeout_secs"),
            ("auth_timeout_secs", "30s", "auth_timeout_secs"),
            ("auth_url", "self.alt", "auth_url"),
        ] {
            let mut vars = vars();
            vars.insert(name, value.to_owned());
            let err = Config::load(&vars).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let mut vars = vars();
        vars.remove("amqp_url");
        assert_eq!(
            Config::load(&vars).unwrap_err(),
            "variable amqp_url: undefined: amqp_url"
        );
    }
}
