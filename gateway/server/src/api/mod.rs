//! The admin REST API (`/api/v1/...` on the admin listener), described by
//! `docs/openapi.json`, which `GET /api/v1/openapi.json` serves.
//!
//! Repository names contain `/`, and a component may be any word (`tags`, `manifests`),
//! so the name ends at the first `/-/` component: a lone `-` is not a valid name
//! component. `{name}` may also come percent-encoded (`team%2Fapp`).
//!
//! ```text
//! GET    /api/v1/openapi.json                         (no credentials needed)
//! GET    /api/v1/repositories?q=&n=&last=
//! GET    /api/v1/repositories/{name}/-/tags?n=&last=
//! GET    /api/v1/repositories/{name}/-/manifests/{reference}
//! DELETE /api/v1/repositories/{name}/-/manifests/{digest}
//! DELETE /api/v1/repositories/{name}/-/tags/{tag}
//! GET    /api/v1/plugins
//! GET    /api/v1/mirror
//! ```
//!
//! Every call but the document needs a system administrator's basic credentials when
//! access control is on; every change is logged as an `audit` line.

mod repos;
mod status;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pier_core::CoreError;
use serde_json::{Value, json};

use crate::admin::AdminState;

/// The OpenAPI document, kept in the repository.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The most items one page may hold.
pub const MAX_PAGE: usize = 1000;
/// The page size when `n` is not given.
pub const DEFAULT_PAGE: usize = 100;

/// Why an API call failed; [`ApiFailure::response`] is the one place it becomes JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    #[error("internal error; see the server log")]
    Internal(#[source] CoreError),
    /// The change took effect but its event could not be recorded.
    #[error("the change was made but its event could not be recorded ({0}); retry it")]
    Unavailable(String),
}

impl From<CoreError> for ApiFailure {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NameUnknown(_)
            | CoreError::ManifestUnknown(_)
            | CoreError::BlobUnknown(_) => ApiFailure::NotFound(e.to_string()),
            other => ApiFailure::Internal(other),
        }
    }
}

