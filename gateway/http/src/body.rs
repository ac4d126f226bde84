//! Request and response bodies.

use std::io;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use pier_storage::ByteStream;

/// Every response body Pier sends.
pub type RespBody = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> RespBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: Bytes) -> RespBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn stream(s: ByteStream) -> RespBody {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// A request body as a stream of data chunks.
pub fn request_stream(body: Incoming) -> ByteStream {
    let frames = http_body_util::BodyStream::new(body);
    Box::pin(
        TryStreamExt::map_err(frames, io::Error::other)
            .try_filter_map(|f| futures_util::future::ready(Ok(f.into_data().ok()))),
    )
}
