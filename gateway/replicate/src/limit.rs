//! A token bucket shared by every transfer to one destination.

use std::time::{Duration, Instant};

/// Bytes per second for everything sent to one target; `0` is unlimited. Waiters are
/// served in turn (tokio's mutex is fair); a burst of a quarter second is allowed.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: u64,
    state: tokio::sync::Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: a debt the next taker waits off.
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_second,
            state: tokio::sync::Mutex::new(Bucket {
                tokens: Self::burst_of(bytes_per_second),
                last: Instant::now(),
            }),
        }
    }

    pub fn unlimited() -> RateLimiter {
        RateLimiter::new(0)
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    fn burst_of(rate: u64) -> f64 {
        rate as f64 / 4.0
    }

    /// Wait until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        if self.bytes_per_second == 0 || n == 0 {
            return;
        }
        let rate = self.bytes_per_second as f64;
        let mut bucket = self.state.lock().await;
        let now = Instant::now();
        let refill = now.duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(Self::burst_of(self.bytes_per_second));
        bucket.last = now;
        bucket.tokens -= n as f64;
        if bucket.tokens < 0.0 {
            // Hold the lock while paying the debt, so later takers queue behind.
            let wait = Duration::from_secs_f64(-bucket.tokens / rate);
            tokio::time::sleep(wait).await;
            bucket.tokens = 0.0;
            bucket.last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_the_rate() {
        let limiter = RateLimiter::new(400_000);
        let started = Instant::now();
        for _ in 0..10 {
            limiter.acquire(50_000).await;
        }
        // 500 kB at 400 kB/s with a 100 kB burst: about one second.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test]
    async fn unlimited_does_not_wait() {
        let limiter = RateLimiter::unlimited();
        let started = Instant::now();
        limiter.acquire(1 << 40).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