impl ApiFailure {
    fn response(self) -> Response<Full<Bytes>> {
        let status = match &self {
            ApiFailure::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiFailure::NotFound(_) => StatusCode::NOT_FOUND,
            ApiFailure::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiFailure::Internal(e) => {
                tracing::error!(error = %chain(e), "admin API failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiFailure::Unavailable(e) => {
                tracing::error!(error = %e, "admin API change not recorded as an event");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut r = json_response(status, &json!({ "error": self.to_string() }));
        if let ApiFailure::MethodNotAllowed { allow, .. } = self {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What a request path names, before its method is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    OpenApi,
    Repositories,
    /// `{name}/-/tags`
    Tags(String),
    /// `{name}/-/tags/{tag}`
    Tag(String, String),
    /// `{name}/-/manifests/{reference}`
    Manifest(String, String),
    Plugins,
    Mirror,
}

impl Route {
    /// Parses the path after `/api/v1`; `None` for paths the API doesn't have.
    fn parse(rest: &str) -> Option<Route> {
        match rest {
            "/openapi.json" => return Some(Route::OpenApi),
            "/repositories" | "/repositories/" => return Some(Route::Repositories),
            "/plugins" => return Some(Route::Plugins),
            "/mirror" => return Some(Route::Mirror),
            _ => {}
        }
        let repo_path = rest.strip_prefix("/repositories/")?;
        let (name, tail) = repo_path.split_once("/-/")?;
        let name = percent_decode(name)?;
        let mut parts = tail.splitn(2, '/');
        let kind = parts.next()?;
        let arg = parts.next().map(percent_decode);
        match (kind, arg) {
            ("tags", None) => Some(Route::Tags(name)),
            ("tags", Some(Some(t))) if !t.is_empty() => Some(Route::Tag(name, t)),
            ("manifests", Some(Some(r))) if !r.is_empty() => Some(Route::Manifest(name, r)),
            _ => None,
        }
    }

    /// The query parameters this path takes; others are refused (400), so a typo
    /// doesn't silently list everything.
    fn params(&self) -> &'static [&'static str] {
        match self {
            Route::Repositories => &["q", "n", "last"],
            Route::Tags(_) => &["n", "last"],
            _ => &[],
        }
    }

    /// The methods this path answers (`Allow`).
    fn allow(&self) -> &'static str {
        match self {
            Route::Tag(..) => "DELETE",
            Route::Manifest(..) => "GET, DELETE",
            _ => "GET",
        }
    }
}

/// Decodes `%XX` escapes of a path segment; `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| {
            b.get(j)
                .and_then(|c| (*c as char).to_digit(16))
                .map(|v| v as u8)
        };
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for `next` links).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Who made a call, for audit lines.
pub(crate) struct Caller {
    pub actor: String,
    pub client: String,
}

/// Answers a request under `/api/`.
pub async fn serve(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(route) = path.strip_prefix("/api/v1").and_then(Route::parse) else {
        return ApiFailure::NotFound(format!("no admin API endpoint at {path}")).response();
    };
    let method = req.method().clone();
    let allowed = route.allow().split(", ").any(|m| m == method.as_str());
    if !allowed {
        return ApiFailure::MethodNotAllowed {
            method,
            path,
            allow: route.allow(),
        }
        .response();
    }
    if route == Route::OpenApi {
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let client = req
        .extensions()
        .get::<std::net::SocketAddr>()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let actor = match &state.access {
        Some(ac) => match ac.check_admin(req.headers(), &client).await {
            Ok(c) => c.username,
            Err(e) => return refused(e),
        },
        None => "anonymous (access control off)".to_owned(),
    };
    let caller = Caller { actor, client };
    let query = pier_http::query::parse(req.uri().query().unwrap_or(""));
    if let Some((k, _)) = query
        .iter()
        .find(|(k, _)| !route.params().contains(&k.as_str()))
    {
        return ApiFailure::BadRequest(format!(
            "unknown query parameter {k:?}; this endpoint takes {:?}",
            route.params()
        ))
        .response();
    }
    let result = match route {
        Route::OpenApi => unreachable!("answered above"),
        Route::Repositories => repos::list(state, &query).await,
        Route::Tags(name) => repos::tags(state, &name, &query).await,
        Route::Manifest(name, reference) if method == Method::GET => {
            repos::manifest(state, &name, &reference).await
        }
        Route::Manifest(name, digest) => {
            repos::delete_manifest(state, &caller, &name, &digest).await
        }
        Route::Tag(name, tag) => repos::delete_tag(state, &caller, &name, &tag).await,
        Route::Plugins => Ok(status::plugins(state)),
        Route::Mirror => Ok(status::mirror(state)),
    };
    result.unwrap_or_else(ApiFailure::response)
}

/// A refused login as JSON, keeping the challenge and Retry-After of the registry's answer.
fn refused(e: pier_http::error::ApiError) -> Response<Full<Bytes>> {
    let message = e.to_string();
    let (parts, _) = e.into_response().into_parts();
    let mut r = json_response(parts.status, &json!({ "error": message }));
    for (k, v) in parts
        .headers
        .iter()
        .filter(|(k, _)| *k == header::WWW_AUTHENTICATE || *k == header::RETRY_AFTER)
    {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// `n` and `last` of a listing: `n` in 1..=1000 (default 100).
pub(crate) fn page_params(
    query: &[(String, String)],
) -> Result<(usize, Option<String>), ApiFailure> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let n = match get("n") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiFailure::BadRequest(format!(
                    "invalid page size n={v:?}: expected an integer from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    Ok((n, get("last")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_names_with_slashes_and_reserved_words() {
        let r = |p: &str| Route::parse(p);
        assert_eq!(r("/repositories"), Some(Route::Repositories));
        assert_eq!(r("/openapi.json"), Some(Route::OpenApi));
        assert_eq!(
            r("/repositories/team/app/-/tags"),
            Some(Route::Tags("team/app".into()))
        );
        assert_eq!(
            r("/repositories/a/tags/manifests/-/tags/tags"),
            Some(Route::Tag("a/tags/manifests".into(), "tags".into()))
        );
        assert_eq!(
            r("/repositories/team%2Fapp/-/manifests/sha256%3Aab"),
            Some(Route::Manifest("team/app".into(), "sha256:ab".into()))
        );
        assert_eq!(r("/repositories/a/-/tags/"), None);
        assert_eq!(r("/repositories/a/-/manifests"), None);
        assert_eq!(r("/repositories/a/-/blobs/x"), None);
        assert_eq!(r("/repositories/a/tags"), None);
        assert_eq!(r("/nothing"), None);
        assert_eq!(
            Route::Manifest("a".into(), "b".into()).allow(),
            "GET, DELETE"
        );
    }

    #[test]
    fn page_size_is_bounded() {
        let q = |v: &str| vec![("n".to_owned(), v.to_owned())];
        assert_eq!(page_params(&[]).unwrap().0, DEFAULT_PAGE);
        assert_eq!(page_params(&q("1000")).unwrap().0, 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            assert!(page_params(&q(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_document_is_json_with_every_path() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json parses");
        assert_eq!(doc["openapi"], "3.0.3");
        for p in [
            "/api/v1/openapi.json",
            "/api/v1/repositories",
            "/api/v1/repositories/{name}/-/tags",
            "/api/v1/repositories/{name}/-/tags/{tag}",
            "/api/v1/repositories/{name}/-/manifests/{reference}",
            "/api/v1/plugins",
            "/api/v1/mirror",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing from the document");
        }
    }
}
