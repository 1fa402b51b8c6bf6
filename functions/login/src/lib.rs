//! `POST /login`: HTTP Basic (email, password) in, an HS256 JWT out (seed-compatible body).
//!
//! Spin variables read: `db_url` (`mysql://user:pw@host:port/auth`), `jwt_secret` (at least 32
//! bytes), `jwt_issuer`, `jwt_audience`, `jwt_ttl_seconds`, `login_max_failures`,
//! `login_lockout_seconds`.
//!
//! Failed logins are counted per email (existing or not, so the lockout reveals nothing) in the
//! `login_failure` table: after `login_max_failures` failures within `login_lockout_seconds`, the
//! email is refused with 429 until that window has passed, whatever the password, so guessing
//! is limited to a few tries per window. A success clears the count.
//!
//! | case | status | body |
//! |---|---|---|
//! | success | 200 `text/plain` | the JWT |
//! | no or malformed Basic credentials | 401 + `WWW-Authenticate: Basic realm="mp3"` | `missing credentials` |
//! | unknown email or wrong password | 401 | `invalid credentials` |
//! | too many failures for this email | 429 + `Retry-After` | `too many failed logins` |
//! | database unreachable or failing | 503 | `database unavailable` |
//! | missing/invalid variable, secret under 32 bytes | 500 | `server misconfigured` |
//! | any method but POST | 405 + `Allow: POST` | `method not allowed` |
//!
//! One `key=value` line per request goes to stderr. The request body is never read.
//! The decision logic ([`login`]) talks to the host through [`Host`], so it is unit-tested natively
//! with a fake; the Spin entry point only adapts the request and the host interfaces.

use std::time::Duration;

use component_http::{token_config, Reply, Variables};
use mp3_auth::{issue, parse_basic, verify_login, TokenConfig};

/// The component's name in its log line.
pub const COMPONENT: &str = "login";

/// What [`login`] needs from its host: Spin variables, the user table and the failure counts.
/// `Err` is always a database failure.
pub trait Host: Variables {
    /// The user's stored email, password hash and admin flag.
    fn find_user(&self, db_url: &str, email: &str) -> Result<Option<User>, String>;
    /// The failures recorded for `email`: `(count, window_start)`.
    fn failures(&self, db_url: &str, email: &str) -> Result<Option<(i64, i64)>, String>;
    /// Counts one more failure, starting a new window at `now` when the current one began
    /// before `window_floor`.
    fn record_failure(
        &self,
        db_url: &str,
        email: &str,
        now: i64,
        window_floor: i64,
    ) -> Result<(), String>;
    /// Forgets the failures of `email` (after a successful login).
    fn clear_failures(&self, db_url: &str, email: &str) -> Result<(), String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub email: String,
    pub password_hash: String,
    pub admin: bool,
}

struct Config {
    db_url: String,
    tokens: TokenConfig,
    max_failures: i64,
    lockout_seconds: i64,
}

fn load_config(host: &impl Host) -> Result<Config, String> {
    let db_url = host.require("db_url")?;
    let ttl = positive_number(host, "jwt_ttl_seconds")?;
    let tokens = token_config(host, Some(Duration::from_secs(ttl.unsigned_abs())))?;
    Ok(Config {
        db_url,
        tokens,
        max_failures: positive_number(host, "login_max_failures")?,
        lockout_seconds: positive_number(host, "login_lockout_seconds")?,
    })
}

fn positive_number(host: &impl Host, name: &str) -> Result<i64, String> {
    let text = host.require(name)?;
    match text.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "variable {name}: not a positive whole number: {text:?}"
        )),
    }
}

