//! `GET /webhook`, `PUT /webhook`, `POST /webhook/rotate`: the caller's webhook settings, the
//! secret that signs their deliveries and the callback of jobs that name none.
//!
//! A user's settings are made, with a new secret, the first time they are read; a rotation
//! keeps the replaced secret signing too for [`ROTATION_GRACE_MS`], so that receivers can
//! switch without losing an event.

use component_http::Reply;
use mp3_model::webhook::{check_url, Settings, ROTATION_GRACE_MS};
use mp3_webhook::Secret;

/// The most bytes of a `PUT /webhook` body.
pub const MAX_BODY: usize = 4096;

/// What the settings need from MongoDB. Errors are one line. Each change touches only its own
/// fields, so a rotation and a change of callback at once both hold.
pub trait Store {
    fn load(&mut self, owner: &str) -> Result<Option<Settings>, String>;
    /// Inserts `settings`; false if the user has some already (made by a concurrent request).
    fn insert(&mut self, settings: &Settings) -> Result<bool, String>;
    /// Sets (or removes) the default callback.
    fn set_url(&mut self, owner: &str, url: Option<&str>, now_ms: i64) -> Result<(), String>;
    /// Replaces secret `from` with `to`, keeping `from` as the previous one until
    /// `previous_until`; false if the secret is no longer `from` (another rotation won).
    fn rotate(
        &mut self,
        owner: &str,
        from: &str,
        to: &str,
        previous_until: i64,
        now_ms: i64,
    ) -> Result<bool, String>;
}

fn unavailable(detail: String) -> Reply {
    Reply::text(503, "storage unavailable", "storage_unavailable").detail(detail)
}

fn new_secret() -> Result<String, Reply> {
    Secret::generate()
        .map(|secret| secret.encode())
        .map_err(|e| Reply::text(500, "internal error", "no_randomness").detail(e))
}

/// The caller's settings, made now if they have none.
pub fn settings_of(store: &mut dyn Store, owner: &str, now_ms: i64) -> Result<Settings, Reply> {
    if let Some(settings) = store.load(owner).map_err(unavailable)? {
        return Ok(settings);
    }
    let settings = Settings {
        owner: owner.to_owned(),
        secret: new_secret()?,
        previous_secret: None,
        previous_until: None,
        url: None,
        updated_at: now_ms,
    };
    if store.insert(&settings).map_err(unavailable)? {
        return Ok(settings);
    }
    store
        .load(owner)
        .map_err(unavailable)?
        .ok_or_else(|| unavailable(format!("the webhook settings of {owner} vanished")))
}

/// 200 with the settings: `secret`, `url` (or null), and while a replaced secret still signs,
/// `previous_secret_expires_at` (Unix milliseconds). Never cached.
pub fn view(settings: &Settings, now_ms: i64) -> Reply {
    let mut body = serde_json::json!({
        "secret": settings.secret,
        "url": settings.url,
    });
    if let Some(until) = settings.previous_until.filter(|until| *until > now_ms) {
        body["previous_secret_expires_at"] = until.into();
    }
    Reply::new(200, "application/json", body.to_string(), "webhook")
        .header("cache-control", "no-store")
        .user(&settings.owner)
}

/// `PUT /webhook` with `{"url": "https://…"}` or `{"url": null}`: the new default callback, or
/// 400 naming the rule.
pub fn parse_update(body: &[u8]) -> Result<Option<String>, Reply> {
    let bad = |reason: String| Reply::text(400, reason, "bad_webhook");
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| bad(r#"expected a JSON object such as {"url": "https://…"}"#.into()))?;
    match value.get("url") {
        Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(url)) => check_url(url)
            .map(Some)
            .map_err(|rule| bad(format!("url: {rule}"))),
        Some(_) => Err(bad("url: a string, or null to remove it".into())),
        None => Err(bad(
            r#"expected a JSON object such as {"url": "https://…"}"#.into(),
        )),
    }
}

/// Sets the default callback.
pub fn update(
    store: &mut dyn Store,
    owner: &str,
    url: Option<String>,
    now_ms: i64,
) -> Result<Settings, Reply> {
    settings_of(store, owner, now_ms)?;
    store
        .set_url(owner, url.as_deref(), now_ms)
        .map_err(unavailable)?;
    settings_of(store, owner, now_ms)
}

