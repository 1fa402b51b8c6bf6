//! The runner against Spin's contract, through the `probe` test component: routes and `spin-*`
//! headers, variables, the allow-list on every outbound path, outbound MySQL, service chaining,
//! traps and shutdown. Each of these runs on the runner and on real Spin with the same
//! expectations: what the component observes must not differ. The runner's own log lines and
//! its refusals of what it does not host are checked on the runner only, and say so.

use std::io::{Read, Write};
use std::net::TcpListener;

use system_tests::http::get;
use system_tests::{on_each_runtime, wasm, App, AppConfig, Runtime, TempDir, TestDb};

on_each_runtime!(
    variables_resolve_from_templates_env_and_command_line,
    a_missing_required_variable_stops_the_app,
    routes_follow_spin_precedence_and_headers,
    tcp_connects_only_to_allowed_hosts,
    tcp_host_names_are_not_resolved_as_in_spin,
    outbound_http_only_to_allowed_hosts,
    service_chaining_reaches_private_components_when_allowed,
    self_requests_go_to_the_listening_address,
    outbound_mysql_is_checked_and_works,
    a_trapping_component_gets_a_500_and_the_runner_keeps_serving,
    the_well_known_answers_are_spins,
    a_failure_after_the_response_started_is_logged,
    instance_memory_is_limited_as_spin_limits_it,
    key_value_stores_behave_as_in_spin,
    sigterm_lets_in_flight_requests_finish,
    a_slow_client_is_cut_off_while_others_are_served,
);

/// A probe app: `/probe/...` and `/probe/exact` go to `probe`; `hidden` is private.
fn manifest(dir: &TempDir, allowed: &[String], extra: &str) -> std::path::PathBuf {
    let allowed = allowed
        .iter()
        .map(|h| format!("{h:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let source = wasm("probe");
    dir.write(
        "spin.toml",
        &format!(
            r#"spin_manifest_version = 2

[application]
name = "probe-app"

[variables]
greeting = {{ default = "hello" }}
needed = {{ required = true }}
port = {{ default = "1" }}

[[trigger.http]]
route = "/probe/..."
component = "probe"

[[trigger.http]]
route = "/probe/exact"
component = "probe"

[[trigger.http]]
route = {{ private = true }}
component = "hidden"

[component.probe]
source = {source:?}
allowed_outbound_hosts = [{allowed}]
environment = {{ PROBE_MODE = "test" }}
[component.probe.variables]
greeting = "{{{{ greeting }}}}, world"
needed = "{{{{ needed }}}}"

[component.hidden]
source = {source:?}
{extra}
"#
        ),
    )
}

fn start(runtime: Runtime, allowed: &[String]) -> (TempDir, App) {
    let dir = TempDir::new("probe");
    let path = manifest(&dir, allowed, "");
    let runner = AppConfig::new(path, runtime)
        .env("SPIN_VARIABLE_NEEDED", "from-env")
        .start();
    (dir, runner)
}

/// A one-shot HTTP server on loopback answering `200 pong`; returns its port.
fn pong_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(4) {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
            );
        }
    });
    port
}

fn variables_resolve_from_templates_env_and_command_line(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    assert_eq!(
        get(&runner.url("/probe/variable/greeting")).body,
        "hello, world"
    );
    assert_eq!(get(&runner.url("/probe/variable/needed")).body, "from-env");
    let undefined = get(&runner.url("/probe/variable/port"));
    assert_eq!(
        undefined.status, 500,
        "not a component variable: {undefined:?}"
    );
    assert!(undefined.body.contains("Undefined"), "{}", undefined.body);
    assert!(get(&runner.url("/probe/variable/Not-Valid"))
        .body
        .contains("InvalidName"));

    let dir = TempDir::new("probe-cli");
    let path = manifest(&dir, &[], "");
    let runner = AppConfig::new(path, runtime)
        .env("SPIN_VARIABLE_NEEDED", "from-env")
        .env("SPIN_VARIABLE_GREETING", "hi")
        .arg("--variable")
        .arg("needed=from-cli")
        .start();
    assert_eq!(
        get(&runner.url("/probe/variable/greeting")).body,
        "hi, world"
    );
    assert_eq!(get(&runner.url("/probe/variable/needed")).body, "from-cli");
}

