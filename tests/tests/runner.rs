//! The runner against Spin's contract, through the `probe` test component: routes and `spin-*`
//! headers, variables, the allow-list on every outbound path, service chaining, manifest
//! refusals, traps and graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpListener;

use system_tests::http::get;
use system_tests::{wasm, RunnerConfig, TempDir, TestDb};

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

fn start(allowed: &[String]) -> (TempDir, system_tests::Runner) {
    let dir = TempDir::new("probe");
    let path = manifest(&dir, allowed, "");
    let runner = RunnerConfig::new(path)
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

#[test]
fn variables_resolve_from_templates_env_and_command_line() {
    let (_dir, runner) = start(&[]);
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
    let runner = RunnerConfig::new(path)
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

#[test]
fn a_missing_required_variable_stops_the_app() {
    let dir = TempDir::new("probe-missing");
    let path = manifest(&dir, &[], "");
    let (status, stderr) = RunnerConfig::new(path).start_expecting_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("needed") && stderr.contains("SPIN_VARIABLE_NEEDED"),
        "{stderr}"
    );
}

#[test]
fn routes_follow_spin_precedence_and_headers() {
    let (_dir, runner) = start(&[]);
    let exact = get(&runner.url("/probe/exact"));
    assert!(
        exact.body.contains("spin-matched-route: /probe/exact"),
        "{}",
        exact.body
    );
    let wildcard = get(&runner.url("/probe/headers?x=1"));
    assert_eq!(wildcard.status, 200);
    for expected in [
        "spin-matched-route: /probe/...",
        "spin-path-info: /headers",
        "spin-component-route: /probe",
        &format!("spin-full-url: {}/probe/headers?x=1", runner.base()),
        "spin-client-addr: 127.0.0.1:",
    ] {
        assert!(
            wildcard.body.contains(expected),
            "missing `{expected}` in:\n{}",
            wildcard.body
        );
    }
    assert_eq!(get(&runner.url("/elsewhere")).status, 404);
    assert_eq!(get(&runner.url("/probe/env/PROBE_MODE")).body, "test");
}

#[test]
fn tcp_connects_only_to_allowed_hosts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = other.local_addr().unwrap().port();

    let (_dir, runner) = start(&[format!("tcp://127.0.0.1:{open}")]);
    let allowed = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{open}")));
    assert_eq!((allowed.status, allowed.body.as_str()), (200, "connected"));
    let denied = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{closed}")));
    assert_eq!(denied.status, 502, "{denied:?}");
    let log = runner.wait_for_log(&format!("127.0.0.1:{closed}"));
    assert!(
        log.contains("probe") && log.contains(&format!("127.0.0.1:{closed}")),
        "the denial names component and host:\n{log}"
    );
}

#[test]
fn tcp_host_names_are_not_resolved_as_in_spin() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    // Even with the name in the allow-list, Spin 3 gives guests no name lookup: only an IP
    // address connects.
    let (_dir, runner) = start(&[
        format!("tcp://localhost:{open}"),
        format!("tcp://127.0.0.1:{open}"),
    ]);
    let by_name = get(&runner.url(&format!("/probe/tcp?localhost:{open}")));
    assert_eq!(by_name.status, 502, "{by_name:?}");
    assert!(by_name.body.contains("lookup"), "{}", by_name.body);
    let by_ip = get(&runner.url(&format!("/probe/tcp?127.0.0.1:{open}")));
    assert_eq!((by_ip.status, by_ip.body.as_str()), (200, "connected"));
}

#[test]
fn outbound_http_only_to_allowed_hosts() {
    let port = pong_server();
    let (_dir, runner) = start(&[format!("http://127.0.0.1:{port}")]);
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
    let log = runner.wait_for_log(&format!("127.0.0.1:{other}"));
    assert!(log.contains(&format!("127.0.0.1:{other}")), "{log}");
}

#[test]
fn service_chaining_reaches_private_components_when_allowed() {
    let (_dir, runner) = start(&["http://hidden.spin.internal".to_owned()]);
    let chained = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/env/PROBE_MODE"));
    // `hidden` has no `environment`, so the variable is absent there: the answer came from it.
    assert_eq!(chained.status, 200, "{chained:?}");
    assert!(chained.body.starts_with("404 "), "{}", chained.body);

    let (_dir, runner) = start(&[]);
    let denied = get(&runner.url("/probe/http?http://hidden.spin.internal/probe/headers"));
    assert_eq!(denied.status, 502, "{denied:?}");
}

#[test]
fn outbound_mysql_is_checked_and_works() {
    let db = TestDb::empty();
    let (_dir, runner) = start(&[format!("mysql://{}", db.host_port())]);
    let reply = get(&runner.url(&format!("/probe/mysql?{}", db.url())));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains("Int64(2)") || reply.body.contains("Int32(2)"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("Str(\"text\")") && reply.body.contains("DbNull"),
        "{}",
        reply.body
    );

    let (_dir, runner) = start(&[]);
    let denied = get(&runner.url(&format!("/probe/mysql?{}", db.url())));
    assert_eq!(denied.status, 502, "{denied:?}");
    assert!(denied.body.contains("ConnectionFailed"), "{}", denied.body);
}

#[test]
fn a_trapping_component_gets_a_500_and_the_runner_keeps_serving() {
    let (_dir, runner) = start(&[]);
    assert_eq!(get(&runner.url("/probe/trap")).status, 500);
    assert_eq!(get(&runner.url("/probe/variable/greeting")).status, 200);
}

#[test]
fn unsupported_manifest_features_fail_loudly() {
    let dir = TempDir::new("probe-kv");
    let path = manifest(&dir, &[], "key_value_stores = [\"default\"]");
    let (status, stderr) = RunnerConfig::new(path)
        .env("SPIN_VARIABLE_NEEDED", "x")
        .start_expecting_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("hidden") && stderr.contains("key_value_stores"),
        "{stderr}"
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let (_dir, runner) = start(&[]);
    let url = runner.url("/probe/sleep?1500");
    let request = std::thread::spawn(move || get(&url));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = runner.terminate().expect("runner exits");
    assert!(status.success(), "clean exit: {status:?}");
    let reply = request.join().unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1500 ms"));
}

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
    let (status, stderr) = RunnerConfig::new(path).start_expecting_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("counter") && stderr.contains("key-value"),
        "names component and import:\n{stderr}"
    );
}
