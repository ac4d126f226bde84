//! The access log and request metrics, written when the response body is finished (or
//! dropped, when the client went away), so they record the bytes really sent and the time
//! to the last byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::RespBody;
use crate::metrics::{InFlight, Metrics};

/// What is known about a request when its response starts.
pub(crate) struct Record {
    pub metrics: Arc<Metrics>,
    pub in_flight: InFlight,
    pub request_id: String,
    pub method: http::Method,
    pub path: String,
    pub route: &'static str,
    pub repository: Option<String>,
    pub status: u16,
    pub received: u64,
    /// The Content-Length announced, when there is a body.
    pub length: Option<u64>,
    pub start: Instant,
}

/// A response body that writes the access line and the metrics when it ends.
pub(crate) struct Logged {
    inner: RespBody,
    sent: u64,
    record: Option<Record>,
}

impl Logged {
    pub fn new(inner: RespBody, record: Record) -> Logged {
        Logged {
            inner,
            sent: 0,
            record: Some(record),
        }
    }

    fn finish(&mut self, complete: bool) {
        let Some(r) = self.record.take() else { return };
        let took = r.start.elapsed();
        r.metrics.record(
            r.route,
            r.method.as_str(),
            r.status,
            self.sent,
            r.received,
            took,
        );
        tracing::info!(
            target: "pier::access",
            request_id = %r.request_id,
            method = %r.method,
            path = %r.path,
            route = r.route,
            repository = r.repository.as_deref().unwrap_or("-"),
            status = r.status,
            bytes = self.sent,
            duration_ms = took.as_secs_f64() * 1000.0,
            complete,
        );
        drop(r.in_flight);
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // An empty body may never be polled, and a body of known length is not polled past
        // its length; a client may leave mid-body.
        let announced = self.record.as_ref().and_then(|r| r.length);
        let complete = self.inner.is_end_stream() || announced.is_some_and(|n| n == self.sent);
        self.finish(complete);
    }
}
