//! Who a request comes from: the peer's address, or, when the peer is a proxy the
//! operator trusts (`trusted_proxies`), the address it says it forwarded for.
//!
//! `X-Forwarded-For` is a list each proxy appends its peer to, so only its right end is
//! trustworthy: it is read from the right, skipping trusted proxies, and the first
//! address that is not one is the client. Anything further left was written by that
//! client and is ignored. Without trusted proxies (the default) the header is ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// One address (a /32 or /128) or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let bad = || format!("{s:?} is not an IP address or a CIDR block (e.g. 10.0.0.0/8)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(bad)?,
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` is believed (config `trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

impl TrustedProxies {
    /// Parses addresses and CIDR blocks (`127.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let nets = entries
            .iter()
            .map(|e| Net::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client of a request from `peer` with `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let direct = ClientAddr {
            ip: peer.ip().to_canonical(),
            label: peer.to_string(),
        };
        if !self.trusts(peer.ip()) {
            return direct;
        }
        // Every X-Forwarded-For header, in order, as one list.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = direct;
        for hop in hops.iter().rev() {
            // A hop that is no address ends the walk: the last good one is the client
            // (a trusted proxy writes addresses; garbage came from further left).
            let Some(ip) = parse_hop(hop) else { break };
            client = ClientAddr {
                ip,
                label: ip.to_string(),
            };
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678` (some proxies add the port).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// A request's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// For throttles and rate limits.
    pub ip: IpAddr,
    /// For policies and logs: the peer's `address:port`, or the forwarded address.
    pub label: String,
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_blocks() {
        let t = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8", "fd00::/8", " ::1 "]).unwrap();
        assert!(t.trusts("10.200.3.4".parse().unwrap()));
        assert!(t.trusts("::ffff:10.1.1.1".parse().unwrap()), "mapped v4");
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.2".parse().unwrap()));
        assert!(!t.trusts("11.0.0.1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "host.example", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(&[bad]).is_err(), "{bad}");
        }
        assert!(
            TrustedProxies::parse(&["0.0.0.0/0"])
                .unwrap()
                .trusts("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        let c = none.client(peer("127.0.0.1:4000"), &xff(&["192.0.2.9"]));
        assert_eq!(c.ip.to_string(), "127.0.0.1");
        assert_eq!(c.label, "127.0.0.1:4000");

        let t = TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        let c = t.client(peer("127.0.0.2:4000"), &xff(&["192.0.2.9"]));
        assert_eq!(
            c.label, "127.0.0.2:4000",
            "an untrusted peer's header is ignored"
        );
        let c = t.client(peer("127.0.0.1:4000"), &HeaderMap::new());
        assert_eq!(
            c.label, "127.0.0.1:4000",
            "a trusted peer without the header"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let p = peer("127.0.0.1:4000");
        let ip = |h: &[&str]| t.client(p, &xff(h)).ip.to_string();
        assert_eq!(ip(&["192.0.2.9"]), "192.0.2.9");
        // The client claims to be someone else; the proxy appended its real address.
        assert_eq!(ip(&["198.51.100.1, 192.0.2.9"]), "192.0.2.9");
        // Two trusted proxies in a row, over two headers.
        assert_eq!(ip(&["198.51.100.1, 192.0.2.9", "10.1.2.3"]), "192.0.2.9");
        // Ports and brackets.
        assert_eq!(ip(&["192.0.2.9:5555"]), "192.0.2.9");
        assert_eq!(ip(&["[2001:db8::7]:5555"]), "2001:db8::7");
        // Garbage left of a trusted hop: the last address seen.
        assert_eq!(ip(&["nonsense, 10.1.2.3"]), "10.1.2.3");
        // Only trusted hops: the leftmost.
        assert_eq!(ip(&["10.9.9.9, 10.1.2.3"]), "10.9.9.9");
        let c = t.client(p, &xff(&["192.0.2.9"]));
        assert_eq!(c.label, "192.0.2.9");
    }
}
