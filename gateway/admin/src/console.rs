//! The operator console: a single-page app at `/console` on the admin listener.
//!
//! Its three files (`gateway/admin/console/`: plain HTML, JavaScript and CSS, no build
//! step) are compiled into the binary. They need no credentials: the page asks for a
//! username and password and sends them with each call to the admin API. Every path
//! under `/console/` that is not an asset answers the page itself (routes live in the
//! URL fragment, so a reload or a bookmark lands on the page).

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// Nothing but this listener: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's answer to `method path`, or `None` when the path is not the console's.
pub fn serve(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/console")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::from_static(b"method not allowed\n")));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let (body, content_type) = match rest {
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => (INDEX_HTML, "text/html; charset=utf-8"),
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary: let the browser check each time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(r: &Response<Full<Bytes>>) -> &str {
        r.headers()[header::CONTENT_TYPE].to_str().unwrap()
    }

    #[test]
    fn assets_have_their_content_types() {
        let get = |p: &str| serve(&Method::GET, p).unwrap_or_else(|| panic!("{p} not served"));
        assert!(content_type(&get("/console/app.js")).starts_with("text/javascript"));
        assert!(content_type(&get("/console/app.css")).starts_with("text/css"));
        for page in [
            "/console",
            "/console/",
            "/console/index.html",
            "/console/x/y",
        ] {
            let r = get(page);
            assert_eq!(r.status(), StatusCode::OK, "{page}");
            assert!(content_type(&r).starts_with("text/html"), "{page}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
    }

    #[test]
    fn other_paths_and_methods() {
        assert!(serve(&Method::GET, "/consoles").is_none());
        assert!(serve(&Method::GET, "/metrics").is_none());
        let r = serve(&Method::POST, "/console/").unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for url in ["/console/app.js", "/console/app.css"] {
            assert!(INDEX_HTML.contains(url), "index.html does not load {url}");
        }
        // The SVG namespace is a name, not a request.
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
