//! The gateway's settings, from Spin variables.

use component_http::Variables;

/// Everything the gateway reads from its variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `mongodb://...`: GridFS `videos` and `mp3s`, and `videos.jobs`.
    pub mongodb_url: String,
    /// `amqp://...`: where the `video` queue lives.
    pub amqp_url: String,
    /// Base URL of the auth service (`/login`, `/validate`), without a trailing slash.
    pub auth_url: String,
    /// Largest request body `POST /upload` accepts.
    pub max_upload_bytes: u64,
}

impl Config {
    /// Reads `mongodb_url`, `amqp_url`, `auth_url` and `max_upload_bytes`. The error, for the
    /// log line, names the variable.
    pub fn load(vars: &impl Variables) -> Result<Self, String> {
        let auth_url = vars.require("auth_url")?;
        let auth_url = auth_url.trim().trim_end_matches('/').to_owned();
        if !(auth_url.starts_with("http://") || auth_url.starts_with("https://")) {
            return Err(format!(
                "variable auth_url: {auth_url:?} is not an http(s) URL"
            ));
        }
        let max = vars.require("max_upload_bytes")?;
        let max_upload_bytes = max
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("variable max_upload_bytes: {max:?} is not a positive integer")
            })?;
        Ok(Config {
            mongodb_url: vars.require("mongodb_url")?,
            amqp_url: vars.require("amqp_url")?,
            auth_url,
            max_upload_bytes,
        })
    }
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
        ])
    }

    #[test]
    fn reads_all_four_and_trims_the_auth_url() {
        let config = Config::load(&vars()).unwrap();
        assert_eq!(config.auth_url, "http://self.alt");
        assert_eq!(config.max_upload_bytes, 2_147_483_648);
        assert_eq!(config.mongodb_url, "mongodb://127.0.0.1:27017");
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value, expected) in [
            ("max_upload_bytes", "0", "max_upload_bytes"),
            ("max_upload_bytes", "-1", "max_upload_bytes"),
            ("max_upload_bytes", "2GB", "max_upload_bytes"),
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
