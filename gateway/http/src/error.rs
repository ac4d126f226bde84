//! Every failure of a registry request, and the one function that turns it into the OCI
//! error JSON.

use http::{HeaderValue, Method, Response, StatusCode, header};
use pier_core::CoreError;
use pier_oci::{DigestError, ErrorCode, NameError};
use serde_json::json;

use crate::body::{RespBody, full};
use crate::range::RangeError;
use crate::route::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("method {0} is not allowed on this endpoint")]
    MethodNotAllowed(Method),
    #[error("the digest query parameter is required to complete an upload")]
    MissingDigest,
    #[error("invalid digest in query: {0}")]
    Digest(#[source] DigestError),
    #[error("invalid repository name in query: {0}")]
    Name(#[source] NameError),
    #[error("invalid page size n={0:?}: expected a non-negative integer")]
    BadPageSize(String),
    #[error("manifest body is over the 4 MiB limit")]
    ManifestTooLarge,
    #[error("chunk Content-Range {start}-{end} does not match its {len} byte body")]
    ChunkLengthMismatch { start: u64, end: u64, len: u64 },
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("repository {0} is a read-only mirror of an upstream registry")]
    MirrorReadOnly(String),
    #[error("the request has no valid Host header to name the token service by")]
    BadHost,
    #[error("repository {repo}: ?ns={ns} names no upstream registry of this mirror")]
    NamespaceUnknown { repo: String, ns: String },
    /// 401 with a `WWW-Authenticate` challenge (none when `challenge` is empty);
    /// `denied`: the credentials are valid but don't grant the access (code DENIED).
    #[error("{message}")]
    Unauthorized {
        challenge: String,
        message: String,
        denied: bool,
    },
    /// 403: the authorizer refused; the message is its reason.
    #[error("requested access to the resource is denied: {0}")]
    Denied(String),
    #[error(transparent)]
    Auth(#[from] pier_auth::AuthError),
    /// A per-client rate limit refused the call (token revocations).
    #[error("too many {what} from this address; retry in {} s", retry_after_secs(*retry_after))]
    RateLimited {
        what: &'static str,
        retry_after: std::time::Duration,
    },
    /// The process is starting (compiling its plugins) and serves nothing yet.
    #[error("the registry is starting (loading its plugins); retry shortly")]
    Starting,
    /// The operation took effect but its event could not be recorded.
    #[error("the operation was stored but its event could not be recorded ({0}); retry it")]
    EventNotRecorded(String),
}

/// `Retry-After` seconds: rounded up, at least 1.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// What the wire says for an error: status, code, message, detail and extra headers.
fn classify(
    err: &ApiError,
) -> (
    StatusCode,
    ErrorCode,
    serde_json::Value,
    Vec<(&'static str, String)>,
) {
    use ErrorCode as C;
    let none = serde_json::Value::Null;
    let by_code =
        |c: C| StatusCode::from_u16(c.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let simple = |c: C| (by_code(c), c, serde_json::Value::Null, Vec::new());
    match err {
        ApiError::Core(e) => match e {
            CoreError::NameUnknown(n) => (
                by_code(C::NameUnknown),
                C::NameUnknown,
                json!({"name": n.as_str()}),
                vec![],
            ),
            CoreError::BlobUnknown(d) => (
                by_code(C::BlobUnknown),
                C::BlobUnknown,
                json!({"digest": d}),
                vec![],
            ),
            CoreError::ManifestUnknown(r) => (
                by_code(C::ManifestUnknown),
                C::ManifestUnknown,
                json!({"reference": r}),
                vec![],
            ),
            CoreError::ManifestBlobUnknown(d) => (
                by_code(C::ManifestBlobUnknown),
                C::ManifestBlobUnknown,
                json!({"digest": d}),
                vec![],
            ),
            CoreError::ManifestInvalid(_) => simple(C::ManifestInvalid),
            CoreError::ManifestTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, C::SizeInvalid, none, vec![])
            }
            CoreError::DigestMismatch { expected, computed } => (
                by_code(C::DigestInvalid),
                C::DigestInvalid,
                json!({"expected": expected, "computed": computed}),
                vec![],
            ),
            CoreError::UploadUnknown(_) => simple(C::BlobUploadUnknown),
            CoreError::ChunkOutOfOrder { expected, .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                C::RangeInvalid,
                json!({"offset": expected}),
                vec![("Range", format!("0-{}", expected.saturating_sub(1)))],
            ),
            CoreError::RangeNotSatisfiable { size } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                C::RangeInvalid,
                json!({"size": size}),
                vec![("Content-Range", format!("bytes */{size}"))],
            ),
            CoreError::Body(_) => simple(C::BlobUploadInvalid),
            // A backend (S3, Redis) that does not answer now may answer a retry.
            CoreError::Storage(pier_storage::StorageError::Unavailable { .. })
            | CoreError::Coordination(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                C::Unavailable,
                none,
                vec![("Retry-After", "1".to_owned())],
            ),
            CoreError::Storage(_) => simple(C::Unknown),
            // Only fleet peers get this; they ask their next source (never a cool-down).
            CoreError::PeerBusy(_) => (StatusCode::CONFLICT, C::Unavailable, none, vec![]),
            CoreError::Denied { policy, .. } => (
                by_code(C::Denied),
                C::Denied,
                json!({ "policy": policy }),
                vec![],
            ),
            CoreError::QuotaExceeded {
                project,
                used,
                limit,
                needed,
            } => (
                by_code(C::Denied),
                C::Denied,
                json!({"project": project, "used": used, "limit": limit, "needed": needed}),
                vec![],
            ),
            CoreError::QuotaStore(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                C::Unavailable,
                none,
                vec![("Retry-After", "1".to_owned())],
            ),
            CoreError::PolicyFailed(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                C::Unavailable,
                none,
                vec![("Retry-After", "1".to_owned())],
            ),
            CoreError::Upstream(u) => match u {
                pier_upstream::UpstreamError::TooManyRequests { retry_after } => (
                    by_code(C::TooManyRequests),
                    C::TooManyRequests,
                    none,
                    retry_after
                        .map(|d| vec![("Retry-After", d.as_secs().max(1).to_string())])
                        .unwrap_or_default(),
                ),
                pier_upstream::UpstreamError::Timeout(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, C::Unavailable, none, vec![])
                }
                pier_upstream::UpstreamError::NotFound => {
                    (StatusCode::NOT_FOUND, C::NameUnknown, none, vec![])
                }
                _ => (StatusCode::BAD_GATEWAY, C::Unavailable, none, vec![]),
            },
        },
        ApiError::Route(e) => match e {
            RouteError::NotFound => (StatusCode::NOT_FOUND, C::Unsupported, none, vec![]),
            RouteError::Name(_) => simple(C::NameInvalid),
            RouteError::Reference(_) => simple(C::TagInvalid),
            RouteError::Digest(_) => simple(C::DigestInvalid),
            RouteError::UploadUnknown(_) => simple(C::BlobUploadUnknown),
        },
        ApiError::Range(_) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            C::RangeInvalid,
            none,
            vec![],
        ),
        ApiError::MethodNotAllowed(_) => simple(C::Unsupported),
        ApiError::MissingDigest | ApiError::Digest(_) => simple(C::DigestInvalid),
        ApiError::Name(_) => simple(C::NameInvalid),
        ApiError::BadPageSize(_) => simple(C::PaginationNumberInvalid),
        ApiError::ManifestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, C::SizeInvalid, none, vec![]),
        ApiError::ChunkLengthMismatch { .. } => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            C::RangeInvalid,
            none,
            vec![],
        ),
        ApiError::Body(_) => simple(C::BlobUploadInvalid),
        ApiError::MirrorReadOnly(_) => simple(C::Unsupported),
        ApiError::BadHost => (StatusCode::BAD_REQUEST, C::Unsupported, none, vec![]),
        ApiError::NamespaceUnknown { .. } => (StatusCode::NOT_FOUND, C::NameUnknown, none, vec![]),
        ApiError::Unauthorized {
            challenge, denied, ..
        } => (
            StatusCode::UNAUTHORIZED,
            if *denied { C::Denied } else { C::Unauthorized },
            none,
            if challenge.is_empty() {
                vec![]
            } else {
                vec![("WWW-Authenticate", challenge.clone())]
            },
        ),
        ApiError::Denied(_) => simple(C::Denied),
        ApiError::RateLimited { retry_after, .. } => (
            by_code(C::TooManyRequests),
            C::TooManyRequests,
            none,
            vec![("Retry-After", retry_after_secs(*retry_after).to_string())],
        ),
        ApiError::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            C::Unavailable,
            none,
            vec![("Retry-After", "5".to_owned())],
        ),
        ApiError::EventNotRecorded(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            C::Unavailable,
            none,
            vec![("Retry-After", "1".to_owned())],
        ),
        ApiError::Auth(e) => match e {
            pier_auth::AuthError::Policy(_) | pier_auth::AuthError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                C::Unavailable,
                none,
                vec![("Retry-After", "1".to_owned())],
            ),
            pier_auth::AuthError::Throttled { retry_after } => (
                by_code(C::TooManyRequests),
                C::TooManyRequests,
                none,
                vec![("Retry-After", retry_after_secs(*retry_after).to_string())],
            ),
            pier_auth::AuthError::InvalidToken(_) | pier_auth::AuthError::TokenExpired => {
                (StatusCode::UNAUTHORIZED, C::Unauthorized, none, vec![])
            }
            pier_auth::AuthError::Scope { .. } | pier_auth::AuthError::Invalid(_) => {
                (StatusCode::BAD_REQUEST, C::Unsupported, none, vec![])
            }
            _ => simple(C::Unknown),
        },
    }
}

