//! Spin's `allowed_outbound_hosts`: parsing and the checks every outbound path asks.
//!
//! Mirrors Spin 3 (`spin-outbound-networking-config` `allowed_hosts.rs`, the outbound
//! networking factor, and the CLI's denial messages):
//!
//! - An entry is `<scheme>://<host>[:<port>]`. `*` stands for any scheme, host or port;
//!   `*.example.com` for any subdomain (not `example.com` itself); a port may be a range
//!   `start..end` (end excluded). Without a port, the scheme's default applies (http 80, https
//!   443, mysql 3306, postgres 5432, redis 6379, mqtt 1883); other schemes (`tcp`, `*`, ...)
//!   need one. `self` (or `self.alt`) allows requests to the app itself; a CIDR host
//!   (`tcp://10.0.0.0/8:*`) allows IP addresses in it. `insecure:allow-all` is refused.
//! - Hosts compare as `url::Host` values: domains case-insensitively (both sides lower-cased),
//!   IP addresses by value (`[::1]` and `[0::1]` are the same host).
//! - Nothing resolves names. A socket connect is checked as `tcp://<ip>:<port>`: an entry naming
//!   a host (`tcp://localhost:27017`, `tcp://mongo:27017`) never matches it, whatever the name
//!   resolves to. Allow sockets by IP address or CIDR range.
//! - A denied destination is reported with [`Denial`], whose text is what `spin up` prints.

mod entry;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use entry::{well_known_port, AllowedHost};
use entry::{Destination, Host};

/// The domain of service chaining: `http://<component id>.spin.internal`.
pub const SERVICE_CHAINING_DOMAIN: &str = "spin.internal";

/// An entry Spin refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The entry as given.
    pub entry: String,
    /// Which part was wrong, in Spin's words (`Invalid allowed host port "x"`), if Spin says.
    pub context: Option<String>,
    /// Why, in Spin's words.
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{context}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Error {}

/// A component's parsed `allowed_outbound_hosts`. Empty allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