fn a_missing_required_variable_stops_the_app(runtime: Runtime) {
    let dir = TempDir::new("probe-missing");
    let path = manifest(&dir, &[], "");
    let (status, stderr) = AppConfig::new(path, runtime).start_expecting_failure();
    assert!(!status.success());
    assert!(stderr.contains("needed"), "names the variable:\n{stderr}");
    if runtime == Runtime::Runner {
        // The runner's message also says how to set it; Spin's names only the variable.
        assert!(stderr.contains("SPIN_VARIABLE_NEEDED"), "{stderr}");
    }
}

fn routes_follow_spin_precedence_and_headers(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    let exact = get(&runner.url("/probe/exact"));
    assert!(
        exact.body.contains("spin-matched-route: /probe/exact"),
        "{}",
        exact.body
    );
    let wildcard = system_tests::http::send(
        "GET",
        &runner.url("/probe/headers?x=1&y=%20"),
        &[("Host", "example.com:8080")],
        None,
    );
    assert_eq!(
        (wildcard.status, loopback_port_elided(&wildcard.body)),
        (
            200,
            "spin-base-path: /\nspin-client-addr: 127.0.0.1:*\nspin-component-route: /probe\n\
             spin-full-url: http://example.com:8080/probe/headers?x=1&y=%20\n\
             spin-matched-route: /probe/...\nspin-path-info: /headers\n\
             spin-raw-component-route: /probe/..."
                .to_owned()
        )
    );
    assert_eq!(get(&runner.url("/elsewhere")).status, 404);
    assert_eq!(get(&runner.url("/probe/env/PROBE_MODE")).body, "test");
}

fn tcp_connects_only_to_allowed_hosts(runtime: Runtime) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = other.local_addr().unwrap().port();

    let (_dir, runner) = start(runtime, &[format!("tcp://127.0.0.1:{open}")]);
    let allowed = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{open}")));
    assert_eq!((allowed.status, allowed.body.as_str()), (200, "connected"));
    let denied = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{closed}")));
    assert_eq!(denied.status, 502, "{denied:?}");
    if runtime != Runtime::Runner {
        return; // The log line below is the runner's own; Spin words its log its own way.
    }
    let log = runner.wait_for_log(&format!("127.0.0.1:{closed}"));
    assert!(
        log.contains("probe") && log.contains(&format!("127.0.0.1:{closed}")),
        "the denial names component and host:\n{log}"
    );
}

fn tcp_host_names_are_not_resolved_as_in_spin(runtime: Runtime) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    // Even with the name in the allow-list, Spin 3 gives guests no name lookup: only an IP
    // address connects.
    let (_dir, runner) = start(
        runtime,
        &[
            format!("tcp://localhost:{open}"),
            format!("tcp://127.0.0.1:{open}"),
        ],
    );
    let by_name = get(&runner.url(&format!("/probe/tcp?localhost:{open}")));
    assert_eq!(by_name.status, 502, "{by_name:?}");
    assert!(by_name.body.contains("lookup"), "{}", by_name.body);
    let by_ip = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{open}")));
    assert_eq!((by_ip.status, by_ip.body.as_str()), (200, "connected"));
}

fn outbound_http_only_to_allowed_hosts(runtime: Runtime) {
    let port = pong_server();
    let (_dir, runner) = start(runtime, &[format!("http://127.0.0.1:{port}")]);
    let allowed = get(&runner.url(&format!("/probe/http?http://127.0.0.1:{port}/ping")));
    assert_eq!((allowed.status, allowed.body.as_str()), (200, "200 pong"));

    let other = pong_server();
    let denied = get(&runner.url(&format!("/probe/http?http://127.0.0.1:{other}/ping")));
    assert_eq!(denied.status, 502, "{denied:?}");
    assert!(
        denied.body.contains("denied") || denied.body.contains("Denied"),
        "{}",
        denied.body
    );
    if runtime != Runtime::Runner {
        return; // The runner's own log line.
    }
    let log = runner.wait_for_log(&format!("127.0.0.1:{other}"));
    assert!(log.contains(&format!("127.0.0.1:{other}")), "{log}");
}

