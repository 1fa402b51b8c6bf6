//! `POST /login`: HTTP Basic (email, password) in, an HS256 JWT out (seed-compatible body).
//!
//! Spin variables read: `db_url` (`mysql://user:pw@host:port/auth`), `jwt_secret` (at least 32
//! bytes), `jwt_issuer`, `jwt_audience`, `jwt_ttl_seconds`, `login_max_failures`,
//! `login_address_max_failures`, `login_account_max_failures`, `login_lockout_seconds`,
//! `trusted_proxies`, `token_check_seconds`.
//!
//! Password checks are budgeted ([`throttle`]): per client address, per client address and
//! email, and per email from addresses it has not logged in from before. The budgets are
//! charged before the password is checked, so concurrent guesses cannot exceed them, and a
//! failure elsewhere never stops the owner from where they logged in before. Emails that do not
//! exist are counted the same, so the budgets tell nothing about which accounts exist.
//!
//! | case | status | body |
//! |---|---|---|
//! | success | 200 `text/plain`, `Cache-Control: no-store` | the JWT |
//! | no or malformed Basic credentials | 401 + `WWW-Authenticate: Basic realm="mp3"` | `missing credentials` |
//! | unknown email or wrong password | 401 | `invalid credentials` |
//! | a budget is spent | 429 + `Retry-After` | `too many failed logins from this address` (or `for this account`) |
//! | database unreachable or failing | 503 | `database unavailable` |
//! | missing/invalid variable, secret under 32 bytes | 500 | `server misconfigured` |
//! | any method but POST | 405 + `Allow: POST` | `method not allowed` |
//!
//! One `key=value` line per request goes to stderr. The request body is never read.
//! The decision logic ([`login`]) talks to the host through [`Host`], so it is unit-tested natively
//! with a fake; the Spin entry point only adapts the request and the host interfaces.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use component_http::forwarded::{client_ip, client_key, TrustedProxies};
use component_http::{bearer_claims, token_check_seconds, token_config, Reply, Variables};
use mp3_auth::revocation::{cache_latest, Cached, GenerationCache};
use mp3_auth::{issue, parse_basic, verify_login, TokenConfig};

pub mod throttle;

use throttle::{Budgets, Charge, Verdict};

/// The component's name in its log line.
pub const COMPONENT: &str = "login";

/// What [`login`] needs from its host: Spin variables, the user table, the login budgets and
/// validate's cache of token generations in this pod. `Err` is always a database failure.
pub trait Host: Variables + GenerationCache {
    /// The user's stored email, password hash and admin flag.
    fn find_user(&self, db_url: &str, email: &str) -> Result<Option<User>, String>;
    /// Counts one more attempt in `bucket`, in a new window from `now` when its window began at
    /// or before `window_floor`, in one statement; then the count that statement made, and the
    /// window's start.
    fn charge(
        &self,
        db_url: &str,
        bucket: &str,
        now: i64,
        window_floor: i64,
    ) -> Result<Charge, String>;
    /// Takes one attempt off `bucket` (it was the right password), or all of them (`clear`).
    fn refund(&self, db_url: &str, bucket: &str, clear: bool) -> Result<(), String>;
    /// Whether `email` logged in from `client` after `since`.
    fn is_known(&self, db_url: &str, email: &str, client: &str, since: i64)
        -> Result<bool, String>;
    /// Records that `email` logged in from `client` at `now`.
    fn remember(&self, db_url: &str, email: &str, client: &str, now: i64) -> Result<(), String>;
    /// Deletes some counters whose window began at or before `window_floor` (the next charge
    /// would start them over anyway), so the table holds about one window's worth.
    fn forget_expired(&self, db_url: &str, window_floor: i64) -> Result<(), String>;
    /// Moves `email`'s token generation past `generation`, unless it already is; then the
    /// user's generation (`None`: no such user).
    fn revoke(&self, db_url: &str, email: &str, generation: i64) -> Result<Option<i64>, String>;
    /// True once in `n` calls, at random (for chores kept off most requests).
    fn chance(&self, n: u32) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub email: String,
    pub password_hash: String,
    pub admin: bool,
    pub token_generation: i64,
}