impl AllowedHosts {
    /// Parses the entries (templates already rendered). The first bad entry is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts, Error> {
        if let [only] = entries {
            if only.as_ref() == "insecure:allow-all" {
                return Err(Error {
                    entry: only.as_ref().to_owned(),
                    context: None,
                    reason: "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound traffic'".to_owned(),
                });
            }
        }
        let entries = entries
            .iter()
            .map(|e| AllowedHost::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { entries })
    }

    /// The entries, as written.
    pub fn entries(&self) -> impl Iterator<Item = &AllowedHost> {
        self.entries.iter()
    }

    fn allows(&self, destination: &Destination<'_>) -> bool {
        self.entries.iter().any(|e| e.allows(destination))
    }

    /// Checks a parsed URL (HTTP, MySQL, ...): its scheme, host and port, the scheme's default
    /// port when it has none. For a string, prefer [`AllowedHosts::check_address`], which
    /// parses it as Spin does.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Denial> {
        let Some(host) = url.host_str() else {
            return Err(Denial::Unparseable {
                url: url.to_string(),
            });
        };
        check_parsed(self, url.scheme(), host, url.port())
    }

    /// [`AllowedHosts::check_url`] as a yes or no.
    pub fn allows_url(&self, url: &url::Url) -> bool {
        self.check_url(url).is_ok()
    }

    /// Checks a URL or address string the way Spin checks one (`check_url(url, scheme)`):
    /// user info is percent-encoded first (so `mysql://u:pa#ss@db` works), and a string that
    /// does not parse as a URL with a host is retried as `<default_scheme>://<string>`.
    /// An unparseable string is denied. Spin passes `https` for outbound HTTP and `mysql` for
    /// MySQL addresses.
    pub fn check_address(&self, address: &str, default_scheme: &str) -> Result<(), Denial> {
        let url = match parse_like_spin(address, default_scheme) {
            Some(url) => url,
            None => {
                return Err(Denial::Unparseable {
                    url: address.to_owned(),
                })
            }
        };
        let Some(host) = url.host_str() else {
            return Err(Denial::Unparseable {
                url: address.to_owned(),
            });
        };
        check_parsed(self, url.scheme(), host, url.port())
    }

    /// [`AllowedHosts::check_address`] as a yes or no.
    pub fn allows_address(&self, address: &str, default_scheme: &str) -> bool {
        self.check_address(address, default_scheme).is_ok()
    }

    /// Checks a request to the app itself: a URL without authority, or with host `self.alt`
    /// (see [`is_self_request`]). Spin allows it when an entry has scheme `http`, `https` or `*`
    /// and host `self`, `self.alt` or `*`, whatever the port.
    pub fn check_self(&self) -> Result<(), Denial> {
        if self
            .entries
            .iter()
            .any(|e| e.allows_relative(&["http", "https"]))
        {
            Ok(())
        } else {
            Err(Denial::Destination {
                scheme: "http".to_owned(),
                authority: "self".to_owned(),
            })
        }
    }

    /// [`AllowedHosts::check_self`] as a yes or no.
    pub fn allows_self(&self) -> bool {
        self.check_self().is_ok()
    }

    /// Whether `http://<component_id>.spin.internal` (port 80) is allowed: by
    /// `http://<component_id>.spin.internal`, `http://*.spin.internal`, or wider entries.
    /// Spin checks the whole request URL like any other, so an `https://` or explicit-port
    /// chained request needs [`AllowedHosts::check_url`] with that URL instead.
    pub fn allows_service_chaining(&self, component_id: &str) -> bool {
        let host = format!("{component_id}.{SERVICE_CHAINING_DOMAIN}");
        check_parsed(self, "http", &host, None).is_ok()
    }

    /// Checks a wasi:sockets TCP connect as Spin does: as `tcp://<ip>:<port>`. Names are never
    /// resolved, so only entries with an IP address, a CIDR range or `*` as host can match.
    pub fn check_tcp(&self, addr: SocketAddr) -> Result<(), Denial> {
        check_socket(self, "tcp", addr)
    }

    /// [`AllowedHosts::check_tcp`] as a yes or no. Spin denies every TCP bind (listening), and
    /// allows connects only through this check.
    pub fn allows_tcp(&self, addr: SocketAddr) -> bool {
        self.check_tcp(addr).is_ok()
    }

    /// Checks a wasi:sockets UDP bind, connect or datagram as Spin does: as `udp://<ip>:<port>`.
    pub fn check_udp(&self, addr: SocketAddr) -> Result<(), Denial> {
        check_socket(self, "udp", addr)
    }

    /// [`AllowedHosts::check_udp`] as a yes or no.
    pub fn allows_udp(&self, addr: SocketAddr) -> bool {
        self.check_udp(addr).is_ok()
    }

    /// The denial text for a URL (empty if the URL is allowed).
    pub fn denial_message(&self, url: &url::Url) -> String {
        self.check_url(url)
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    /// The denial text for a URL or address string, parsed as [`AllowedHosts::check_address`]
    /// does with default scheme `https` (empty if it is allowed). For `http://self` it is
    /// Spin's message about requests to the app itself.
    pub fn denial_message_str(&self, url: &str) -> String {
        if url == "http://self" || url == "https://self" {
            return self
                .check_self()
                .err()
                .map(|d| d.to_string())
                .unwrap_or_default();
        }
        self.check_address(url, "https")
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }
}

fn check_parsed(
    allowed: &AllowedHosts,
    scheme: &str,
    host: &str,
    port: Option<u16>,
) -> Result<(), Denial> {
    let denial = || Denial::Destination {
        scheme: scheme.to_owned(),
        authority: match port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        },
    };
    // Spin compares hosts as `url::Host` values; a host that does not parse as one is denied.
    let parsed = url::Host::parse(host).map_err(|_| denial())?;
    let host = match &parsed {
        url::Host::Domain(domain) => Host::Domain(domain),
        url::Host::Ipv4(ip) => Host::V4(*ip),
        url::Host::Ipv6(ip) => Host::V6(*ip),
    };
    if allowed.allows(&Destination { scheme, host, port }) {
        Ok(())
    } else {
        Err(denial())
    }
}