/// The full error chain, for messages and logs.
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = e.source();
    }
    s
}

impl ApiError {
    /// Whether Pier (not the client) is at fault.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ApiError::Core(CoreError::Storage(_))
                | ApiError::EventNotRecorded(_)
                | ApiError::Auth(
                    pier_auth::AuthError::Io { .. }
                        | pier_auth::AuthError::Format { .. }
                        | pier_auth::AuthError::Key(_)
                )
        )
    }

    /// Whether an upstream registry is at fault.
    pub fn is_upstream(&self) -> bool {
        matches!(self, ApiError::Core(CoreError::Upstream(_)))
    }

    /// The token endpoint's error response: OAuth2's `error` and `error_description`
    /// (RFC 6749 §5.2) beside the registry's `errors`, which docker's GET flow reads.
    pub fn into_token_response(self) -> Response<RespBody> {
        let (oauth, status) = match &self {
            ApiError::Unauthorized { .. } => ("invalid_grant", None),
            ApiError::Body(_) => ("invalid_request", Some(StatusCode::BAD_REQUEST)),
            ApiError::Auth(pier_auth::AuthError::Scope { .. }) => ("invalid_scope", None),
            ApiError::Auth(pier_auth::AuthError::Invalid(m)) if m.contains("grant_type") => {
                ("unsupported_grant_type", None)
            }
            ApiError::Auth(pier_auth::AuthError::Invalid(_)) => ("invalid_request", None),
            ApiError::MethodNotAllowed(_) => ("invalid_request", None),
            // OAuth2 has no code of its own for "slow down" at the token endpoint; the
            // status (429) and Retry-After say it.
            ApiError::Auth(pier_auth::AuthError::Throttled { .. }) => {
                ("temporarily_unavailable", None)
            }
            e if e.is_internal() => ("server_error", None),
            _ => ("temporarily_unavailable", None),
        };
        let description = if self.is_internal() {
            "internal error; see the server log".to_owned()
        } else {
            chain(&self)
        };
        let resp = self.into_response();
        let (mut parts, _) = resp.into_parts();
        if let Some(s) = status {
            parts.status = s;
        }
        let code = match parts.status {
            StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
            StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
            StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
            StatusCode::METHOD_NOT_ALLOWED => "UNSUPPORTED",
            s if s.is_server_error() => "UNKNOWN",
            _ => "UNSUPPORTED",
        };
        let body = json!({
            "error": oauth,
            "error_description": description,
            "errors": [{"code": code, "message": description}],
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, full(bytes.into()))
    }

    /// The OCI error response for this error.
    pub fn into_response(self) -> Response<RespBody> {
        let (status, code, detail, headers) = classify(&self);
        let message = if self.is_internal() {
            tracing::error!(error = %chain(&self), "internal error");
            "internal error; see the server log".to_owned()
        } else {
            if self.is_upstream() {
                tracing::warn!(error = %chain(&self), "upstream registry failed");
            }
            if let ApiError::Auth(pier_auth::AuthError::Policy(p)) = &self {
                tracing::error!(plugin = %p.plugin, kind = p.kind.as_str(), error = %p.message, "authorization failed closed");
            }
            chain(&self)
        };
        let mut entry = json!({"code": code.as_str(), "message": message});
        if !detail.is_null() {
            entry["detail"] = detail;
        }
        let body = serde_json::to_vec(&json!({"errors": [entry]})).unwrap_or_default();
        let mut resp = Response::new(full(body.into()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        resp
    }
}
