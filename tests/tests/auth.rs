//! login and validate, as users call them: the project's spin.toml on the runner and on Spin, a
//! fresh MariaDB database with users made by `mp3-admin`, HTTP from the outside.

use std::time::Duration;

use base64::Engine as _;
use mp3_auth::TokenConfig;
use system_tests::http::{post, Reply};
use system_tests::{admin, on_each_runtime, App, AppConfig, Runtime, TestDb};

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123456789";
const EMAIL: &str = "alice@example.com";
const PASSWORD: &str = "correct horse battery staple";

on_each_runtime!(
    login_returns_a_token_that_validate_accepts,
    admin_users_get_the_admin_claim,
    bad_credentials_are_401_never_500,
    login_rejects_other_methods,
    validate_refuses_bad_tokens_with_403,
    validate_wants_a_bearer_token,
    a_short_secret_is_refused_not_used,
    database_down_is_503,
    unknown_email_costs_as_much_as_a_wrong_password,
    repeated_failures_from_one_address_stop_its_checks_then_the_window_passes,
    the_owner_logs_in_after_a_flood_of_failures_from_another_address,
    concurrent_wrong_guesses_are_checked_at_most_the_budget,
    a_distributed_attack_spares_the_owners_known_address,
    an_untrusted_client_cannot_choose_its_address,
    logout_revokes_every_token_of_the_user,
    a_new_password_revokes_older_tokens,
    responses_leave_in_one_piece_on_a_kept_alive_connection,
);

struct Auth {
    db: TestDb,
    app: App,
}

fn start_with(runtime: Runtime, db: TestDb, secret: &str) -> Auth {
    start_configured(db, secret, AppConfig::app(runtime))
}

fn start_configured(db: TestDb, secret: &str, config: AppConfig) -> Auth {
    let app = config
        .env("SPIN_VARIABLE_DB_URL", db.url())
        .env("SPIN_VARIABLE_DB_HOST", db.host_port())
        .env("SPIN_VARIABLE_JWT_SECRET", secret)
        .start();
    Auth { db, app }
}

/// A migrated database with one user, and the app serving it.
fn start(runtime: Runtime) -> Auth {
    let db = TestDb::migrated();
    let (ok, output) = admin(&db.url(), &["user", "add", EMAIL], &format!("{PASSWORD}\n"));
    assert!(ok, "mp3-admin user add failed: {output}");
    start_with(runtime, db, SECRET)
}

fn basic(email: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
    )
}

fn login(app: &Auth, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    post(&app.app.url("/login"), &headers)
}

fn validate(app: &Auth, token: &str) -> Reply {
    post(
        &app.app.url("/validate"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

fn config(secret: &str, audience: &str, ttl: Duration) -> TokenConfig {
    TokenConfig::new(secret, "mp3-converter", audience, ttl).expect("valid token config")
}

fn login_returns_a_token_that_validate_accepts(runtime: Runtime) {
    let app = start(runtime);
    let reply = login(&app, Some(&basic(EMAIL, PASSWORD)));
    assert_eq!(reply.status, 200, "{reply:?}");
    let token = reply.body.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let reply = validate(&app, token);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let claims: serde_json::Value = serde_json::from_str(&reply.body).expect("claims are JSON");
    assert_eq!(claims["username"], EMAIL);
    assert_eq!(claims["admin"], false);
    assert_eq!(claims["iss"], "mp3-converter");
    assert_eq!(claims["aud"], "mp3-converter");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 86_400, "default lifetime is 24 h");
}

fn admin_users_get_the_admin_claim(runtime: Runtime) {
    let app = start(runtime);
    let (ok, output) = admin(
        &app.db.url(),
        &["user", "add", "root@example.com", "--admin"],
        "pw-for-the-admin\n",
    );
    assert!(ok, "{output}");
    let token = login(&app, Some(&basic("root@example.com", "pw-for-the-admin"))).body;
    let claims: serde_json::Value =
        serde_json::from_str(&validate(&app, token.trim()).body).unwrap();
    assert_eq!(claims["admin"], true);
}

fn bad_credentials_are_401_never_500(runtime: Runtime) {
    let app = start(runtime);
    let cases: &[(&str, Option<String>, &str)] = &[
        (
            "wrong password",
            Some(basic(EMAIL, "nope")),
            "invalid credentials",
        ),
        (
            "unknown user",
            Some(basic("bob@example.com", PASSWORD)),
            "invalid credentials",
        ),
        ("missing header", None, "missing credentials"),
        (
            "not basic",
            Some("Bearer abc".into()),
            "missing credentials",
        ),
        (
            "bad base64",
            Some("Basic !!!not-base64!!!".into()),
            "missing credentials",
        ),
        (
            "no colon",
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice")
            )),
            "missing credentials",
        ),
        (
            "sql injection",
            Some(basic("' OR '1'='1' -- ", PASSWORD)),
            "invalid credentials",
        ),
        (
            "sql injection 2",
            Some(basic("alice@example.com' OR 1=1 #", "x")),
            "invalid credentials",
        ),
    ];
    for (case, header, reason) in cases {
        let reply = login(&app, header.as_deref());
        assert_eq!(reply.status, 401, "{case}: {reply:?}");
        assert_eq!(reply.body.trim(), *reason, "{case}");
    }
    // The table is untouched by the injection attempts.
    assert_eq!(
        app.db.query_strings("SELECT COUNT(*) FROM user"),
        vec![Some("1".to_owned())]
    );
}

