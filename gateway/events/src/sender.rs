//! One webhook request: HTTP(S) POST with the host's headers and an HMAC signature.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::hmac;
use tracing::{debug, warn};

use crate::EventsError;
use crate::delivery::Delivery;

const USER_AGENT_VALUE: &str = concat!("pier/", env!("CARGO_PKG_VERSION"));
/// Most of a response body read (then dropped) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(crate) const EVENT_ID: HeaderName = HeaderName::from_static("x-pier-event-id");
pub(crate) const DELIVERY: HeaderName = HeaderName::from_static("x-pier-delivery");
pub(crate) const ATTEMPT: HeaderName = HeaderName::from_static("x-pier-attempt");
pub(crate) const SIGNATURE: HeaderName = HeaderName::from_static("x-pier-signature");

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The receiver answered (any status), maybe with `Retry-After` seconds.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: connection error or timeout. Worth retrying.
    Error(String),
    /// The request cannot be built (bad URL or header): retrying will not help.
    Invalid(String),
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Pier-Signature` value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Checks a request URL: `http://` or `https://` with a host.
pub(crate) fn check_url(url: &str) -> Result<Uri, String> {
    let uri = Uri::from_str(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "invalid URL {url:?}: need http:// or https:// and a host"
        )),
    }
}

pub(crate) struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    secret: Option<hmac::Key>,
    timeout: Duration,
}

impl Sender {
    pub(crate) fn new(
        roots: Option<rustls::RootCertStore>,
        secret: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Sender, EventsError> {
        let roots = roots.unwrap_or_else(native_roots);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EventsError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Sender {
            client,
            secret: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
            timeout,
        })
    }

    fn request(&self, d: &Delivery, attempt: u32) -> Result<Request<Full<Bytes>>, String> {
        let uri = check_url(&d.url)?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .body(Full::new(d.body.clone()))
            .map_err(|e| e.to_string())?;
        let headers = req.headers_mut();
        for (name, value) in &d.headers {
            let name = HeaderName::from_str(name)
                .map_err(|e| format!("invalid header name {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| format!("invalid value for header {name}: {e}"))?;
            headers.append(name, value);
        }
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        }
        let id = HeaderValue::from_str(d.id.as_str()).expect("hex is a valid header value");
        headers.insert(IDEMPOTENCY_KEY, id.clone());
        headers.insert(DELIVERY, id);
        headers.insert(EVENT_ID, HeaderValue::from(d.event_id));
        headers.insert(ATTEMPT, HeaderValue::from(attempt));
        headers.remove(SIGNATURE);
        if let Some(key) = &self.secret {
            let sig = format!("sha256={}", hex::encode(hmac::sign(key, &d.body).as_ref()));
            headers.insert(
                SIGNATURE,
                HeaderValue::from_str(&sig).expect("hex is a valid header value"),
            );
        }
        Ok(req)
    }

    /// Sends attempt number `attempt` of a delivery.
    pub(crate) async fn send(&self, d: &Delivery, attempt: u32) -> Outcome {
        let req = match self.request(d, attempt) {
            Ok(req) => req,
            Err(e) => return Outcome::Invalid(e),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if let Err(e) = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                debug!(url = %d.url, error = %e, "webhook response body not read");
            }
            Ok::<_, String>(Outcome::Answered {
                status,
                retry_after,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Error(e),
            Err(_) => Outcome::Error(format!("timed out after {:?}", self.timeout)),
        }
    }
}

fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        debug!(%error, "skipping unreadable system certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, "loaded system trust roots for webhooks");
    if roots.is_empty() {
        warn!("no system trust roots found: https webhooks will fail");
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("not a url").is_err());
    }
}
