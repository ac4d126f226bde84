//! The client behind the `http-outbound` capability: hyper-util's pooled client over
//! rustls (ring, the system's roots), `http://` and `https://`, one per [`Runtime`]
//! (crate::Runtime) and shared by its plugins; through the proxies the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`: [`pier_upstream::proxy`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pier_upstream::proxy::{Proxies, ProxyConfigError, ProxyConnector};

use crate::bindings::pier::plugin::http_outbound::{HttpError, Request, Response};
use crate::host::host_allowed;

/// Largest response body a plugin receives.
pub(crate) const HTTP_MAX_BODY: usize = 1 << 20;

/// Headers whose value the host decides (framing, connection, target): a plugin that
/// sets one is refused.
const RESERVED: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
];

/// Bound on connecting to a host (or to a proxy); the whole exchange has the caller's
/// deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct OutboundHttp {
    client: Client<HttpsConnector<ProxyConnector<HttpConnector>>, Full<Bytes>>,
    proxies: Arc<Proxies>,
}

impl OutboundHttp {
    /// Trusting the system's roots (rustls-native-certs), through the environment's
    /// proxies.
    pub(crate) fn from_env() -> Result<OutboundHttp, ProxyConfigError> {
        let proxies = Arc::new(Proxies::from_env()?);
        proxies.log("plugins' http-outbound");
        Ok(OutboundHttp::with_roots_and_proxies(
            native_roots(),
            proxies,
        ))
    }

    /// Trusting the system's roots, direct.
    #[cfg(test)]
    pub(crate) fn new() -> OutboundHttp {
        OutboundHttp::with_roots(native_roots())
    }

    /// Trusting exactly `roots` (tests), direct.
    #[cfg(test)]
    pub(crate) fn with_roots(roots: rustls::RootCertStore) -> OutboundHttp {
        OutboundHttp::with_roots_and_proxies(roots, Arc::new(Proxies::none()))
    }

    fn with_roots_and_proxies(roots: rustls::RootCertStore, proxies: Arc<Proxies>) -> OutboundHttp {
        let tls = pier_upstream::tls_client_config(roots)
            .expect("ring supports the default protocol versions");
        let tcp = ProxyConnector::new(
            pier_upstream::proxy::tcp_connector(CONNECT_TIMEOUT),
            proxies.clone(),
            CONNECT_TIMEOUT,
        );
        let connector = pier_upstream::proxy::https_connector(tls, tcp, false);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        OutboundHttp { client, proxies }
    }

    /// Sends `req` if its host is on `allowed_hosts` (an entry `host` allows the
    /// scheme's port, `host:port` that port), answering within `deadline` with a body of
    /// at most [`HTTP_MAX_BODY`]. Redirects are not followed.
    pub(crate) async fn send(
        &self,
        allowed_hosts: &[String],
        req: Request,
        deadline: Duration,
    ) -> Result<Response, HttpError> {
        let mut request = build(allowed_hosts, req)?;
        // A plain-http request through a proxy with credentials: they are the proxy's.
        if let Some(auth) = self.proxies.http_authorization(request.uri()) {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        let io = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(chain(&e)))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = Limited::new(resp.into_body(), HTTP_MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Transport(format!("response body: {e}")))?
                .to_bytes()
                .to_vec();
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(deadline, io)
            .await
            .map_err(|_| HttpError::Transport("timed out".into()))?
    }
}

/// The system's trusted roots (rustls-native-certs).
fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system certificate");
    }
    roots.add_parsable_certificates(native.certs);
    roots
}

use pier_upstream::error_chain as chain;

