//! `POST /validate`: `Authorization: Bearer <jwt>` in, the token's claims as JSON out.
//!
//! Spin variables read: `jwt_secret` (at least 32 bytes), `jwt_issuer`, `jwt_audience`.
//! No database access.
//!
//! | case | status | body |
//! |---|---|---|
//! | valid token | 200 `application/json` | the claims |
//! | no `Authorization`, or not a Bearer token | 401 + `WWW-Authenticate: Bearer realm="mp3"` | `missing token` |
//! | verification failed | 403 | `invalid token: <reason>` (`expired`, `bad signature`, `wrong algorithm`, `wrong issuer`, `wrong audience`, `malformed`) |
//! | missing variable, secret under 32 bytes | 500 | `server misconfigured` |
//! | any method but POST | 405 + `Allow: POST` | `method not allowed` |
//!
//! One `key=value` line per request goes to stderr. The request body is never read.

use std::time::Duration;

use mp3_auth::{parse_bearer, verify, TokenConfig};

/// What [`validate`] needs from its host: Spin variables.
pub trait Host {
    fn variable(&self, name: &str) -> Result<String, String>;
}

/// A response plus what to log about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Short machine-readable outcome for the log line.
    pub outcome: String,
    /// Detail for the log line only (never sent to the client).
    pub detail: Option<String>,
    /// The token's user, when valid, for the log line.
    pub user: Option<String>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: String, outcome: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type", content_type.into())],
            body,
            outcome: outcome.into(),
            detail: None,
            user: None,
        }
    }

    fn text(status: u16, body: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into(), outcome)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn misconfigured(detail: impl Into<String>) -> Self {
        let mut reply = Self::text(500, "server misconfigured", "misconfigured");
        reply.detail = Some(detail.into());
        reply
    }
}

fn load_config(host: &impl Host) -> Result<TokenConfig, String> {
    let var = |name: &str| {
        host.variable(name)
            .map_err(|e| format!("variable {name}: {e}"))
    };
    // The time to live only matters when issuing; verify ignores it.
    TokenConfig::new(
        var("jwt_secret")?,
        var("jwt_issuer")?,
        var("jwt_audience")?,
        Duration::from_secs(1),
    )
    .map_err(|e| e.to_string())
}