fn service_chaining_reaches_private_components_when_allowed(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &["http://*.spin.internal".to_owned()]);
    let chained = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/env/PROBE_MODE"));
    // `hidden` has no `environment`, so the variable is absent there: the answer came from it.
    assert_eq!(chained.status, 200, "{chained:?}");
    assert!(chained.body.starts_with("404 "), "{}", chained.body);
    // What a chained request carries, exactly as Spin sets it: routed by component, not path.
    let headers = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/headers?q=1"));
    assert_eq!(
        headers.body,
        "200 spin-base-path: /\nspin-client-addr: 0.0.0.0:0\nspin-component-route: \n\
         spin-full-url: http://localhost/probe/headers?q=1\nspin-matched-route: /...\n\
         spin-path-info: /probe/headers\nspin-raw-component-route: /..."
    );
    // A chained component that fails answers its caller a plain 500, as it would a client.
    let trapped = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/trap"));
    assert_eq!(
        (trapped.status, trapped.body.as_str()),
        (200, "500 "),
        "{trapped:?}"
    );
    // A component the app does not have is refused like a host the allow-list lacks.
    let unknown = get(&runner.url("/probe/http?http://nothere.spin.internal/x"));
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (502, "http error: ErrorCode::HttpRequestDenied")
    );

    let (_dir, runner) = start(runtime, &[]);
    let denied = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/headers"));
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (502, "http error: ErrorCode::HttpRequestDenied")
    );
}

/// A request to the app itself (no authority, or host `self.alt` with any port) goes, as in
/// Spin, to the address the app listens on: the target sees a loopback client and that address
/// in its URL, whether the app listens on 127.0.0.1 or on every interface.
fn self_requests_go_to_the_listening_address(runtime: Runtime) {
    for host in ["127.0.0.1", "0.0.0.0"] {
        let dir = TempDir::new("probe-self");
        let path = manifest(&dir, &["http://self.alt".to_owned()], "");
        let port = system_tests::system::free_port();
        let runner = AppConfig::new(path, runtime)
            .env("SPIN_VARIABLE_NEEDED", "x")
            .listen(&format!("{host}:{port}"))
            .start();
        for url in [
            "http://self.alt/probe/headers?a=1",
            "http://self.alt:9999/probe/headers?a=1",
            "/probe/headers?a=1",
        ] {
            let reply = get(&runner.url(&format!("/probe/http?{url}")));
            let body = loopback_port_elided(&reply.body);
            assert_eq!(
                body,
                format!(
                    "200 spin-base-path: /\nspin-client-addr: 127.0.0.1:*\n\
                     spin-component-route: /probe\n\
                     spin-full-url: http://{host}:{port}/probe/headers?a=1\n\
                     spin-matched-route: /probe/...\nspin-path-info: /headers\n\
                     spin-raw-component-route: /probe/..."
                ),
                "{url}"
            );
        }
    }
    let (_dir, runner) = start(runtime, &[]);
    let denied = get(&runner.url("/probe/http?http://self.alt/probe/headers"));
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (502, "http error: ErrorCode::HttpRequestDenied")
    );
}