fn login_rejects_other_methods(runtime: Runtime) {
    let app = start(runtime);
    let reply = system_tests::http::get(&app.app.url("/login"));
    assert_eq!(reply.status, 405, "{reply:?}");
}

fn validate_refuses_bad_tokens_with_403(runtime: Runtime) {
    let app = start(runtime);
    let good = login(&app, Some(&basic(EMAIL, PASSWORD)))
        .body
        .trim()
        .to_owned();
    let now = mp3_auth::unix_now();

    // Signature of another payload: flip the last character of the signature.
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    let expired = mp3_auth::issue(
        &config(SECRET, "mp3-converter", Duration::from_secs(60)),
        EMAIL,
        false,
        0,
        now - 3_600,
    )
    .unwrap();
    let wrong_audience = mp3_auth::issue(
        &config(SECRET, "someone-else", Duration::from_secs(600)),
        EMAIL,
        false,
        0,
        now,
    )
    .unwrap();
    let other_secret = mp3_auth::issue(
        &config(
            "another-secret-of-at-least-thirty-two-bytes!",
            "mp3-converter",
            Duration::from_secs(600),
        ),
        EMAIL,
        false,
        0,
        now,
    )
    .unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = good.split('.').nth(1).unwrap();
    let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let alg_hs512 = format!(
        "{}.{payload}.{}",
        b64(r#"{"alg":"HS512","typ":"JWT"}"#),
        good.split('.').nth(2).unwrap()
    );

    for (case, token) in [
        ("tampered", tampered.as_str()),
        ("expired", &expired),
        ("wrong audience", &wrong_audience),
        ("other secret", &other_secret),
        ("alg none", &alg_none),
        ("alg HS512", &alg_hs512),
        ("garbage", "not.a.jwt"),
    ] {
        let reply = validate(&app, token);
        assert_eq!(reply.status, 403, "{case}: {reply:?}");
        assert!(
            reply.body.starts_with("invalid token"),
            "{case}: {}",
            reply.body
        );
    }
    assert!(validate(&app, &expired).body.contains("expired"));
}

fn validate_wants_a_bearer_token(runtime: Runtime) {
    let app = start(runtime);
    let url = app.app.url("/validate");
    for (case, headers) in [
        ("no header", vec![]),
        ("basic", vec![("Authorization", "Basic YTpi")]),
        ("empty bearer", vec![("Authorization", "Bearer ")]),
    ] {
        let reply = post(&url, &headers);
        assert_eq!(reply.status, 401, "{case}: {reply:?}");
        assert_eq!(reply.body.trim(), "missing token", "{case}");
    }
}

fn a_short_secret_is_refused_not_used(runtime: Runtime) {
    let db = TestDb::migrated();
    let (ok, output) = admin(&db.url(), &["user", "add", EMAIL], &format!("{PASSWORD}\n"));
    assert!(ok, "{output}");
    let app = start_with(runtime, db, "too-short");
    let reply = login(&app, Some(&basic(EMAIL, PASSWORD)));
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        !reply.body.contains('.'),
        "no token in the body: {}",
        reply.body
    );
    let log = app.app.wait_for_log("jwt secret");
    assert!(
        log.contains("jwt secret is 9 bytes long"),
        "the log names the problem:\n{log}"
    );
    let reply = validate(&app, "a.b.c");
    assert_eq!(reply.status, 500, "{reply:?}");
}

