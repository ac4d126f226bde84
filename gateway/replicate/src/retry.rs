//! Retrying with exponential backoff.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// How often and how patiently to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (the first included); `0` = until success or a permanent error.
    pub max_attempts: u32,
    /// The first wait; each next one doubles.
    #[serde(with = "millis")]
    pub base: Duration,
    /// The longest wait.
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
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base
            .saturating_mul(factor)
            .min(self.cap.max(self.base))
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
    loop {
        match op(attempt).await {
            Ok(value) => return (Ok(value), attempt),
            Err(error) => {
                if !retryable(&error) || !policy.allows(attempt) {
                    return (Err(error), attempt);
                }
                let wait = policy.backoff(attempt);
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
    fn backoff_doubles_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 0,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
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
