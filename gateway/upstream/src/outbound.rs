//! The outbound-address policy: which addresses a client may connect to.
//!
//! An upstream is a host the operator named, but what it answers can send Pier elsewhere:
//! a redirect's `Location`, a Bearer challenge's `realm`, an upload's `Location`. A hostile
//! or compromised upstream could point those at Pier's own network (the admin listener on
//! loopback, a cloud metadata service on 169.254.169.254, a service on 10/8) and have Pier
//! fetch it and hand the bytes to a client. So [`Connector`] refuses private addresses
//! ([`is_private`]), except:
//! - on the configured host itself (the operator chose it);
//! - everywhere, when the configured host is itself on a private address (a registry on
//!   the local network, whose redirects to its neighbours are expected), or when the
//!   operator set `allow_private`.
//!
//! The check is on the addresses a name resolves to, and the connection goes to exactly
//! the addresses checked (no second lookup that a DNS answer could change in between).
//! `HttpConnector` does not resolve IP-literal hosts, so [`Connector`] checks those before
//! handing the URI on.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// True for an address of Pier's own machine or network rather than the internet:
/// loopback, unspecified and `0.0.0.0/8`, RFC 1918, link-local (`169.254/16`,
/// `fe80::/10`), CGNAT `100.64/10`, unique-local `fc00::/7` (and the deprecated
/// site-local `fec0::/10`), multicast, broadcast, and an IPv6 address that embeds an IPv4
/// one of those (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_private_v4(ip),
        IpAddr::V6(ip) => is_private_v6(ip),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        // 0.0.0.0/8, "this network": 0.0.0.0 itself reaches the local host on Linux.
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT (RFC 6598).
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return true;
    }
    let first = ip.segments()[0];
    if ip.is_unique_local() || ip.is_unicast_link_local() || (first & 0xffc0) == 0xfec0 {
        return true;
    }
    // `to_ipv4` answers for both ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible).
    if let Some(v4) = ip.to_ipv4() {
        return is_private_v4(v4);
    }
    let [s0, s1, s2, s3, s4, s5, s6, s7] = ip.segments();
    if [s0, s1, s2, s3, s4, s5] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s6.to_be_bytes();
        let [c, d] = s7.to_be_bytes();
        return is_private_v4(Ipv4Addr::new(a, b, c, d));
    }
    false
}

/// A connection the policy refused: `host` is (or resolves only to) private addresses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} is at {addr}, a private address")]
pub struct Refused {
    pub host: String,
    pub addr: IpAddr,
}

/// The [`Refused`] somewhere in an error's source chain (a connector's error arrives
/// wrapped by the HTTP client and the TLS connector).
pub fn refusal<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// Which private addresses one client may reach: its home host (the configured URL's) is
/// always allowed; other hosts on private addresses only if the home host is on one
/// itself or `allow_private` is set.
#[derive(Debug)]
pub struct Policy {
    /// The configured host, lowercase, without IPv6 brackets or a trailing dot.
    home: String,
    allow_private: bool,
    /// The home host is on a private address: an IP literal that is, or a name seen
    /// resolving to one.
    home_private: AtomicBool,
}

impl Policy {
    /// The policy of a client whose configured URL's host is `home`.
    pub fn new(home: &str, allow_private: bool) -> Policy {
        let home = normalize(home);
        let home_private = home.parse::<IpAddr>().is_ok_and(is_private);
        Policy {
            home,
            allow_private,
            home_private: AtomicBool::new(home_private),
        }
    }

    /// `host` is the configured one.
    pub fn is_home(&self, host: &str) -> bool {
        normalize(host) == self.home
    }

    /// Every address is allowed.
    pub fn allows_all(&self) -> bool {
        self.allow_private || self.home_private.load(Ordering::Relaxed)
    }

    /// The addresses of `host` to connect to: all of them for the home host or when all
    /// are allowed, else the public ones; refused when none is left.
    pub fn check(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        if self.is_home(host) {
            if addrs.iter().any(|a| is_private(a.ip())) {
                self.home_private.store(true, Ordering::Relaxed);
            }
            return Ok(addrs);
        }
        if self.allows_all() {
            return Ok(addrs);
        }
        let first_private = addrs.iter().map(SocketAddr::ip).find(|ip| is_private(*ip));
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_private(a.ip())).collect();
        match (public.is_empty(), first_private) {
            (true, Some(addr)) => Err(Refused {
                host: host.to_owned(),
                addr,
            }),
            _ => Ok(public),
        }
    }
}

/// Lowercase, without `[]` around an IPv6 literal or a trailing dot.
fn normalize(host: &str) -> String {
    let host = host.strip_prefix('[').unwrap_or(host);
    let host = host.strip_suffix(']').unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The system resolver, with the [`Policy`] applied to its answers.
#[derive(Clone)]
pub struct Resolver {
    gai: GaiResolver,
    policy: Arc<Policy>,
}

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gai.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        let lookup = self.gai.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            Ok(policy.check(&host, addrs)?.into_iter())
        })
    }
}

/// A TCP connector that applies a [`Policy`]: names through [`Resolver`], IP literals
/// checked here. Wrap it in the TLS connector as a plain `HttpConnector`.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector<Resolver>,
    policy: Arc<Policy>,
}

