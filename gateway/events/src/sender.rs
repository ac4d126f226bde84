//! One webhook request: HTTP(S) POST with the router's (allowed) headers, the host's
//! own and a timestamped HMAC signature ([`crate::signing`]).

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONTENT_TYPE, HeaderName, HeaderValue, PROXY_AUTHORIZATION, RETRY_AFTER, USER_AGENT,
};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pier_upstream::proxy::{Proxies, ProxyConnector};
use tracing::{debug, warn};

use crate::EventsError;
use crate::delivery::Delivery;
use crate::signing::{EndpointSecret, SigningKeys, sign_with};

const USER_AGENT_VALUE: &str = concat!("pier/", env!("CARGO_PKG_VERSION"));
/// Most of a response body read (then dropped) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(crate) const EVENT_ID: HeaderName = HeaderName::from_static("x-pier-event-id");
pub(crate) const DELIVERY: HeaderName = HeaderName::from_static("x-pier-delivery");
pub(crate) const ATTEMPT: HeaderName = HeaderName::from_static("x-pier-attempt");
pub(crate) const SIGNATURE: HeaderName = HeaderName::from_static("x-pier-signature");
pub(crate) const TIMESTAMP: HeaderName = HeaderName::from_static("x-pier-timestamp");

/// Headers a router (a notifier plugin) may set on one delivery, at most.
pub const MAX_ROUTER_HEADERS: usize = 32;
/// Bytes of one router-chosen header value, at most.
pub const MAX_ROUTER_HEADER_VALUE: usize = 4096;

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

/// Whether a router (a notifier plugin) may set this request header. Allowed:
/// `Content-Type`, `Authorization` (a receiver's token from the plugin's own
/// configuration; the plugin can send it only to its allowed hosts), and `X-*` names
/// except Pier's own `X-Pier-*` (its signature, timestamp, event and delivery ids) and
/// `X-Forwarded-*` / `X-Real-IP` (a receiver may trust them for the client's address).
/// Everything else (`Host`, `Content-Length`, `Transfer-Encoding`, `Cookie`,
/// `Idempotency-Key`, `User-Agent`, ...) is refused. Names are RFC 9110 tokens; values
/// are visible ASCII, space and tab, at most [`MAX_ROUTER_HEADER_VALUE`] bytes: no CR,
/// LF or other control characters.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let shown = |s: &str| s.escape_debug().take(80).collect::<String>();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 128 || !name.bytes().all(token) {
        return Err(format!("invalid header name \"{}\"", shown(name)));
    }
    let lower = name.to_ascii_lowercase();
    let allowed = match lower.as_str() {
        "content-type" | "authorization" => true,
        "x-real-ip" => false,
        n => n.starts_with("x-") && !n.starts_with("x-pier-") && !n.starts_with("x-forwarded-"),
    };
    if !allowed {
        return Err(format!(
            "header {name} is not allowed (only Content-Type, Authorization and X-* other \
             than X-Pier-*, X-Forwarded-* and X-Real-IP)"
        ));
    }
    if value.len() > MAX_ROUTER_HEADER_VALUE {
        return Err(format!(
            "header {name}: value of {} bytes (at most {MAX_ROUTER_HEADER_VALUE})",
            value.len()
        ));
    }
    if let Some(b) = value
        .bytes()
        .find(|b| !(b == &b'\t' || (0x20..0x7f).contains(b)))
    {
        return Err(format!(
            "header {name}: value has the byte 0x{b:02x} (only visible ASCII, space and tab)"
        ));
    }
    Ok(())
}

/// [`check_header`] on each of a delivery's headers, and their count.
pub fn check_headers(headers: &[(String, String)]) -> Result<(), String> {
    if headers.len() > MAX_ROUTER_HEADERS {
        return Err(format!(
            "{} headers (at most {MAX_ROUTER_HEADERS})",
            headers.len()
        ));
    }
    headers.iter().try_for_each(|(n, v)| check_header(n, v))
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
    client: Client<HttpsConnector<ProxyConnector<HttpConnector>>, Full<Bytes>>,
    /// From the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`): see
    /// [`pier_upstream::proxy`].
    proxies: std::sync::Arc<Proxies>,
    keys: SigningKeys,
    timeout: Duration,
}

impl Sender {
    pub(crate) fn new(
        roots: Option<rustls::RootCertStore>,
        default_secret: Option<&[u8]>,
        endpoint_secrets: &[EndpointSecret],
        timeout: Duration,
    ) -> Result<Sender, EventsError> {
        let roots = roots.unwrap_or_else(native_roots);
        let tls =
            pier_upstream::tls_client_config(roots).map_err(|e| EventsError::Tls(e.to_string()))?;
        let proxies = std::sync::Arc::new(Proxies::from_env().map_err(EventsError::Proxy)?);
        proxies.log("webhooks");
        let direct = pier_upstream::proxy::tcp_connector(timeout);
        let tcp = ProxyConnector::new(direct, proxies.clone(), timeout);
        let connector = pier_upstream::proxy::https_connector(tls, tcp, true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Sender {
            client,
            proxies,
            keys: SigningKeys::new(default_secret, endpoint_secrets),
            timeout,
        })
    }

