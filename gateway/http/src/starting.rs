//! Before Pier serves: its listeners are bound first and answer while the slow part of
//! starting runs (compiling plugins: a big component, such as a Python one, takes many
//! seconds the first time). `/healthz` answers 200 (the process is alive: a liveness
//! probe must not kill it mid-compile), `/readyz` 503, anything else 503 — the registry's
//! [`ApiError::Starting`] (`UNAVAILABLE`, `Retry-After`) — instead of refused
//! connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::body::{RespBody, full};
use crate::error::ApiError;

/// Connections answered at once while starting; more are closed (clients retry).
const MAX_CONNECTIONS: usize = 64;
/// A connection's whole life (TLS handshake, one request, the answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Side {
    Registry,
    Admin,
}

/// Runs `work` to completion, answering on both listeners meanwhile (with TLS on the
/// registry's when `tls` is given).
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
            continue;
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

fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn answer(side: Side, method: &http::Method, path: &str) -> Response<RespBody> {
    let probe = matches!(*method, http::Method::GET | http::Method::HEAD);
    let mut r = match (side, path) {
        (_, "/healthz") if probe => text(StatusCode::OK, "ok\n"),
        (_, "/readyz") if probe => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        (Side::Registry, _) => ApiError::Starting.into_response(),
        (Side::Admin, _) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: loading plugins\n",
        ),
    };
    // Every refusal says when to come back, as the registry's error does.
    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(header::HeaderValue::from_static("5"));
    }
    r
}
