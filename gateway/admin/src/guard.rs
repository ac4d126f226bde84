//! The admin listener against browsers: a web page open in an operator's browser can send
//! requests to `127.0.0.1:5001` (cross-site "simple" requests need no CORS preflight) and,
//! by DNS rebinding, read the answers. Before anything else answers:
//!
//! - `Host` must be an IP literal, `localhost`, or a configured `admin_hostnames` entry
//!   (421 otherwise): rebinding needs a hostname of the attacker's, while probes and
//!   operators use addresses.
//! - A request carrying an `Origin` other than the listener's own is refused (403):
//!   browsers send `Origin` on every cross-origin request and every non-GET one.
//! - A request body of `POST`/`PUT`/`PATCH` must be `application/json` (415): the types a
//!   page may send without a preflight (`text/plain`, forms) never reach a handler.
//!
//! The path is normalized (`//x`, `/./x`, `/a/../x` are `/x`) before the router or any
//! credentials check sees it, so both look at the same path.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

/// What the admin listener accepts from browsers; built from the configuration.
#[derive(Debug, Clone, Default)]
pub struct AdminGuard {
    /// Host names (without port) the admin listener answers to besides IP literals and
    /// `localhost`, lower case.
    pub hostnames: Vec<String>,
}

impl AdminGuard {
    pub fn new(hostnames: &[String]) -> AdminGuard {
        AdminGuard {
            hostnames: hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// `Err` with the refusal when the request must not reach the admin API.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let headers = req.headers();
        let host = match headers.get(header::HOST).map(|h| h.to_str()) {
            // HTTP/1.0 probes may send none; every browser does.
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(_)) => return Err(refuse(StatusCode::BAD_REQUEST, "invalid Host header")),
        };
        let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()));
        if let Some(h) = host
            && !self.host_allowed(h)
        {
            return Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "Host {h:?} is not an address of this admin listener: use an IP address, \
                     localhost, or add the name to admin_hostnames"
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = host.is_some_and(|h| {
                origin
                    .to_str()
                    .is_ok_and(|o| o == format!("http://{h}") || o == format!("https://{h}"))
            });
            if !own {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "cross-origin requests to the admin API are refused",
                ));
            }
        }
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
            && has_body(headers)
            && !is_json(headers)
        {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "admin API request bodies must be Content-Type: application/json",
            ));
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok() || name == "localhost" || self.hostnames.contains(&name)
    }
}

/// `host:port`, `[v6]:port`, `[v6]`, `host` → the host part.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Why a request was refused, and its answer.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "error": self.message })).unwrap_or_default();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn refuse(status: StatusCode, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_owned(),
    }
}

/// The path with empty and `.` segments dropped and `..` applied (never above the root);
/// a trailing `/` is kept (the API distinguishes `/repositories/`). Percent escapes are
/// left alone: the router decodes the segments it takes as names.
pub fn normalize_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if path.ends_with('/') && p != "/" {
        p.push('/');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/api/v1/gc");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(g: &AdminGuard, r: &Request<()>) -> u16 {
        match g.check(r) {
            Ok(()) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn hosts() {
        let g = AdminGuard::new(&["Pier-Admin.internal".to_owned()]);
        for ok in [
            "127.0.0.1:5001",
            "127.0.0.1",
            "[::1]:5001",
            "[::1]",
            "localhost:5001",
            "LOCALHOST",
            "10.1.2.3:80",
            "pier-admin.internal:5001",
        ] {
            assert_eq!(status(&g, &req("GET", &[("host", ok)])), 200, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5001",
            "127.0.0.1.nip.io:5001",
            "localhost.evil",
        ] {
            assert_eq!(status(&g, &req("GET", &[("host", bad)])), 421, "{bad}");
        }
        assert_eq!(
            status(&g, &req("GET", &[])),
            200,
            "no Host (HTTP/1.0 probe)"
        );
    }

    #[test]
    fn origins() {
        let g = AdminGuard::default();
        let h = ("host", "127.0.0.1:5001");
        assert_eq!(status(&g, &req("POST", &[h])), 200);
        assert_eq!(
            status(&g, &req("POST", &[h, ("origin", "http://127.0.0.1:5001")])),
            200
        );
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:5002",
            "http://127.0.0.1",
        ] {
            assert_eq!(
                status(&g, &req("POST", &[h, ("origin", bad)])),
                403,
                "{bad}"
            );
            assert_eq!(status(&g, &req("GET", &[h, ("origin", bad)])), 403, "{bad}");
        }
    }

    #[test]
    fn bodies_are_json() {
        let g = AdminGuard::default();
        let h = ("host", "127.0.0.1:5001");
        let len = ("content-length", "12");
        assert_eq!(status(&g, &req("POST", &[h, len])), 415);
        assert_eq!(
            status(&g, &req("PUT", &[h, len, ("content-type", "text/plain")])),
            415
        );
        assert_eq!(
            status(
                &g,
                &req(
                    "PATCH",
                    &[
                        h,
                        ("transfer-encoding", "chunked"),
                        ("content-type", "application/x-www-form-urlencoded")
                    ]
                )
            ),
            415
        );
        assert_eq!(
            status(
                &g,
                &req(
                    "POST",
                    &[h, len, ("content-type", "application/json; charset=utf-8")]
                )
            ),
            200
        );
        assert_eq!(status(&g, &req("POST", &[h, ("content-length", "0")])), 200);
        assert_eq!(status(&g, &req("DELETE", &[h, len])), 200);
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize_path("//replication/jobs"), "/replication/jobs");
        assert_eq!(
            normalize_path("/./events//deliveries"),
            "/events/deliveries"
        );
        assert_eq!(
            normalize_path("/metrics/../replication/jobs"),
            "/replication/jobs"
        );
        assert_eq!(normalize_path("/../../x"), "/x");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("//"), "/");
        assert_eq!(
            normalize_path("/api/v1/repositories/"),
            "/api/v1/repositories/"
        );
        assert_eq!(
            normalize_path("/api/v1/repositories/a%2Fb/-/tags"),
            "/api/v1/repositories/a%2Fb/-/tags"
        );
    }
}
