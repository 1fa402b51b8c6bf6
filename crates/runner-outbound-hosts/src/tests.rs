use super::*;

fn hosts(entries: &[&str]) -> AllowedHosts {
    AllowedHosts::parse(entries).unwrap_or_else(|e| panic!("{entries:?}: {e}"))
}

fn url(s: &str) -> url::Url {
    url::Url::parse(s).unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn specific_hosts_and_default_ports() {
    let allowed = hosts(&[
        "*://spin.fermyon.dev:443",
        "http://example.com:8383",
        "https://api.example.org",
    ]);
    assert!(allowed.allows_url(&url("http://example.com:8383/foo/bar")));
    assert!(allowed.allows_url(&url("https://spin.fermyon.dev")));
    assert!(allowed.allows_url(&url("https://spin.fermyon.dev/")));
    assert!(
        !allowed.allows_url(&url("http://example.com/")),
        "port 80 is not 8383"
    );
    assert!(!allowed.allows_url(&url("http://google.com/")));
    assert!(allowed.allows_url(&url("https://api.example.org/v1?x=1")));
    assert!(allowed.allows_url(&url("https://api.example.org:443/")));
    assert!(
        !allowed.allows_url(&url("http://api.example.org/")),
        "the scheme must match"
    );
    assert!(!allowed.allows_url(&url("https://api.example.org:8443/")));
    // Spin's string form retries without a scheme.
    assert!(allowed.allows_address("spin.fermyon.dev:443", "https"));
    assert!(allowed.allows_address("example.com:8383", "http"));
}

#[test]
fn default_ports_per_scheme() {
    let allowed = hosts(&[
        "mysql://db",
        "postgres://pg",
        "redis://cache",
        "mqtt://broker",
    ]);
    assert!(allowed.allows_address("mysql://user:pw@db/auth", "mysql"));
    assert!(allowed.allows_address("mysql://db:3306/auth", "mysql"));
    assert!(!allowed.allows_address("mysql://db:3307/auth", "mysql"));
    assert!(allowed.allows_address("postgres://pg:5432/x", "postgres"));
    assert!(allowed.allows_address("redis://cache:6379", "redis"));
    assert!(allowed.allows_address("mqtt://broker:1883", "mqtt"));
    assert!(!allowed.allows_address("redis://db:6379", "redis"));
    assert_eq!(well_known_port("tcp"), None);
}

#[test]
fn user_info_with_special_characters() {
    let allowed = hosts(&["mysql://xyz.com"]);
    assert!(allowed.allows_address("mysql://user:pass#word@xyz.com", "mysql"));
    assert!(allowed.allows_address("mysql://user%3Apass%23word@xyz.com", "mysql"));
    assert!(allowed.allows_address("user%3Apass%23word@xyz.com", "mysql"));
    // An `@` in the password and a `/` after it: odd, but it must not panic.
    let _ = allowed.allows_address("mysql://root:p@ss/word@xyz.com/db", "mysql");
    let https = hosts(&["https://example.com"]);
    assert!(https.allows_address("https://example.com/file@0.1.0.json", "https"));
    assert!(https.allows_address(
        "https://user:pass#word@example.com/file@0.1.0.json",
        "https"
    ));
}

#[test]
fn wildcards() {
    let allowed = hosts(&["http://*.example.com", "http://*.example2.com:8383"]);
    assert!(allowed.allows_url(&url("http://a.example.com/foo")));
    assert!(allowed.allows_url(&url("http://a.b.example.com/foo")));
    assert!(allowed.allows_url(&url("http://a.b.example2.com:8383/foo")));
    assert!(!allowed.allows_url(&url("http://a.b.example2.com/foo")));
    assert!(
        !allowed.allows_url(&url("http://example.com/foo")),
        "not the domain itself"
    );
    assert!(!allowed.allows_url(&url("http://myexample.com/foo")));
    assert!(!allowed.allows_url(&url("https://a.example.com/")));

    let any = hosts(&["*://*:*"]);
    assert!(any.allows_url(&url("https://anything.test:1234/")));
    assert!(any.allows_tcp(sock("10.1.2.3:5672")));
    assert!(any.allows_udp(sock("[::1]:53")));
    assert!(any.allows_self());
    assert!(any.allows_service_chaining("auth"));

    let any_port = hosts(&["tcp://127.0.0.1:*", "http://example.com:*"]);
    assert!(any_port.allows_tcp(sock("127.0.0.1:1")));
    assert!(any_port.allows_url(&url("http://example.com:9999/")));
    assert!(any_port.allows_url(&url("http://example.com/")));

    let any_scheme = hosts(&["*://db.internal:5672"]);
    assert!(any_scheme.allows_address("amqp://db.internal:5672", "amqp"));
    assert!(!any_scheme.allows_address("amqp://db.internal:5673", "amqp"));
}

#[test]
fn port_ranges_exclude_their_end() {
    let allowed = hosts(&["tcp://127.0.0.1:1000..2000"]);
    assert!(allowed.allows_tcp(sock("127.0.0.1:1000")));
    assert!(allowed.allows_tcp(sock("127.0.0.1:1999")));
    assert!(!allowed.allows_tcp(sock("127.0.0.1:2000")));
    assert!(!allowed.allows_tcp(sock("127.0.0.1:999")));
}

#[test]
fn tcp_sockets_by_ip_cidr_and_never_by_name() {
    let allowed = hosts(&[
        "tcp://127.0.0.1:27017",
        "tcp://*:5672",
        "tcp://10.0.0.0/8:*",
        "tcp://localhost:6000",
        "*://127.0.0.1/24:63551",
    ]);
    assert!(allowed.allows_tcp(sock("127.0.0.1:27017")));
    assert!(!allowed.allows_tcp(sock("127.0.0.2:27017")));
    assert!(!allowed.allows_tcp(sock("127.0.0.1:27018")));
    assert!(allowed.allows_tcp(sock("192.168.1.9:5672")));
    assert!(allowed.allows_tcp(sock("[::1]:5672")));
    assert!(allowed.allows_tcp(sock("10.20.30.40:1")));
    assert!(!allowed.allows_tcp(sock("11.0.0.1:1")));
    assert!(allowed.allows_tcp(sock("127.0.0.9:63551")));
    assert!(
        !allowed.allows_tcp(sock("127.0.0.1:6000")),
        "`localhost` is a name: it never matches an address"
    );
    assert!(
        !allowed.allows_udp(sock("127.0.0.1:27017")),
        "udp is its own scheme"
    );
    assert!(
        !allowed.allows_url(&url("http://127.0.0.1:27017/")),
        "tcp entries do not allow http"
    );
    // The same checks in URL form (Spin checks `tcp://<addr>`).
    assert!(allowed.allows_address("127.0.0.1:27017", "tcp"));
}

#[test]
fn ipv6() {
    let allowed = hosts(&[
        "tcp://[::1]:27017",
        "http://[::1]:8001",
        "*://fd00::/8:443",
        "tcp://[0:0::2]:1",
    ]);
    assert!(allowed.allows_tcp(sock("[::1]:27017")));
    assert!(allowed.allows_tcp(sock("[0:0:0:0:0:0:0:1]:27017")));
    assert!(!allowed.allows_tcp(sock("127.0.0.1:27017")));
    assert!(!allowed.allows_tcp(sock("[::ffff:127.0.0.1]:27017")));
    assert!(
        allowed.allows_tcp(sock("[::2]:1")),
        "addresses compare by value"
    );
    assert!(allowed.allows_url(&url("http://[::1]:8001/x")));
    assert!(allowed.allows_url(&url("https://[fd12::1]/")));
    assert!(allowed.allows_tcp(sock("[fd00::5]:443")));
    assert!(!allowed.allows_tcp(sock("[fe00::5]:443")));
    // A zone index makes the address an unparseable URL for Spin: denied.
    let zoned = SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        443,
        0,
        2,
    ));
    assert!(!hosts(&["*://*:*"]).allows_tcp(zoned));
}