/// What login reads from the request.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `/login` or `/logout` (anything else is `/login`, as the route says).
    pub path: &'a str,
    /// `None` when the header is absent, repeated, or not UTF-8.
    pub authorization: Option<&'a str>,
    /// The address the request came from (`spin-client-addr`).
    pub peer: Option<IpAddr>,
    /// Every `X-Forwarded-For` value, in order.
    pub forwarded_for: Vec<String>,
}

struct Config {
    db_url: String,
    tokens: TokenConfig,
    budgets: Budgets,
    trusted: TrustedProxies,
}

fn load_config(host: &impl Host) -> Result<Config, String> {
    let db_url = host.require("db_url")?;
    let ttl = positive_number(host, "jwt_ttl_seconds")?;
    let tokens = token_config(host, Some(Duration::from_secs(ttl.unsigned_abs())))?;
    let trusted = TrustedProxies::parse(&host.require("trusted_proxies")?)
        .map_err(|e| format!("variable trusted_proxies: {e}"))?;
    Ok(Config {
        db_url,
        tokens,
        budgets: Budgets {
            per_account_and_address: positive_number(host, "login_max_failures")?,
            per_address: positive_number(host, "login_address_max_failures")?,
            per_account: positive_number(host, "login_account_max_failures")?,
            window_seconds: positive_number(host, "login_lockout_seconds")?,
        },
        trusted,
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

fn database_unavailable(detail: String, email: &str) -> Reply {
    Reply::text(503, "database unavailable", "database_unavailable")
        .detail(detail)
        .user(email)
}

/// The whole decision for one request: `POST /logout`, or `POST /login`.
pub fn handle(request: &Request<'_>, host: &impl Host, now: i64) -> Reply {
    if request.method != "POST" {
        return Reply::method_not_allowed("POST");
    }
    if request.path == "/logout" {
        logout(request, host, now)
    } else {
        login(request, host, now)
    }
}

/// `POST /logout` with a bearer token: every token of its user stops working (the user's token
/// generation moves on). 200 `logged out`, also for a token already revoked.
pub fn logout(request: &Request<'_>, host: &impl Host, now: i64) -> Reply {
    let settings = host
        .require("db_url")
        .and_then(|url| Ok((url, token_config(host, None)?, token_check_seconds(host)?)));
    let (db_url, tokens, max_age) = match settings {
        Ok(settings) => settings,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let claims = match bearer_claims(&tokens, request.authorization, now) {
        Ok(claims) => claims,
        Err(reply) => return reply,
    };
    let generation = match host.revoke(&db_url, &claims.username, claims.generation) {
        Ok(generation) => generation,
        Err(detail) => return database_unavailable(detail, &claims.username),
    };
    // Validate in this pod refuses the revoked tokens at once (elsewhere within its check
    // time). What the database holds, not the token's generation + 1: a token older than the
    // user's generation must not put an earlier one back (it would revive revoked tokens).
    let read = Cached {
        generation,
        read_at: now,
        max_age,
    };
    cache_latest(host, &claims.username, read, now);
    Reply::text(200, "logged out", "logged_out")
        .header("cache-control", "no-store")
        .user(&claims.username)
}

/// `POST /login`.
pub fn login(request: &Request<'_>, host: &impl Host, now: i64) -> Reply {
    let config = match load_config(host) {
        Ok(config) => config,
        Err(detail) => return Reply::misconfigured(detail),
    };
    let Some(Ok((email, password))) = request.authorization.map(parse_basic) else {
        return Reply::text(401, "missing credentials", "missing_credentials")
            .header("www-authenticate", r#"Basic realm="mp3""#);
    };
    let peer = request.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let client = client_key(client_ip(peer, &request.forwarded_for, &config.trusted));
    let plan = throttle::Plan::new(&config.budgets, &client, &email, now);
    match throttle::admit(&plan, host, &config.db_url) {
        Ok(Verdict::Check) => {}
        Ok(Verdict::Refuse(refusal)) => return refusal.reply().user(&email).detail(client),
        Err(detail) => return database_unavailable(detail, &email),
    }
    let user = match host.find_user(&config.db_url, &email) {
        Ok(user) => user,
        Err(detail) => return database_unavailable(detail, &email),
    };
    // Unknown user: verify_login still runs a full argon2 verification (dummy hash).
    let ok = verify_login(user.as_ref().map(|u| u.password_hash.as_str()), &password);
    let Some(user) = user.filter(|_| ok) else {
        // The charges stay: they are the failure's count.
        return Reply::text(401, "invalid credentials", "invalid_credentials").user(&email);
    };
    let sweep = host.chance(throttle::SWEEP_EVERY);
    let note = match throttle::settle_success(&plan, host, &config.db_url, sweep) {
        Ok(note) => note,
        Err(detail) => return database_unavailable(detail, &email),
    };
    // The stored email is canonical (the column's collation may match other spellings).
    match issue(
        &config.tokens,
        &user.email,
        user.admin,
        user.token_generation,
        now,
    ) {
        Ok(token) => {
            let reply = Reply::text(200, &token, "ok")
                .header("cache-control", "no-store")
                .user(&user.email);
            match note {
                Some(note) => reply.detail(note),
                None => reply,
            }
        }
        Err(e) => Reply::text(500, "internal error", "issue_failed").detail(e.to_string()),
    }
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use super::*;
    use component_http::spin::{
        authorization, header_values, method_name, peer_ip, respond, SpinGenerationCache,
        SpinVariables,
    };
    use component_http::without_password;
    use mp3_auth::unix_now;
    use spin_sdk::http::{IncomingRequest, ResponseOutparam};
    use spin_sdk::http_component;
    use spin_sdk::mysql::{Connection, DbValue, ParameterValue};
    use std::cell::OnceCell;
    use std::time::Instant;

    /// The host, with one MySQL connection for the whole request (Spin opens a new one for
    /// every `open`).
    #[derive(Default)]
    struct SpinHost {
        connection: OnceCell<Connection>,
        cache: SpinGenerationCache,
    }

    impl GenerationCache for SpinHost {
        fn cached_generation(&self, email: &str) -> Option<Cached> {
            self.cache.cached_generation(email)
        }

        fn cache_generation(&self, email: &str, cached: Cached) {
            self.cache.cache_generation(email, cached)
        }
    }

    impl Variables for SpinHost {
        fn variable(&self, name: &str) -> Result<String, String> {
            SpinVariables.variable(name)
        }
    }

    fn str(value: &str) -> ParameterValue {
        ParameterValue::Str(value.to_owned())
    }

    impl SpinHost {
        fn connection(&self, db_url: &str) -> Result<&Connection, String> {
            if let Some(connection) = self.connection.get() {
                return Ok(connection);
            }
            let connection = Connection::open(db_url)
                .map_err(|e| without_password(&format!("connect: {e}"), db_url))?;
            Ok(self.connection.get_or_init(|| connection))
        }

        fn execute(
            &self,
            db_url: &str,
            sql: &str,
            params: &[ParameterValue],
        ) -> Result<(), String> {
            self.connection(db_url)?
                .execute(sql, params)
                .map_err(|e| format!("statement: {e}"))
        }

        /// The first row `sql` returns.
        fn first_row(
            &self,
            db_url: &str,
            sql: &str,
            params: &[ParameterValue],
        ) -> Result<Option<Vec<DbValue>>, String> {
            let rows = self
                .connection(db_url)?
                .query(sql, params)
                .map_err(|e| format!("query: {e}"))?;
            Ok(rows.rows.into_iter().next())
        }
    }

    impl Host for SpinHost {
        fn find_user(&self, db_url: &str, email: &str) -> Result<Option<User>, String> {
            let sql = "SELECT email, password, admin, token_generation FROM user WHERE email = ?";
            let Some(row) = self.first_row(db_url, sql, &[str(email)])? else {
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
            let token_generation =
                integer(row.get(3)).map_err(|e| format!("user.token_generation: {e}"))?;
            Ok(Some(User {
                email,
                password_hash,
                admin,
                token_generation,
            }))
        }

        fn charge(
            &self,
            db_url: &str,
            bucket: &str,
            now: i64,
            window_floor: i64,
        ) -> Result<Charge, String> {
            // One statement, so concurrent attempts cannot lose counts. MySQL assigns left to
            // right, so `attempts` still sees the old `window_start`. LAST_INSERT_ID(x) keeps
            // this statement's own count for this connection: reading the row back instead
            // would see later attempts' charges too, and refuse more than the budget says.
            self.execute(
                db_url,
                "INSERT INTO login_throttle (bucket, attempts, window_start) \
                 VALUES (?, LAST_INSERT_ID(1), ?) \
                 ON DUPLICATE KEY UPDATE \
                 attempts = LAST_INSERT_ID(IF(window_start <= ?, 1, attempts + 1)), \
                 window_start = IF(window_start <= ?, ?, window_start)",
                &[
                    str(bucket),
                    ParameterValue::Int64(now),
                    ParameterValue::Int64(window_floor),
                    ParameterValue::Int64(window_floor),
                    ParameterValue::Int64(now),
                ],
            )
            .map_err(|e| format!("charge {bucket:?}: {e}"))?;
            // The row may be gone already (a success cleared it): its window is then new.
            let sql = "SELECT LAST_INSERT_ID(), \
                       (SELECT window_start FROM login_throttle WHERE bucket = ?)";
            let row = self
                .first_row(db_url, sql, &[str(bucket)])?
                .ok_or_else(|| format!("charge {bucket:?}: no answer"))?;
            let window_start = match row.get(1) {
                Some(DbValue::DbNull) | None => now,
                value => integer(value).map_err(|e| format!("window_start: {e}"))?,
            };
            Ok(Charge {
                attempts: integer(row.first()).map_err(|e| format!("attempts: {e}"))?,
                window_start,
            })
        }

        fn refund(&self, db_url: &str, bucket: &str, clear: bool) -> Result<(), String> {
            let sql = if clear {
                "DELETE FROM login_throttle WHERE bucket = ?"
            } else {
                "UPDATE login_throttle SET attempts = GREATEST(attempts - 1, 0) WHERE bucket = ?"
            };
            self.execute(db_url, sql, &[str(bucket)])
                .map_err(|e| format!("refund {bucket:?}: {e}"))
        }

        fn is_known(
            &self,
            db_url: &str,
            email: &str,
            client: &str,
            since: i64,
        ) -> Result<bool, String> {
            let sql = "SELECT 1 FROM login_known WHERE email = ? AND address = ? AND seen_at > ?";
            let params = [str(email), str(client), ParameterValue::Int64(since)];
            Ok(self.first_row(db_url, sql, &params)?.is_some())
        }

        fn remember(
            &self,
            db_url: &str,
            email: &str,
            client: &str,
            now: i64,
        ) -> Result<(), String> {
            self.execute(
                db_url,
                "INSERT INTO login_known (email, address, seen_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE seen_at = VALUES(seen_at)",
                &[str(email), str(client), ParameterValue::Int64(now)],
            )
            .map_err(|e| format!("remember the address: {e}"))?;
            // Old rows go as their owners log in.
            self.execute(
                db_url,
                "DELETE FROM login_known WHERE email = ? AND seen_at <= ?",
                &[
                    str(email),
                    ParameterValue::Int64(now - throttle::KNOWN_FOR_SECONDS),
                ],
            )
            .map_err(|e| format!("forget old addresses: {e}"))
        }

        fn revoke(
            &self,
            db_url: &str,
            email: &str,
            generation: i64,
        ) -> Result<Option<i64>, String> {
            self.execute(
                db_url,
                "UPDATE user SET token_generation = ? + 1 \
                 WHERE email = ? AND token_generation <= ?",
                &[
                    ParameterValue::Int64(generation),
                    str(email),
                    ParameterValue::Int64(generation),
                ],
            )
            .map_err(|e| format!("revoke tokens: {e}"))?;
            let sql = "SELECT token_generation FROM user WHERE email = ?";
            let Some(row) = self.first_row(db_url, sql, &[str(email)])? else {
                return Ok(None);
            };
            integer(row.first())
                .map(Some)
                .map_err(|e| format!("user.token_generation: {e}"))
        }

        fn chance(&self, n: u32) -> bool {
            let mut byte = [0u8; 4];
            getrandom::getrandom(&mut byte).is_ok() && u32::from_le_bytes(byte) % n.max(1) == 0
        }

        fn forget_expired(&self, db_url: &str, window_floor: i64) -> Result<(), String> {
            self.execute(
                db_url,
                "DELETE FROM login_throttle WHERE window_start <= ? LIMIT 1000",
                &[ParameterValue::Int64(window_floor)],
            )
            .map_err(|e| format!("forget expired counters: {e}"))
        }
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
        let target = req.path_with_query().unwrap_or_default();
        let path = target.split('?').next().unwrap_or("");
        let request = Request {
            method: &method,
            path,
            authorization: authorization.as_deref(),
            peer: peer_ip(&req),
            forwarded_for: header_values(&req, "x-forwarded-for"),
        };
        let reply = super::handle(&request, &SpinHost::default(), unix_now());
        respond(COMPONENT, &method, out, reply, started);
    }
}

#[cfg(test)]
mod tests {
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
        counters: RefCell<HashMap<String, (i64, i64)>>,
        known: RefCell<HashMap<(String, String), i64>>,
        /// The users after a logout.
        revoked: RefCell<Option<Vec<User>>>,
        /// Validate's cache of generations in this pod.
        cache: RefCell<HashMap<String, Cached>>,
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
                ("login_address_max_failures", "10".to_owned()),
                ("login_account_max_failures", "6".to_owned()),
                ("login_lockout_seconds", "60".to_owned()),
                ("trusted_proxies", "127.0.0.1".to_owned()),
                ("token_check_seconds", "10".to_owned()),
            ]);
            let user = User {
                email: "a@example.com".into(),
                password_hash: hash_password("pw").unwrap(),
                admin: true,
                token_generation: 4,
            };
            Self {
                vars,
                users: Ok(vec![user]),
                lookups: Cell::new(0),
                counters: RefCell::default(),
                known: RefCell::default(),
                revoked: RefCell::default(),
                cache: RefCell::default(),
            }
        }

        fn attempts(&self, bucket: &str) -> i64 {
            self.counters.borrow().get(bucket).map_or(0, |c| c.0)
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

        // The same arithmetic as the SQL upsert.
        fn charge(&self, _: &str, bucket: &str, now: i64, floor: i64) -> Result<Charge, String> {
            self.users.as_ref().map_err(Clone::clone)?;
            let mut counters = self.counters.borrow_mut();
            let entry = counters.entry(bucket.to_owned()).or_insert((0, now));
            *entry = if entry.1 <= floor {
                (1, now)
            } else {
                (entry.0 + 1, entry.1)
            };
            Ok(Charge {
                attempts: entry.0,
                window_start: entry.1,
            })
        }

        fn refund(&self, _: &str, bucket: &str, clear: bool) -> Result<(), String> {
            let mut counters = self.counters.borrow_mut();
            if clear {
                counters.remove(bucket);
            } else if let Some(entry) = counters.get_mut(bucket) {
                entry.0 = (entry.0 - 1).max(0);
            }
            Ok(())
        }

        fn is_known(&self, _: &str, email: &str, client: &str, since: i64) -> Result<bool, String> {
            let known = self.known.borrow();
            Ok(known
                .get(&(email.to_owned(), client.to_owned()))
                .is_some_and(|seen| *seen > since))
        }

        fn remember(&self, _: &str, email: &str, client: &str, now: i64) -> Result<(), String> {
            self.known
                .borrow_mut()
                .insert((email.to_owned(), client.to_owned()), now);
            Ok(())
        }

        fn revoke(&self, _: &str, email: &str, generation: i64) -> Result<Option<i64>, String> {
            let mut users = self.users.clone()?;
            for user in users.iter_mut().filter(|u| u.email == email) {
                if user.token_generation <= generation {
                    user.token_generation = generation + 1;
                }
            }
            let now = users
                .iter()
                .find(|u| u.email == email)
                .map(|u| u.token_generation);
            *self.revoked.borrow_mut() = Some(users);
            Ok(now)
        }

        fn chance(&self, _n: u32) -> bool {
            true
        }

        fn forget_expired(&self, _: &str, window_floor: i64) -> Result<(), String> {
            self.counters.borrow_mut().retain(|_, c| c.1 > window_floor);
            Ok(())
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

    const OWNER_HOME: &str = "198.51.100.7";
    const ATTACKER: &str = "203.0.113.66";

    /// `POST /login` with Basic `credentials` from `client` (a direct peer).
    fn attempt(credentials: &str, client: &str, fake: &Fake, now: i64) -> Reply {
        let authorization = basic(credentials);
        let request = Request {
            method: "POST",
            path: "/login",
            authorization: Some(&authorization),
            peer: Some(client.parse().unwrap()),
            forwarded_for: Vec::new(),
        };
        handle(&request, fake, now)
    }

    fn post(authorization: Option<&str>) -> Request<'_> {
        Request {
            method: "POST",
            path: "/login",
            authorization,
            peer: Some(OWNER_HOME.parse().unwrap()),
            forwarded_for: Vec::new(),
        }
    }

    #[test]
    fn repeated_failures_from_one_address_stop_its_checks_for_the_window() {
        let fake = Fake::new();
        for _ in 0..3 {
            assert_eq!(
                attempt("a@example.com:nope", ATTACKER, &fake, NOW).status,
                401
            );
        }
        // That address is done for this account, even with the right password, unchecked.
        let lookups = fake.lookups.get();
        let locked = attempt("a@example.com:pw", ATTACKER, &fake, NOW + 10);
        assert_eq!(
            (locked.status, locked.body.as_str()),
            (
                429,
                "too many failed logins for this account from this address"
            )
        );
        assert_eq!(locked.header_value("retry-after"), Some("50"));
        assert_eq!(fake.lookups.get(), lookups);
        // The owner, elsewhere, is not affected.
        assert_eq!(
            attempt("a@example.com:pw", OWNER_HOME, &fake, NOW + 10).status,
            200
        );
        // The window has passed: that address may try again.
        assert_eq!(
            attempt("a@example.com:pw", ATTACKER, &fake, NOW + 60).status,
            200
        );
    }

    #[test]
    fn one_address_guessing_at_many_accounts_runs_out() {
        let fake = Fake::new();
        for n in 0..10 {
            let reply = attempt(&format!("user{n}@example.com:x"), ATTACKER, &fake, NOW);
            assert_eq!(reply.status, 401, "{n}");
        }
        let reply = attempt("other@example.com:x", ATTACKER, &fake, NOW);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (429, "too many failed logins from this address")
        );
        // Refused attempts are not charged to the accounts they named.
        assert_eq!(fake.attempts("account other@example.com"), 0);
    }

    #[test]
    fn others_behind_the_same_address_cannot_keep_its_known_accounts_out() {
        let fake = Fake::new();
        // The owner has logged in from the office NAT before.
        assert_eq!(
            attempt("a@example.com:pw", ATTACKER, &fake, NOW).status,
            200
        );
        // Someone else behind it sprays guesses at other accounts until the address is spent.
        for n in 0..12 {
            attempt(&format!("user{n}@example.com:x"), ATTACKER, &fake, NOW + 1);
        }
        assert_eq!(
            attempt("new@example.com:x", ATTACKER, &fake, NOW + 2).status,
            429
        );
        // The owner, from there, is still checked.
        assert_eq!(
            attempt("a@example.com:pw", ATTACKER, &fake, NOW + 3).status,
            200
        );
    }

    #[test]
    fn a_distributed_attack_never_keeps_the_owner_out_where_they_logged_in_before() {
        let fake = Fake::new();
        assert_eq!(
            attempt("a@example.com:pw", OWNER_HOME, &fake, NOW).status,
            200
        );
        // Two attacker addresses spend the account's budget (3 each, 6 in all).
        for attacker in ["203.0.113.1", "203.0.113.2"] {
            for _ in 0..3 {
                assert_eq!(
                    attempt("a@example.com:x", attacker, &fake, NOW + 1).status,
                    401
                );
            }
        }
        // A third address is refused without a check, even with the right password.
        let refused = attempt("a@example.com:pw", "203.0.113.3", &fake, NOW + 2);
        assert_eq!(
            (refused.status, refused.body.as_str()),
            (429, "too many failed logins for this account")
        );
        // The owner's known address is still checked: the right password works, a wrong
        // one is a plain 401.
        assert_eq!(
            attempt("a@example.com:typo", OWNER_HOME, &fake, NOW + 3).status,
            401
        );
        assert_eq!(
            attempt("a@example.com:pw", OWNER_HOME, &fake, NOW + 4).status,
            200
        );
    }

    #[test]
    fn a_success_takes_back_its_charges_and_clears_its_address_count() {
        let fake = Fake::new();
        assert_eq!(
            attempt("a@example.com:typo", OWNER_HOME, &fake, NOW).status,
            401
        );
        assert_eq!(
            attempt("a@example.com:pw", OWNER_HOME, &fake, NOW).status,
            200
        );
        assert_eq!(fake.attempts(&format!("address {OWNER_HOME}")), 1);
        assert_eq!(
            fake.attempts(&format!("pair {OWNER_HOME} a@example.com")),
            0
        );
        assert_eq!(fake.attempts("account a@example.com"), 1);
    }

    #[test]
    fn unknown_emails_are_counted_like_real_ones() {
        let fake = Fake::new();
        for _ in 0..3 {
            assert_eq!(attempt("b@example.com:x", ATTACKER, &fake, NOW).status, 401);
        }
        assert_eq!(attempt("b@example.com:x", ATTACKER, &fake, NOW).status, 429);
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let fake = Fake::new();
        for t in [0, 1, 61] {
            assert_eq!(
                attempt("a@example.com:nope", ATTACKER, &fake, NOW + t).status,
                401
            );
        }
        let pair = format!("pair {ATTACKER} a@example.com");
        assert_eq!(fake.counters.borrow()[&pair], (1, NOW + 61));
        // A success sweeps out counters whose window has passed.
        attempt("b@example.com:x", OWNER_HOME, &fake, NOW);
        assert_eq!(
            attempt("a@example.com:pw", OWNER_HOME, &fake, NOW + 62).status,
            200
        );
        assert_eq!(fake.attempts("account b@example.com"), 0);
        assert_eq!(fake.counters.borrow()[&pair], (1, NOW + 61));
    }

    #[test]
    fn the_client_is_read_through_trusted_proxies_only() {
        let fake = Fake::new();
        let authorization = basic("a@example.com:x");
        let via = |peer: &str, forwarded: &str| Request {
            method: "POST",
            path: "/login",
            authorization: Some(&authorization),
            peer: Some(peer.parse().unwrap()),
            forwarded_for: vec![forwarded.to_owned()],
        };
        // From the trusted proxy: the address it reports.
        handle(&via("127.0.0.1", ATTACKER), &fake, NOW);
        assert_eq!(fake.attempts(&format!("address {ATTACKER}")), 1);
        // From anyone else: the header is theirs to forge, and ignored.
        handle(&via("192.0.2.9", OWNER_HOME), &fake, NOW);
        assert_eq!(fake.attempts(&format!("address {OWNER_HOME}")), 0);
        assert_eq!(fake.attempts("address 192.0.2.9"), 1);
        // A bad trusted_proxies is a configuration error.
        let mut fake = Fake::new();
        fake.vars.insert("trusted_proxies", "10.0.0.0/99".into());
        assert_eq!(handle(&via("127.0.0.1", ATTACKER), &fake, NOW).status, 500);
    }

    #[test]
    fn long_emails_are_counted_under_their_first_255_characters() {
        let fake = Fake::new();
        let long = "x".repeat(10_000);
        assert_eq!(
            attempt(&format!("{long}:pw"), ATTACKER, &fake, NOW).status,
            401
        );
        assert_eq!(fake.attempts(&format!("account {}", &long[..255])), 1);
    }

    fn basic(raw: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn success_returns_a_verifiable_token() {
        let reply = handle(&post(Some(&basic("a@example.com:pw"))), &Fake::new(), NOW);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header_value("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let config = TokenConfig::new(SECRET, "mp3-auth", "mp3", Duration::from_secs(1)).unwrap();
        let claims = verify(&config, &reply.body, NOW + 1).unwrap();
        assert_eq!(claims.username, "a@example.com");
        assert!(claims.admin);
        assert_eq!(claims.exp, NOW + 3600);
        assert_eq!(claims.generation, 4);
    }

    #[test]
    fn logout_moves_the_users_generation_past_the_tokens() {
        let fake = Fake::new();
        let token = handle(&post(Some(&basic("a@example.com:pw"))), &fake, NOW).body;
        let bearer = format!("Bearer {token}");
        let out = Request {
            path: "/logout",
            ..post(Some(&bearer))
        };
        let reply = handle(&out, &fake, NOW + 1);
        assert_eq!((reply.status, reply.body.as_str()), (200, "logged out"));
        assert_eq!(reply.header_value("cache-control"), Some("no-store"));
        let users = fake.revoked.borrow().clone().unwrap();
        assert_eq!(users[0].token_generation, 5);
        let cached = fake.cached_generation("a@example.com").unwrap();
        assert_eq!((cached.generation, cached.read_at), (Some(5), NOW + 1));
        // Without a valid token: nothing changes.
        for (authorization, status) in [(None, 401), (Some("Bearer x.y.z"), 403)] {
            let out = Request {
                path: "/logout",
                ..post(authorization)
            };
            assert_eq!(handle(&out, &Fake::new(), NOW).status, status);
        }
    }

    #[test]
    fn a_logout_with_an_old_token_never_caches_an_earlier_generation() {
        // The user is at generation 6 (logged out twice since); a thief's token is of 4.
        let mut fake = Fake::new();
        if let Ok(users) = &mut fake.users {
            users[0].token_generation = 6;
        }
        let config = token_config(&fake, Some(Duration::from_secs(3600))).unwrap();
        let old = issue(&config, "a@example.com", true, 4, NOW).unwrap();
        let bearer = format!("Bearer {old}");
        let out = Request {
            path: "/logout",
            ..post(Some(&bearer))
        };
        let reply = handle(&out, &fake, NOW + 1);
        assert_eq!((reply.status, reply.body.as_str()), (200, "logged out"));
        assert_eq!(
            fake.revoked.borrow().clone().unwrap()[0].token_generation,
            6
        );
        // Validate here keeps refusing tokens of 5: the cache says what the database holds.
        let cached = fake.cached_generation("a@example.com").unwrap();
        assert_eq!(cached.generation, Some(6));
        // And a logout never undoes a later generation cached meanwhile.
        fake.cache_generation(
            "a@example.com",
            Cached {
                generation: Some(7),
                read_at: NOW + 1,
                max_age: 10,
            },
        );
        handle(&out, &fake, NOW + 2);
        let cached = fake.cached_generation("a@example.com").unwrap();
        assert_eq!(cached.generation, Some(7));
    }

    #[test]
    fn other_methods_get_405() {
        let reply = handle(
            &Request {
                method: "GET",
                ..post(Some(&basic("a@example.com:pw")))
            },
            &Fake::new(),
            NOW,
        );
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header_value("allow"), Some("POST"));
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
            let reply = handle(&post(auth), &fake, NOW);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (401, "missing credentials")
            );
            assert_eq!(
                reply.header_value("www-authenticate"),
                Some(r#"Basic realm="mp3""#)
            );
        }
        assert_eq!(fake.lookups.get(), 0);
    }

    #[test]
    fn wrong_password_and_unknown_email_look_the_same() {
        let fake = Fake::new();
        let wrong = handle(&post(Some(&basic("a@example.com:nope"))), &fake, NOW);
        let unknown = handle(&post(Some(&basic("b@example.com:pw"))), &fake, NOW);
        for reply in [&wrong, &unknown] {
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (401, "invalid credentials")
            );
            assert_eq!(reply.header_value("www-authenticate"), None);
        }
    }

    #[test]
    fn database_failure_gets_503() {
        let mut fake = Fake::new();
        fake.users = Err("connect: connection refused".into());
        let reply = handle(&post(Some(&basic("a@example.com:pw"))), &fake, NOW);
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
        let reply = handle(&post(Some(&basic("a@example.com:pw"))), &fake, NOW);
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
            let reply = handle(&post(Some(&basic("a@example.com:pw"))), &fake, NOW);
            assert_eq!(reply.status, 500, "{name}");
            assert!(reply.detail.unwrap().contains(name));
        }
    }

    #[test]
    fn log_line_quotes_user_input() {
        let reply = handle(&post(Some(&basic("evil\nline@x:pw"))), &Fake::new(), NOW);
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
