//! HTTP(S) proxies for every outbound client of Pier (upstreams and replication targets,
//! webhooks, the command line's admin client), from the environment as curl and Go read
//! it: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (or their lowercase names),
//! matched by hyper-util's [`Matcher`].
//!
//! - An `https://` destination goes through a `CONNECT host:port` tunnel
//!   ([`Tunnel`]); TLS is end to end, the proxy sees the host name only. A plain
//!   `http://` one is sent to the proxy in absolute form (`GET http://host/path`): the
//!   proxy sees the whole request, an `Authorization` header included (so use https for
//!   a registry with credentials behind a proxy).
//! - Credentials in the proxy URL (`http://user:pass@proxy:3128`) go to the proxy only
//!   (`Proxy-Authorization`, on the `CONNECT` or on a plain http request); credentials
//!   meant for a registry or a webhook never go into a `CONNECT`.
//! - Loopback destinations (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`) never go
//!   through a proxy, whatever `NO_PROXY` says (as Go's `net/http`): the proxy's own
//!   loopback is not the one meant. hyper-util's matcher has no such default.
//! - Only `http://` proxies are supported (no `https://` to the proxy itself, no SOCKS):
//!   another scheme is an error when the client is built.
//! - The outbound-address policy ([`crate::outbound`]) still holds: before a request
//!   to a host other than the configured one goes to the proxy, the host is resolved
//!   locally and checked ([`ProxyConnector::with_policy`]). The proxy resolves it again
//!   for itself, so a name whose answers change between the two lookups is not caught
//!   as it is without a proxy (there, the connection goes to exactly the checked
//!   addresses). The proxy's own address may be private: the operator chose it.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use http::uri::Scheme;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::{debug, info};

use crate::outbound::Policy;

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The environment variables read, each as its uppercase name then its lowercase one.
const VARS: [(&str, &str); 4] = [
    ("HTTP_PROXY", "http_proxy"),
    ("HTTPS_PROXY", "https_proxy"),
    ("ALL_PROXY", "all_proxy"),
    ("NO_PROXY", "no_proxy"),
];

/// Which proxy each destination goes through.
pub struct Proxies {
    matcher: Matcher,
    /// What is logged: `HTTP_PROXY=http://proxy:3128` and so on, credentials removed.
    summary: Vec<String>,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("summary", &self.summary)
            .finish()
    }
}

/// A proxy setting Pier cannot use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{var}={value}: {why}")]
pub struct ProxyConfigError {
    pub var: &'static str,
    /// The value without its credentials.
    pub value: String,
    pub why: &'static str,
}

impl Proxies {
    /// No proxy: every connection is direct.
    pub fn none() -> Proxies {
        Proxies {
            matcher: Matcher::builder().build(),
            summary: Vec::new(),
        }
    }

    /// The proxies the process environment names.
    pub fn from_env() -> Result<Proxies, ProxyConfigError> {
        Proxies::from_lookup(|name| std::env::var(name).ok())
    }

    /// The proxies `lookup` (an environment) names.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Proxies, ProxyConfigError> {
        let mut values: [(&'static str, String); 4] = Default::default();
        for (slot, (upper, lower)) in values.iter_mut().zip(VARS) {
            *slot = match (lookup(upper), lookup(lower)) {
                (Some(v), _) => (upper, v),
                (None, Some(v)) => (lower, v),
                (None, None) => (upper, String::new()),
            };
        }
        let mut summary = Vec::new();
        for (var, value) in &values[..3] {
            if value.trim().is_empty() {
                continue;
            }
            let shown = redact(value);
            let uri: Option<Uri> = value.trim().parse().ok();
            let scheme = uri.as_ref().and_then(Uri::scheme_str);
            match (scheme, uri.as_ref().and_then(Uri::host)) {
                (Some("http") | None, Some(_)) => {}
                (Some("http") | None, None) => {
                    return Err(ProxyConfigError {
                        var,
                        value: shown,
                        why: "not a proxy URL (http://HOST:PORT)",
                    });
                }
                (Some(_), _) => {
                    return Err(ProxyConfigError {
                        var,
                        value: shown,
                        why: "only http:// proxies are supported (no https:// to the proxy, no SOCKS)",
                    });
                }
            }
            summary.push(format!("{var}={shown}"));
        }
        let [(_, http), (_, https), (_, all), (no_var, no)] = values;
        if !no.trim().is_empty() {
            summary.push(format!("{no_var}={no}"));
        }
        let matcher = Matcher::builder()
            .http(http)
            .https(https)
            .all(all)
            .no(no)
            .build();
        Ok(Proxies { matcher, summary })
    }

    /// No proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.summary
            .iter()
            .all(|s| s.to_ascii_uppercase().starts_with("NO_PROXY="))
    }

