//! Request and response bodies.

use std::io;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
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

/// How slow a request body may be: no gap between chunks longer than `idle`, and at least
/// `min_rate` bytes per second over every `WINDOW` (a client sending one byte every few
/// seconds would otherwise hold a session, a file and a task for days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    pub idle: Duration,
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> BodyPace {
        BodyPace {
            idle: Duration::from_secs(60),
            min_rate: 1024,
        }
    }
}

/// The span over which [`BodyPace::min_rate`] is measured.
const WINDOW: Duration = Duration::from_secs(30);

/// A request body as a stream of data chunks, failing (`TimedOut`) when it is slower than
/// `pace` allows.
pub fn request_stream(body: Incoming, pace: BodyPace) -> ByteStream {
    let frames = http_body_util::BodyStream::new(body);
    let data = TryStreamExt::map_err(frames, io::Error::other)
        .try_filter_map(|f| futures_util::future::ready(Ok(f.into_data().ok())));
    paced(data, pace)
}

/// `data`, failing when it is slower than `pace` allows.
fn paced(
    data: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static,
    pace: BodyPace,
) -> ByteStream {
    let state = (Box::pin(data), Instant::now(), 0u64, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut data, mut window_start, mut window_bytes, failed)| async move {
            if failed {
                return None;
            }
            let too_slow = |why: String| Err(io::Error::new(io::ErrorKind::TimedOut, why));
            let item = match tokio::time::timeout(pace.idle, data.next()).await {
                Err(_) => too_slow(format!("the request body sent nothing for {:?}", pace.idle)),
                Ok(None) => return None,
                Ok(Some(item)) => item,
            };
            if let Ok(chunk) = &item {
                window_bytes += chunk.len() as u64;
                let elapsed = window_start.elapsed();
                if elapsed >= WINDOW {
                    if window_bytes < pace.min_rate.saturating_mul(elapsed.as_secs()) {
                        let why = format!(
                            "the request body arrives at {} bytes/s, under the minimum of {}",
                            window_bytes / elapsed.as_secs().max(1),
                            pace.min_rate
                        );
                        return Some((too_slow(why), (data, window_start, window_bytes, true)));
                    }
                    window_start = Instant::now();
                    window_bytes = 0;
                }
            }
            let failed = item.is_err();
            Some((item, (data, window_start, window_bytes, failed)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` one-byte chunks, `every` apart (in paused tokio time).
    fn trickle(n: usize, every: Duration) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
        futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from_static(b"x")), i + 1))
        })
    }

    async fn drain(mut s: ByteStream) -> (usize, Option<io::Error>) {
        let mut n = 0;
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => n += c.len(),
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_minimum_rate_fails_after_a_window() {
        let pace = BodyPace::default();
        let (n, err) = drain(paced(trickle(100, Duration::from_secs(2)), pace)).await;
        let err = err.expect("a 0.5 byte/s body failed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("under the minimum"), "{err}");
        assert!(
            (14..=16).contains(&n),
            "failed after the first 30 s window: {n} bytes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_after_the_idle_timeout_and_steady_bodies_pass() {
        let pace = BodyPace {
            idle: Duration::from_secs(5),
            min_rate: 1,
        };
        let (n, err) = drain(paced(trickle(3, Duration::from_secs(6)), pace)).await;
        assert_eq!(n, 0);
        assert!(
            err.expect("silence failed")
                .to_string()
                .contains("sent nothing")
        );
        // One byte a second for 100 s meets a 1 byte/s minimum and never idles.
        let (n, err) = drain(paced(trickle(100, Duration::from_secs(1)), pace)).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(n, 100);
    }
}
