use super::*;

fn router(routes: &[&str]) -> Router<usize> {
    Router::build(routes.iter().enumerate().map(|(i, r)| (r.to_string(), i))).unwrap()
}

/// The index of the route that serves `path`.
fn target(r: &Router<usize>, path: &str) -> Option<usize> {
    r.route(path).map(|m| *m.target)
}

#[test]
fn exact_routes() {
    let r = router(&["/foo", "/foo/bar"]);
    assert_eq!(target(&r, "/foo"), Some(0));
    assert_eq!(target(&r, "/foo/bar"), Some(1));
    assert_eq!(target(&r, "/foo/baz"), None);
    assert_eq!(target(&r, "/foobar"), None);
    assert_eq!(target(&r, "/"), None);
}

#[test]
fn exact_beats_wildcard_in_any_order() {
    for routes in [["/one", "/..."], ["/...", "/one"]] {
        let r = router(&routes);
        let one = routes.iter().position(|x| *x == "/one");
        assert_eq!(target(&r, "/one"), one);
        assert_ne!(target(&r, "/two"), one);
    }
    // An exact route also beats the wildcard of its own prefix.
    let r = router(&["/api/...", "/api"]);
    assert_eq!(target(&r, "/api"), Some(1));
    assert_eq!(target(&r, "/api/x"), Some(0));
}

#[test]
fn longest_prefix_wins_in_any_order() {
    let forward = router(&["/one/...", "/one/two/...", "/one/two/three/..."]);
    let backward = router(&["/one/two/three/...", "/one/two/...", "/one/..."]);
    assert_eq!(target(&forward, "/one/two/three/four"), Some(2));
    assert_eq!(target(&backward, "/one/two/three/four"), Some(0));
    assert_eq!(target(&forward, "/one/two/x"), Some(1));
    assert_eq!(target(&forward, "/one"), Some(0));
    assert_eq!(target(&forward, "/onetwo"), None);
}

#[test]
fn catch_all() {
    let r = router(&["/..."]);
    for path in ["/", "", "/foo/bar", "/abc/", "/this/should/be/captured"] {
        assert_eq!(target(&r, path), Some(0), "{path}");
    }
    let m = r.route("/1/2/3").unwrap();
    assert_eq!(m.path_info, "/1/2/3");
    assert_eq!(m.matched_route, "/...");
    assert_eq!(m.component_route, "");
    assert_eq!(m.raw_component_route, "/...");
    assert_eq!(r.route("/").unwrap().path_info, "/");
    // `/*` is the same as `/...` for matching, but keeps its spelling in the headers.
    let star = router(&["/api/*"]);
    let m = star.route("/api/a/b").unwrap();
    assert_eq!(
        (m.path_info.as_str(), m.component_route, m.matched_route),
        ("/a/b", "/api/*", "/api/*")
    );
}

#[test]
fn params() {
    let r = router(&[
        "/users/:id",
        "/users/:id/posts/:post_id/...",
        "/users/me",
        "/files/:name.json",
    ]);
    let m = r.route("/users/42").unwrap();
    assert_eq!(
        (*m.target, m.params.clone()),
        (0, vec![("id", "42".to_owned())])
    );
    assert_eq!(
        target(&r, "/users/me"),
        Some(2),
        "literal text beats a parameter"
    );
    let m = r.route("/users/7/posts/9/comments/").unwrap();
    assert_eq!(*m.target, 1);
    assert_eq!(
        m.params,
        vec![("id", "7".to_owned()), ("post_id", "9".to_owned())]
    );
    assert_eq!(m.path_info, "/comments/");
    assert_eq!(m.component_route, "/users/:id/posts/:post_id");
    assert_eq!(target(&r, "/users"), None, "a parameter needs a segment");
    assert_eq!(target(&r, "/users/1/2"), None);
    let m = r.route("/files/report.json").unwrap();
    assert_eq!(
        (*m.target, m.params.clone()),
        (3, vec![("name", "report".to_owned())])
    );
    assert_eq!(target(&r, "/files/report.xml"), None);
}

#[test]
fn parameter_versus_wildcard_prefix() {
    // Segment by segment: at the first segment, `api` (literal) beats `:x` (parameter).
    let r = router(&["/:x", "/api/..."]);
    assert_eq!(target(&r, "/api"), Some(1));
    assert_eq!(target(&r, "/other"), Some(0));
}

