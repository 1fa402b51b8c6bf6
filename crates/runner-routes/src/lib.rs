//! Spin HTTP trigger route syntax and precedence, and the `spin-*` request headers.
//!
//! Mirrors Spin 3's HTTP trigger (`spin-http` `routes.rs`, `spin-trigger-http` `headers.rs`,
//! `server.rs`), which builds its router on the `routefinder` crate:
//!
//! - A route is written `/exact`, `/prefix/...` (a trailing wildcard; `/prefix/*` is the same),
//!   with `:name` segments that capture one path segment. Routes are made absolute (`foo` is
//!   `/foo`) and lose one trailing slash (`/foo/` is `/foo`); the request path loses all its
//!   leading and trailing slashes before matching, so `/foo/` and `//foo` reach `/foo`.
//! - Matching is on the raw request path (still percent-encoded, without the query).
//! - Precedence compares patterns segment by segment: literal text beats `:name`, which beats
//!   the wildcard, so `/one/two/...` beats `/one/...` and `/one` beats `/...`. Patterns that rank
//!   the same are tried in manifest order.
//! - The same route written twice is a duplicate: the last one wins and Spin logs the others
//!   as unreachable ([`Router::duplicates`]). Routes that differ only in spelling (`/foo` and
//!   `/foo/`) are not duplicates for Spin: both are kept and the first one wins.
//!
//! The router does not allocate to reject a path, and allocates only the captured values when it
//! matches one.

mod spec;

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use spec::Spec;

/// Paths under this prefix are answered by Spin itself (`health`, `info`), never routed.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// The client address Spin reports (`spin-client-addr`) for a service-chained request.
pub const CHAINED_CLIENT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// What Spin answers for a path under [`WELL_KNOWN_PREFIX`], before any routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WellKnown {
    /// `/.well-known/spin/health`: 200 with body `OK`.
    Health,
    /// `/.well-known/spin/info`: 200, `content-type: application/json`, the app's name and version.
    Info,
    /// Anything else under the prefix: 404 with an empty body.
    NotFound,
}

/// Classifies a request path the way Spin's server does before routing: `None` for a path
/// outside [`WELL_KNOWN_PREFIX`], which goes to the router.
pub fn well_known(path: &str) -> Option<WellKnown> {
    Some(match path.strip_prefix(WELL_KNOWN_PREFIX)? {
        "health" => WellKnown::Health,
        "info" => WellKnown::Info,
        _ => WellKnown::NotFound,
    })
}

/// The `spin-full-url` value: Spin builds it from the server's scheme, the request's `Host`
/// header (`localhost` when there is none) and the request's path and query.
pub fn full_url(scheme: &str, host_header: Option<&str>, path_and_query: &str) -> String {
    format!(
        "{scheme}://{}{path_and_query}",
        host_header.unwrap_or("localhost")
    )
}

/// A route Spin refuses to start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// The route as written in the manifest.
    pub route: String,
    /// Its position in the iterator given to [`Router::build`].
    pub index: usize,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error parsing route {}: {}", self.route, self.reason)
    }
}

impl std::error::Error for RouteError {}

/// A route given more than once: Spin keeps the last and logs the others as never used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateRoute {
    /// The route, as Spin names it in its log (`/` for the root).
    pub route: String,
    /// Position (in the iterator given to [`Router::build`]) of the entry that is never used.
    pub replaced_index: usize,
    /// Position of the entry that serves the route.
    pub effective_index: usize,
}

impl DuplicateRoute {
    /// Spin's log line for this duplicate, under its heading [`DuplicateRoute::HEADING`].
    pub fn log_line(&self, replaced_id: &str, effective_id: &str) -> String {
        format!(
            "  {replaced_id}: {} (duplicate of {effective_id})",
            self.route
        )
    }

    /// The heading Spin logs (at error level) before the duplicates.
    pub const HEADING: &'static str =
        "The following component routes are duplicates and will never be used:";
}

/// One routable entry.
#[derive(Debug)]
struct Route<T> {
    target: T,
    /// As written in the manifest: `spin-raw-component-route`.
    raw: String,
    /// Made absolute, one trailing slash dropped: `spin-matched-route`.
    based: String,
    /// `raw` without a trailing `/...`: `spin-component-route`.
    component_route: String,
    /// How `spin up` lists it: `based`, or its prefix followed by ` (wildcard)`.
    display: String,
    spec: Spec,
    params: Vec<Box<str>>,
}

/// Routes request paths to targets (component indices, ids, ...) as Spin's HTTP trigger does.
#[derive(Debug)]
pub struct Router<T> {
    /// In precedence order: the first that matches wins.
    routes: Vec<Route<T>>,
    duplicates: Vec<DuplicateRoute>,
}