fn database_down_is_503(runtime: Runtime) {
    // A port nothing listens on, allowed so that the failure is the connection, not the allow-list.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = AppConfig::app(runtime)
        .env(
            "SPIN_VARIABLE_DB_URL",
            format!("mysql://nobody:pw@127.0.0.1:{port}/auth"),
        )
        .env("SPIN_VARIABLE_DB_HOST", format!("127.0.0.1:{port}"))
        .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
        .start();
    let reply = post(
        &app.url("/login"),
        &[("Authorization", &basic(EMAIL, PASSWORD))],
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.body.trim(), "database unavailable");
    drop(app);

    // The allow-list refuses the address: both runtimes word that error with the whole URL,
    // password included, and the password must not reach the log line.
    let password = "do-not-log-this-password";
    let app = AppConfig::app(runtime)
        .env(
            "SPIN_VARIABLE_DB_URL",
            format!("mysql://nobody:{password}@127.0.0.1:{port}/auth"),
        )
        .env("SPIN_VARIABLE_DB_HOST", "127.0.0.1:1")
        .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
        .start();
    let reply = post(
        &app.url("/login"),
        &[("Authorization", &basic(EMAIL, PASSWORD))],
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    let log = app.wait_for_log("not permitted");
    assert!(log.contains("mysql://nobody:***@"), "{log}");
    assert!(!log.contains(password), "{log}");
}

fn unknown_email_costs_as_much_as_a_wrong_password(runtime: Runtime) {
    // Not a timing assertion (those flake): the unknown-email path must run a full argon2
    // verification, which shows as a similar order of magnitude over several tries.
    let app = start(runtime);
    let time = |email: &str| {
        let start = std::time::Instant::now();
        assert_eq!(login(&app, Some(&basic(email, "wrong"))).status, 401);
        start.elapsed()
    };
    // The fastest of interleaved rounds: a busy machine only ever slows a round down. Three
    // tries per email stay under the login budget of an address and account (5).
    let (mut known, mut unknown) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..3 {
        known = known.min(time(EMAIL));
        unknown = unknown.min(time("nobody@example.com"));
    }
    assert!(
        unknown * 4 > known,
        "unknown email answered suspiciously fast: {unknown:?} vs {known:?}"
    );
}

/// `POST /login` as the ingress would pass it on for a client at `client`.
fn login_from(app: &Auth, client: &str, email: &str, password: &str) -> Reply {
    post(
        &app.app.url("/login"),
        &[
            ("Authorization", &basic(email, password)),
            ("X-Forwarded-For", client),
        ],
    )
}

fn start_throttled(runtime: Runtime, configure: impl FnOnce(AppConfig) -> AppConfig) -> Auth {
    let db = TestDb::migrated();
    let (ok, output) = admin(&db.url(), &["user", "add", EMAIL], &format!("{PASSWORD}\n"));
    assert!(ok, "{output}");
    start_configured(db, SECRET, configure(AppConfig::app(runtime)))
}

fn count(app: &Auth, sql: &str) -> i64 {
    app.db.query_strings(sql)[0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

const ATTACKER: &str = "203.0.113.66";
const OWNER_HOME: &str = "198.51.100.7";

fn repeated_failures_from_one_address_stop_its_checks_then_the_window_passes(runtime: Runtime) {
    let app = start_throttled(runtime, |c| {
        c.env("SPIN_VARIABLE_LOGIN_MAX_FAILURES", "2")
            .env("SPIN_VARIABLE_LOGIN_LOCKOUT_SECONDS", "2")
    });
    for _ in 0..2 {
        assert_eq!(login_from(&app, ATTACKER, EMAIL, "guess").status, 401);
    }
    let locked = login_from(&app, ATTACKER, EMAIL, PASSWORD);
    assert_eq!(locked.status, 429, "{locked:?}");
    assert_eq!(
        locked.body.trim(),
        "too many failed logins for this account from this address"
    );
    let retry: u64 = locked
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another email from there is not affected.
    assert_eq!(
        login_from(&app, ATTACKER, "other@example.com", "x").status,
        401
    );

    std::thread::sleep(Duration::from_millis(2_100));
    let reply = login_from(&app, ATTACKER, EMAIL, PASSWORD);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT COUNT(*) FROM login_throttle WHERE bucket = 'pair {ATTACKER} {EMAIL}'"
            )
        ),
        0,
        "a success clears its address's count at the account"
    );
}