    /// Logs which proxies `client` (e.g. `upstream docker-hub`, `webhooks`) uses: once,
    /// when it is built.
    pub fn log(&self, client: &str) {
        if self.is_empty() {
            debug!(client, "no proxy: outbound connections are direct");
        } else {
            info!(client, proxies = %self.summary.join(" "),
                "outbound connections through proxies (loopback destinations and NO_PROXY direct)");
        }
    }

    /// The proxy for a request to `dst`; `None`: connect directly.
    pub fn intercept(&self, dst: &Uri) -> Option<Intercept> {
        if dst.host().is_none_or(is_loopback) {
            return None;
        }
        self.matcher.intercept(dst)
    }

    /// `Proxy-Authorization` for a plain `http://` request to `dst` that goes through a
    /// proxy with credentials (an https one carries it on its `CONNECT` instead).
    pub fn http_authorization(&self, dst: &Uri) -> Option<HeaderValue> {
        if dst.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        self.intercept(dst)?.basic_auth().cloned()
    }

    /// A short name of the proxy for `dst`, for messages.
    pub fn describe(&self, dst: &Uri) -> Option<String> {
        self.intercept(dst).map(|i| shown(&i))
    }
}

/// `http://proxy:3128`, as the intercept has it (no credentials, no path).
fn shown(intercept: &Intercept) -> String {
    let uri = intercept.uri();
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    )
}

/// A proxy URL without the credentials it may carry.
fn redact(value: &str) -> String {
    let value = value.trim();
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, value),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

/// `localhost`, a name under `.localhost`, or a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// A connection through the proxy failed: the error names the proxy.
#[derive(Debug, thiserror::Error)]
#[error("through proxy {proxy}")]
pub struct ProxyError {
    pub proxy: String,
    #[source]
    pub source: BoxError,
}

/// A connection, direct or through a proxy; a plain-http one to a proxy is marked so
/// (hyper then sends requests in absolute form).
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = self.io.connected();
        if self.proxied {
            connected.proxy(true)
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A TCP connector that goes through the [`Proxies`] where they say so and connects
/// directly (through `direct`) elsewhere. Wrap it in the TLS connector.
#[derive(Clone)]
pub struct ProxyConnector<C> {
    direct: C,
    /// To the proxy itself: no outbound-address policy (the operator named it).
    to_proxy: HttpConnector,
    proxies: Arc<Proxies>,
    policy: Option<Arc<Policy>>,
}

impl<C> ProxyConnector<C> {
    /// `connect_timeout` bounds each connection to a proxy.
    pub fn new(direct: C, proxies: Arc<Proxies>, connect_timeout: Duration) -> Self {
        let mut to_proxy = HttpConnector::new();
        to_proxy.enforce_http(false);
        to_proxy.set_nodelay(true);
        to_proxy.set_connect_timeout(Some(connect_timeout));
        ProxyConnector {
            direct,
            to_proxy,
            proxies,
            policy: None,
        }
    }

    /// Check each destination against `policy` before it goes to a proxy (a direct
    /// connection is `direct`'s to check): the host is resolved here for that.
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn proxies(&self) -> &Arc<Proxies> {
        &self.proxies
    }
}

/// The connector of every outbound client (upstreams, webhooks, plugins' http-outbound,
/// the admin CLI): `https://` over rustls with `tls`, `http://` plain, HTTP/1.1 and, when
/// `http2`, HTTP/2 by ALPN, over `tcp` (a [`ProxyConnector`]).
pub fn https_connector<T>(
    tls: rustls::ClientConfig,
    tcp: T,
    http2: bool,
) -> hyper_rustls::HttpsConnector<T> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    if http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.wrap_connector(tcp)
    }
}

