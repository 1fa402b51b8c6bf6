//! `POST /validate`: `Authorization: Bearer <jwt>` in, the token's claims as JSON out.
//!
//! Spin variables read: `jwt_secret` (at least 32 bytes), `jwt_issuer`, `jwt_audience`,
//! `db_url`, `token_check_seconds`.
//!
//! A token also has to be of its user's current token generation (see
//! [`mp3_auth::revocation`]): logging out and a new password revoke older ones. The user's
//! generation is read from MySQL at most once per `token_check_seconds` per user and kept in
//! the `default` key-value store meanwhile, so most requests never reach the database. While
//! MySQL is down, an entry past its time still serves.
//!
//! | case | status | body |
//! |---|---|---|
//! | valid token | 200 `application/json` | the claims |
//! | no `Authorization`, or not a Bearer token | 401 + `WWW-Authenticate: Bearer realm="mp3"` | `missing token` |
//! | verification failed | 403 | `invalid token: <reason>` (`expired`, `bad signature`, `wrong algorithm`, `wrong issuer`, `wrong audience`, `malformed`, `revoked`) |
//! | database needed and unreachable | 503 | `database unavailable` |
//! | missing variable, secret under 32 bytes | 500 | `server misconfigured` |
//! | any method but POST | 405 + `Allow: POST` | `method not allowed` |
//!
//! One `key=value` line per request goes to stderr. The request body is never read.

use component_http::{bearer_claims, token_check_seconds, token_config, Reply, Variables};
use mp3_auth::revocation::{cache_latest, stands, Cached, GenerationCache};

/// The component's name in its log line.
pub const COMPONENT: &str = "validate";

/// What [`validate`] needs from its host: variables, and users' token generations (cached,
/// and in the database).
pub trait Host: Variables + GenerationCache {
    /// `email`'s generation in the database; `None` when there is no such user.
    fn stored_generation(&self, db_url: &str, email: &str) -> Result<Option<i64>, String>;
}

/// `db_url`, and `token_check_seconds` (how long an entry read now may be trusted).
fn database_settings(host: &impl Host) -> Result<(String, i64), String> {
    Ok((host.require("db_url")?, token_check_seconds(host)?))
}