fn the_owner_logs_in_after_a_flood_of_failures_from_another_address(runtime: Runtime) {
    let app = start_throttled(runtime, |c| c);
    // Far more than any budget, from one address.
    for _ in 0..30 {
        let reply = login_from(&app, ATTACKER, EMAIL, "guess");
        assert!([401, 429].contains(&reply.status), "{reply:?}");
    }
    assert_eq!(login_from(&app, ATTACKER, EMAIL, PASSWORD).status, 429);
    let reply = login_from(&app, OWNER_HOME, EMAIL, PASSWORD);
    assert_eq!(reply.status, 200, "{reply:?}");
    // Only the budget's worth of the flood reached the account's count.
    assert_eq!(
        count(
            &app,
            &format!("SELECT attempts FROM login_throttle WHERE bucket = 'account {EMAIL}'")
        ),
        5
    );
}

fn concurrent_wrong_guesses_are_checked_at_most_the_budget(runtime: Runtime) {
    let app = std::sync::Arc::new(start_throttled(runtime, |c| c));
    // 40 wrong passwords, 20 at a time; each check takes tens of milliseconds of argon2, so
    // a count read before the check and written after it would let most of them through.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let app = app.clone();
                std::thread::spawn(move || login_from(&app, ATTACKER, EMAIL, "guess").status)
            })
            .collect();
        statuses.extend(threads.into_iter().map(|t| t.join().unwrap()));
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, refused), (5, 35), "{statuses:?}");
}

fn a_distributed_attack_spares_the_owners_known_address(runtime: Runtime) {
    let app = start_throttled(runtime, |c| {
        c.env("SPIN_VARIABLE_LOGIN_ACCOUNT_MAX_FAILURES", "6")
            .env("SPIN_VARIABLE_LOGIN_MAX_FAILURES", "3")
    });
    assert_eq!(login_from(&app, OWNER_HOME, EMAIL, PASSWORD).status, 200);
    for bot in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        for _ in 0..3 {
            let reply = login_from(&app, bot, EMAIL, "guess");
            assert!([401, 429].contains(&reply.status), "{reply:?}");
        }
    }
    // The account's budget is spent: a new address is refused unchecked, right password or not.
    let refused = login_from(&app, "192.0.2.50", EMAIL, PASSWORD);
    assert_eq!(
        (refused.status, refused.body.trim()),
        (429, "too many failed logins for this account")
    );
    // The owner, from where they logged in before, is still checked and let in.
    assert_eq!(login_from(&app, OWNER_HOME, EMAIL, "typo").status, 401);
    assert_eq!(login_from(&app, OWNER_HOME, EMAIL, PASSWORD).status, 200);
}

fn an_untrusted_client_cannot_choose_its_address(runtime: Runtime) {
    // The test's own address is not a trusted proxy here: its X-Forwarded-For is its own to
    // forge, and login must ignore it.
    let app = start_throttled(runtime, |c| {
        c.env("SPIN_VARIABLE_TRUSTED_PROXIES", "10.244.0.0/16")
            .env("SPIN_VARIABLE_LOGIN_ADDRESS_MAX_FAILURES", "3")
    });
    for n in 0..3 {
        let reply = login_from(
            &app,
            &format!("198.51.100.{n}"),
            &format!("u{n}@example.com"),
            "x",
        );
        assert_eq!(reply.status, 401, "{reply:?}");
    }
    let reply = login_from(&app, "198.51.100.200", "fresh@example.com", "x");
    assert_eq!(
        (reply.status, reply.body.trim()),
        (429, "too many failed logins from this address")
    );
    // Nor with the header Spin reports the peer in: Spin appends its own after the client's.
    let reply = post(
        &app.app.url("/login"),
        &[
            ("Authorization", &basic("other@example.com", "x")),
            ("spin-client-addr", "198.51.100.201:4000"),
        ],
    );
    assert_eq!(
        (reply.status, reply.body.trim()),
        (429, "too many failed logins from this address")
    );
    assert_eq!(
        count(
            &app,
            "SELECT attempts FROM login_throttle WHERE bucket = 'address 127.0.0.1'"
        ),
        5
    );
}