/// The whole decision for one request. `authorization` is `None` when the header is absent,
/// repeated, or not UTF-8.
pub fn validate(method: &str, authorization: Option<&str>, host: &impl Host, now: i64) -> Reply {
    if method != "POST" {
        return Reply::text(405, "method not allowed", "method_not_allowed")
            .header("allow", "POST");
    }
    let config = match load_config(host) {
        Ok(config) => config,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let Some(token) = authorization.and_then(parse_bearer) else {
        return Reply::text(401, "missing token", "missing_token")
            .header("www-authenticate", r#"Bearer realm="mp3""#);
    };
    match verify(&config, token, now) {
        Ok(claims) => match serde_json::to_string(&claims) {
            Ok(json) => {
                let mut reply = Reply::new(200, "application/json", json, "ok");
                reply.user = Some(claims.username);
                reply
            }
            Err(e) => {
                let mut reply = Reply::text(500, "internal error", "encode_failed");
                reply.detail = Some(e.to_string());
                reply
            }
        },
        Err(e) => Reply::text(
            403,
            format!("invalid token: {e}"),
            e.to_string().replace(' ', "_"),
        ),
    }
}

/// The one log line for a request: `key=value`, values that may hold user input quoted.
pub fn log_line(method: &str, reply: &Reply, elapsed: Duration) -> String {
    let mut line = format!(
        "component=validate method={method:?} status={} outcome={} ms={}",
        reply.status,
        reply.outcome,
        elapsed.as_millis()
    );
    if let Some(user) = &reply.user {
        line.push_str(&format!(" user={user:?}"));
    }
    if let Some(detail) = &reply.detail {
        line.push_str(&format!(" error={detail:?}"));
    }
    line
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::*;
    use mp3_auth::unix_now;
    use spin_sdk::http::{IncomingRequest, Method, Response};
    use spin_sdk::http_component;

    struct SpinHost;

    impl Host for SpinHost {
        fn variable(&self, name: &str) -> Result<String, String> {
            spin_sdk::variables::get(name).map_err(|e| e.to_string())
        }
    }

    fn method_name(method: &Method) -> String {
        match method {
            Method::Get => "GET".into(),
            Method::Head => "HEAD".into(),
            Method::Post => "POST".into(),
            Method::Put => "PUT".into(),
            Method::Delete => "DELETE".into(),
            Method::Connect => "CONNECT".into(),
            Method::Options => "OPTIONS".into(),
            Method::Trace => "TRACE".into(),
            Method::Patch => "PATCH".into(),
            Method::Other(other) => other.clone(),
        }
    }

    /// The single `Authorization` header as UTF-8, or `None` (absent, repeated or not UTF-8).
    fn authorization(req: &IncomingRequest) -> Option<String> {
        let mut values = req.headers().get("authorization");
        if values.len() != 1 {
            return None;
        }
        String::from_utf8(values.pop()?).ok()
    }

    #[http_component]
    fn handle(req: IncomingRequest) -> Response {
        let start = std::time::Instant::now();
        let method = method_name(&req.method());
        let reply = validate(
            &method,
            authorization(&req).as_deref(),
            &SpinHost,
            unix_now(),
        );
        eprintln!("{}", log_line(&method, &reply, start.elapsed()));
        let mut builder = Response::builder();
        builder.status(reply.status);
        for (name, value) in reply.headers {
            builder.header(name, value);
        }
        builder.body(reply.body).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp3_auth::{issue, Claims};
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    struct Fake(HashMap<&'static str, String>);

    impl Fake {
        fn new() -> Self {
            Self(HashMap::from([
                ("jwt_secret", SECRET.to_owned()),
                ("jwt_issuer", "mp3-auth".to_owned()),
                ("jwt_audience", "mp3".to_owned()),
            ]))
        }
    }

    impl Host for Fake {
        fn variable(&self, name: &str) -> Result<String, String> {
            self.0
                .get(name)
                .cloned()
                .ok_or_else(|| format!("undefined: {name}"))
        }
    }

    fn token(secret: &str, iss: &str, ttl: u64) -> String {
        let config = TokenConfig::new(secret, iss, "mp3", Duration::from_secs(ttl)).unwrap();
        issue(&config, "a@example.com", false, NOW).unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn valid_token_returns_claims_json() {
        let reply = validate(
            "POST",
            Some(&bearer(&token(SECRET, "mp3-auth", 60))),
            &Fake::new(),
            NOW,
        );
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.headers[0],
            ("content-type", "application/json".into())
        );
        let claims: Claims = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(claims.username, "a@example.com");
        assert_eq!(claims.exp, NOW + 60);
    }

    #[test]
    fn missing_or_non_bearer_gets_401() {
        for auth in [None, Some("Basic YTpi"), Some("Bearer "), Some("token")] {
            let reply = validate("POST", auth, &Fake::new(), NOW);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (401, "missing token"),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn failures_get_403_with_reason() {
        let cases = [
            (
                token(SECRET, "mp3-auth", 60),
                NOW + 60,
                "invalid token: expired",
            ),
            (
                token("another-secret-another-secret-xx", "mp3-auth", 60),
                NOW,
                "invalid token: bad signature",
            ),
            (
                token(SECRET, "elsewhere", 60),
                NOW,
                "invalid token: wrong issuer",
            ),
            ("not.a.jwt".to_owned(), NOW, "invalid token: malformed"),
        ];
        for (token, now, body) in cases {
            let reply = validate("POST", Some(&bearer(&token)), &Fake::new(), now);
            assert_eq!((reply.status, reply.body.as_str()), (403, body));
        }
    }

    #[test]
    fn short_secret_gets_500() {
        let mut fake = Fake::new();
        fake.0.insert("jwt_secret", "x".repeat(31));
        let reply = validate("POST", Some("Bearer a.b.c"), &fake, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "server misconfigured")
        );
        assert!(log_line("POST", &reply, Duration::ZERO).contains("jwt secret is 31 bytes long"));
    }

    #[test]
    fn other_methods_get_405() {
        let reply = validate("GET", None, &Fake::new(), NOW);
        assert_eq!(reply.status, 405);
        assert!(reply.headers.contains(&("allow", "POST".into())));
    }
}