/// A new secret; the replaced one signs too until [`ROTATION_GRACE_MS`] from now. Of two
/// rotations at once, each replaces the secret the other made, in turn.
pub fn rotate(store: &mut dyn Store, owner: &str, now_ms: i64) -> Result<Settings, Reply> {
    for _ in 0..3 {
        let settings = settings_of(store, owner, now_ms)?;
        let until = now_ms.saturating_add(ROTATION_GRACE_MS);
        let fresh = new_secret()?;
        if store
            .rotate(owner, &settings.secret, &fresh, until, now_ms)
            .map_err(unavailable)?
        {
            return settings_of(store, owner, now_ms);
        }
    }
    Err(Reply::text(
        409,
        "the secret is being rotated by another request: try again",
        "rotation_conflict",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        settings: HashMap<String, Settings>,
        /// Settings a concurrent request inserts just before ours.
        racing: Option<Settings>,
        /// A secret a concurrent rotation writes just before ours.
        steal: Option<String>,
        down: bool,
    }

    impl Store for Fake {
        fn load(&mut self, owner: &str) -> Result<Option<Settings>, String> {
            if self.down {
                return Err("down".into());
            }
            Ok(self.settings.get(owner).cloned())
        }
        fn insert(&mut self, settings: &Settings) -> Result<bool, String> {
            if let Some(first) = self.racing.take() {
                self.settings.insert(first.owner.clone(), first);
            }
            if self.settings.contains_key(&settings.owner) {
                return Ok(false);
            }
            self.settings
                .insert(settings.owner.clone(), settings.clone());
            Ok(true)
        }
        fn set_url(&mut self, owner: &str, url: Option<&str>, now: i64) -> Result<(), String> {
            let settings = self.settings.get_mut(owner).ok_or("no settings")?;
            settings.url = url.map(str::to_owned);
            settings.updated_at = now;
            Ok(())
        }
        fn rotate(
            &mut self,
            owner: &str,
            from: &str,
            to: &str,
            until: i64,
            now: i64,
        ) -> Result<bool, String> {
            let settings = self.settings.get_mut(owner).ok_or("no settings")?;
            if let Some(stolen) = self.steal.take() {
                settings.secret = stolen;
            }
            if settings.secret != from {
                return Ok(false);
            }
            settings.previous_secret = Some(from.to_owned());
            settings.secret = to.to_owned();
            settings.previous_until = Some(until);
            settings.updated_at = now;
            Ok(true)
        }
    }

    #[test]
    fn settings_are_made_once_with_a_secret() {
        let mut store = Fake::default();
        let first = settings_of(&mut store, "a@example.com", 1).unwrap();
        assert!(Secret::parse(&first.secret).is_some(), "{}", first.secret);
        let again = settings_of(&mut store, "a@example.com", 2).unwrap();
        assert_eq!(again, first);
        let reply = view(&first, 1);
        assert_eq!(reply.header_value("cache-control"), Some("no-store"));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["secret"], first.secret);
        assert_eq!(body["url"], serde_json::Value::Null);
        assert!(body.get("previous_secret_expires_at").is_none());
    }

    #[test]
    fn a_concurrent_first_read_keeps_the_secret_that_won() {
        let winner = Settings {
            owner: "a@example.com".into(),
            secret: Secret::generate().unwrap().encode(),
            previous_secret: None,
            previous_until: None,
            url: None,
            updated_at: 0,
        };
        let mut store = Fake {
            racing: Some(winner.clone()),
            ..Fake::default()
        };
        assert_eq!(settings_of(&mut store, "a@example.com", 1).unwrap(), winner);
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_its_grace() {
        let mut store = Fake::default();
        let before = settings_of(&mut store, "a@example.com", 1).unwrap();
        let after = rotate(&mut store, "a@example.com", 10).unwrap();
        assert_ne!(after.secret, before.secret);
        assert_eq!(
            after.previous_secret.as_deref(),
            Some(before.secret.as_str())
        );
        assert_eq!(after.signing_secrets(11), [&after.secret, &before.secret]);
        let body: serde_json::Value = serde_json::from_str(&view(&after, 11).body).unwrap();
        assert_eq!(body["previous_secret_expires_at"], 10 + ROTATION_GRACE_MS);
        assert_eq!(store.settings["a@example.com"], after);
        // Another rotation got in first: this one replaces the secret that one made.
        store.steal = Some("whsec_theirs".into());
        let third = rotate(&mut store, "a@example.com", 20).unwrap();
        assert_eq!(third.previous_secret.as_deref(), Some("whsec_theirs"));
        // A change of callback keeps the secret as it is.
        let set = update(
            &mut store,
            "a@example.com",
            Some("https://x.example/".into()),
            30,
        )
        .unwrap();
        assert_eq!(
            (set.secret, set.previous_secret),
            (third.secret, third.previous_secret)
        );
    }

    #[test]
    fn the_default_callback_is_checked_set_and_removed() {
        let mut store = Fake::default();
        let url = parse_update(br#"{"url": "https://hooks.example.com/a"}"#).unwrap();
        let set = update(&mut store, "a@example.com", url, 5).unwrap();
        assert_eq!(set.url.as_deref(), Some("https://hooks.example.com/a"));
        assert_eq!(parse_update(br#"{"url": null}"#).unwrap(), None);
        for (body, reason) in [
            (
                &br#"{"url": "ftp://x/"}"#[..],
                "url: an http:// or https:// URL",
            ),
            (br#"{"url": 5}"#, "url: a string, or null"),
            (br#"{}"#, "expected a JSON object"),
            (b"not json", "expected a JSON object"),
        ] {
            let reply = parse_update(body).unwrap_err();
            assert_eq!(reply.status, 400);
            assert!(reply.body.starts_with(reason), "{}", reply.body);
        }
        store.down = true;
        assert_eq!(
            settings_of(&mut store, "b@example.com", 1)
                .unwrap_err()
                .status,
            503
        );
    }
}