#[test]
fn hosts_are_case_insensitive() {
    let allowed = hosts(&["https://API.Example.com", "mysql://DB-Server"]);
    assert!(allowed.allows_url(&url("https://api.example.com/")));
    assert!(allowed.allows_url(&url("https://API.EXAMPLE.COM/")));
    assert!(allowed.allows_address("mysql://root@db-server/auth", "mysql"));
    assert!(
        allowed.allows_address("mysql://root@DB-SERVER/auth", "mysql"),
        "non-special schemes keep case in the URL; Spin lower-cases"
    );
    // The scheme is compared as written: url lower-cases the request's, not the entry's.
    assert!(!hosts(&["HTTPS://api.example.com:443"]).allows_url(&url("https://api.example.com/")));
    // The subdomain suffix is kept as written, and the request's host is lower-cased: an
    // upper-case suffix never matches (Spin 3 behaves the same).
    assert!(!hosts(&["http://*.Example.com"]).allows_url(&url("http://a.example.com/")));
}

#[test]
fn self_requests() {
    assert!(hosts(&["http://self"]).allows_self());
    assert!(hosts(&["https://self"]).allows_self());
    assert!(hosts(&["http://self.alt"]).allows_self());
    assert!(hosts(&["*://self:*"]).allows_self());
    assert!(!hosts(&["http://localhost:3000"]).allows_self());
    assert!(!hosts(&["tcp://self:1"]).allows_self());
    // `self` only covers relative requests: a URL naming host `self` is an ordinary URL.
    assert!(!hosts(&["http://self"]).allows_url(&url("http://self/x")));
    assert!(is_self_request(None));
    assert!(is_self_request(Some("")));
    assert!(is_self_request(Some("self.alt")));
    assert!(!is_self_request(Some("self")));
}