fn logout(app: &Auth, token: &str) -> Reply {
    post(
        &app.app.url("/logout"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

fn logout_revokes_every_token_of_the_user(runtime: Runtime) {
    let app = start(runtime);
    let first = login(&app, Some(&basic(EMAIL, PASSWORD))).body;
    let second = login(&app, Some(&basic(EMAIL, PASSWORD))).body;
    assert_eq!(validate(&app, &first).status, 200);
    let reply = logout(&app, &first);
    assert_eq!((reply.status, reply.body.trim()), (200, "logged out"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    // Both tokens are gone at once (logout drops the cached generation), elsewhere too.
    for token in [&first, &second] {
        let reply = validate(&app, token);
        assert_eq!(
            (reply.status, reply.body.trim()),
            (403, "invalid token: revoked")
        );
    }
    // A new login works; a revoked token that logs out again (a thief's) revokes nothing new.
    let third = login(&app, Some(&basic(EMAIL, PASSWORD))).body;
    assert_eq!(logout(&app, &first).status, 200);
    assert_eq!(validate(&app, &third).status, 200);
    // Nor does it bring back what a later logout revoked: the user is two generations past
    // `first` now, and its logout must not tell validate that `third`'s is current.
    assert_eq!(logout(&app, &third).status, 200);
    assert_eq!(validate(&app, &third).status, 403);
    assert_eq!(logout(&app, &first).status, 200);
    let reply = validate(&app, &third);
    assert_eq!(
        (reply.status, reply.body.trim()),
        (403, "invalid token: revoked")
    );
    assert_eq!(logout(&app, "not.a.token").status, 403);
    assert_eq!(post(&app.app.url("/logout"), &[]).status, 401);
}

fn a_new_password_revokes_older_tokens(runtime: Runtime) {
    let db = TestDb::migrated();
    let (ok, output) = admin(&db.url(), &["user", "add", EMAIL], &format!("{PASSWORD}\n"));
    assert!(ok, "{output}");
    let config = AppConfig::app(runtime).env("SPIN_VARIABLE_TOKEN_CHECK_SECONDS", "1");
    let app = start_configured(db, SECRET, config);
    let token = login(&app, Some(&basic(EMAIL, PASSWORD))).body;
    assert_eq!(validate(&app, &token).status, 200);
    let (ok, output) = admin(&app.db.url(), &["user", "add", EMAIL], "a new password\n");
    assert!(ok, "{output}");
    // Within token_check_seconds, every instance has read the new generation.
    std::thread::sleep(Duration::from_millis(1_100));
    let reply = validate(&app, &token);
    assert_eq!(
        (reply.status, reply.body.trim()),
        (403, "invalid token: revoked")
    );
    let fresh = login(&app, Some(&basic(EMAIL, "a new password"))).body;
    assert_eq!(validate(&app, &fresh).status, 200);
}

/// Head and body of an answer leave together. Spin 3.6 leaves Nagle's algorithm on for its
/// connections, so a head sent alone holds back the small body until the client's delayed ACK
/// (about 40 ms: a kept-alive client got 40 answers a second). Each answer here must arrive
/// whole in the first read after its request; a head sent alone arrives without its body.
fn responses_leave_in_one_piece_on_a_kept_alive_connection(runtime: Runtime) {
    use std::io::{Read, Write};
    let app = start(runtime);
    let token = login(&app, Some(&basic(EMAIL, PASSWORD))).body;
    let address = app.app.base().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connecting");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for (i, authorization) in [format!("Bearer {}", token.trim()), "none".to_owned()]
        .iter()
        .cycle()
        .take(40)
        .enumerate()
    {
        let header = match authorization.as_str() {
            "none" => String::new(),
            value => format!("Authorization: {value}\r\n"),
        };
        stream
            .write_all(
                format!("POST /validate HTTP/1.1\r\nHost: {address}\r\n{header}\r\n").as_bytes(),
            )
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).expect("an answer");
        let text = String::from_utf8_lossy(&buf[..n]);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
            panic!("request {i}: the first read is not even a whole head: {text:?}")
        });
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("request {i}: no content-length: {head}"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            body.len(),
            length,
            "request {i}: the head came without its body (Nagle's algorithm holds it back): {text:?}"
        );
    }
}