/// `spin-client-addr: 127.0.0.1:<port>` with the ephemeral port replaced by `*`.
fn loopback_port_elided(body: &str) -> String {
    body.lines()
        .map(
            |line| match line.strip_prefix("spin-client-addr: 127.0.0.1:") {
                Some(_) => "spin-client-addr: 127.0.0.1:*".to_owned(),
                None => line.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// `probe`'s MySQL answer (status, body) for `sql`, run with `query` (or `execute`).
fn mysql(runner: &App, db: &TestDb, sql: &str, execute: bool) -> (u16, String) {
    let mut headers = vec![("x-sql", sql)];
    if execute {
        headers.push(("x-sql-execute", "1"));
    }
    let reply = system_tests::http::send(
        "GET",
        &runner.url(&format!("/probe/mysql?{}", db.url())),
        &headers,
        None,
    );
    (reply.status, reply.body)
}

/// What the component sees of outbound MySQL, value for value and error for error, as Spin
/// 3.6 gives it: the same column types (what Spin cannot map is an error), the same error
/// variants and texts, a connection of its own per `open`, and the 128 MiB result cap.
fn outbound_mysql_is_checked_and_works(runtime: Runtime) {
    let db = TestDb::empty();
    db.query_strings(
        "CREATE TABLE t (ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED, \
         mi MEDIUMINT, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, f FLOAT, d DOUBLE, \
         c CHAR(3), vc VARCHAR(10), vb VARCHAR(10) COLLATE utf8mb4_bin, tx TEXT, bl BLOB, \
         vbin VARBINARY(4), dec1 DECIMAL(5,2), dt DATE, js JSON, n INT)",
    );
    db.query_strings(
        "INSERT INTO t VALUES (-1, 255, -2, 65535, -3, -4, 4294967295, -5, \
         18446744073709551615, 1.5, 2.25, 'abc', 'hello', 'Bin', 'text', 'blob', 'vb', 1.25, \
         '2026-12-01', '{\"a\":1}', NULL)",
    );
    db.query_strings("CREATE TABLE big (b MEDIUMBLOB)");
    db.query_strings("INSERT INTO big VALUES (REPEAT('x', 1048576))");
    let closed = system_tests::services::closed_port();
    let (_dir, runner) = start(
        runtime,
        &[
            format!("mysql://{}", db.host_port()),
            format!("mysql://127.0.0.1:{closed}"),
        ],
    );
    let column = |name: &str, kind: &str| {
        format!("Column {{ name: \"{name}\", data-type: DbDataType::{kind} }}")
    };
    let cases: Vec<(&str, bool, u16, String)> = vec![
        (
            "SELECT ti, tu, si, su, mi, i, iu, bi, bu, f, d, n FROM t",
            false,
            200,
            format!(
                "[{}] [[DbValue::Int8(-1), DbValue::Uint8(255), DbValue::Int16(-2), \
                 DbValue::Uint16(65535), DbValue::Int32(-3), DbValue::Int32(-4), \
                 DbValue::Uint32(4294967295), DbValue::Int64(-5), \
                 DbValue::Uint64(18446744073709551615), DbValue::Floating32(1.5), \
                 DbValue::Floating64(2.25), DbValue::DbNull]]",
                [
                    ("ti", "Int8"),
                    ("tu", "Uint8"),
                    ("si", "Int16"),
                    ("su", "Uint16"),
                    ("mi", "Int32"),
                    ("i", "Int32"),
                    ("iu", "Uint32"),
                    ("bi", "Int64"),
                    ("bu", "Uint64"),
                    ("f", "Floating32"),
                    ("d", "Floating64"),
                    ("n", "Int32"),
                ]
                .map(|(n, k)| column(n, k))
                .join(", ")
            ),
        ),
        (
            // A binary collation makes VARCHAR bytes; JSON comes as bytes too.
            "SELECT c, vc, vb, tx, bl, vbin, js FROM t",
            false,
            200,
            format!(
                "[{}] [[DbValue::Str(\"abc\"), DbValue::Str(\"hello\"), \
                 DbValue::Binary([66, 105, 110]), DbValue::Str(\"text\"), \
                 DbValue::Binary([98, 108, 111, 98]), DbValue::Binary([118, 98]), \
                 DbValue::Binary([123, 34, 97, 34, 58, 49, 125])]]",
                [
                    ("c", "Str"),
                    ("vc", "Str"),
                    ("vb", "Binary"),
                    ("tx", "Str"),
                    ("bl", "Binary"),
                    ("vbin", "Binary"),
                    ("js", "Binary"),
                ]
                .map(|(n, k)| column(n, k))
                .join(", ")
            ),
        ),
        (
            "SELECT 1 + 1 AS two, 'text' AS word, NULL AS nothing",
            false,
            200,
            format!(
                "[{}, {}, {}] [[DbValue::Int32(2), DbValue::Str(\"text\"), DbValue::DbNull]]",
                column("two", "Int32"),
                column("word", "Str"),
                column("nothing", "Other")
            ),
        ),
        (
            "SELECT dec1 FROM t",
            false,
            502,
            "mysql query error: Error::ValueConversionFailed(\"Cannot convert value \
             Bytes(\\\"1.25\\\") in column dec1 data type DbDataType::Other\")"
                .into(),
        ),
        (
            "SELECT dt FROM t",
            false,
            502,
            "mysql query error: Error::ValueConversionFailed(\"Cannot convert value \
             Date(\\\"'2026-12-01'\\\") in column dt data type DbDataType::Other\")"
                .into(),
        ),
        (
            "SELEC nonsense",
            false,
            502,
            "mysql query error: Error::QueryFailed(\"Server(ServerError { code: 1064, message: \
             \\\"You have an error in your SQL syntax; check the manual that corresponds to your \
             MariaDB server version for the right syntax to use near 'SELEC nonsense' at line \
             1\\\", state: \\\"42000\\\" })\")"
                .into(),
        ),
        ("UPDATE t SET n = 7", true, 200, "executed".into()),
        (
            "UPDATE nope SET n = 7",
            true,
            502,
            format!(
                "mysql execute error: Error::QueryFailed(\"Server(ServerError {{ code: 1146, \
                 message: \\\"Table '{}.nope' doesn't exist\\\", state: \\\"42S02\\\" }})\")",
                db.name()
            ),
        ),
        (
            // About 130 MiB: over the cap on what the host buffers for one result.
            "SELECT b FROM big JOIN seq_1_to_130",
            false,
            502,
            "mysql query error: Error::Other(\"query result exceeds limit of 134217728 bytes\")"
                .into(),
        ),
    ];
    for (sql, execute, status, body) in cases {
        assert_eq!(mysql(&runner, &db, sql, execute), (status, body), "{sql}");
    }

    // Each `open` is a connection of its own, as in Spin (the runner used to pool them).
    let reply = get(&runner.url(&format!("/probe/mysql-connections?{}", db.url())));
    assert_eq!(reply.status, 200, "{reply:?}");
    let ids: Vec<&str> = reply.body.split(' ').collect();
    assert!(ids.len() == 2 && ids[0] != ids[1], "{}", reply.body);

    let refused = get(&runner.url(&format!("/probe/mysql?mysql://u:p@127.0.0.1:{closed}/x")));
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            502,
            "mysql open error: Error::ConnectionFailed(\"Input/output error: Input/output error: \
             Connection refused (os error 111)\\n\\nCaused by:\\n    0: Input/output error: \
             Connection refused (os error 111)\\n    1: Connection refused (os error 111)\")"
        )
    );
    let denied = get(&runner.url("/probe/mysql?mysql://u:p@127.0.0.1:1/x"));
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (
            502,
            "mysql open error: Error::ConnectionFailed(\"address mysql://u:p@127.0.0.1:1/x is not permitted\")"
        )
    );
}