#[test]
fn trailing_slashes() {
    let r = router(&["/foo", "/bar/", "/"]);
    assert_eq!(target(&r, "/foo/"), Some(0));
    assert_eq!(target(&r, "/foo//"), Some(0));
    assert_eq!(target(&r, "//foo"), Some(0));
    assert_eq!(target(&r, "/bar"), Some(1));
    assert_eq!(target(&r, "/bar/"), Some(1));
    assert_eq!(target(&r, "/"), Some(2));
    assert_eq!(target(&r, "//"), Some(2));
    assert_eq!(
        target(&r, "/foo//bar"),
        None,
        "inner double slashes are not collapsed"
    );

    let m = r.route("/bar").unwrap();
    assert_eq!(
        (m.matched_route, m.raw_component_route, m.component_route),
        ("/bar", "/bar/", "/bar/")
    );
    let root = r.route("/").unwrap();
    assert_eq!(
        (
            root.matched_route,
            root.raw_component_route,
            root.component_route
        ),
        ("", "/", "/")
    );

    let w = router(&["/test/..."]);
    let info = |p: &str| w.route(p).unwrap().path_info;
    assert_eq!(info("/test"), "");
    assert_eq!(info("/test/"), "/");
    assert_eq!(info("/test/hello"), "/hello");
    assert_eq!(info("/test/hello/"), "/hello/");
}

#[test]
fn relative_routes_are_made_absolute() {
    let r = router(&["foo", "bar/..."]);
    assert_eq!(target(&r, "/foo"), Some(0));
    let m = r.route("/bar/x").unwrap();
    assert_eq!(
        (m.matched_route, m.raw_component_route, m.component_route),
        ("/bar/...", "bar/...", "bar")
    );
}

#[test]
fn percent_encoded_paths_match_as_sent() {
    let r = router(&["/a%20b", "/p/:name", "/w/..."]);
    assert_eq!(target(&r, "/a%20b"), Some(0));
    assert_eq!(target(&r, "/a b"), None);
    assert_eq!(
        r.route("/p/x%2Fy").unwrap().params,
        vec![("name", "x%2Fy".to_owned())]
    );
    assert_eq!(r.route("/w/%C3%A9/").unwrap().path_info, "/%C3%A9/");
}

#[test]
fn query_strings_are_not_part_of_matching() {
    let r = router(&["/foo", "/w/..."]);
    assert_eq!(target(&r, "/foo?x=1"), Some(0));
    assert_eq!(target(&r, "/foo/?x=/bar"), Some(0));
    let m = r.route("/w/a/?q=1").unwrap();
    assert_eq!(m.path_info, "/a/");
}

#[test]
fn duplicates_last_one_wins_and_are_reported() {
    let routes = [
        ("/", "a"),
        ("/", "b"),
        ("/foo", "a"),
        ("/foo", "b"),
        ("/...", "a"),
        ("/...", "b"),
        ("/w/...", "a"),
        ("/w/...", "b"),
    ];
    let r = Router::build(routes.iter().map(|(route, id)| (route.to_string(), *id))).unwrap();
    assert_eq!(r.routes().count(), 4);
    for path in ["/", "/foo", "/x", "/w/x"] {
        assert_eq!(*r.route(path).unwrap().target, "b", "{path}");
    }
    let dups = r.duplicates();
    assert_eq!(dups.len(), 4);
    assert_eq!(
        dups.iter().map(|d| d.route.as_str()).collect::<Vec<_>>(),
        ["/", "/foo", "/...", "/w/..."]
    );
    assert_eq!((dups[1].replaced_index, dups[1].effective_index), (2, 3));
    assert_eq!(dups[1].log_line("a", "b"), "  a: /foo (duplicate of b)");
}

#[test]
fn differently_spelled_routes_are_not_duplicates_and_the_first_wins() {
    let r = router(&["/foo", "/foo/", "foo"]);
    assert!(r.duplicates().is_empty());
    assert_eq!(r.routes().count(), 3);
    assert_eq!(target(&r, "/foo"), Some(0));
}

#[test]
fn equal_rank_keeps_manifest_order() {
    let r = router(&["/:a", "/:b"]);
    assert_eq!(target(&r, "/x"), Some(0));
    let listed: Vec<_> = router(&["/", "/foo", "/bar", "/whee/..."])
        .routes()
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(listed, [0, 1, 2, 3]);
}

#[test]
fn refused_routes() {
    let err = Router::build([("/a/*x".to_owned(), ())]).unwrap_err();
    assert_eq!(err.to_string(), "Error parsing route /a/*x: since there can only be one wildcard, it doesn't need a name. replace `*x` with `*`");
    assert!(Router::build([("/a/:/b".to_owned(), ())])
        .unwrap_err()
        .reason
        .contains("params must be named"));
    assert!(Router::build([("/a/*/b".to_owned(), ())]).is_err());
    assert!(
        Router::build([("/a/.../b".to_owned(), ())]).is_ok(),
        "`...` mid-route is literal text"
    );
    let err = Router::build([("/ok".to_owned(), ()), ("/café".to_owned(), ())]).unwrap_err();
    assert_eq!(err.index, 1);
}