/// A TCP connector of `http://` and `https://` (TLS is the wrapper's), without Nagle.
pub fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp
}

impl<C> Service<Uri> for ProxyConnector<C>
where
    C: Service<Uri, Response = TokioIo<TcpStream>> + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = Conn;
    type Error = BoxError;
    type Future = BoxFuture<Conn>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(intercept) = self.proxies.intercept(&dst) else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move {
                let io = connecting.await.map_err(Into::into)?;
                Ok(Conn { io, proxied: false })
            });
        };
        let policy = self.policy.clone();
        let mut to_proxy = self.to_proxy.clone();
        Box::pin(async move {
            let proxy = shown(&intercept);
            if let Some(policy) = policy {
                check_before_proxy(&policy, &dst, &proxy).await?;
            }
            let failed = |source: BoxError| ProxyError {
                proxy: proxy.clone(),
                source,
            };
            if dst.scheme() == Some(&Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(intercept.uri().clone(), to_proxy);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                std::future::poll_fn(|cx| tunnel.poll_ready(cx))
                    .await
                    .map_err(|e| failed(e.into()))?;
                let io = tunnel.call(dst).await.map_err(|e| failed(e.into()))?;
                Ok(Conn { io, proxied: false })
            } else {
                let io = to_proxy
                    .call(intercept.uri().clone())
                    .await
                    .map_err(|e| failed(e.into()))?;
                Ok(Conn { io, proxied: true })
            }
        })
    }
}