fn a_trapping_component_gets_a_500_and_the_runner_keeps_serving(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    assert_eq!(get(&runner.url("/probe/trap")).status, 500);
    assert_eq!(get(&runner.url("/probe/variable/greeting")).status, 200);
}

/// A component that fails once its response has started cannot change its status any more:
/// the client gets the 200, and the host logs the failure (Spin does, and so must the runner).
fn a_failure_after_the_response_started_is_logged(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    let reply = system_tests::http::send_raw(
        "GET",
        &runner.url("/probe/stream-then-trap"),
        &[],
        system_tests::http::Body::Empty,
    );
    if let Ok(reply) = &reply {
        assert_eq!(reply.status, 200);
    }
    let log = runner.wait_for_log("error after response started");
    assert!(
        log.contains("asked to trap after the response started"),
        "{log}"
    );
    assert_eq!(get(&runner.url("/probe/variable/greeting")).status, 200);
}

/// The host's own answers, byte for byte as Spin gives them.
fn the_well_known_answers_are_spins(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    let health = get(&runner.url("/.well-known/spin/health"));
    assert_eq!((health.status, health.body.as_str()), (200, "OK"));
    assert_eq!(health.header("content-type"), None);
    let info = get(&runner.url("/.well-known/spin/info"));
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("application/json"));
    assert_eq!(info.body, "{\n  \"name\": \"probe-app\"\n}");
}

