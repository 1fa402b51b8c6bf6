//! One `allowed_outbound_hosts` entry (`<scheme>://<host>[:<port>]`): parsing, with Spin's
//! error wording, and matching against a destination.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Error;

/// The default port Spin assumes for a scheme, in entries and in URLs without a port.
pub fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

const LEARN_MORE: &str = "Learn more: https://spinframework.dev/v3/http-outbound#granting-http-permissions-to-components";

/// A destination to check: what Spin extracts from a URL (scheme, host as the URL spells it,
/// explicit port if any).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Destination<'a> {
    pub scheme: &'a str,
    pub host: Host<'a>,
    pub port: Option<u16>,
}

/// A host, normalised as `url::Host` normalises it (domains lower-cased and IDNA-encoded, IP
/// addresses parsed), which is how Spin 3 compares hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host<'a> {
    Domain(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl From<IpAddr> for Host<'_> {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(ip) => Host::V4(ip),
            IpAddr::V6(ip) => Host::V6(ip),
        }
    }
}

/// An owned [`Host`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum LiteralHost {
    Domain(String),
    Ip(IpAddr),
}

impl LiteralHost {
    fn parse(host: &str) -> Result<Self, url::ParseError> {
        Ok(match url::Host::parse(host)? {
            url::Host::Domain(domain) => LiteralHost::Domain(domain),
            url::Host::Ipv4(ip) => LiteralHost::Ip(ip.into()),
            url::Host::Ipv6(ip) => LiteralHost::Ip(ip.into()),
        })
    }