impl<T> Router<T> {
    /// Builds the router from `(route as written in spin.toml, target)` pairs, in manifest order.
    /// Private endpoints (`route = { private = true }`) are not routable: leave them out.
    ///
    /// Refused, as Spin refuses them: `*name` (a named wildcard) and a bare `:`. Refused here
    /// although Spin starts with them, because they cannot work as written: a `*` followed by more
    /// pattern (Spin panics on the first request that reaches it) and a route with non-ASCII
    /// characters (request paths are percent-encoded ASCII, so it could never match as written).
    pub fn build(routes: impl IntoIterator<Item = (String, T)>) -> Result<Router<T>, RouteError> {
        // Spin removes duplicates by the route as written, keeping the first position and the
        // last target.
        let mut unique: Vec<(usize, String, T)> = Vec::new();
        let mut duplicates = Vec::new();
        for (index, (raw, target)) in routes.into_iter().enumerate() {
            match unique.iter_mut().find(|(_, r, _)| *r == raw) {
                Some(slot) => {
                    let replaced_index = std::mem::replace(&mut slot.0, index);
                    slot.2 = target;
                    let based = based_route(&raw);
                    duplicates.push(DuplicateRoute {
                        route: if based.is_empty() {
                            "/".to_owned()
                        } else {
                            based
                        },
                        replaced_index,
                        effective_index: index,
                    });
                }
                None => unique.push((index, raw, target)),
            }
        }

        let mut built: Vec<Route<T>> = Vec::with_capacity(unique.len());
        for (index, raw, target) in unique {
            let refuse = |reason: String| RouteError {
                route: raw.clone(),
                index,
                reason,
            };
            if !raw.is_ascii() {
                return Err(refuse(
                    "the route has non-ASCII characters, but Spin matches the raw (percent-encoded) request path; percent-encode the route".to_owned(),
                ));
            }
            let based = based_route(&raw);
            let (pattern, wildcard_prefix) = if let Some(prefix) = based.strip_suffix("/...") {
                (Cow::Owned(format!("{prefix}/*")), Some(prefix))
            } else {
                (Cow::Borrowed(based.as_str()), based.strip_suffix("/*"))
            };
            let spec = Spec::parse(&pattern).map_err(|reason| RouteError {
                route: based.clone(),
                index,
                reason,
            })?;
            if spec.has_inner_wildcard() {
                return Err(refuse(
                    "`*` must be the last segment of a route (Spin would fail every request reaching it)".to_owned(),
                ));
            }
            let display = match wildcard_prefix {
                Some(prefix) => format!("{prefix} (wildcard)"),
                None => based.clone(),
            };
            let params = spec.param_names().map(Into::into).collect();
            let component_route = raw.strip_suffix("/...").unwrap_or(&raw).to_owned();
            built.push(Route {
                target,
                raw,
                based,
                component_route,
                display,
                spec,
                params,
            });
        }

        // routefinder keeps routes in a BTreeMap under its precedence ordering, which is not a
        // total order (it never answers "equal", and slashes and dots rank oddly). Inserting into
        // a BTreeMap under the same ordering reproduces its order exactly, whatever the count.
        let order: Vec<usize> = {
            let mut map = std::collections::BTreeMap::new();
            for (i, route) in built.iter().enumerate() {
                map.insert(Ranked(&route.spec), i);
            }
            map.into_values().collect()
        };
        let mut slots: Vec<Option<Route<T>>> = built.into_iter().map(Some).collect();
        let ordered = order.into_iter().filter_map(|i| slots[i].take()).collect();

        Ok(Router {
            routes: ordered,
            duplicates,
        })
    }

    /// The best route for a request path, or `None` (Spin answers 404 with an empty body).
    /// Pass `uri.path()`; anything from a `?` on is ignored.
    pub fn route<'r>(&'r self, path: &str) -> Option<RouteMatch<'r, T>> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let route = self.routes.iter().find(|r| r.spec.matches(path, |_| {}))?;

        let mut values = Vec::new();
        route.spec.matches(path, |v| values.push(v));
        let has_wildcard = values.len() > route.params.len();
        let wildcard = has_wildcard.then(|| values[route.params.len()]);

        // Spin reports each name once (last value wins), as it collects them into a map.
        let mut params: Vec<(&'r str, String)> = Vec::with_capacity(route.params.len());
        for (name, value) in route.params.iter().zip(&values) {
            match params.iter_mut().find(|(n, _)| *n == &**name) {
                Some(slot) => slot.1 = (*value).to_owned(),
                None => params.push((name, (*value).to_owned())),
            }
        }

        // Spin's path info keeps the request's trailing slash, which routefinder trims.
        let path_info = match wildcard {
            None => String::new(),
            Some(w) => match (w.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".to_owned(),
                (false, false) => format!("/{w}"),
                (false, true) => format!("/{w}/"),
            },
        };

        Some(RouteMatch {
            target: &route.target,
            matched_route: &route.based,
            component_route: &route.component_route,
            raw_component_route: &route.raw,
            path_info,
            params,
            trailing_wildcard: wildcard.map(str::to_owned),
        })
    }

    /// The routes in precedence order, as `(spin-matched-route value, target)`.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|r| (r.based.as_str(), &r.target))
    }

    /// The routes in the order and form `spin up` lists them under "Available Routes:", each
    /// printed by Spin as `  {component id}: {base url}{route}` (for example
    /// `/api (wildcard)`, or ` (wildcard)` for `/...`).
    pub fn available_routes(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|r| (r.display.as_str(), &r.target))
    }

    /// The duplicates found while building, in manifest order. Spin logs them at error level
    /// (see [`DuplicateRoute::HEADING`] and [`DuplicateRoute::log_line`]) and starts anyway.
    pub fn duplicates(&self) -> &[DuplicateRoute] {
        &self.duplicates
    }

    /// True if a route lies under [`WELL_KNOWN_PREFIX`]. Spin then logs, at error level,
    /// "Routes under /.well-known/spin/ are handled by the Spin runtime and will never be reached".
    pub fn contains_reserved_route(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.based.starts_with(WELL_KNOWN_PREFIX))
    }
}