/// Linear memory: 4 GiB by default as in Spin (a guest may reserve 1.5 GiB), and with
/// `SPIN_MAX_INSTANCE_MEMORY` (what SpinKube's `invocationLimits.memory` sets) growing past the
/// limit fails the guest's allocation instead of trapping.
fn instance_memory_is_limited_as_spin_limits_it(runtime: Runtime) {
    let alloc = |runner: &App, mib: u32| {
        let reply = get(&runner.url(&format!("/probe/alloc?{mib}")));
        (reply.status, reply.body)
    };
    let (_dir, runner) = start(runtime, &[]);
    assert_eq!(alloc(&runner, 1536), (200, "reserved 1536 MiB".to_owned()));

    let dir = TempDir::new("probe-memory");
    let runner = AppConfig::new(manifest(&dir, &[], ""), runtime)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .env("SPIN_MAX_INSTANCE_MEMORY", (32u32 << 20).to_string())
        .start();
    assert_eq!(alloc(&runner, 8), (200, "reserved 8 MiB".to_owned()));
    assert_eq!(
        alloc(&runner, 64),
        (
            507,
            "reserving 64 MiB failed: memory allocation failed because the memory allocator \
             returned an error"
                .to_owned()
        )
    );
    // The refusal is the guest's to handle; the instance and the app go on.
    assert_eq!(alloc(&runner, 8), (200, "reserved 8 MiB".to_owned()));
}

/// `probe`'s key-value answer (status, body) for `op` on store `label`.
fn kv(runner: &App, label: &str, op: &str, key: &str, value: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = value.map(|v| ("x-value", v)).into_iter().collect();
    let reply = system_tests::http::send(
        "GET",
        &runner.url(&format!("/probe/kv/{label}/{op}?{key}")),
        &headers,
        None,
    );
    (reply.status, reply.body)
}

fn ok(text: &str) -> (u16, String) {
    (200, text.to_owned())
}

