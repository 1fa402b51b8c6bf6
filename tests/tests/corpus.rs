//! A bad-input corpus against every route, on the runner and on Spin: a generated set of
//! malformed and hostile requests (methods, paths, ids, tokens, credentials, ranges, headers,
//! multipart shapes), each sent on its own connection with real services behind the app. None
//! may get a 5xx, and the app must serve normally afterwards. The summary line gives how many
//! requests were tried and what they got (the README quotes it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use mp3_auth::{issue, TokenConfig};
use system_tests::services::{host_port, Vhost};
use system_tests::{admin, on_each_runtime, service_env, unique, App, AppConfig, Runtime, TestDb};

on_each_runtime!(bad_input_gets_no_5xx_and_leaves_the_app_serving);

const SECRET: &str = "corpus-test-secret-long-enough-for-hs256-0123456789";
const BOUNDARY: &str = "corpus-boundary-1234";

/// What a request got: a status and the answer, or `None` when the server closed without
/// answering, or kept waiting for more than `wait`.
fn send(address: &str, request: &[u8], wait: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).expect("connecting to the app");
    stream.set_read_timeout(Some(wait)).unwrap();
    // The server may answer and close before taking the whole request: that is fine.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())?;
    Some((status, text))
}

fn basic(credentials: &[u8]) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

fn token(secret: &str, user: &str, issued: i64, ttl: u64) -> String {
    let config = TokenConfig::new(
        secret,
        "mp3-converter",
        "mp3-converter",
        Duration::from_secs(ttl),
    )
    .expect("token config");
    issue(&config, user, false, 0, issued).expect("a token")
}