/// A route pattern ordered by routefinder's precedence (see [`Spec::precedence`]).
struct Ranked<'a>(&'a Spec);

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.precedence(other.0)
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked<'_> {}

/// Spin's "based route": absolute, with one trailing slash dropped (the root becomes "").
fn based_route(raw: &str) -> String {
    let absolute = if raw.starts_with('/') {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(format!("/{raw}"))
    };
    absolute.strip_suffix('/').unwrap_or(&absolute).to_owned()
}

/// A routed request: the target and the values Spin puts into the request's `spin-*` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch<'r, T> {
    pub target: &'r T,
    /// `spin-matched-route`: the route made absolute, without one trailing slash (so `""` for `/`).
    pub matched_route: &'r str,
    /// `spin-component-route`: the route as written, without a trailing `/...`.
    pub component_route: &'r str,
    /// `spin-raw-component-route`: the route as written.
    pub raw_component_route: &'r str,
    /// `spin-path-info`: the part of the path the trailing wildcard matched, with a leading
    /// slash and the request's trailing slash; empty without a wildcard.
    pub path_info: String,
    /// The `:name` captures (`spin-path-match-<name>`), in route order, still percent-encoded.
    pub params: Vec<(&'r str, String)>,
    /// What the trailing wildcard captured, as routefinder reports it (no leading or trailing
    /// slash); `None` for a route without one.
    pub trailing_wildcard: Option<String>,
}

impl<'r, T> RouteMatch<'r, T> {
    /// The match Spin makes up for a service-chained request (`http://<id>.spin.internal/...`):
    /// as if the component's route were `/...`, with the whole path as path info.
    pub fn synthetic(target: &'r T, path: &str) -> RouteMatch<'r, T> {
        RouteMatch {
            target,
            matched_route: "/...",
            component_route: "",
            raw_component_route: "/...",
            path_info: path.to_owned(),
            params: Vec::new(),
            trailing_wildcard: Some(path.to_owned()),
        }
    }

    /// Every `spin-*` header Spin 3 sets on the request, in Spin's order: `spin-path-info`,
    /// `spin-full-url`, `spin-matched-route`, `spin-base-path` (always `/`),
    /// `spin-raw-component-route`, `spin-component-route`, `spin-client-addr`, then one
    /// `spin-path-match-<name>` per parameter (the name lower-cased, `_` turned into `-`).
    ///
    /// `full_url`: see [`full_url`]. `client_addr`: the peer's address; `None` gives
    /// [`CHAINED_CLIENT_ADDR`], what Spin reports for service chaining. Spin adds these after the
    /// client's own headers without removing client-sent `spin-*` headers, and drops a header
    /// whose name or value is not valid.
    pub fn spin_headers(
        &self,
        full_url: &str,
        client_addr: Option<SocketAddr>,
    ) -> Vec<(Cow<'static, str>, String)> {
        let mut headers = Vec::with_capacity(7 + self.params.len());
        headers.push((Cow::Borrowed("spin-path-info"), self.path_info.clone()));
        headers.push((Cow::Borrowed("spin-full-url"), full_url.to_owned()));
        headers.push((
            Cow::Borrowed("spin-matched-route"),
            self.matched_route.to_owned(),
        ));
        headers.push((Cow::Borrowed("spin-base-path"), "/".to_owned()));
        headers.push((
            Cow::Borrowed("spin-raw-component-route"),
            self.raw_component_route.to_owned(),
        ));
        headers.push((
            Cow::Borrowed("spin-component-route"),
            self.component_route.to_owned(),
        ));
        headers.push((
            Cow::Borrowed("spin-client-addr"),
            client_addr.unwrap_or(CHAINED_CLIENT_ADDR).to_string(),
        ));
        for (name, value) in &self.params {
            let name = format!(
                "spin-path-match-{}",
                name.to_ascii_lowercase().replace('_', "-")
            );
            headers.push((Cow::Owned(name), value.clone()));
        }
        headers
    }

    /// The headers of a service-chained request to `path` ([`RouteMatch::synthetic`]), with
    /// [`CHAINED_CLIENT_ADDR`]. Spin drops the `Host` header of an outbound request before
    /// chaining it, so its `full_url` is `http://localhost` followed by the path and query.
    pub fn chained_headers(path: &str, full_url: &str) -> Vec<(Cow<'static, str>, String)> {
        RouteMatch::synthetic(&(), path).spin_headers(full_url, None)
    }
}

#[cfg(test)]
mod tests;
