//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers),
//! `/readyz` (storage is usable and the server is not shutting down).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pier_http::Metrics;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub mirror: Option<Arc<pier_core::Mirror>>,
    pub ready: AtomicBool,
    pub root: PathBuf,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

pub async fn serve(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut body = state.metrics.render();
            if let Some(m) = &state.mirror {
                body.push_str(&m.render_metrics());
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/healthz" => text(StatusCode::OK, plain, "ok\n"),
        "/readyz" => {
            let storage_ok = tokio::fs::metadata(&state.root)
                .await
                .is_ok_and(|m| m.is_dir());
            if state.ready.load(Ordering::Relaxed) && storage_ok {
                text(StatusCode::OK, plain, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, plain, "not ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, plain, "not found\n"),
    })
}