fn check_socket(allowed: &AllowedHosts, scheme: &str, addr: SocketAddr) -> Result<(), Denial> {
    // Spin checks `addr.to_string()` as a URL; an IPv6 address with a zone (`fe80::1%2`) does
    // not parse as one, so Spin denies it.
    if let SocketAddr::V6(v6) = addr {
        if v6.scope_id() != 0 {
            return Err(Denial::Unparseable {
                url: addr.to_string(),
            });
        }
    }
    let destination = Destination {
        scheme,
        host: Host::from(addr.ip()),
        port: Some(addr.port()),
    };
    if allowed.allows(&destination) {
        Ok(())
    } else {
        let authority = match addr.ip() {
            IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
            IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        };
        Err(Denial::Destination {
            scheme: scheme.to_owned(),
            authority,
        })
    }
}

/// Spin's URL parsing for allow-list checks (`OutboundUrl::parse`).
fn parse_like_spin(address: &str, default_scheme: &str) -> Option<url::Url> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // What the `urlencoding` crate leaves alone: ASCII letters, digits and `-._~`.
    const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');

    let mut url = std::borrow::Cow::Borrowed(address);
    if let Some(at) = address.find('@') {
        let scheme_end = address.find("://").map(|e| e + 3).unwrap_or(0);
        let path_start = address[scheme_end..]
            .find('/')
            .map(|e| e + scheme_end)
            .unwrap_or(usize::MAX);
        if scheme_end <= at && at < path_start {
            let userinfo = &address[scheme_end..at];
            let encoded = utf8_percent_encode(userinfo, USERINFO);
            url = format!("{}{encoded}{}", &address[..scheme_end], &address[at..]).into();
        }
    }
    match url::Url::parse(&url) {
        Ok(parsed) if parsed.has_host() => Some(parsed),
        _ => url::Url::parse(&format!("{default_scheme}://{url}")).ok(),
    }
}

/// Whether an outbound HTTP request is a request to the app itself, for Spin: its URL has no
/// authority (a relative URL; wasi:http gives an empty host) or the host `self.alt`, whatever
/// the port (`host` is the URL's host, without it). Not `http://self/...`: that is an ordinary
/// URL, allowed only by a `*` host.
pub fn is_self_request(host: Option<&str>) -> bool {
    matches!(host, None | Some("") | Some("self.alt"))
}

/// The component a service-chaining host names, as Spin reads it: `<id>.spin.internal`,
/// optionally with a port (`auth.spin.internal:80` is `auth`). `None` for any other host.
pub fn service_chaining_target(host: &str) -> Option<&str> {
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let (first, rest) = host.split_once('.')?;
    (rest == SERVICE_CHAINING_DOMAIN).then_some(first)
}

/// A destination the allow-list refuses. Its `Display` is the warning and the advice `spin up`
/// prints on stderr, on one line; Spin also logs [`Denial::log_line`] at error level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A destination with a scheme and authority (`host` or `host:port`, the port only when the
    /// URL names one).
    Destination { scheme: String, authority: String },
    /// A URL Spin could not parse (also denied).
    Unparseable { url: String },
}

impl Denial {
    /// The entry that would allow the destination: `scheme://authority`.
    pub fn host_pattern(&self) -> Option<String> {
        match self {
            Denial::Destination { scheme, authority } => Some(format!("{scheme}://{authority}")),
            Denial::Unparseable { .. } => None,
        }
    }

    /// The warning `spin up` prints.
    pub fn warning(&self) -> String {
        match self {
            Denial::Destination { scheme, authority } if scheme.starts_with("http") && authority == "self" => {
                "A component tried to make an HTTP request to its own app but it does not have permission.".to_owned()
            }
            Denial::Destination { scheme, authority } => format!(
                "A component tried to make an outbound network connection to disallowed destination '{scheme}://{authority}'."
            ),
            Denial::Unparseable { url } => {
                format!("A component tried to make a request to a url that could not be parsed: {url}")
            }
        }
    }

    /// The advice `spin up` prints after the warning (none for an unparseable URL).
    pub fn suggestion(&self) -> Option<String> {
        self.host_pattern().map(|pattern| {
            format!("To allow this request, add 'allowed_outbound_hosts = [\"{pattern}\"]' to the manifest component section.")
        })
    }

    /// The line Spin logs at error level.
    pub fn log_line(&self) -> String {
        match self.host_pattern() {
            Some(pattern) => format!("Outbound network destination not allowed: {pattern}"),
            None => self.warning(),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.warning())?;
        if let Some(suggestion) = self.suggestion() {
            write!(f, " {suggestion}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