#[test]
fn reserved_and_well_known() {
    assert!(router(&["/.well-known/spin/..."]).contains_reserved_route());
    assert!(router(&["/.well-known/spin/fie"]).contains_reserved_route());
    assert!(!router(&["/.well-known/spindle/..."]).contains_reserved_route());
    assert!(!router(&["/.well-known/spin"]).contains_reserved_route());
    assert_eq!(
        well_known("/.well-known/spin/health"),
        Some(WellKnown::Health)
    );
    assert_eq!(well_known("/.well-known/spin/info"), Some(WellKnown::Info));
    assert_eq!(well_known("/.well-known/spin/x"), Some(WellKnown::NotFound));
    assert_eq!(well_known("/.well-known/spin"), None);
    assert_eq!(well_known("/health"), None);
}

#[test]
fn available_routes_as_spin_lists_them() {
    let r = router(&["/", "/api/...", "/...", "/x/:id"]);
    let listed: Vec<_> = r.available_routes().map(|(d, _)| d.to_owned()).collect();
    assert_eq!(listed, ["", "/x/:id", "/api (wildcard)", " (wildcard)"]);
}

fn header<'a>(headers: &'a [(Cow<'static, str>, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn spin_headers_match_spins_default_headers() {
    let r = router(&["/foo/..."]);
    let m = r.route("/foo/bar").unwrap();
    let client: SocketAddr = "127.0.0.1:8777".parse().unwrap();
    let url = full_url(
        "https",
        Some("fermyon.dev"),
        "/foo/bar?key1=value1&key2=value2",
    );
    let h = m.spin_headers(&url, Some(client));
    let names: Vec<_> = h.iter().map(|(n, _)| n.as_ref()).collect();
    assert_eq!(
        names,
        [
            "spin-path-info",
            "spin-full-url",
            "spin-matched-route",
            "spin-base-path",
            "spin-raw-component-route",
            "spin-component-route",
            "spin-client-addr"
        ]
    );
    assert_eq!(
        header(&h, "spin-full-url"),
        Some("https://fermyon.dev/foo/bar?key1=value1&key2=value2")
    );
    assert_eq!(header(&h, "spin-path-info"), Some("/bar"));
    assert_eq!(header(&h, "spin-matched-route"), Some("/foo/..."));
    assert_eq!(header(&h, "spin-base-path"), Some("/"));
    assert_eq!(header(&h, "spin-raw-component-route"), Some("/foo/..."));
    assert_eq!(header(&h, "spin-component-route"), Some("/foo"));
    assert_eq!(header(&h, "spin-client-addr"), Some("127.0.0.1:8777"));
}

#[test]
fn spin_headers_with_named_wildcards() {
    let r = router(&["/foo/:userid/...", "/x/:user_id/:user_id"]);
    let h = r
        .route("/foo/42/bar")
        .unwrap()
        .spin_headers("http://localhost/foo/42/bar", None);
    assert_eq!(header(&h, "spin-path-match-userid"), Some("42"));
    assert_eq!(header(&h, "spin-component-route"), Some("/foo/:userid"));
    assert_eq!(header(&h, "spin-path-info"), Some("/bar"));
    assert_eq!(header(&h, "spin-client-addr"), Some("0.0.0.0:0"));
    let h = r.route("/x/1/2").unwrap().spin_headers("", None);
    assert_eq!(
        h.iter()
            .filter(|(n, _)| n.starts_with("spin-path-match-"))
            .count(),
        1
    );
    assert_eq!(header(&h, "spin-path-match-user-id"), Some("2"));
}

#[test]
fn chained_request_headers() {
    let h = RouteMatch::<usize>::chained_headers("/a/b/", "http://localhost/a/b/?q");
    assert_eq!(header(&h, "spin-path-info"), Some("/a/b/"));
    assert_eq!(header(&h, "spin-matched-route"), Some("/..."));
    assert_eq!(header(&h, "spin-raw-component-route"), Some("/..."));
    assert_eq!(header(&h, "spin-component-route"), Some(""));
    assert_eq!(header(&h, "spin-client-addr"), Some("0.0.0.0:0"));
    assert_eq!(full_url("http", None, "/a?b"), "http://localhost/a?b");
}

/// Spin's router glue (`spin-http` routes.rs) around the real routefinder crate: the oracle the
/// router is compared against.
mod oracle {
    pub struct SpinRouter {
        rf: routefinder::Router<usize>,
    }

    pub struct Matched {
        pub target: usize,
        pub params: Vec<(String, String)>,
        pub path_info: String,
    }

    impl SpinRouter {
        pub fn build(routes: &[String]) -> Result<Self, String> {
            let mut unique: Vec<(String, usize)> = Vec::new();
            for (i, raw) in routes.iter().enumerate() {
                match unique.iter_mut().find(|(r, _)| r == raw) {
                    Some(slot) => slot.1 = i,
                    None => unique.push((raw.clone(), i)),
                }
            }
            let mut rf = routefinder::Router::new();
            for (raw, i) in unique {
                let based = super::based_route(&raw);
                let pattern = match based.strip_suffix("/...") {
                    Some(prefix) => format!("{prefix}/*"),
                    None => based,
                };
                rf.add(pattern.as_str(), i)?;
            }
            Ok(Self { rf })
        }

        pub fn route(&self, path: &str) -> Option<Matched> {
            let m = self.rf.best_match(path)?;
            let captures = m.captures();
            let mut params: Vec<(String, String)> = Vec::new();
            for (k, v) in captures.iter() {
                match params.iter_mut().find(|(n, _)| n == k) {
                    Some(slot) => slot.1 = v.to_owned(),
                    None => params.push((k.to_owned(), v.to_owned())),
                }
            }
            let path_info = captures
                .wildcard()
                .map(|s| match (s.is_empty(), path.ends_with('/')) {
                    (true, false) => s.to_owned(),
                    (true, true) => "/".to_owned(),
                    (false, false) => format!("/{s}"),
                    (false, true) => format!("/{s}/"),
                })
                .unwrap_or_default();
            Some(Matched {
                target: *m.handler(),
                params,
                path_info,
            })
        }
    }
}

/// A small deterministic generator (xorshift), enough to draw routes and paths.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn random_route(rng: &mut Rng) -> String {
    const SEGMENTS: &[&str] = &[
        "a", "b", "ab", ":x", ":y", "a.b", ":x.json", ".", "v1", ":x.:y", "a.", ".b",
    ];
    let mut route = String::new();
    if rng.below(8) != 0 {
        route.push('/');
    }
    let n = rng.below(4);
    for i in 0..n {
        if i > 0 {
            route.push('/');
        }
        route.push_str(rng.pick(SEGMENTS));
    }
    match rng.below(6) {
        0 | 1 => route.push_str("/..."),
        2 => route.push_str("/*"),
        3 => route.push('/'),
        _ => {}
    }
    route
}