/// The request to send, or why not: `denied` for a host off the allowlist,
/// `invalid-url` for a URL, method or header that is not acceptable.
fn build(allowed_hosts: &[String], req: Request) -> Result<http::Request<Full<Bytes>>, HttpError> {
    let uri: http::Uri = req.url.parse().map_err(|_| HttpError::InvalidUrl)?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(HttpError::InvalidUrl),
    };
    let authority = uri.authority().ok_or(HttpError::InvalidUrl)?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(HttpError::InvalidUrl);
    }
    let port = authority.port_u16().unwrap_or(default_port);
    if !host_allowed(allowed_hosts, authority.host(), port, default_port) {
        return Err(HttpError::Denied);
    }
    let method = req.method.to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(HttpError::InvalidUrl);
    }
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| HttpError::InvalidUrl)?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (k, v) in &req.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| HttpError::InvalidUrl)?;
        // `from_str` takes visible ASCII, spaces and tabs: no CR, LF or other controls.
        let value = HeaderValue::from_str(v).map_err(|_| HttpError::InvalidUrl)?;
        if RESERVED.contains(&name.as_str()) {
            return Err(HttpError::InvalidUrl);
        }
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(req.body)))
        .map_err(|_| HttpError::InvalidUrl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "post".into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: b"hi".to_vec(),
        }
    }

    fn allowed(hosts: &[&str]) -> Vec<String> {
        hosts.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn header_names_and_values_are_validated() {
        let a = allowed(&["api.test"]);
        let ok = build(&a, req("http://api.test/x", &[("X-Token", "a b\tc")])).unwrap();
        assert_eq!(ok.method(), http::Method::POST);
        assert_eq!(ok.headers()["x-token"], "a b\tc");
        for (k, v) in [
            ("X-A", "v\r\nX-Injected: 1"),
            ("X-A", "v\nX-Injected: 1"),
            ("X-A", "v\r"),
            ("X-A", "\u{0}"),
            ("X-A\r\nX-B", "v"),
            ("X A", "v"),
            ("X-A:", "v"),
            ("", "v"),
            ("Host", "elsewhere.test"),
            ("Content-Length", "0"),
            ("transfer-encoding", "chunked"),
            ("Connection", "keep-alive"),
        ] {
            assert!(
                matches!(
                    build(&a, req("http://api.test/x", &[(k, v)])),
                    Err(HttpError::InvalidUrl)
                ),
                "{k:?}: {v:?} must be refused"
            );
        }
        let mut bad = req("http://api.test/x", &[]);
        bad.method = "GET /y HTTP/1.1\r\n".into();
        assert!(matches!(build(&a, bad), Err(HttpError::InvalidUrl)));
    }

    #[test]
    fn urls_obey_allowed_hosts_for_http_and_https() {
        let a = allowed(&["api.test", "hooks.test:8443"]);
        assert!(build(&a, req("http://api.test/x", &[])).is_ok());
        assert!(build(&a, req("https://api.test/x", &[])).is_ok());
        assert!(build(&a, req("https://API.test:443", &[])).is_ok());
        assert!(build(&a, req("https://hooks.test:8443/x", &[])).is_ok());
        for denied in [
            "http://api.test:8080/x",
            "https://hooks.test/x",
            "http://hooks.test:8080/",
            "https://other.test/",
        ] {
            assert!(
                matches!(build(&a, req(denied, &[])), Err(HttpError::Denied)),
                "{denied}"
            );
        }
        for invalid in [
            "ftp://api.test/",
            "api.test/x",
            "http://u:p@api.test/",
            "/x",
        ] {
            assert!(
                matches!(build(&a, req(invalid, &[])), Err(HttpError::InvalidUrl)),
                "{invalid}"
            );
        }
    }

    /// An HTTPS server on 127.0.0.1 answering every request with `body`, sending the
    /// request heads it saw on the channel.
    async fn https_server(
        dir: &std::path::Path,
        body: Vec<u8>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, body, tx) = (acceptor.clone(), body.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Answer: yes\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.flush().await;
                });
            }
        });
        (port, rx)
    }

    fn roots(dir: &std::path::Path) -> rustls::RootCertStore {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
            .unwrap();
        roots
    }

    #[tokio::test]
    async fn https_is_verified_and_the_body_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        // ca.pem, server.pem, server.key
        pier_e2e::test_ca(dir.path());
        let (port, mut heads) = https_server(dir.path(), b"hello".to_vec()).await;
        let a = allowed(&[&format!("127.0.0.1:{port}")]);
        let url = format!("https://127.0.0.1:{port}/hook");
        let deadline = Duration::from_secs(10);

        let client = OutboundHttp::with_roots(roots(dir.path()));
        let r = client
            .send(&a, req(&url, &[("X-Token", "t1")]), deadline)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(r.headers.contains(&("x-answer".into(), "yes".into())));
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("x-token: t1\r\n"),
            "{head}"
        );

        // A server the roots don't vouch for is refused.
        let untrusting = OutboundHttp::with_roots(rustls::RootCertStore::empty());
        match untrusting.send(&a, req(&url, &[]), deadline).await {
            Err(HttpError::Transport(e)) => assert!(e.contains("certificate"), "{e}"),
            other => panic!("expected a transport error, got {other:?}"),
        }

        // A body over the cap is not handed over.
        let (port, _heads) = https_server(dir.path(), vec![b'x'; HTTP_MAX_BODY + 1]).await;
        let a = allowed(&[&format!("127.0.0.1:{port}")]);
        let url = format!("https://127.0.0.1:{port}/big");
        match client.send(&a, req(&url, &[]), deadline).await {
            Err(HttpError::Transport(e)) => assert!(e.contains("length limit"), "{e}"),
            other => panic!("expected a transport error, got {other:?}"),
        }
    }
}
