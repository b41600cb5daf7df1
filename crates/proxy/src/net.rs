//! Who the client is: trusted proxy ranges and the `X-Forwarded-For` walk.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a range of
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range such as 10.0.0.0/8 or ::1/128");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself trusted (walking from the right,
/// as each trusted hop appended the address it saw). The walk stops at an entry that is not
/// an address, keeping the last trusted hop: nothing left of it can be believed.
/// `forwarded_for` holds the header's values in the order received.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    for value in forwarded_for.rev() {
        for entry in value.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return client;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_contain() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["", "10.0.0.0/33", "::/129", "example.com/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        let walk = |peer: &str, xff: &[&str]| client_ip(ip(peer), xff.iter().copied(), &trusted);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(walk("203.0.113.9", &["198.51.100.1"]), ip("203.0.113.9"));
        // A trusted peer: the right-most untrusted entry.
        assert_eq!(
            walk("127.0.0.1", &["1.1.1.1, 198.51.100.1, 10.0.0.2"]),
            ip("198.51.100.1")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            walk("127.0.0.1", &["1.1.1.1", "198.51.100.1", "10.0.0.2"]),
            ip("198.51.100.1")
        );
        // Every entry trusted: the left-most.
        assert_eq!(walk("127.0.0.1", &["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"));
        // No header: the peer.
        assert_eq!(walk("127.0.0.1", &[]), ip("127.0.0.1"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            walk("127.0.0.1", &["1.1.1.1, unknown, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        // Ports and brackets.
        assert_eq!(walk("127.0.0.1", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(
            walk("127.0.0.1", &["198.51.100.1:5555"]),
            ip("198.51.100.1")
        );
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            walk("::ffff:127.0.0.1", &["198.51.100.1"]),
            ip("198.51.100.1")
        );
    }
}
