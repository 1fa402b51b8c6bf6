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

use component_http::{token_config, Reply, Variables};
use mp3_auth::{parse_bearer, verify};

/// The component's name in its log line.
pub const COMPONENT: &str = "validate";

/// The whole decision for one request. `authorization` is `None` when the header is absent,
/// repeated, or not UTF-8.
pub fn validate(
    method: &str,
    authorization: Option<&str>,
    vars: &impl Variables,
    now: i64,
) -> Reply {
    if method != "POST" {
        return Reply::method_not_allowed("POST");
    }
    // The time to live only matters when issuing; verify ignores it.
    let config = match token_config(vars, None) {
        Ok(config) => config,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let Some(token) = authorization.and_then(parse_bearer) else {
        return Reply::text(401, "missing token", "missing_token")
            .header("www-authenticate", r#"Bearer realm="mp3""#);
    };
    match verify(&config, token, now) {
        Ok(claims) => match serde_json::to_string(&claims) {
            Ok(json) => Reply::new(200, "application/json", json, "ok").user(claims.username),
            Err(e) => Reply::text(500, "internal error", "encode_failed").detail(e.to_string()),
        },
        Err(e) => Reply::text(
            403,
            format!("invalid token: {e}"),
            e.to_string().replace(' ', "_"),
        ),
    }
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::*;
    use component_http::spin::{authorization, method_name, respond, SpinVariables};
    use mp3_auth::unix_now;
    use spin_sdk::http::{IncomingRequest, ResponseOutparam};
    use spin_sdk::http_component;
    use std::time::Instant;

    #[http_component]
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let started = Instant::now();
        let method = method_name(&req.method());
        let authorization = authorization(&req);
        let reply = validate(
            &method,
            authorization.as_deref(),
            &SpinVariables,
            unix_now(),
        );
        respond(COMPONENT, &method, out, reply, started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use component_http::log_line;
    use mp3_auth::{issue, Claims, TokenConfig};
    use std::collections::HashMap;
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    fn vars() -> HashMap<&'static str, String> {
        HashMap::from([
            ("jwt_secret", SECRET.to_owned()),
            ("jwt_issuer", "mp3-auth".to_owned()),
            ("jwt_audience", "mp3".to_owned()),
        ])
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
            &vars(),
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
            let reply = validate("POST", auth, &vars(), NOW);
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
            let reply = validate("POST", Some(&bearer(&token)), &vars(), now);
            assert_eq!((reply.status, reply.body.as_str()), (403, body));
        }
    }

    #[test]
    fn short_secret_gets_500() {
        let mut vars = vars();
        vars.insert("jwt_secret", "x".repeat(31));
        let reply = validate("POST", Some("Bearer a.b.c"), &vars, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "server misconfigured")
        );
        assert!(log_line(COMPONENT, "POST", &reply, Duration::ZERO)
            .contains("jwt secret is 31 bytes long"));
    }

    #[test]
    fn other_methods_get_405() {
        let reply = validate("GET", None, &vars(), NOW);
        assert_eq!(reply.status, 405);
        assert!(reply.headers.contains(&("allow", "POST".into())));
    }
}