impl Connector {
    /// `http://` and `https://` (TLS is the wrapper's), no Nagle, `connect_timeout` per
    /// connection attempt.
    pub fn new(policy: Arc<Policy>, connect_timeout: Duration) -> Connector {
        let mut tcp = HttpConnector::new_with_resolver(Resolver {
            gai: GaiResolver::new(),
            policy: policy.clone(),
        });
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        Connector { tcp, policy }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // What `HttpConnector` connects to without resolving (it strips the brackets too).
        if let Some(host) = dst.host()
            && let Ok(ip) = normalize(host).parse::<IpAddr>()
            && let Err(refused) = self.policy.check(host, vec![SocketAddr::new(ip, 0)])
        {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.tcp.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(s: &str) -> bool {
        is_private(s.parse().unwrap())
    }

    #[test]
    fn classifies_ipv4() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
        ] {
            assert!(private(ip), "{ip} should be private");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "203.0.113.7",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.255.0.1",
            "192.169.0.1",
            "11.0.0.1",
        ] {
            assert!(!private(ip), "{ip} should be public");
        }
    }

    #[test]
    fn classifies_ipv6() {
        for ip in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(private(ip), "{ip} should be private");
        }
        for ip in [
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "fe00::1",
            "fbff::1",
            "2001:db8::1",
        ] {
            assert!(!private(ip), "{ip} should be public");
        }
    }

    #[test]
    fn classifies_ipv6_embedding_ipv4() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::192.168.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(private(ip), "{ip} should be private");
        }
        for ip in [
            "::ffff:8.8.8.8",
            "::ffff:203.0.113.7",
            "::8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!private(ip), "{ip} should be public");
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 443))
            .collect()
    }

    #[test]
    fn public_home_refuses_private_elsewhere() {
        let policy = Policy::new("registry.example", false);
        assert!(!policy.allows_all());
        let refused = policy
            .check("internal.example", addrs(&["127.0.0.1"]))
            .unwrap_err();
        assert_eq!(refused.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(policy.check("cdn.example", addrs(&["8.8.8.8"])).is_ok());
        // Mixed answers: only the public addresses are used.
        assert_eq!(
            policy
                .check("mixed.example", addrs(&["10.0.0.1", "8.8.4.4"]))
                .unwrap(),
            addrs(&["8.8.4.4"])
        );
        assert!(
            policy
                .check("[::ffff:127.0.0.1]", addrs(&["::ffff:127.0.0.1"]))
                .is_err()
        );
    }

    #[test]
    fn home_host_is_always_allowed_and_a_private_home_allows_all() {
        let policy = Policy::new("Registry.Example", false);
        // Public home so far: its own private address is fine, others' are not.
        assert!(
            policy
                .check("internal.example", addrs(&["10.0.0.9"]))
                .is_err()
        );
        assert!(
            policy
                .check("registry.example.", addrs(&["8.8.8.8"]))
                .is_ok()
        );
        assert!(!policy.allows_all());
        // The home name resolves to a private address: a local registry, all allowed.
        assert!(
            policy
                .check("registry.example", addrs(&["10.0.0.5"]))
                .is_ok()
        );
        assert!(policy.allows_all());
        assert!(
            policy
                .check("internal.example", addrs(&["10.0.0.9"]))
                .is_ok()
        );

        assert!(Policy::new("127.0.0.1", false).allows_all());
        assert!(Policy::new("[::1]", false).allows_all());
        assert!(!Policy::new("203.0.113.7", false).allows_all());
        let allowed = Policy::new("203.0.113.7", true);
        assert!(allowed.check("x", addrs(&["127.0.0.1"])).is_ok());
    }

    /// Accepts connections on 127.0.0.1 and counts them.
    async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        (port, count)
    }

    async fn connect(policy: Policy, url: &str) -> Result<(), BoxError> {
        let mut connector = Connector::new(Arc::new(policy), Duration::from_secs(5));
        let uri: Uri = url.parse().unwrap();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        connector.call(uri).await.map(drop)
    }

    #[tokio::test]
    async fn connector_refuses_private_literals_and_names() {
        let (port, count) = counting_listener().await;
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            // Names are checked on what they resolve to.
            format!("http://localhost:{port}/"),
            // getaddrinfo reads this as 127.0.0.1; the URI parser does not.
            format!("http://2130706433:{port}/"),
        ] {
            let error = connect(Policy::new("203.0.113.7", false), &url)
                .await
                .expect_err(&url);
            let refused = refusal(&*error).unwrap_or_else(|| panic!("{url}: {error}"));
            assert!(is_private(refused.addr), "{url}: {refused}");
        }

        // The same connections are made when allowed, or to the home host.
        let url = format!("http://127.0.0.1:{port}/");
        connect(Policy::new("203.0.113.7", true), &url)
            .await
            .unwrap();
        connect(Policy::new("127.0.0.1", false), &url)
            .await
            .unwrap();
        let url = format!("http://localhost:{port}/");
        connect(Policy::new("localhost", false), &url)
            .await
            .unwrap();
        // Only those three reached the listener (the refused ones never connected).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn finds_a_refusal_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BoxError);
        let refused = Refused {
            host: "h".into(),
            addr: "127.0.0.1".parse().unwrap(),
        };
        let error = Outer(Box::new(Outer(Box::new(refused))));
        assert_eq!(refusal(&error).map(|r| r.host.as_str()), Some("h"));
        assert!(refusal(&Outer("plain".into())).is_none());
    }
}
