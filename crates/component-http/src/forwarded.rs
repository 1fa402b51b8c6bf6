//! Who the client is behind proxies: the peer address Spin reports (`spin-client-addr`) and
//! the `X-Forwarded-For` chain, of which only the hops added by trusted proxies are believed.
//!
//! Every proxy appends the address it was called from, so the chain read from the right is
//! made by ever less trusted parties: the client is the rightmost address that is not a
//! trusted proxy. Anything a client writes into the header itself sits left of that and is
//! never reached, so it cannot pass itself off as someone else.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// A set of address ranges (`10.244.0.0/16`, `::1/128`, or single addresses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDR ranges or addresses; empty means none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("not an IP address or CIDR range: {item:?}"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(bits) => match bits.parse::<u8>() {
                    Ok(b) if b <= max => b,
                    _ => return Err(format!("bad prefix length in {item:?}")),
                },
            };
            // An IPv4-mapped range (`::ffff:10.244.0.0/112`) is the IPv4 range it maps, which
            // the addresses it is compared with are too.
            let range = match addr {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) if bits >= 96 => (IpAddr::V4(v4), bits - 96),
                    Some(_) => {
                        return Err(format!(
                            "an IPv4-mapped range needs a prefix of 96 or more: {item:?}"
                        ))
                    }
                    None => (addr, bits),
                },
                IpAddr::V4(_) => (addr, bits),
            };
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.0
            .iter()
            .any(|&(net, bits)| same_prefix(net, addr, bits))
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn same_prefix(net: IpAddr, addr: IpAddr, bits: u8) -> bool {
    let (net, addr, width) = match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n).into(), u32::from(a).into(), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (net >> shift) == (addr >> shift)
}

/// The IP address of a `spin-client-addr` value (`ip:port`, `[v6]:port`, or a bare address).
pub fn peer_ip(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    value
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| value.parse::<IpAddr>())
        .ok()
        .map(canonical)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn entry_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    peer_ip(entry).or_else(|| entry.trim_matches(['[', ']']).parse().ok().map(canonical))
}

/// The client's address: walking from `peer` leftwards through the `X-Forwarded-For` values
/// (every header, in order) for as long as the current hop is a trusted proxy. An entry that is
/// not an address stops the walk at the hop that added it.
pub fn client_ip(peer: IpAddr, forwarded_for: &[String], trusted: &TrustedProxies) -> IpAddr {
    let mut client = canonical(peer);
    let mut chain = forwarded_for.iter().flat_map(|v| v.split(',')).rev();
    while trusted.contains(client) {
        match chain.next().and_then(entry_ip) {
            Some(hop) => client = hop,
            None => break,
        }
    }
    client
}

/// The `X-Forwarded-For` a proxy sends on: what it was given, then the address it was called
/// from.
pub fn forward_for(forwarded_for: &[String], peer: Option<IpAddr>) -> Option<String> {
    let mut hops: Vec<String> = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    hops.extend(peer.map(|p| p.to_string()));
    (!hops.is_empty()).then(|| hops.join(", "))
}

/// The address a client is counted under: itself for IPv4, its /64 for IPv6 (one subscriber
/// commonly holds a whole /64).
pub fn client_key(client: IpAddr) -> String {
    match canonical(client) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn chain(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ranges_parse_and_match() {
        let t = TrustedProxies::parse("10.244.0.0/16, 127.0.0.1 ,::1/128,fd00::/8").unwrap();
        for yes in [
            "10.244.3.4",
            "127.0.0.1",
            "::1",
            "fd12::5",
            "::ffff:10.244.0.9",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in ["10.245.0.1", "127.0.0.2", "::2", "192.168.1.1"] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert_eq!(
            TrustedProxies::parse("").unwrap(),
            TrustedProxies::default()
        );
        // IPv4-mapped ranges are the IPv4 ranges they map, never everything.
        let mapped = TrustedProxies::parse("::ffff:10.244.0.0/112, ::ffff:192.0.2.1").unwrap();
        for yes in ["10.244.7.1", "::ffff:10.244.0.9", "192.0.2.1"] {
            assert!(mapped.contains(ip(yes)), "{yes}");
        }
        for no in ["203.0.113.9", "10.245.0.1", "192.0.2.2", "::1"] {
            assert!(!mapped.contains(ip(no)), "{no}");
        }
        for bad in [
            "10.0.0.0/33",
            "nope",
            "10.0.0.0/x",
            "::/129",
            "::ffff:0:0/95",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_parse_in_every_spelling() {
        assert_eq!(peer_ip("127.0.0.1:8777"), Some(ip("127.0.0.1")));
        assert_eq!(peer_ip("[::1]:80"), Some(ip("::1")));
        assert_eq!(peer_ip("[::ffff:1.2.3.4]:80"), Some(ip("1.2.3.4")));
        assert_eq!(peer_ip("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(peer_ip("junk"), None);
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = TrustedProxies::parse("127.0.0.0/8,10.244.0.0/16").unwrap();
        // Direct, untrusted peer: the header is ignored whatever it says.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &chain(&["1.1.1.1"]), &trusted),
            ip("203.0.113.9")
        );
        // Ingress (trusted) then gateway (trusted): the address the ingress saw.
        assert_eq!(
            client_ip(
                ip("10.244.0.7"),
                &chain(&["198.51.100.4, 10.244.0.3"]),
                &trusted
            ),
            ip("198.51.100.4")
        );
        // A client's own entry sits left of the real one and is never reached.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &chain(&["6.6.6.6", "198.51.100.4"]),
                &trusted
            ),
            ip("198.51.100.4")
        );
        // Only trusted hops: the leftmost of them.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &chain(&["10.244.1.1"]), &trusted),
            ip("10.244.1.1")
        );
        // Garbage stops the walk at the proxy that passed it on.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &chain(&["6.6.6.6, nonsense"]), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &[], &trusted), ip("127.0.0.1"));
        // Ports and brackets are tolerated.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &chain(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn forwarding_appends_the_peer() {
        assert_eq!(
            forward_for(
                &chain(&["1.1.1.1, 2.2.2.2", "3.3.3.3"]),
                Some(ip("127.0.0.1"))
            ),
            Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1".into())
        );
        assert_eq!(forward_for(&[], Some(ip("::1"))), Some("::1".into()));
        assert_eq!(forward_for(&[], None), None);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(client_key(ip("192.0.2.1")), "192.0.2.1");
    }
}