/// `text` with the password of `url` (`scheme://user:password@host/…`) replaced by `***`: Spin
/// words some MySQL errors with the whole address (`address mysql://user:password@… is not
/// permitted`), and the error goes to the log line.
pub fn without_password(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

fn database_unavailable(detail: String, email: &str) -> Reply {
    Reply::text(503, "database unavailable", "database_unavailable")
        .detail(detail)
        .user(email)
}

/// The whole decision for one request. `authorization` is `None` when the header is absent,
/// repeated, or not UTF-8.
pub fn login(method: &str, authorization: Option<&str>, host: &impl Host, now: i64) -> Reply {
    if method != "POST" {
        return Reply::method_not_allowed("POST");
    }
    let config = match load_config(host) {
        Ok(config) => config,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let Some(Ok((email, password))) = authorization.map(parse_basic) else {
        return Reply::text(401, "missing credentials", "missing_credentials")
            .header("www-authenticate", r#"Basic realm="mp3""#);
    };
    let window_floor = now - config.lockout_seconds;
    match host.failures(&config.db_url, &email) {
        Ok(Some((failures, window_start)))
            if failures >= config.max_failures && window_start > window_floor =>
        {
            let retry_after = window_start - window_floor;
            return Reply::text(429, "too many failed logins", "locked_out")
                .header("retry-after", retry_after.to_string())
                .user(&email);
        }
        Ok(_) => {}
        Err(detail) => return database_unavailable(detail, &email),
    }
    let user = match host.find_user(&config.db_url, &email) {
        Ok(user) => user,
        Err(detail) => return database_unavailable(detail, &email),
    };
    // Unknown user: verify_login still runs a full argon2 verification (dummy hash).
    let ok = verify_login(user.as_ref().map(|u| u.password_hash.as_str()), &password);
    let Some(user) = user.filter(|_| ok) else {
        if let Err(detail) = host.record_failure(&config.db_url, &email, now, window_floor) {
            return database_unavailable(detail, &email);
        }
        return Reply::text(401, "invalid credentials", "invalid_credentials").user(&email);
    };
    if let Err(detail) = host.clear_failures(&config.db_url, &email) {
        return database_unavailable(detail, &email);
    }
    // The stored email is canonical (the column's collation may match other spellings).
    match issue(&config.tokens, &user.email, user.admin, now) {
        Ok(token) => Reply::text(200, &token, "ok")
            .header("cache-control", "no-store")
            .user(&user.email),
        Err(e) => Reply::text(500, "internal error", "issue_failed").detail(e.to_string()),
    }
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::*;
    use component_http::spin::{authorization, method_name, respond, SpinVariables};
    use mp3_auth::unix_now;
    use spin_sdk::http::{IncomingRequest, ResponseOutparam};
    use spin_sdk::http_component;
    use spin_sdk::mysql::{Connection, DbValue, ParameterValue};
    use std::time::Instant;

    struct SpinHost;

    impl Variables for SpinHost {
        fn variable(&self, name: &str) -> Result<String, String> {
            SpinVariables.variable(name)
        }
    }

    impl Host for SpinHost {
        fn find_user(&self, db_url: &str, email: &str) -> Result<Option<User>, String> {
            let sql = "SELECT email, password, admin FROM user WHERE email = ?";
            let Some(row) = first_row(db_url, sql, email)? else {
                return Ok(None);
            };
            let text = |v: Option<&DbValue>| match v {
                Some(DbValue::Str(s)) => Ok(s.clone()),
                Some(DbValue::Binary(b)) => String::from_utf8(b.clone()).map_err(|_| "not UTF-8"),
                _ => Err("not text"),
            };
            let email = text(row.first()).map_err(|e| format!("user.email: {e}"))?;
            let password_hash = text(row.get(1)).map_err(|e| format!("user.password: {e}"))?;
            let admin = integer(row.get(2)).map_err(|e| format!("user.admin: {e}"))? != 0;
            Ok(Some(User {
                email,
                password_hash,
                admin,
            }))
        }

        fn failures(&self, db_url: &str, email: &str) -> Result<Option<(i64, i64)>, String> {
            let sql = "SELECT failures, window_start FROM login_failure WHERE email = ?";
            let Some(row) = first_row(db_url, sql, email)? else {
                return Ok(None);
            };
            let failures = integer(row.first()).map_err(|e| format!("failures: {e}"))?;
            let window_start = integer(row.get(1)).map_err(|e| format!("window_start: {e}"))?;
            Ok(Some((failures, window_start)))
        }

        fn record_failure(
            &self,
            db_url: &str,
            email: &str,
            now: i64,
            window_floor: i64,
        ) -> Result<(), String> {
            // One statement, so concurrent failures cannot lose counts. MySQL assigns left to
            // right, so `failures` still sees the old `window_start`.
            open(db_url)?
                .execute(
                    "INSERT INTO login_failure (email, failures, window_start) VALUES (?, 1, ?) \
                     ON DUPLICATE KEY UPDATE \
                     failures = IF(window_start <= ?, 1, failures + 1), \
                     window_start = IF(window_start <= ?, ?, window_start)",
                    &[
                        ParameterValue::Str(email.to_owned()),
                        ParameterValue::Int64(now),
                        ParameterValue::Int64(window_floor),
                        ParameterValue::Int64(window_floor),
                        ParameterValue::Int64(now),
                    ],
                )
                .map_err(|e| format!("record failure: {e}"))
        }

        fn clear_failures(&self, db_url: &str, email: &str) -> Result<(), String> {
            open(db_url)?
                .execute(
                    "DELETE FROM login_failure WHERE email = ?",
                    &[ParameterValue::Str(email.to_owned())],
                )
                .map_err(|e| format!("clear failures: {e}"))
        }
    }

    fn open(db_url: &str) -> Result<Connection, String> {
        Connection::open(db_url).map_err(|e| without_password(&format!("connect: {e}"), db_url))
    }

    /// The first row `sql` (with one `?`, bound to `email`) returns.
    fn first_row(db_url: &str, sql: &str, email: &str) -> Result<Option<Vec<DbValue>>, String> {
        let rows = open(db_url)?
            .query(sql, &[ParameterValue::Str(email.to_owned())])
            .map_err(|e| format!("query: {e}"))?;
        Ok(rows.rows.into_iter().next())
    }

    /// An integer column (MySQL has no real booleans: BOOLEAN is TINYINT(1)).
    fn integer(value: Option<&DbValue>) -> Result<i64, String> {
        Ok(match value {
            Some(DbValue::Boolean(b)) => i64::from(*b),
            Some(DbValue::Int8(n)) => (*n).into(),
            Some(DbValue::Int16(n)) => (*n).into(),
            Some(DbValue::Int32(n)) => (*n).into(),
            Some(DbValue::Int64(n)) => *n,
            Some(DbValue::Uint8(n)) => (*n).into(),
            Some(DbValue::Uint16(n)) => (*n).into(),
            Some(DbValue::Uint32(n)) => (*n).into(),
            Some(DbValue::Uint64(n)) => i64::try_from(*n).map_err(|_| "out of range")?,
            other => return Err(format!("not an integer: {other:?}")),
        })
    }

    #[http_component]
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let started = Instant::now();
        let method = method_name(&req.method());
        let authorization = authorization(&req);
        let reply = login(&method, authorization.as_deref(), &SpinHost, unix_now());
        respond(COMPONENT, &method, out, reply, started);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_password_never_reaches_the_log() {
        let url = "mysql://mp3:s3cr%2Ft@10.0.0.5:3306/auth";
        assert_eq!(
            super::without_password(&format!("connect: address {url} is not permitted"), url),
            "connect: address mysql://mp3:***@10.0.0.5:3306/auth is not permitted"
        );
        assert_eq!(
            super::without_password("refused", "mysql://h/auth"),
            "refused"
        );
        assert_eq!(super::without_password("x", "mysql://user@h/auth"), "x");
    }

    use super::*;
    use component_http::log_line;
    use mp3_auth::{hash_password, verify};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000;

    struct Fake {
        vars: HashMap<&'static str, String>,
        users: Result<Vec<User>, String>,
        lookups: Cell<u32>,
        failures: RefCell<HashMap<String, (i64, i64)>>,
    }

    impl Fake {
        fn new() -> Self {
            let vars = HashMap::from([
                ("db_url", "mysql://u:p@127.0.0.1/auth".to_owned()),
                ("jwt_secret", SECRET.to_owned()),
                ("jwt_issuer", "mp3-auth".to_owned()),
                ("jwt_audience", "mp3".to_owned()),
                ("jwt_ttl_seconds", "3600".to_owned()),
                ("login_max_failures", "3".to_owned()),
                ("login_lockout_seconds", "60".to_owned()),
            ]);
            let user = User {
                email: "a@example.com".into(),
                password_hash: hash_password("pw").unwrap(),
                admin: true,
            };
            Self {
                vars,
                users: Ok(vec![user]),
                lookups: Cell::new(0),
                failures: RefCell::default(),
            }
        }
    }

    impl Variables for Fake {
        fn variable(&self, name: &str) -> Result<String, String> {
            self.vars.variable(name)
        }
    }

    impl Host for Fake {
        fn find_user(&self, _db_url: &str, email: &str) -> Result<Option<User>, String> {
            self.lookups.set(self.lookups.get() + 1);
            let users = self.users.as_ref().map_err(Clone::clone)?;
            Ok(users.iter().find(|u| u.email == email).cloned())
        }

        fn failures(&self, _db_url: &str, email: &str) -> Result<Option<(i64, i64)>, String> {
            self.users.as_ref().map_err(Clone::clone)?;
            Ok(self.failures.borrow().get(email).copied())
        }

        // The same arithmetic as the SQL upsert.
        fn record_failure(&self, _: &str, email: &str, now: i64, floor: i64) -> Result<(), String> {
            let mut failures = self.failures.borrow_mut();
            let entry = failures.entry(email.to_owned()).or_insert((0, now));
            *entry = if entry.1 <= floor {
                (1, now)
            } else {
                (entry.0 + 1, entry.1)
            };
            Ok(())
        }

        fn clear_failures(&self, _db_url: &str, email: &str) -> Result<(), String> {
            self.failures.borrow_mut().remove(email);
            Ok(())
        }
    }

    #[test]
    fn repeated_failures_lock_the_email_out_for_the_window() {
        let fake = Fake::new();
        for _ in 0..3 {
            let reply = login("POST", Some(&basic("a@example.com:nope")), &fake, NOW);
            assert_eq!(reply.status, 401);
        }
        // Locked: even the right password is refused, without a password check.
        let locked = login("POST", Some(&basic("a@example.com:pw")), &fake, NOW + 10);
        assert_eq!(
            (locked.status, locked.body.as_str()),
            (429, "too many failed logins")
        );
        assert_eq!(header(&locked, "retry-after"), Some("50"));
        // The window has passed: the right password works and clears the count.
        let ok = login("POST", Some(&basic("a@example.com:pw")), &fake, NOW + 60);
        assert_eq!(ok.status, 200);
        assert!(fake.failures.borrow().is_empty());
    }

    #[test]
    fn unknown_emails_are_locked_out_too() {
        let fake = Fake::new();
        for _ in 0..3 {
            assert_eq!(
                login("POST", Some(&basic("b@example.com:x")), &fake, NOW).status,
                401
            );
        }
        assert_eq!(
            login("POST", Some(&basic("b@example.com:x")), &fake, NOW).status,
            429
        );
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let fake = Fake::new();
        for t in [0, 1, 61] {
            assert_eq!(
                login("POST", Some(&basic("a@example.com:nope")), &fake, NOW + t).status,
                401
            );
        }
        assert_eq!(fake.failures.borrow()["a@example.com"], (1, NOW + 61));
    }

    fn basic(raw: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn success_returns_a_verifiable_token() {
        let reply = login("POST", Some(&basic("a@example.com:pw")), &Fake::new(), NOW);
        assert_eq!(reply.status, 200);
        assert_eq!(
            header(&reply, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        let config = TokenConfig::new(SECRET, "mp3-auth", "mp3", Duration::from_secs(1)).unwrap();
        let claims = verify(&config, &reply.body, NOW + 1).unwrap();
        assert_eq!(claims.username, "a@example.com");
        assert!(claims.admin);
        assert_eq!(claims.exp, NOW + 3600);
    }

    #[test]
    fn other_methods_get_405() {
        let reply = login("GET", Some(&basic("a@example.com:pw")), &Fake::new(), NOW);
        assert_eq!(reply.status, 405);
        assert_eq!(header(&reply, "allow"), Some("POST"));
    }

    #[test]
    fn missing_or_malformed_credentials_get_401_with_challenge() {
        let fake = Fake::new();
        for auth in [
            None,
            Some("Bearer x"),
            Some("Basic !!!"),
            Some(&*basic("nocolon")),
        ] {
            let reply = login("POST", auth, &fake, NOW);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (401, "missing credentials")
            );
            assert_eq!(
                header(&reply, "www-authenticate"),
                Some(r#"Basic realm="mp3""#)
            );
        }
        assert_eq!(fake.lookups.get(), 0);
    }

    #[test]
    fn wrong_password_and_unknown_email_look_the_same() {
        let fake = Fake::new();
        let wrong = login("POST", Some(&basic("a@example.com:nope")), &fake, NOW);
        let unknown = login("POST", Some(&basic("b@example.com:pw")), &fake, NOW);
        for reply in [&wrong, &unknown] {
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (401, "invalid credentials")
            );
            assert_eq!(header(reply, "www-authenticate"), None);
        }
    }

    #[test]
    fn database_failure_gets_503() {
        let mut fake = Fake::new();
        fake.users = Err("connect: connection refused".into());
        let reply = login("POST", Some(&basic("a@example.com:pw")), &fake, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "database unavailable")
        );
        assert!(log_line(COMPONENT, "POST", &reply, Duration::ZERO).contains("connection refused"));
    }

    #[test]
    fn short_secret_gets_500_and_a_log_reason() {
        let mut fake = Fake::new();
        fake.vars.insert("jwt_secret", "short".into());
        let reply = login("POST", Some(&basic("a@example.com:pw")), &fake, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "server misconfigured")
        );
        let line = log_line(COMPONENT, "POST", &reply, Duration::ZERO);
        assert!(line.contains("jwt secret is 5 bytes long"), "{line}");
        assert_eq!(fake.lookups.get(), 0);
    }

    #[test]
    fn missing_or_bad_variables_get_500() {
        for (name, value) in [
            ("jwt_ttl_seconds", Some("soon")),
            ("db_url", None),
            ("jwt_issuer", None),
        ] {
            let mut fake = Fake::new();
            match value {
                Some(v) => fake.vars.insert(name, v.into()),
                None => fake.vars.remove(name),
            };
            let reply = login("POST", Some(&basic("a@example.com:pw")), &fake, NOW);
            assert_eq!(reply.status, 500, "{name}");
            assert!(reply.detail.unwrap().contains(name));
        }
    }

    #[test]
    fn log_line_quotes_user_input() {
        let reply = login("POST", Some(&basic("evil\nline@x:pw")), &Fake::new(), NOW);
        let line = log_line(COMPONENT, "POST", &reply, Duration::from_millis(7));
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                "component=login method=\"POST\" status=401 outcome=invalid_credentials ms=7"
            ),
            "{line}"
        );
    }
}