    fn is(&self, host: &Host<'_>) -> bool {
        match (self, host) {
            (LiteralHost::Domain(d), Host::Domain(h)) => d == h,
            (LiteralHost::Ip(IpAddr::V4(a)), Host::V4(b)) => a == b,
            (LiteralHost::Ip(IpAddr::V6(a)), Host::V6(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SchemeRule {
    Any,
    One(String),
}

impl SchemeRule {
    fn parse(scheme: &str) -> Result<Self, String> {
        if scheme == "*" {
            return Ok(SchemeRule::Any);
        }
        if scheme.starts_with('{') {
            return Err("scheme lists are not supported".to_owned());
        }
        if scheme.chars().any(|c| !c.is_alphabetic()) {
            return Err("only alphabetic characters are allowed".to_owned());
        }
        Ok(SchemeRule::One(scheme.to_owned()))
    }

    fn allows(&self, scheme: &str) -> bool {
        match self {
            SchemeRule::Any => true,
            SchemeRule::One(s) => s == scheme,
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`), host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `address/prefix`, host bits allowed and dropped (`127.0.0.1/24` is `127.0.0.0/24`).
    fn parse(text: &str) -> Option<IpNet> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.parse().ok()?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let network = match address {
            IpAddr::V4(ip) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask32(prefix)))
            }
            IpAddr::V6(ip) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask128(prefix)))
            }
            _ => return None,
        };
        Some(IpNet { network, prefix })
    }

    fn contains(&self, host: &Host<'_>) -> bool {
        match (self.network, host) {
            (IpAddr::V4(net), Host::V4(ip)) => {
                u32::from(*ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), Host::V6(ip)) => {
                u128::from(*ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// `*`
    Any,
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself). The suffix
    /// is kept as written, lower case not enforced: Spin compares it with the lower-cased host.
    AnySubdomain(String),
    /// `self` or `self.alt`: only requests to the app itself (relative URLs).
    ToSelf,
    Literal(LiteralHost),
    /// `10.0.0.0/8`, matching IP addresses only (never a name that resolves into it).
    Cidr(IpNet),
}

impl HostRule {
    fn parse(host: &str) -> Result<Self, String> {
        let host = host.trim();
        if host == "*" {
            return Ok(HostRule::Any);
        }
        if host == "self" || host == "self.alt" {
            return Ok(HostRule::ToSelf);
        }
        if host.starts_with('{') {
            if !host.ends_with('}') {
                return Err("Condition failed: `host.ends_with('}')`".to_owned());
            }
            return Err("host lists are not yet supported".to_owned());
        }
        if let Some(net) = IpNet::parse(host) {
            return Ok(HostRule::Cidr(net));
        }
        let host = host.trim_end_matches('/');
        if host.contains('/') {
            return Err("must not include a path".to_owned());
        }
        if let Some(domain) = host.strip_prefix("*.") {
            if domain.contains('*') {
                return Err("wildcards are allowed only as prefixes".to_owned());
            }
            return Ok(HostRule::AnySubdomain(format!(".{domain}")));
        }
        if host.contains('*') {
            return Err("wildcards are allowed only as subdomains".to_owned());
        }
        LiteralHost::parse(host)
            .map(HostRule::Literal)
            .map_err(|e| e.to_string())
    }

    fn allows(&self, host: &Host<'_>) -> bool {
        match (self, host) {
            (HostRule::Any, _) => true,
            (HostRule::AnySubdomain(suffix), Host::Domain(domain)) => {
                domain.ends_with(suffix.as_str())
            }
            (HostRule::AnySubdomain(_), _) => false,
            (HostRule::ToSelf, _) => false,
            (HostRule::Literal(literal), host) => literal.is(host),
            (HostRule::Cidr(net), host) => net.contains(host),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortRule {
    Any,
    Port(u16),
    /// `start..end`, end excluded (as Rust's `Range`, which Spin uses).
    Range(u16, u16),
}

impl PortRule {
    fn parse(port: &str, scheme: &str) -> Result<Self, String> {
        if port.is_empty() {
            return well_known_port(scheme).map(PortRule::Port).ok_or_else(|| {
                format!("no port was provided and the scheme {scheme:?} does not have a known default port number")
            });
        }
        if port == "*" {
            return Ok(PortRule::Any);
        }
        if port.starts_with('{') {
            return Err("port lists are not yet supported".to_owned());
        }
        if let Some((start, end)) = port.split_once("..") {
            let number = |n: &str| {
                n.parse::<u16>()
                    .map_err(|_| format!("port range {port:?} contains non-number"))
            };
            return Ok(PortRule::Range(number(start)?, number(end)?));
        }
        port.parse()
            .map(PortRule::Port)
            .map_err(|_| format!("port {port:?} is not a number"))
    }

    fn allows(&self, port: Option<u16>, scheme: &str) -> bool {
        let port = match (self, port.or_else(|| well_known_port(scheme))) {
            (PortRule::Any, _) => return true,
            (_, None) => return false,
            (_, Some(port)) => port,
        };
        match *self {
            PortRule::Port(p) => p == port,
            PortRule::Range(start, end) => (start..end).contains(&port),
            PortRule::Any => true,
        }
    }
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
}

impl AllowedHost {
    /// Parses one entry (already template-rendered), refusing what Spin 3 refuses with its words.
    pub fn parse(entry: &str) -> Result<AllowedHost, Error> {
        let fail = |context: Option<String>, reason: String| Error {
            entry: entry.to_owned(),
            context,
            reason,
        };
        let url = entry.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            let reason = match url {
                "*" | ":" | "" | "?" => format!(
                    "{url:?} is not an allowed outbound host format.\nHosts must be in the form <scheme>://<host>[:<port>], with '*' wildcards allowed for each.\nIf you intended to allow all outbound networking, you can use '*://*:*' - this will obviate all network sandboxing.\n{LEARN_MORE}"
                ),
                _ => format!("{url:?} does not contain a scheme (e.g., 'http://' or '*://')\n{LEARN_MORE}"),
            };
            return Err(fail(None, reason));
        };
        // Spin splits host and port at the last colon, so an IPv6 literal needs an explicit port.
        let (host, rest) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let port = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                return Err(fail(
                    None,
                    format!("{url:?} has a path but is not allowed to"),
                ));
            }
            Some((port, _)) => port,
            None => rest,
        };

        let port_rule = PortRule::parse(port, scheme)
            .map_err(|r| fail(Some(format!("Invalid allowed host port {port:?}")), r))?;
        let scheme_rule = SchemeRule::parse(scheme)
            .map_err(|r| fail(Some(format!("Invalid allowed host scheme {scheme:?}")), r))?;
        let host_rule = HostRule::parse(host)
            .map_err(|r| fail(Some(format!("Invalid allowed host {host:?}")), r))?;
        Ok(AllowedHost {
            original: entry.to_owned(),
            scheme: scheme_rule,
            host: host_rule,
            port: port_rule,
        })
    }

    pub(crate) fn allows(&self, destination: &Destination<'_>) -> bool {
        self.scheme.allows(destination.scheme)
            && self.host.allows(&destination.host)
            && self.port.allows(destination.port, destination.scheme)
    }

    /// Whether a relative ("self") request with one of `schemes` is allowed: Spin asks for a
    /// matching scheme and a host of `self` or `*`, whatever the port.
    pub(crate) fn allows_relative(&self, schemes: &[&str]) -> bool {
        schemes.iter().any(|s| self.scheme.allows(s))
            && matches!(self.host, HostRule::Any | HostRule::ToSelf)
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> AllowedHost {
        AllowedHost::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parts() {
        let e = entry("http://spin.fermyon.dev");
        assert_eq!(e.scheme, SchemeRule::One("http".into()));
        assert_eq!(
            e.host,
            HostRule::Literal(LiteralHost::Domain("spin.fermyon.dev".into()))
        );
        assert_eq!(e.port, PortRule::Port(80));
        assert_eq!(
            entry("http://spin.fermyon.dev/").host,
            e.host,
            "one trailing slash is allowed"
        );
        assert_eq!(entry("https://x:5555").port, PortRule::Port(5555));
        assert_eq!(
            entry("http://x:4444..5555").port,
            PortRule::Range(4444, 5555)
        );
        assert_eq!(entry("*://x:7777").scheme, SchemeRule::Any);
        assert_eq!(entry("http://self").host, HostRule::ToSelf);
        assert_eq!(entry("http://self.alt").host, HostRule::ToSelf);
        assert_eq!(
            entry("http://*.example.com").host,
            HostRule::AnySubdomain(".example.com".into())
        );
        assert_eq!(
            entry("*://*:*"),
            AllowedHost {
                original: "*://*:*".into(),
                scheme: SchemeRule::Any,
                host: HostRule::Any,
                port: PortRule::Any
            }
        );
        assert_eq!(
            entry("http://192.168.1.1").host,
            HostRule::Literal(LiteralHost::Ip("192.168.1.1".parse().unwrap()))
        );
        assert_eq!(
            entry("http://[::1]:8001").host,
            HostRule::Literal(LiteralHost::Ip("::1".parse().unwrap()))
        );
        assert_eq!(
            entry("http://EXAMPLE.com").host,
            HostRule::Literal(LiteralHost::Domain("example.com".into()))
        );
        for port in ["postgres", "mysql", "redis", "mqtt"] {
            assert!(matches!(
                entry(&format!("{port}://db")).port,
                PortRule::Port(_)
            ));
        }
    }

    #[test]
    fn cidr() {
        assert_eq!(
            entry("*://127.0.0.0/24:80").host,
            HostRule::Cidr(IpNet {
                network: "127.0.0.0".parse().unwrap(),
                prefix: 24
            })
        );
        assert_eq!(
            entry("*://127.0.0.1/24:80").host,
            HostRule::Cidr(IpNet {
                network: "127.0.0.0".parse().unwrap(),
                prefix: 24
            })
        );
        assert_eq!(
            entry("*://ff00::/8:80").host,
            HostRule::Cidr(IpNet {
                network: "ff00::".parse().unwrap(),
                prefix: 8
            })
        );
        assert_eq!(
            entry("tcp://0.0.0.0/0:*").host,
            HostRule::Cidr(IpNet {
                network: "0.0.0.0".parse().unwrap(),
                prefix: 0
            })
        );
        assert!(
            AllowedHost::parse("*://127.0.0.0/24").is_err(),
            "`*` has no default port"
        );
        assert!(AllowedHost::parse("tcp://127.0.0.0/33:1").is_err());
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(&Host::V4("10.255.0.1".parse().unwrap())));
        assert!(!net.contains(&Host::V4("11.0.0.1".parse().unwrap())));
        assert!(!net.contains(&Host::V6("::ffff:10.0.0.1".parse().unwrap())));
    }

    fn error(s: &str) -> String {
        AllowedHost::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn refusals_use_spins_words() {
        assert!(error("spin.fermyon.dev").starts_with("\"spin.fermyon.dev\" does not contain a scheme (e.g., 'http://' or '*://')\nLearn more: "));
        assert!(error("localhost:3001").contains("does not contain a scheme"));
        assert!(error("*").starts_with("\"*\" is not an allowed outbound host format.\nHosts must be in the form <scheme>://<host>[:<port>]"));
        assert_eq!(
            error("http://spin.fermyon.dev/a"),
            "Invalid allowed host \"spin.fermyon.dev/a\": must not include a path"
        );
        assert_eq!(
            error("http://spin.fermyon.dev:6666/a/b"),
            "\"http://spin.fermyon.dev:6666/a/b\" has a path but is not allowed to"
        );
        assert_eq!(
            error("http://*.fermyon.dev/a"),
            "Invalid allowed host \"*.fermyon.dev/a\": must not include a path"
        );
        assert_eq!(error("tcp://db"), "Invalid allowed host port \"\": no port was provided and the scheme \"tcp\" does not have a known default port number");
        assert_eq!(error("*://*.spin.internal"), "Invalid allowed host port \"\": no port was provided and the scheme \"*\" does not have a known default port number");
        assert_eq!(
            error("http://x:1000-2000"),
            "Invalid allowed host port \"1000-2000\": port \"1000-2000\" is not a number"
        );
        assert_eq!(
            error("http://x:a..b"),
            "Invalid allowed host port \"a..b\": port range \"a..b\" contains non-number"
        );
        assert_eq!(
            error("http://x:70000"),
            "Invalid allowed host port \"70000\": port \"70000\" is not a number"
        );
        assert_eq!(
            error("h2c://x:1"),
            "Invalid allowed host scheme \"h2c\": only alphabetic characters are allowed"
        );
        assert_eq!(
            error("{http,https}://x:1"),
            "Invalid allowed host scheme \"{http,https}\": scheme lists are not supported"
        );
        assert_eq!(
            error("http://a.*.com"),
            "Invalid allowed host \"a.*.com\": wildcards are allowed only as subdomains"
        );
        assert_eq!(
            error("http://*.a.*.com"),
            "Invalid allowed host \"*.a.*.com\": wildcards are allowed only as prefixes"
        );
        assert_eq!(
            error("http://{a,b}"),
            "Invalid allowed host \"{a,b}\": host lists are not yet supported"
        );
        assert_eq!(
            error("http://{a,b}:1"),
            "Invalid allowed host \"{a,b}\": host lists are not yet supported"
        );
        assert_eq!(
            error("http://x:{1,2}"),
            "Invalid allowed host port \"{1,2}\": port lists are not yet supported"
        );
        // Spin 3 splits the port at the last colon: an IPv6 literal needs an explicit port.
        assert_eq!(
            error("http://[::1]"),
            "Invalid allowed host port \"1]\": port \"1]\" is not a number"
        );
        assert!(error("http://a b").starts_with("Invalid allowed host \"a b\": "));
    }
}