    /// The request of one attempt, signed at `now_secs` (Unix time).
    pub(crate) fn request(
        &self,
        d: &Delivery,
        attempt: u32,
        now_secs: u64,
    ) -> Result<Request<Full<Bytes>>, String> {
        if let Some(r) = &d.refused {
            return Err(r.clone());
        }
        let uri = check_url(&d.url)?;
        // Checked when the router answered too; again here for entries stored by an
        // older version.
        check_headers(&d.headers).map_err(|e| format!("refused: {e}"))?;
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
        // A plain-http webhook through a proxy with credentials: they are the proxy's
        // (after the router's headers: a router cannot set this one).
        if let Some(auth) = self.proxies.http_authorization(req.uri()) {
            req.headers_mut().insert(PROXY_AUTHORIZATION, auth);
        }
        let headers = req.headers_mut();
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
        headers.remove(TIMESTAMP);
        if let Some(key) = self.keys.for_url(&d.url) {
            let sig = sign_with(key, now_secs, d.event_id, d.id.as_str(), &d.body);
            headers.insert(TIMESTAMP, HeaderValue::from(now_secs));
            headers.insert(
                SIGNATURE,
                HeaderValue::from_str(&sig).expect("hex is a valid header value"),
            );
        }
        Ok(req)
    }

    /// Sends attempt number `attempt` of a delivery.
    pub(crate) async fn send(&self, d: &Delivery, attempt: u32) -> Outcome {
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_secs())
            .unwrap_or(0);
        let req = match self.request(d, attempt, now_secs) {
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

    use crate::delivery::DeliveryRequest;
    use crate::event::Timestamp;
    use crate::signing::signature;

    #[test]
    fn router_headers_are_limited_to_the_allowlist() {
        for ok in [
            ("Content-Type", "application/json"),
            ("content-type", "text/plain; charset=utf-8"),
            ("Authorization", "Bearer s3cret"),
            ("X-Event", "7"),
            ("x-gitlab-token", "a\tb"),
        ] {
            assert_eq!(check_header(ok.0, ok.1), Ok(()), "{ok:?}");
        }
        for name in [
            "X-Pier-Signature",
            "x-pier-timestamp",
            "X-Pier-Event-Id",
            "X-Pier-Delivery",
            "x-pier-anything",
            "Idempotency-Key",
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Cookie",
            "User-Agent",
            "Connection",
            "X-Forwarded-For",
            "X-Real-IP",
            "",
            "X Bad",
            "X-Bad:",
            "X-Bad\r\nHost",
        ] {
            assert!(check_header(name, "v").is_err(), "{name:?} allowed");
        }
        for value in [
            "a\r\nX-Pier-Signature: x",
            "a\nb",
            "a\rb",
            "a\0b",
            "\u{7f}",
            "é",
        ] {
            assert!(check_header("X-Ok", value).is_err(), "{value:?} allowed");
        }
        assert!(check_header("X-Ok", &"a".repeat(MAX_ROUTER_HEADER_VALUE)).is_ok());
        assert!(check_header("X-Ok", &"a".repeat(MAX_ROUTER_HEADER_VALUE + 1)).is_err());
        let many = vec![("X-A".to_owned(), "1".to_owned()); MAX_ROUTER_HEADERS + 1];
        assert!(check_headers(&many).is_err());
        assert!(check_headers(&many[..MAX_ROUTER_HEADERS]).is_ok());
    }

    fn sender(default: Option<&[u8]>, endpoints: &[EndpointSecret]) -> Sender {
        Sender::new(
            Some(rustls::RootCertStore::empty()),
            default,
            endpoints,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn delivery(url: &str, headers: &[(&str, &str)]) -> Delivery {
        let req = DeliveryRequest {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::from_static(b"{\"id\":\"9\"}"),
            refused: None,
        };
        Delivery::new(9, 0, req, Timestamp::from_micros(0))
    }

    fn header<'a>(r: &'a Request<Full<Bytes>>, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn requests_are_signed_with_the_endpoints_secret_and_the_time() {
        let s = sender(
            Some(b"default"),
            &[EndpointSecret {
                url: "http://a.test/hook".into(),
                secret: b"secret-a".to_vec(),
            }],
        );
        let d = delivery("http://a.test/hook", &[("x-event", "9")]);
        let r = s.request(&d, 2, 1_700_000_000).unwrap();
        assert_eq!(header(&r, "x-pier-timestamp"), Some("1700000000"));
        assert_eq!(header(&r, "x-pier-event-id"), Some("9"));
        assert_eq!(header(&r, "x-pier-delivery"), Some(d.id.as_str()));
        assert_eq!(header(&r, "idempotency-key"), Some(d.id.as_str()));
        assert_eq!(header(&r, "x-pier-attempt"), Some("2"));
        assert_eq!(header(&r, "x-event"), Some("9"));
        let want = signature(b"secret-a", 1_700_000_000, 9, d.id.as_str(), &d.body);
        assert_eq!(header(&r, "x-pier-signature"), Some(want.as_str()));
        // another URL: the default secret
        let d = delivery("http://b.test/hook", &[]);
        let r = s.request(&d, 1, 5).unwrap();
        let want = signature(b"default", 5, 9, d.id.as_str(), &d.body);
        assert_eq!(header(&r, "x-pier-signature"), Some(want.as_str()));
        // no secret at all: neither signature nor timestamp
        let r = sender(None, &[]).request(&d, 1, 5).unwrap();
        assert_eq!(header(&r, "x-pier-signature"), None);
        assert_eq!(header(&r, "x-pier-timestamp"), None);
    }

    #[test]
    fn forged_headers_are_never_sent() {
        let s = sender(Some(b"k"), &[]);
        for (name, value) in [
            ("X-Pier-Signature", "sha256=forged"),
            ("X-Pier-Timestamp", "1"),
            ("Idempotency-Key", "x"),
            ("Host", "elsewhere.test"),
            ("X-Ok", "a\r\nX-Pier-Signature: forged"),
        ] {
            let d = delivery("http://a.test/hook", &[(name, value)]);
            let e = s.request(&d, 1, 5).unwrap_err();
            assert!(e.starts_with("refused: "), "{name}: {e}");
        }
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