/// The whole decision for one request. `authorization` is `None` when the header is absent,
/// repeated, or not UTF-8.
pub fn validate(method: &str, authorization: Option<&str>, host: &impl Host, now: i64) -> Reply {
    if method != "POST" {
        return Reply::method_not_allowed("POST");
    }
    // The time to live only matters when issuing; verify ignores it.
    let config = match token_config(host, None) {
        Ok(config) => config,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let claims = match bearer_claims(&config, authorization, now) {
        Ok(claims) => claims,
        Err(reply) => return reply,
    };
    let email = &claims.username;
    let cached = host.cached_generation(email);
    let current = match cached.filter(|c| c.fresh(now)) {
        Some(cached) => cached.generation,
        None => {
            // Only now the database settings: most requests never need them.
            let (db_url, max_age) = match database_settings(host) {
                Ok(settings) => settings,
                Err(detail) => return Reply::misconfigured(detail),
            };
            match host.stored_generation(&db_url, email) {
                Ok(generation) => {
                    let read = Cached {
                        generation,
                        read_at: now,
                        max_age,
                    };
                    cache_latest(host, email, read, now)
                }
                // MySQL down: an entry past its time is better than failing every request. A
                // revocation made meanwhile waits for MySQL to come back.
                Err(detail) => match cached {
                    Some(stale) => stale.generation,
                    None => {
                        return Reply::text(503, "database unavailable", "database_unavailable")
                            .detail(detail)
                            .user(email)
                    }
                },
            }
        }
    };
    if !stands(claims.generation, current) {
        return Reply::text(403, "invalid token: revoked", "revoked").user(email);
    }
    match serde_json::to_string(&claims) {
        Ok(json) => Reply::new(200, "application/json", json, "ok").user(email),
        Err(e) => Reply::text(500, "internal error", "encode_failed").detail(e.to_string()),
    }
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::*;
    use component_http::spin::{
        authorization, method_name, respond, SpinGenerationCache, SpinVariables,
    };
    use component_http::without_password;
    use mp3_auth::unix_now;
    use spin_sdk::http::{IncomingRequest, ResponseOutparam};
    use spin_sdk::http_component;
    use spin_sdk::mysql::{Connection, DbValue, ParameterValue};
    use std::time::Instant;

    /// The host: Spin's variables, key-value store and MySQL.
    #[derive(Default)]
    struct SpinHost {
        cache: SpinGenerationCache,
    }

    impl Variables for SpinHost {
        fn variable(&self, name: &str) -> Result<String, String> {
            SpinVariables.variable(name)
        }
    }

    impl GenerationCache for SpinHost {
        fn cached_generation(&self, email: &str) -> Option<Cached> {
            self.cache.cached_generation(email)
        }

        fn cache_generation(&self, email: &str, cached: Cached) {
            self.cache.cache_generation(email, cached)
        }
    }

    impl Host for SpinHost {
        fn stored_generation(&self, db_url: &str, email: &str) -> Result<Option<i64>, String> {
            let connection = Connection::open(db_url)
                .map_err(|e| without_password(&format!("connect: {e}"), db_url))?;
            let rows = connection
                .query(
                    "SELECT token_generation FROM user WHERE email = ?",
                    &[ParameterValue::Str(email.to_owned())],
                )
                .map_err(|e| format!("query: {e}"))?;
            let Some(row) = rows.rows.into_iter().next() else {
                return Ok(None);
            };
            match row.first() {
                Some(DbValue::Int32(n)) => Ok(Some((*n).into())),
                Some(DbValue::Int64(n)) => Ok(Some(*n)),
                other => Err(format!("user.token_generation: not an integer: {other:?}")),
            }
        }
    }

    #[http_component]
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let started = Instant::now();
        let method = method_name(&req.method());
        let authorization = authorization(&req);
        let reply = validate(
            &method,
            authorization.as_deref(),
            &SpinHost::default(),
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
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    /// Variables, the users' generations in the "database", and the cache.
    struct Fake {
        vars: HashMap<&'static str, String>,
        stored: RefCell<HashMap<String, i64>>,
        database_down: Cell<bool>,
        reads: Cell<u32>,
        cache: RefCell<HashMap<String, Cached>>,
        /// Cached by a logout in this pod while the database is read (once).
        logout_during_read: Cell<Option<Cached>>,
    }

    impl Variables for Fake {
        fn variable(&self, name: &str) -> Result<String, String> {
            self.vars.variable(name)
        }
    }

    impl GenerationCache for Fake {
        fn cached_generation(&self, email: &str) -> Option<Cached> {
            self.cache.borrow().get(email).copied()
        }
        fn cache_generation(&self, email: &str, cached: Cached) {
            self.cache.borrow_mut().insert(email.to_owned(), cached);
        }
    }

    impl Host for Fake {
        fn stored_generation(&self, _: &str, email: &str) -> Result<Option<i64>, String> {
            if self.database_down.get() {
                return Err("connect: connection refused".into());
            }
            self.reads.set(self.reads.get() + 1);
            let read = self.stored.borrow().get(email).copied();
            if let Some(logout) = self.logout_during_read.take() {
                self.cache_generation(email, logout);
            }
            Ok(read)
        }
    }

    fn vars() -> Fake {
        Fake {
            vars: HashMap::from([
                ("jwt_secret", SECRET.to_owned()),
                ("jwt_issuer", "mp3-auth".to_owned()),
                ("jwt_audience", "mp3".to_owned()),
                ("db_url", "mysql://u:p@127.0.0.1/auth".to_owned()),
                ("token_check_seconds", "10".to_owned()),
            ]),
            stored: RefCell::new(HashMap::from([("a@example.com".to_owned(), 0)])),
            database_down: Cell::new(false),
            reads: Cell::new(0),
            cache: RefCell::default(),
            logout_during_read: Cell::new(None),
        }
    }

    fn token(secret: &str, iss: &str, ttl: u64) -> String {
        let config = TokenConfig::new(secret, iss, "mp3", Duration::from_secs(ttl)).unwrap();
        issue(&config, "a@example.com", false, 0, NOW).unwrap()
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
        vars.vars.insert("jwt_secret", "x".repeat(31));
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

    #[test]
    fn tokens_of_an_older_generation_are_revoked_within_the_check_time() {
        let host = vars();
        let token = bearer(&token(SECRET, "mp3-auth", 3600));
        assert_eq!(validate("POST", Some(&token), &host, NOW).status, 200);
        assert_eq!(validate("POST", Some(&token), &host, NOW + 5).status, 200);
        assert_eq!(host.reads.get(), 1, "read once, then from the cache");
        // Logged out elsewhere: the cache still says 0 for the rest of its time...
        host.stored.borrow_mut().insert("a@example.com".into(), 1);
        assert_eq!(validate("POST", Some(&token), &host, NOW + 9).status, 200);
        // ...then the database is asked again.
        let reply = validate("POST", Some(&token), &host, NOW + 10);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (403, "invalid token: revoked")
        );
        assert_eq!(host.reads.get(), 2);
        // A user who is gone has no valid tokens either.
        host.stored.borrow_mut().clear();
        assert_eq!(validate("POST", Some(&token), &host, NOW + 30).status, 403);
    }

    #[test]
    fn a_logout_during_the_database_read_is_not_undone() {
        let host = vars();
        let token = bearer(&token(SECRET, "mp3-auth", 3600));
        // The read finds generation 0; meanwhile a logout here moved the user to 1 and cached it.
        host.logout_during_read.set(Some(Cached {
            generation: Some(1),
            read_at: NOW,
            max_age: 10,
        }));
        let reply = validate("POST", Some(&token), &host, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (403, "invalid token: revoked")
        );
        assert_eq!(
            host.cached_generation("a@example.com").unwrap().generation,
            Some(1)
        );
        assert_eq!(validate("POST", Some(&token), &host, NOW + 1).status, 403);
    }

    #[test]
    fn a_database_needed_and_down_is_503_and_a_cached_one_is_not_needed() {
        let host = vars();
        let token = bearer(&token(SECRET, "mp3-auth", 3600));
        assert_eq!(validate("POST", Some(&token), &host, NOW).status, 200);
        host.database_down.set(true);
        assert_eq!(validate("POST", Some(&token), &host, NOW + 1).status, 200);
        // Past its time, the cached generation still serves while MySQL is down...
        assert_eq!(validate("POST", Some(&token), &host, NOW + 20).status, 200);
        // ...but with nothing cached there is nothing to go by.
        host.cache.borrow_mut().clear();
        let reply = validate("POST", Some(&token), &host, NOW + 21);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "database unavailable")
        );
        let mut host = vars();
        host.vars.insert("token_check_seconds", "soon".into());
        assert_eq!(validate("POST", Some(&token), &host, NOW).status, 500);
    }
}