#[test]
fn service_chaining() {
    let all = hosts(&["http://*.spin.internal"]);
    assert!(all.allows_service_chaining("auth"));
    assert!(all.allows_url(&url("http://auth.spin.internal/login")));
    assert!(!all.allows_url(&url("https://auth.spin.internal/login")));
    assert!(!all.allows_url(&url("http://auth.spin.internal:8080/login")));
    let one = hosts(&["http://auth.spin.internal"]);
    assert!(one.allows_service_chaining("auth"));
    assert!(!one.allows_service_chaining("validate"));
    assert!(!hosts(&["http://self"]).allows_service_chaining("auth"));
    assert!(!AllowedHosts::default().allows_service_chaining("auth"));
    assert_eq!(service_chaining_target("auth.spin.internal"), Some("auth"));
    assert_eq!(
        service_chaining_target("auth.spin.internal:80"),
        Some("auth")
    );
    assert_eq!(service_chaining_target("a.b.spin.internal"), None);
    assert_eq!(service_chaining_target("spin.internal"), None);
    assert_eq!(service_chaining_target("example.com"), None);
}

#[test]
fn parses_a_vec_of_strings() {
    let entries: Vec<String> = vec!["https://example.com".into()];
    assert_eq!(AllowedHosts::parse(&entries).unwrap().entries().count(), 1);
}

#[test]
fn empty_list_denies_everything() {
    let none = AllowedHosts::parse::<&str>(&[]).unwrap();
    assert!(!none.allows_url(&url("https://example.com/")));
    assert!(!none.allows_tcp(sock("127.0.0.1:1")));
    assert!(!none.allows_self());
}

#[test]
fn refused_lists() {
    let err = AllowedHosts::parse(&["insecure:allow-all"]).unwrap_err();
    assert_eq!(err.to_string(), "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound traffic'");
    let err = AllowedHosts::parse(&["https://ok.example", "insecure:allow-all"]).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("\"insecure:allow-all\" does not contain a scheme"));
    assert_eq!(err.entry, "insecure:allow-all");
    let err = AllowedHosts::parse(&["http://a", "tcp://db"]).unwrap_err();
    assert_eq!(err.entry, "tcp://db");
}

#[test]
fn denial_messages_are_spins() {
    let allowed = hosts(&["https://example.com"]);
    let denial = allowed
        .check_url(&url("https://other.example:8443/x"))
        .unwrap_err();
    assert_eq!(
        denial.host_pattern().as_deref(),
        Some("https://other.example:8443")
    );
    assert_eq!(denial.warning(), "A component tried to make an outbound network connection to disallowed destination 'https://other.example:8443'.");
    assert_eq!(
        denial.suggestion().as_deref(),
        Some("To allow this request, add 'allowed_outbound_hosts = [\"https://other.example:8443\"]' to the manifest component section.")
    );
    assert_eq!(
        denial.log_line(),
        "Outbound network destination not allowed: https://other.example:8443"
    );
    assert_eq!(
        denial.to_string(),
        "A component tried to make an outbound network connection to disallowed destination 'https://other.example:8443'. To allow this request, add 'allowed_outbound_hosts = [\"https://other.example:8443\"]' to the manifest component section."
    );
    // A default port is not named: the URL does not name one.
    let denial = allowed
        .check_url(&url("http://example.com:80/"))
        .unwrap_err();
    assert_eq!(denial.host_pattern().as_deref(), Some("http://example.com"));
    let denial = allowed.check_tcp(sock("127.0.0.1:27017")).unwrap_err();
    assert_eq!(
        denial.host_pattern().as_deref(),
        Some("tcp://127.0.0.1:27017")
    );
    let denial = allowed.check_tcp(sock("[::1]:27017")).unwrap_err();
    assert_eq!(denial.host_pattern().as_deref(), Some("tcp://[::1]:27017"));
    let denial = allowed.check_self().unwrap_err();
    assert_eq!(
        denial.warning(),
        "A component tried to make an HTTP request to its own app but it does not have permission."
    );
    assert_eq!(denial.host_pattern().as_deref(), Some("http://self"));
    assert_eq!(
        allowed.denial_message_str("http://self"),
        denial.to_string()
    );
    assert_eq!(allowed.denial_message_str("https://example.com/"), "");
    assert!(allowed
        .denial_message_str("mysql://root@db/auth")
        .contains("'mysql://db'"));
    assert!(allowed
        .denial_message(&url("https://x.example/"))
        .contains("'https://x.example'"));
    let denial = allowed.check_address("[::1", "https").unwrap_err();
    assert_eq!(
        denial.warning(),
        "A component tried to make a request to a url that could not be parsed: [::1"
    );
    // Spin's retry with the default scheme is lenient: `http://[::1` becomes a URL whose host
    // is `http` (and is denied as such).
    let denial = allowed.check_address("http://[::1", "https").unwrap_err();
    assert_eq!(denial.host_pattern().as_deref(), Some("https://http"));
}
