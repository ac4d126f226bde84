//! Retrying with exponential backoff and jitter: [`pier_upstream::Backoff`], the policy
//! of every outbound client of Pier.

use std::future::Future;
use std::time::Duration;

use pier_upstream::Backoff;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// How often and how patiently to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first included); `0` = until success or a permanent error.
    pub max_attempts: u32,
    /// The first wait (jitter adds up to as much again); each next one doubles.
    #[serde(with = "millis")]
    pub base: Duration,
    /// The longest wait, jitter included.
    #[serde(with = "millis")]
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The backoff: from `base`, doubling, with jitter, at most `cap` (or `base`, if
    /// the cap is under it).
    pub fn backoff_policy(&self) -> Backoff {
        Backoff::new(self.base, self.cap.max(self.base))
    }

    /// The wait after failed attempt number `attempt` (1-based), drawn alone: in
    /// `[d, min(2d, cap)]` for `d = base · 2^(attempt-1)` up to the cap.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_policy().wait(attempt.saturating_sub(1))
    }

    /// Whether another attempt is allowed after `attempts` failed ones.
    pub fn allows(&self, attempts: u32) -> bool {
        self.max_attempts == 0 || attempts < self.max_attempts
    }
}

/// Run `op(attempt)` (1-based) until it succeeds, fails with an error `retryable` says
/// is permanent, or the policy's attempts run out; the result and the attempts made.
pub async fn run_with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> (Result<T, E>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    let mut waits = policy.backoff_policy().waits();
    loop {
        match op(attempt).await {
            Ok(value) => return (Ok(value), attempt),
            Err(error) => {
                if !retryable(&error) || !policy.allows(attempt) {
                    return (Err(error), attempt);
                }
                let wait = waits.next().unwrap_or(policy.cap);
                warn!(attempt, wait_ms = wait.as_millis() as u64, %error, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 0,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
        };
        let ms = Duration::from_millis;
        for _ in 0..100 {
            for (attempt, floor) in (1..=6).zip([100, 200, 400, 500, 500, 500]) {
                let wait = p.backoff(attempt);
                // backon computes in f32 seconds: a microsecond of slack.
                assert!(
                    wait + Duration::from_micros(1) >= ms(floor),
                    "{attempt}: {wait:?}"
                );
                assert!(wait <= (ms(floor) * 2).min(ms(500)), "{attempt}: {wait:?}");
            }
        }
        assert!(p.backoff(u32::MAX) <= ms(500));
        let a: Vec<Duration> = (1..=4).map(|n| p.backoff(n)).collect();
        let b: Vec<Duration> = (1..=4).map(|n| p.backoff(n)).collect();
        assert_ne!(a, b, "no jitter");
        assert!(p.allows(1_000_000));
    }

    #[tokio::test]
    async fn stops_on_permanent_errors_and_at_the_limit() {
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let (r, n) = run_with_retries(
            &p,
            |e: &String| e == "again",
            |_| async { Err::<(), _>("again".to_owned()) },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(n, 3);
        let (r, n) = run_with_retries(
            &p,
            |e: &String| e == "again",
            |_| async { Err::<(), _>("denied".to_owned()) },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1);
        let (r, n) = run_with_retries(
            &p,
            |e: &String| e == "again",
            |a| async move {
                if a < 2 {
                    Err("again".to_owned())
                } else {
                    Ok(a)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(n, 2);
    }
}