/// Key-value stores as Spin gives them: what a component may open, what each operation answers,
/// the default store kept in the state directory across restarts (or in memory without one),
/// other labels from the runtime config file, and a label no store has refused at start-up.
fn key_value_stores_behave_as_in_spin(runtime: Runtime) {
    let dir = TempDir::new("probe-kv");
    let state = dir.path().join("state");
    let runtime_config = dir.write(
        "runtime-config.toml",
        "[key_value_store.cache]\ntype = \"spin\"\n",
    );
    let path = manifest(&dir, &[], "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "environment = { PROBE_MODE = \"test\" }",
        "environment = { PROBE_MODE = \"test\" }\nkey_value_stores = [\"default\", \"cache\"]",
    );
    std::fs::write(&path, text).unwrap();
    let start = |state: &std::path::Path| {
        AppConfig::new(&path, runtime)
            .env("SPIN_VARIABLE_NEEDED", "x")
            .arg("--runtime-config-file")
            .arg(runtime_config.display().to_string())
            .state_dir(state)
            .start()
    };

    let runner = start(&state);
    assert_eq!(kv(&runner, "default", "get", "a", None), ok("None"));
    assert_eq!(kv(&runner, "default", "exists", "a", None), ok("false"));
    assert_eq!(kv(&runner, "default", "set", "a", Some("one")), ok("set"));
    assert_eq!(kv(&runner, "default", "set", "b", Some("")), ok("set"));
    assert_eq!(kv(&runner, "default", "set", "a", Some("two")), ok("set"));
    assert_eq!(
        kv(&runner, "default", "get", "a", None),
        ok("Some(\"two\")")
    );
    assert_eq!(kv(&runner, "default", "get", "b", None), ok("Some(\"\")"));
    assert_eq!(kv(&runner, "default", "exists", "a", None), ok("true"));
    assert_eq!(kv(&runner, "default", "keys", "", None), ok("a,b"));
    assert_eq!(kv(&runner, "default", "delete", "b", None), ok("deleted"));
    assert_eq!(kv(&runner, "default", "delete", "b", None), ok("deleted"));
    assert_eq!(kv(&runner, "default", "keys", "", None), ok("a"));
    // Another label is another store, even in the same database.
    assert_eq!(kv(&runner, "cache", "get", "a", None), ok("None"));
    assert_eq!(kv(&runner, "cache", "set", "c", Some("3")), ok("set"));
    // Defined but not listed by the component; not defined at all.
    let denied = (502, "open error: Error::AccessDenied".to_owned());
    assert_eq!(kv(&runner, "other", "get", "a", None), denied);
    // `hidden` lists no stores at all.
    let chained =
        get(&runner.url("/probe/http?http://hidden.spin.internal/probe/kv/default/get?a"));
    assert_eq!(chained.status, 502, "{chained:?}");

    // The default store outlives the app in its state directory; the in-memory one does not.
    drop(runner);
    assert!(state.join("sqlite_key_value.db").is_file());
    let runner = start(&state);
    assert_eq!(
        kv(&runner, "default", "get", "a", None),
        ok("Some(\"two\")")
    );
    assert_eq!(kv(&runner, "cache", "get", "c", None), ok("None"));
    drop(runner);
    let runner = start(std::path::Path::new(""));
    assert_eq!(kv(&runner, "default", "get", "a", None), ok("None"));
    drop(runner);

    // A label no store has: refused at start-up, naming label and component.
    let path = manifest(&dir, &[], "key_value_stores = [\"nowhere\"]");
    let (status, output) = AppConfig::new(path, runtime)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .start_expecting_failure();
    assert!(!status.success());
    assert!(
        output.contains(r#"unknown key_value_stores label "nowhere" for component "hidden""#),
        "{output}"
    );
}

/// Runner only: Spin hosts what the runner refuses here.
#[test]
fn unsupported_manifest_features_fail_loudly() {
    let dir = TempDir::new("probe-sqlite");
    let path = manifest(&dir, &[], "sqlite_databases = [\"default\"]");
    let (status, stderr) = AppConfig::new(path, Runtime::Runner)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .start_expecting_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("hidden") && stderr.contains("sqlite_databases"),
        "{stderr}"
    );
}

fn sigterm_lets_in_flight_requests_finish(runtime: Runtime) {
    let (_dir, runner) = start(runtime, &[]);
    let url = runner.url("/probe/sleep?1500");
    let request = std::thread::spawn(move || {
        system_tests::http::send_raw("GET", &url, &[], system_tests::http::Body::Empty)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = runner.terminate().expect("the app exits");
    let reply = request.join().unwrap();
    match runtime {
        Runtime::Runner => {
            assert!(status.success(), "clean exit: {status:?}");
            let reply = reply.expect("the in-flight request is answered");
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (200, "slept 1500 ms")
            );
        }
        // Spin 3.6's `spin trigger http` has no SIGTERM handler: it ends at once and cuts the
        // requests in flight. Only Spin can fix that (README, "Runner and Spin"); this pins the
        // behaviour, so a Spin that drains shows up here.
        Runtime::Spin => assert!(reply.is_err(), "Spin now drains: {reply:?}"),
    }
}

/// Runner only: Spin hosts the interface this component imports.
#[test]
fn a_component_importing_an_unhosted_interface_is_refused_at_start() {
    let dir = TempDir::new("unhosted");
    let path = dir.write(
        "spin.toml",
        &format!(
            r#"spin_manifest_version = 2
[application]
name = "unhosted"
[[trigger.http]]
route = "/..."
component = "counter"
[component.counter]
source = {:?}
"#,
            wasm("unhosted")
        ),
    );
    let (status, stderr) = AppConfig::new(path, Runtime::Runner).start_expecting_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("counter") && stderr.contains("sqlite"),
        "names component and import:\n{stderr}"
    );
}

/// A connection that sends part of a request's head and then nothing.
fn half_a_head(runner: &App) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(runner.base().trim_start_matches("http://"))
        .expect("connecting");
    stream
        .write_all(b"GET /probe/headers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    stream
}

/// Whether the server closed `stream` (it may say 408 first) within `wait`.
fn closed_within(stream: &mut std::net::TcpStream, wait: std::time::Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn a_slow_client_is_cut_off_while_others_are_served(runtime: Runtime) {
    let dir = TempDir::new("probe-slow");
    let mut config =
        AppConfig::new(manifest(&dir, &[], ""), runtime).env("SPIN_VARIABLE_NEEDED", "x");
    if runtime == Runtime::Runner {
        config = config.arg("--header-read-timeout").arg("1");
    }
    let runner = config.start();
    let mut slow = half_a_head(&runner);
    // Others are served meanwhile.
    for _ in 0..3 {
        assert_eq!(get(&runner.url("/probe/variable/greeting")).status, 200);
    }
    let closed = closed_within(&mut slow, std::time::Duration::from_secs(4));
    match runtime {
        Runtime::Runner => assert!(closed, "the runner kept a slow client's connection"),
        // Spin 3.6 arms no timer on its connections (README, "Runner and Spin"): a client
        // that never finishes its head keeps its connection. In Kubernetes the ingress cuts
        // it off first. This pins the behaviour, so a Spin that cuts shows up here.
        Runtime::Spin => assert!(!closed, "Spin now cuts slow clients off"),
    }
    assert_eq!(get(&runner.url("/probe/variable/greeting")).status, 200);
}

/// Runner only: Spin has no body timeout (see above). A body that stops half way fails the
/// guest's read after the idle time, so the instance ends instead of waiting for ever.
#[test]
fn a_stalled_request_body_fails_the_read_after_the_idle_time() {
    let dir = TempDir::new("probe-stall");
    let runner = AppConfig::new(manifest(&dir, &[], ""), Runtime::Runner)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .arg("--body-idle-timeout")
        .arg("1")
        .start();
    let mut stream = std::net::TcpStream::connect(runner.base().trim_start_matches("http://"))
        .expect("connecting");
    stream
        .write_all(
            b"POST /probe/headers HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .unwrap();
    let started = std::time::Instant::now();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 12];
    stream
        .read_exact(&mut answer)
        .expect("an answer, not a hang");
    assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(runner
        .wait_for_log("the client sent nothing more of its body")
        .contains("the client sent nothing more of its body"));
}

/// Runner only: Spin has no connection cap. Past `--max-connections`, a connection waits
/// unserved until another closes.
#[test]
fn connections_past_the_cap_wait_for_a_free_slot() {
    let dir = TempDir::new("probe-cap");
    let runner = AppConfig::new(manifest(&dir, &[], ""), Runtime::Runner)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .arg("--max-connections")
        .arg("2")
        .start();
    let first = half_a_head(&runner);
    let _second = half_a_head(&runner);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let url = runner.url("/probe/variable/greeting");
    let waiting = std::thread::spawn(move || get(&url).status);
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!waiting.is_finished(), "served past the cap");
    drop(first);
    assert_eq!(waiting.join().unwrap(), 200);
}