/// The outbound-address policy for a destination that goes to a proxy: its host is
/// resolved here, only to be checked (the proxy connects). The configured host is
/// always allowed, even when it does not resolve here.
async fn check_before_proxy(policy: &Policy, dst: &Uri, proxy: &str) -> Result<(), BoxError> {
    let Some(host) = dst.host() else {
        return Ok(());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        policy.check(host, vec![SocketAddr::new(ip, 0)])?;
        return Ok(());
    }
    if policy.allows_all() && !policy.is_home(host) {
        return Ok(());
    }
    let port = dst.port_u16().unwrap_or(0);
    match tokio::net::lookup_host((bare, port)).await {
        Ok(addrs) => {
            policy.check(host, addrs.collect())?;
            Ok(())
        }
        Err(_) if policy.is_home(host) => Ok(()),
        Err(error) => Err(format!(
            "cannot resolve {host} here to check it against the outbound-address policy \
             before asking proxy {proxy} for it: {error}"
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> Proxies {
        Proxies::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    }

    fn via(p: &Proxies, url: &str) -> Option<String> {
        p.describe(&url.parse().unwrap())
    }

    #[test]
    fn picks_the_proxy_by_scheme_and_honours_no_proxy() {
        let p = env(&[
            ("HTTP_PROXY", "http://plain:3128"),
            ("https_proxy", "http://user:secret@tls:3129"),
            ("NO_PROXY", "internal.example,10.0.0.0/8"),
        ]);
        assert_eq!(
            via(&p, "http://registry.example/v2/").as_deref(),
            Some("http://plain:3128")
        );
        assert_eq!(
            via(&p, "https://registry.example/v2/").as_deref(),
            Some("http://tls:3129")
        );
        assert_eq!(via(&p, "https://a.internal.example/"), None);
        assert_eq!(via(&p, "https://10.1.2.3/"), None);
        // The credentials go to the proxy only, and only on a plain http request (an
        // https one carries them on its CONNECT).
        assert!(
            p.http_authorization(&"http://registry.example/".parse().unwrap())
                .is_none()
        );
        assert!(
            p.http_authorization(&"https://registry.example/".parse().unwrap())
                .is_none()
        );
        assert!(!p.summary.join(" ").contains("secret"), "{:?}", p.summary);
        assert!(
            p.summary
                .join(" ")
                .contains("https_proxy=http://***@tls:3129"),
            "{:?}",
            p.summary
        );
    }

    #[test]
    fn proxy_credentials_for_plain_http() {
        let p = env(&[("HTTP_PROXY", "http://u:p@plain:3128")]);
        let auth = p
            .http_authorization(&"http://registry.example/".parse().unwrap())
            .unwrap();
        assert_eq!(auth.to_str().unwrap(), "Basic dTpw");
        assert!(auth.is_sensitive());
    }

    #[test]
    fn loopback_is_always_direct() {
        let p = env(&[("ALL_PROXY", "http://proxy:3128")]);
        for url in [
            "http://127.0.0.1:5000/",
            "http://127.9.9.9/",
            "https://[::1]:5000/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:5001/",
            "http://LOCALHOST./",
            "http://pier.localhost/",
        ] {
            assert_eq!(via(&p, url), None, "{url}");
        }
        assert_eq!(
            via(&p, "http://203.0.113.7/").as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            via(&p, "https://10.0.0.1/").as_deref(),
            Some("http://proxy:3128")
        );
    }

    #[test]
    fn no_proxy_set_means_direct() {
        let p = env(&[]);
        assert!(p.is_empty());
        assert_eq!(via(&p, "https://registry.example/"), None);
        let p = env(&[("NO_PROXY", "*")]);
        assert!(p.is_empty());
        let p = env(&[("HTTPS_PROXY", "http://proxy:3128"), ("NO_PROXY", "*")]);
        assert_eq!(via(&p, "https://registry.example/"), None);
    }

    #[test]
    fn refuses_proxies_it_cannot_use() {
        for (var, value) in [
            ("HTTPS_PROXY", "socks5://u:secret@proxy:1080"),
            ("HTTP_PROXY", "https://proxy:443"),
            ("ALL_PROXY", "http://"),
        ] {
            let error = Proxies::from_lookup(|n| (n == var).then(|| value.to_owned())).unwrap_err();
            assert_eq!(error.var, var);
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        // A bare host:port is an http proxy (as curl reads it).
        let p = env(&[("HTTP_PROXY", "proxy:3128")]);
        assert_eq!(
            via(&p, "http://registry.example/").as_deref(),
            Some("http://proxy:3128")
        );
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("http://u:p@h:1"), "http://***@h:1");
        assert_eq!(redact("u:p@h:1"), "***@h:1");
        assert_eq!(redact("http://h:1/x@y"), "http://h:1/x@y");
    }

    #[tokio::test]
    async fn checks_the_destination_before_the_proxy() {
        let policy = Policy::new("registry.example", false);
        let check = |url: &'static str| {
            let uri: Uri = url.parse().unwrap();
            let policy = &policy;
            async move { check_before_proxy(policy, &uri, "http://proxy:3128").await }
        };
        let error = check("http://127.0.0.1:9/").await.unwrap_err();
        assert!(crate::outbound::refusal(&*error).is_some(), "{error}");
        let error = check("http://localhost:9/").await.unwrap_err();
        assert!(crate::outbound::refusal(&*error).is_some(), "{error}");
        check("http://203.0.113.7:9/").await.unwrap();
        // The configured host passes even when it does not resolve here.
        check("https://registry.example/").await.unwrap();
        let error = check("https://other.invalid/").await.unwrap_err();
        assert!(
            error.to_string().contains("cannot resolve other.invalid"),
            "{error}"
        );
    }
}
