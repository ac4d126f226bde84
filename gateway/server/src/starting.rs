//! Before Pier serves: the listeners are bound first and answer while the slow part of
//! starting runs (compiling plugins: a big component, such as a Python one, takes many
//! seconds the first time). `/healthz` answers 200 (the process is alive: a liveness
//! probe must not kill it mid-compile), `/readyz` 503, anything else 503 — an OCI
//! `UNAVAILABLE` error with `Retry-After` on the registry listener — instead of refused
//! connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Connections answered at once while starting; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A connection's whole life (TLS handshake, one request, the answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// What clients are told to wait.
const RETRY_AFTER: &str = "5";

#[derive(Clone, Copy)]
enum Side {
    Registry,
    Admin,
}

/// Runs `work` to completion, answering on both listeners meanwhile.
pub async fn answer_while<F: Future>(
    registry: &TcpListener,
    admin: &TcpListener,
    tls: Option<TlsAcceptor>,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (accepted, side) = tokio::select! {
            out = &mut work => return out,
            r = registry.accept() => (r, Side::Registry),
            r = admin.accept() => (r, Side::Admin),
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the client retries
        };
        let tls = match side {
            Side::Registry => tls.clone(),
            Side::Admin => None,
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, serve(stream, tls, side)).await;
        });
    }
}

async fn serve(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>, side: Side) {
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
        Ok::<_, std::convert::Infallible>(answer(side, req.method(), req.uri().path()))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    match tls {
        Some(acceptor) => {
            if let Ok(s) = acceptor.accept(stream).await {
                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
            }
        }
        None => {
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        }
    }
}

fn answer(side: Side, method: &http::Method, path: &str) -> Response<Full<Bytes>> {
    let probe = matches!(*method, http::Method::GET | http::Method::HEAD);
    let (status, content_type, body): (_, _, Bytes) = match (side, path) {
        (_, "/healthz") if probe => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        (_, "/readyz") if probe => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "starting\n".into(),
        ),
        (Side::Registry, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            serde_json::json!({"errors": [{
                "code": "UNAVAILABLE",
                "message": "the registry is starting (loading its plugins); retry shortly",
                "detail": null,
            }]})
            .to_string()
            .into(),
        ),
        (Side::Admin, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "starting: loading plugins\n".into(),
        ),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static(RETRY_AFTER),
        );
    }
    r
}

/// Compiles every configured plugin into the compile cache (`ROOT/pier/plugin-cache`),
/// so that loading them afterwards only reads the cache. Problems are left to the load
/// that follows, which reports them with the plugin's name and configuration.
pub async fn precompile(config: &crate::config::Config) {
    if config.plugins.is_empty() {
        return;
    }
    #[cfg(feature = "failpoints")]
    if let Some(ms) = fail::eval("plugin-precompile", |ms| {
        ms.and_then(|m| m.parse::<u64>().ok()).unwrap_or(0)
    }) {
        // `FAILPOINTS=plugin-precompile=return(MS)`: a compile that takes MS longer.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Ok(rt) = crate::access::runtime(&config.root) else {
        return;
    };
    for p in &config.plugins {
        let t = std::time::Instant::now();
        match rt.precompile(&p.name, &p.path).await {
            Ok(true) => tracing::info!(
                plugin = %p.name,
                seconds = t.elapsed().as_secs_f64(),
                "plugin compiled into the compile cache"
            ),
            Ok(false) => {}
            Err(e) => tracing::debug!(plugin = %p.name, error = %e, "precompiling failed"),
        }
    }
}
