//! Where a callback may connect.
//!
//! A callback URL's form is checked when it is given (`mp3_model::webhook::check_url`); its
//! addresses when the notifier connects ([`Policy::check`]), every address its host resolves
//! to then, so that a name cannot point somewhere else between the check and the connection.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Where callbacks may connect: nowhere special-use (loopback, private, link-local, shared,
/// multicast, reserved, documentation) unless `allow` names it or `allow_private` is set, and
/// never into `deny`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_private: bool,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub ip: IpAddr,
    pub why: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {} address", self.ip, self.why)
    }
}

impl Policy {
    /// Reads a list of networks (`10.0.0.0/8, 192.0.2.7, fd00::/8`; a bare address is one
    /// address).
    pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is not an address or a network"))
            })
            .collect()
    }

    /// Whether a callback may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let plain = canonical(ip);
        let within = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip) || n.contains(&plain));
        if within(&self.deny) {
            return Err(Refusal {
                ip,
                why: "a denied",
            });
        }
        if self.allow_private || within(&self.allow) {
            return Ok(());
        }
        match special(plain) {
            Some(why) => Err(Refusal { ip, why }),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), or the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded =
        |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    // 64:ff9b::/96 (NAT64), ::/96 (IPv4-compatible, deprecated but still routed by some
    // stacks) and 2002::/16 (6to4).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
    {
        return embedded(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return embedded(s[1], s[2]);
    }
    ip
}

/// What kind of special-use address `ip` is, if it is one.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified",
        (127, _, _) => "a loopback",
        (10, _, _) | (192, 168, _) => "a private",
        (172, 16..=31, _) => "a private",
        (169, 254, _) => "a link-local",
        (100, 64..=127, _) => "a shared (carrier-grade NAT)",
        (192, 0, 0) => "an IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (198, 18..=19, _) => "a benchmarking",
        (224..=239, _, _) => "a multicast",
        (240..=255, _, _) => "a reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_unspecified() {
        "an unspecified"
    } else if ip.is_loopback() {
        "a loopback"
    } else if first & 0xfe00 == 0xfc00 || ip.segments()[..3] == [0x64, 0xff9b, 1] {
        // Unique local addresses, and local-use NAT64 (64:ff9b:1::/48).
        "a private"
    } else if first & 0xffc0 == 0xfe80 {
        "a link-local"
    } else if first & 0xff00 == 0xff00 {
        "a multicast"
    } else if ip.segments()[..2] == [0x2001, 0xdb8] {
        "a documentation"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_refused_in_every_spelling() {
        let policy = Policy::default();
        for (address, why) in [
            ("127.0.0.1", "a loopback"),
            ("127.8.9.10", "a loopback"),
            ("::1", "a loopback"),
            ("::ffff:127.0.0.1", "a loopback"),
            ("64:ff9b::7f00:1", "a loopback"),
            ("2002:7f00:1::", "a loopback"),
            ("::7f00:1", "a loopback"),
            ("::a00:1", "a private"),
            ("64:ff9b:1::1", "a private"),
            ("10.1.2.3", "a private"),
            ("172.20.0.1", "a private"),
            ("192.168.1.1", "a private"),
            ("fd12::1", "a private"),
            ("169.254.169.254", "a link-local"),
            ("fe80::1", "a link-local"),
            ("::ffff:169.254.169.254", "a link-local"),
            ("0.0.0.0", "an unspecified"),
            ("::", "an unspecified"),
            ("100.100.100.100", "a shared (carrier-grade NAT)"),
            ("224.0.0.1", "a multicast"),
            ("255.255.255.255", "a reserved"),
            ("192.0.2.1", "a documentation"),
        ] {
            let refusal = policy.check(ip(address)).unwrap_err();
            assert_eq!(refusal.why, why, "{address}");
            assert_eq!(refusal.to_string(), format!("{address} is {why} address"));
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn allow_and_deny_lists_come_first() {
        let policy = Policy {
            allow_private: false,
            allow: Policy::parse_networks("127.0.0.2, 10.0.0.0/8").unwrap(),
            deny: Policy::parse_networks("10.9.0.0/16, 8.8.8.8").unwrap(),
        };
        assert_eq!(policy.check(ip("127.0.0.2")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.2")), Ok(()));
        assert!(policy.check(ip("127.0.0.1")).is_err());
        assert_eq!(policy.check(ip("10.1.0.1")), Ok(()));
        assert_eq!(policy.check(ip("10.9.0.1")).unwrap_err().why, "a denied");
        assert_eq!(policy.check(ip("8.8.8.8")).unwrap_err().why, "a denied");
        let open = Policy {
            allow_private: true,
            ..Policy::default()
        };
        assert_eq!(open.check(ip("127.0.0.1")), Ok(()));
        assert!(Policy::parse_networks("10.0.0.0/33").is_err());
        assert!(Policy::parse_networks("localhost").is_err());
        assert_eq!(Policy::parse_networks(" ").unwrap(), vec![]);
    }
}
