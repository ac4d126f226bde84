//! Pier's HTTP face: the OCI distribution API as a hyper service. Requests are parsed into
//! a [`route::Route`], handled against the core [`pier_core::Registry`], and every failure
//! leaves through [`error::ApiError::into_response`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod access;
pub mod activity;
pub mod auth;
pub mod body;
pub mod client;
pub mod conn;
pub mod error;
pub mod events;
pub mod fleet;
mod handlers;
pub mod metrics;
pub mod query;
pub mod range;
pub mod ready;
pub mod route;
pub mod starting;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pier_core::{Mirror, Registry};

pub use auth::{AccessControl, ConnInfo};
pub use body::RespBody;
pub use client::{ClientAddr, TrustedProxies};
pub use metrics::Metrics;

/// Everything a request handler needs; built once by the binary.
pub struct AppState {
    pub registry: Arc<Registry>,
    /// The pull-through mirror, when upstreams are configured.
    pub mirror: Option<Arc<Mirror>>,
    pub metrics: Arc<Metrics>,
    /// Authentication and authorization; `None` serves everyone (no auth configured).
    pub access: Option<Arc<AccessControl>>,
    /// Where manifest pushes, pulls and deletes are recorded; `None`: nowhere.
    pub events: Option<Arc<dyn events::EventSink>>,
    /// Where manifest pulls are noted (last pull per tag); `None`: nowhere.
    pub pulls: Option<Arc<dyn activity::PullRecorder>>,
    /// Whether this node should get traffic (`/readyz`).
    pub ready: Arc<ready::Readiness>,
    /// How slow an upload's body may be.
    pub body_pace: body::BodyPace,
    request_ids: AtomicU64,
    id_prefix: String,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        mirror: Option<Arc<Mirror>>,
        metrics: Arc<Metrics>,
    ) -> AppState {
        let id_prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        AppState {
            registry,
            mirror,
            metrics,
            access: None,
            events: None,
            pulls: None,
            ready: Arc::new(ready::Readiness::new()),
            body_pace: body::BodyPace::default(),
            request_ids: AtomicU64::new(0),
            id_prefix,
        }
    }

    /// Turns on access control.
    pub fn with_access(mut self, access: Arc<AccessControl>) -> AppState {
        self.access = Some(access);
        self
    }

    /// Records manifest operations in `sink`.
    pub fn with_events(mut self, sink: Arc<dyn events::EventSink>) -> AppState {
        self.events = Some(sink);
        self
    }

    /// Notes every manifest pull in `recorder`.
    pub fn with_pulls(mut self, recorder: Arc<dyn activity::PullRecorder>) -> AppState {
        self.pulls = Some(recorder);
        self
    }

    fn next_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }
}

/// `GET /healthz` and `/readyz` on the registry listener too, so probes need no admin
/// listener reachable from the network.
async fn probe(state: &AppState, req: &Request<Incoming>) -> Option<Response<RespBody>> {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let (status, text) = match req.uri().path() {
        "/healthz" => (http::StatusCode::OK, "ok\n"),
        // What is wrong is logged and shown on the admin listener, not to the network.
        "/readyz" if state.ready.check().await.is_ok() => (http::StatusCode::OK, "ready\n"),
        "/readyz" => (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => return None,
    };
    let mut r = Response::new(body::full(bytes::Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Some(r)
}

/// Whether a task on the blocking pool (where blob and file I/O runs) starts within two
/// seconds: when it does not, blob serving is stuck and the node must leave the
/// balancer, even though the async side still answers.
pub async fn blocking_pool_answers() -> bool {
    let task = tokio::task::spawn_blocking(|| ());
    tokio::time::timeout(std::time::Duration::from_secs(2), task)
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Serves one registry request: dispatch, access log line, metrics.
pub async fn serve(
    state: Arc<AppState>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    if let Some(r) = probe(&state, &req).await {
        return Ok(r);
    }
    let start = Instant::now();
    let in_flight = state.metrics.start();
    let request_id = state.next_request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let received: u64 = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let route = route::parse(&path);
    let (kind, repo) = match &route {
        Ok(r) => (r.kind(), r.repository().map(|n| n.to_string())),
        Err(_) if state.access.is_some() && path == auth::TOKEN_PATH => ("token", None),
        Err(_) if state.access.is_some() && path == auth::REVOKE_PATH => ("revoke", None),
        Err(_) => ("invalid", None),
    };
    req.extensions_mut().insert(conn);
    let mut resp = match (route, &state.access) {
        (Err(_), Some(ac)) if path == auth::TOKEN_PATH => Ok(ac
            .token_endpoint(req, &conn, state.mirror.as_deref())
            .await
            .unwrap_or_else(error::ApiError::into_token_response)),
        (Err(_), Some(ac)) if path == auth::REVOKE_PATH => ac.revoke_endpoint(req, &conn).await,
        (Ok(r), Some(ac)) => {
            // Route first, then authorize the repository whose content is served.
            let place = handlers::place(&state, &r, &req);
            let ns_given = req
                .uri()
                .query()
                .is_some_and(|q| query::parse(q).iter().any(|(k, _)| k == "ns"));
            let served = auth::Served {
                repo: r.repository().map(|n| place.served(n)),
                alias: r.repository().filter(|_| !ns_given),
            };
            match ac.check(&r, served, &mut req, &conn).await {
                Ok(()) => handlers::dispatch(&state, r, place, req).await,
                Err(e) => Err(e),
            }
        }
        (Ok(r), None) => {
            let place = handlers::place(&state, &r, &req);
            handlers::dispatch(&state, r, place, req).await
        }
        // A tag that can't exist is a manifest that isn't there (as distribution and the
        // conformance suite say); only a push by it is an invalid tag.
        (Err(route::RouteError::Reference(_)), _)
            if method == http::Method::GET || method == http::Method::HEAD =>
        {
            let reference = path.rsplit('/').next().unwrap_or_default().to_owned();
            Err(pier_core::CoreError::ManifestUnknown(reference).into())
        }
        (Err(e), _) => Err(e.into()),
    }
    .unwrap_or_else(error::ApiError::into_response);
    let h = resp.headers_mut();
    h.insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("X-Request-Id", v);
    }
    let length = (method != http::Method::HEAD)
        .then(|| resp.headers().get(header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let record = access::Record {
        metrics: state.metrics.clone(),
        in_flight,
        request_id,
        method,
        path,
        route: kind,
        repository: repo,
        status: resp.status().as_u16(),
        received,
        length,
        start,
    };
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        access::Logged::new(body, record).boxed_unsync(),
    ))
}