/// One request: method, target, extra header lines, body.
struct Case {
    method: String,
    target: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: corpus\r\nConnection: close\r\n",
            self.method, self.target
        )
        .into_bytes();
        for header in &self.headers {
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Multipart bodies of every broken shape (and a few odd but valid ones).
fn multipart_bodies() -> Vec<(String, Vec<u8>)> {
    let b = BOUNDARY;
    let mp4 = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2".repeat(40);
    let part = |headers: &str, content: &[u8]| {
        let mut p = format!("--{b}\r\n{headers}\r\n\r\n").into_bytes();
        p.extend_from_slice(content);
        p.extend_from_slice(b"\r\n");
        p
    };
    let file = |name: &str| {
        part(
            &format!("Content-Disposition: form-data; name=\"f\"; filename=\"{name}\""),
            &mp4,
        )
    };
    let end = format!("--{b}--\r\n").into_bytes();
    let join = |parts: Vec<Vec<u8>>| parts.concat();
    let ct = format!("Content-Type: multipart/form-data; boundary={b}");
    let mut bodies = vec![
        (ct.clone(), Vec::new()),
        (ct.clone(), b"just some bytes".to_vec()),
        (
            ct.clone(),
            join(vec![b"preamble only, no delimiter".repeat(400)]),
        ),
        (ct.clone(), join(vec![file("a.mp4")])),
        (ct.clone(), join(vec![file("a.mp4"), b"--".to_vec()])),
        (ct.clone(), join(vec![format!("--{b}").into_bytes()])),
        (
            ct.clone(),
            join(vec![
                format!("--{b}\r\nno colon header\r\n\r\nx\r\n").into_bytes(),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                part("Content-Disposition: form-data", b"nameless"),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                part(
                    "Content-Disposition: form-data; name=\"f\"; filename=\"\"",
                    &mp4,
                ),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![file("../../etc/passwd"), end.clone()]),
        ),
        (ct.clone(), join(vec![file("a\u{0}b.mp4"), end.clone()])),
        (ct.clone(), join(vec![file(&"é".repeat(2000)), end.clone()])),
        (
            ct.clone(),
            join(vec![file("a.mp4"), file("b.mp4"), end.clone()]),
        ),
        (
            ct.clone(),
            join(vec![
                part(
                    "Content-Disposition: form-data; name=\"f\"; filename=\"t.txt\"",
                    b"text, not video",
                ),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                part(
                    "Content-Disposition: form-data; name=\"f\"; filename=\"e.mp4\"",
                    b"",
                ),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                format!("--{b}\r\nX: {}\r\n\r\n", "h".repeat(20_000)).into_bytes(),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                part(
                    "Content-Disposition: form-data; name=\"t\"",
                    &vec![b'x'; 70_000],
                ),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            [
                part("Content-Disposition: form-data; name=\"t\"", b"x").repeat(40),
                end.clone(),
            ]
            .concat(),
        ),
        (
            ct.clone(),
            join(vec![
                format!("--{b}\r\n{}\r\n\r\nx\r\n", "X: y\r\n".repeat(40)).into_bytes(),
                end.clone(),
            ]),
        ),
        (
            ct.clone(),
            join(vec![
                format!("--{b}   \t\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nok\r\n")
                    .into_bytes(),
                end.clone(),
            ]),
        ),
        (ct.clone(), join(vec![format!("--{b}xx\r\n").into_bytes()])),
        (ct.clone(), join(vec![b"\r\n".repeat(5000)])),
        (ct.clone(), vec![0u8; 20_000]),
    ];
    for content_type in [
        "Content-Type: multipart/form-data".to_owned(),
        "Content-Type: multipart/form-data; boundary=".to_owned(),
        "Content-Type: multipart/form-data; boundary=\"\"".to_owned(),
        format!(
            "Content-Type: multipart/form-data; boundary={}",
            "b".repeat(300)
        ),
        "Content-Type: application/json".to_owned(),
        "Content-Type: text/plain; boundary=x".to_owned(),
        format!("Content-Type: MULTIPART/FORM-DATA; BOUNDARY={b}"),
        "Content-Type: multipart/form-data; boundary=a; boundary=b".to_owned(),
    ] {
        bodies.push((content_type, join(vec![file("a.mp4"), end.clone()])));
    }
    bodies
}

/// Every request of the corpus. `valid` is a good token, `creds` an existing user's login.
fn corpus(valid: &str, other: &str, creds: &[u8]) -> Vec<Case> {
    let now = mp3_auth::unix_now();
    let good = format!("Authorization: Bearer {valid}");
    let mut tampered = valid.to_owned();
    tampered.pop();
    tampered.push('A');
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some(good.clone()),
        Some(format!("Authorization: Bearer {other}")),
        Some("Authorization: Bearer".into()),
        Some("Authorization: Bearer ".into()),
        Some("Authorization: Bearer a.b.c".into()),
        Some(format!("Authorization: Bearer {tampered}")),
        Some(format!(
            "Authorization: Bearer {}",
            token(SECRET, "x@example.com", now - 7200, 60)
        )),
        Some(format!(
            "Authorization: Bearer {}",
            token(
                "another-secret-another-secret-another",
                "x@example.com",
                now,
                600
            )
        )),
        Some("Authorization: Bearer eyJhbGciOiJub25lIn0.eyJ1c2VybmFtZSI6ImEifQ.".into()),
        Some(format!("Authorization: Bearer {}", "A".repeat(10_000))),
        Some(format!("Authorization: {}", basic(creds))),
        Some(format!(
            "Authorization: {}",
            basic(b"nobody@example.com:wrong")
        )),
        Some(format!("Authorization: {}", basic(b"no colon at all"))),
        Some(format!("Authorization: {}", basic(b":empty-email"))),
        Some(format!("Authorization: {}", basic(b"a@b:\xff\xfe"))),
        Some(format!("Authorization: {}", basic(&[b'a'; 6000]))),
        Some("Authorization: Basic !!!not-base64!!!".into()),
        Some("Authorization: Digest username=x".into()),
        Some(format!("{good}\r\nAuthorization: Bearer a.b.c")),
    ];
    let ids = [
        "0123456789abcdef01234567".to_owned(),
        "0123456789ABCDEF01234567".to_owned(),
        "0123456789abcdef0123456".to_owned(),
        "0123456789abcdef012345678".to_owned(),
        "zzzzzzzzzzzzzzzzzzzzzzzz".to_owned(),
        "%00%00".to_owned(),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        "%C3%A9".repeat(12),
        "a".repeat(4000),
        String::new(),
    ];
    let mut targets = vec![
        "/".to_owned(),
        "/login".into(),
        "/logout".into(),
        "/validate".into(),
        "/upload".into(),
        "/download".into(),
        "/download?".into(),
        "/download?fid".into(),
        "/download?fid=&fid=".into(),
        "/jobs".into(),
        "/jobs/".into(),
        "/jobs/a/b".into(),
        "/.well-known/spin/health".into(),
        "/.well-known/spin/info".into(),
        "/.well-known/spin/nope".into(),
        format!("/{}", "x".repeat(6000)),
        "/login?x=1".into(),
        "/%2e%2e/%2e%2e/".into(),
    ];
    for id in &ids {
        targets.push(format!("/jobs/{id}"));
        targets.push(format!("/download?fid={id}"));
        targets.push(format!(
            "/download?x=1&fid={id}&fid=0123456789abcdef01234567"
        ));
    }
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW",
    ];
    let mut cases = Vec::new();
    // Every route, every method, every kind of credential (logging out only the other user,
    // whose token then stands for a revoked one).
    for target in &targets {
        for method in methods {
            for authorization in &authorizations {
                let authorization = &match authorization {
                    Some(a) if a == &good && target.starts_with("/logout") => {
                        Some(format!("Authorization: Bearer {other}"))
                    }
                    a => a.clone(),
                };
                // HEAD and odd methods once with a good token and once without are enough.
                if !matches!(method, "GET" | "POST")
                    && authorization.is_some()
                    && authorization.as_deref() != Some(good.as_str())
                {
                    continue;
                }
                cases.push(Case {
                    method: method.into(),
                    target: target.clone(),
                    headers: authorization.iter().cloned().collect(),
                    body: Vec::new(),
                });
            }
        }
    }
    // Ranges on a download, with a good token.
    for range in [
        "bytes=0-0",
        "bytes=-",
        "bytes=abc",
        "bytes=5-1",
        "bytes=-0",
        "bytes=99999999999999999999-",
        "bytes=0-1,2-3",
        "items=0-1",
        "bytes=0-18446744073709551615",
        "bytes= 1 - 2",
        "",
    ] {
        for id in &ids[..3] {
            cases.push(Case {
                method: "GET".into(),
                target: format!("/download?fid={id}"),
                headers: vec![good.clone(), format!("Range: {range}")],
                body: Vec::new(),
            });
        }
    }
    // Upload bodies, with a good token and without.
    for (content_type, body) in multipart_bodies() {
        for authorization in [Some(good.clone()), None] {
            let mut headers = vec![content_type.clone()];
            headers.extend(authorization);
            cases.push(Case {
                method: "POST".into(),
                target: "/upload".into(),
                headers,
                body: body.clone(),
            });
        }
    }
    // Odd headers on every public route.
    for target in [
        "/login",
        "/validate",
        "/upload",
        "/jobs/0123456789abcdef01234567",
    ] {
        for header in [
            "X-Forwarded-For: not-an-address".to_owned(),
            format!("X-Forwarded-For: {}", "1.2.3.4, ".repeat(2000)),
            "X-Forwarded-For: [::1]:80, 300.1.1.1, ::ffff:10.0.0.1".into(),
            format!("X-Big: {}", "v".repeat(60_000)),
            "Content-Length: 0".into(),
            "Transfer-Encoding: chunked\r\n\r\n0".into(),
            "Expect: 100-continue".into(),
            "Accept-Encoding: gzip, br, zstd".into(),
        ] {
            cases.push(Case {
                method: "POST".into(),
                target: target.into(),
                headers: vec![good.clone(), header],
                body: Vec::new(),
            });
        }
    }
    cases
}

/// Requests that are not valid HTTP: the server may close without answering, never 5xx.
fn broken_http() -> Vec<Vec<u8>> {
    vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        [
            b"GET /".to_vec(),
            vec![b'a'; 600_000],
            b" HTTP/1.1\r\n\r\n".to_vec(),
        ]
        .concat(),
        [
            b"GET / HTTP/1.1\r\nX: ".to_vec(),
            vec![b'a'; 600_000],
            b"\r\n\r\n".to_vec(),
        ]
        .concat(),
        b"GET /jobs/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX: \xff\xfe\r\n\r\n".to_vec(),
        vec![0u8; 1000],
    ]
}

fn bad_input_gets_no_5xx_and_leaves_the_app_serving(runtime: Runtime) {
    let vhost = Vhost::new();
    let db = TestDb::migrated();
    let email = format!("corpus{}@example.com", unique());
    let (ok, out) = admin(&db.url(), &["user", "add", &email], "corpus-password\n");
    assert!(ok, "{out}");
    let other = format!("other{}@example.com", unique());
    db.add_token_user(&other);
    let mongo_url = service_env("MONGODB_AUTH_URL");
    let mongo_host = host_port(&mongo_url);
    let app: App = AppConfig::app(runtime)
        .env("SPIN_VARIABLE_DB_URL", db.url())
        .env("SPIN_VARIABLE_DB_HOST", db.host_port())
        .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
        .env("SPIN_VARIABLE_AMQP_URL", vhost.amqp_url())
        .env("SPIN_VARIABLE_AMQP_HOST", Vhost::broker_address())
        .env("SPIN_VARIABLE_MONGODB_URL", mongo_url.clone())
        .env("SPIN_VARIABLE_MONGODB_HOST", mongo_host)
        .env("SPIN_VARIABLE_MAX_UPLOAD_BYTES", "1000000")
        .start();
    let address = app.base().trim_start_matches("http://").to_owned();
    let now = mp3_auth::unix_now();
    // A real login's token: it carries the user's token generation.
    let login = Case {
        method: "POST".into(),
        target: "/login".into(),
        headers: vec![format!(
            "Authorization: {}",
            basic(format!("{email}:corpus-password").as_bytes())
        )],
        body: Vec::new(),
    };
    let (status, answer) =
        send(&address, &login.bytes(), Duration::from_secs(60)).expect("a login answer");
    assert_eq!(status, 200, "{answer}");
    let valid = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .expect("a token");
    let theirs = token(SECRET, &other, now, 3600);
    let creds = format!("{email}:corpus-password").into_bytes();

    let cases = corpus(&valid, &theirs, &creds);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut server_errors = Vec::new();
    let mut stored = Vec::new();
    for case in &cases {
        let answer = send(&address, &case.bytes(), Duration::from_secs(60));
        if let Some((202, text)) = &answer {
            stored.push(text.clone());
        }
        let status = answer.map(|(s, _)| s);
        *statuses
            .entry(status.map_or("closed".into(), |s| s.to_string()))
            .or_default() += 1;
        match status {
            Some(s) if s >= 500 => server_errors.push(format!(
                "{s}: {} {} {:?}",
                case.method,
                case.target.chars().take(80).collect::<String>(),
                case.headers
                    .iter()
                    .map(|h| h.chars().take(60).collect::<String>())
                    .collect::<Vec<_>>()
            )),
            // A well-formed request always gets an answer.
            None => server_errors.push(format!(
                "no answer: {} {}",
                case.method,
                case.target.chars().take(80).collect::<String>()
            )),
            Some(_) => {}
        }
    }
    let broken = broken_http();
    for request in &broken {
        let status = send(&address, request, Duration::from_secs(3)).map(|(s, _)| s);
        *statuses
            .entry(status.map_or("closed".into(), |s| s.to_string()))
            .or_default() += 1;
        let not_utf8 = request.windows(2).any(|w| w == b"\xff\xfe");
        if not_utf8 && runtime == Runtime::Spin {
            // Spin 3.6 fails a request whose header value is not UTF-8 before any component
            // runs, with a 500 (README, "Runner and Spin"); only Spin can fix it. This pins it,
            // so a Spin that answers 400 shows up here. The runner answers 400.
            assert_eq!(
                status,
                Some(500),
                "Spin now answers non-UTF-8 headers differently"
            );
            continue;
        }
        if status.is_some_and(|s| s >= 500) {
            server_errors.push(format!(
                "{status:?}: {:?}",
                String::from_utf8_lossy(&request[..request.len().min(60)])
            ));
        }
    }
    forget(&mongo_url, &stored);
    eprintln!(
        "corpus on {}: {} requests ({} well-formed, {} broken HTTP): {statuses:?}",
        runtime.name(),
        cases.len() + broken.len(),
        cases.len(),
        broken.len()
    );
    assert!(
        server_errors.is_empty(),
        "{} server errors:\n{}\n{}",
        server_errors.len(),
        server_errors.join("\n"),
        app.log()
    );

    // Still serving, and nothing was queued by the refused uploads but the valid ones.
    let health = send(
        &address,
        b"GET /.well-known/spin/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(60),
    );
    assert_eq!(health.map(|(s, _)| s), Some(200));
    let validate = Case {
        method: "POST".into(),
        target: "/validate".into(),
        headers: vec![format!("Authorization: Bearer {valid}")],
        body: Vec::new(),
    };
    assert_eq!(
        send(&address, &validate.bytes(), Duration::from_secs(60)).map(|(s, _)| s),
        Some(200)
    );
}

/// Deletes what the accepted uploads (their 202 answers) stored, so later tests do not scan it.
fn forget(mongo_url: &str, accepted: &[String]) {
    use mongo_wire::bson::{doc, oid::ObjectId};
    let mut client = mongo_wire::connect(mongo_url).expect("MongoDB");
    for answer in accepted {
        let Some((_, body)) = answer.split_once("\r\n\r\n") else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        if let Some(job) = json["job_id"].as_str() {
            let _ = client.delete_many(
                mp3_model::VIDEOS_DB,
                mp3_model::JOBS_COLLECTION,
                doc! {"_id": job},
            );
        }
        if let Some(fid) = json["video_fid"]
            .as_str()
            .and_then(|f| ObjectId::parse_str(f).ok())
        {
            let _ = mongo_wire::Bucket::new(mp3_model::VIDEOS_DB).delete(&mut client, fid);
        }
    }
}