fn random_path(rng: &mut Rng) -> String {
    const SEGMENTS: &[&str] = &[
        "a", "b", "ab", "a.b", "x.json", "", ".", "v1", "c", "a.", "1.2", "%2F",
    ];
    let mut path = String::from(if rng.below(6) == 0 { "//" } else { "/" });
    let n = rng.below(5);
    for i in 0..n {
        if i > 0 {
            path.push('/');
        }
        path.push_str(rng.pick(SEGMENTS));
    }
    if rng.below(4) == 0 {
        path.push('/');
    }
    path
}

#[test]
fn agrees_with_spin_on_routefinder() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut compared = 0;
    for _ in 0..2500 {
        // Past 11 routes a BTreeMap splits nodes, where its order under a non-total ordering
        // differs from a simple sorted insert: go well past that.
        let count = 1 + rng.below(40);
        let routes: Vec<String> = (0..count).map(|_| random_route(&mut rng)).collect();
        let ours = Router::build(routes.iter().cloned().enumerate().map(|(i, r)| (r, i)));
        let theirs = oracle::SpinRouter::build(&routes);
        let (ours, theirs) = match (ours, theirs) {
            (Ok(o), Ok(t)) => (o, t),
            (Err(_), Err(_)) => continue,
            (o, t) => panic!(
                "build disagrees on {routes:?}: ours ok={} spin ok={}",
                o.is_ok(),
                t.is_ok()
            ),
        };
        for _ in 0..30 {
            let path = random_path(&mut rng);
            let ours = ours.route(&path);
            let theirs = theirs.route(&path);
            match (ours, theirs) {
                (None, None) => {}
                (Some(o), Some(t)) => {
                    let params: Vec<(String, String)> = o
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect();
                    assert_eq!(
                        (*o.target, &params, &o.path_info),
                        (t.target, &t.params, &t.path_info),
                        "{routes:?} {path}"
                    );
                }
                (o, t) => panic!(
                    "{routes:?} {path}: ours {:?} spin {:?}",
                    o.map(|m| *m.target),
                    t.map(|m| m.target)
                ),
            }
            compared += 1;
        }
    }
    assert!(compared > 50_000, "{compared}");
}
