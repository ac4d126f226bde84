//! A webhook receiver on a real socket, recording every request.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pier_events::{Event, EventDraft, EventKind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn key(&self) -> String {
        self.header("idempotency-key").to_owned()
    }

    pub fn event_id(&self) -> u64 {
        self.header("x-pier-event-id").parse().unwrap()
    }

    /// Whether the request verifies with `secret` (signature, timestamp within 5 min).
    pub fn verify(&self, secret: &[u8]) -> Result<(), pier_events::SignatureError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        pier_events::verify(
            secret,
            pier_events::SignedHeaders {
                timestamp: self.header("x-pier-timestamp"),
                event_id: self.header("x-pier-event-id"),
                delivery: self.header("x-pier-delivery"),
                signature: self.header("x-pier-signature"),
            },
            &self.body,
            now,
            pier_events::signing::DEFAULT_TOLERANCE,
        )
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// Statuses answered first, in order; then `default_status`.
    script: VecDeque<u16>,
    default_status: Option<u16>,
    /// A `Location` header on every answer.
    location: Option<String>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on a fresh port, answering 200.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let (status, location) = {
                                let mut s = state.lock().unwrap();
                                s.requests.push(Recorded {
                                    path,
                                    headers,
                                    body,
                                });
                                let status =
                                    s.script.pop_front().or(s.default_status).unwrap_or(200);
                                (status, s.location.clone())
                            };
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            if let Some(location) = location {
                                resp.headers_mut()
                                    .insert(http::header::LOCATION, location.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            state,
            task: Some(task),
        }
    }

    /// A free address with nothing listening (yet).
    pub fn unused_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    pub fn set_default_status(&self, status: u16) {
        self.state.lock().unwrap().default_status = Some(status);
    }

    /// Answer with `Location: url` (and whatever status) from now on.
    pub fn set_location(&self, url: &str) {
        self.state.lock().unwrap().location = Some(url.to_owned());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn draft(n: usize) -> EventDraft {
    EventDraft::new(EventKind::ManifestPushed, "library/app".parse().unwrap())
        .tag(format!("v{n}").parse().unwrap())
        .media_type("application/vnd.oci.image.manifest.v1+json")
        .size(n as u64)
        .actor("tester")
}

pub fn body_event_id(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

pub fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}
