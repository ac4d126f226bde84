//! The one retry policy of Pier's outbound clients (upstream pulls and mirror fills,
//! replication, webhooks): exponential backoff with jitter, from `backon`.
//!
//! The `n`th wait (0-based) starts from `d = min(base · 2ⁿ, cap)`; backon's jitter adds a
//! random part of up to `d` (uniform in `[0, d)`), so the wait is in `[d, 2d)`; then the
//! cap is applied again, since backon applies its `max_delay` before the jitter (a
//! jittered wait could reach `2 · cap` otherwise). So every wait is in
//! `[d, min(2d, cap)]`: never under the doubling schedule, never over the cap, and two
//! clients that failed together come back at different times (they drift apart on
//! every early retry; once at the cap they keep the offsets they drew).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The doubling steps worth computing: past this many, `base · 2ⁿ` is over any cap.
const MAX_STEPS: u32 = 64;

/// Exponential backoff with jitter: the first wait from `base`, doubling, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Waits from `base`, doubling, never over `cap` (a `cap` under `base` wins: every
    /// wait is then `cap`).
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.base.min(self.cap))
            .with_max_delay(self.cap)
            .without_max_times()
    }

    /// The waits of one sequence of retries: before the 1st retry, the 2nd, ... (endless;
    /// the caller counts its attempts).
    pub fn waits(&self) -> Waits {
        Waits {
            inner: self.builder().build(),
            cap: self.cap,
        }
    }

    /// The wait before retry number `retry` (0: after the first failure), drawn alone:
    /// for a retry scheduled from a stored attempt count rather than from a loop.
    pub fn wait(&self, retry: u32) -> Duration {
        self.waits()
            .nth(retry.min(MAX_STEPS) as usize)
            .unwrap_or(self.cap)
    }
}

/// The waits of a [`Backoff`], each at most its cap.
#[derive(Debug)]
pub struct Waits {
    inner: backon::ExponentialBackoff,
    cap: Duration,
}

impl Iterator for Waits {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // backon's jitter comes after its max_delay: cap again.
        Some(self.inner.next().unwrap_or(self.cap).min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// backon computes in f32 seconds: allow a microsecond of rounding.
    const SLACK: Duration = Duration::from_micros(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_grow_within_the_doubling_schedule_and_stay_under_the_cap() {
        let backoff = Backoff::new(ms(100), ms(1000));
        for _ in 0..200 {
            let waits: Vec<Duration> = backoff.waits().take(8).collect();
            for (n, wait) in waits.iter().enumerate() {
                let d = (ms(100) * (1 << n)).min(ms(1000));
                assert!(
                    *wait + SLACK >= d && *wait <= (d * 2).min(ms(1000)),
                    "wait {n}: {wait:?} not in [{d:?}, min(2·{d:?}, cap)]: {waits:?}"
                );
            }
            // Growing: each wait's floor is over the previous one's until the cap.
            assert!(waits[3] + SLACK >= ms(800));
            assert!(waits[0] < ms(200) + SLACK);
        }
        for retry in [0, 5, 40, u32::MAX] {
            assert!(backoff.wait(retry) <= ms(1000), "{retry}");
        }
        assert!(backoff.wait(u32::MAX) + SLACK >= ms(1000));
    }

    #[test]
    fn the_cap_is_hard_even_with_jitter() {
        let backoff = Backoff::new(ms(300), ms(400));
        for _ in 0..500 {
            for wait in backoff.waits().take(5) {
                assert!(wait <= ms(400), "{wait:?}");
                assert!(wait + SLACK >= ms(300), "{wait:?}");
            }
        }
        // A cap under the base: every wait is the cap.
        let backoff = Backoff::new(ms(500), ms(200));
        assert!(backoff.waits().take(5).all(|w| w == ms(200)));
    }

    #[test]
    fn two_sequences_differ() {
        let backoff = Backoff::new(ms(100), Duration::from_secs(60));
        let a: Vec<Duration> = backoff.waits().take(6).collect();
        let b: Vec<Duration> = backoff.waits().take(6).collect();
        // Six uniform draws alike in both: about never, unless there is no jitter.
        assert_ne!(a, b);
        let c: Vec<Duration> = (0..6).map(|n| backoff.wait(n)).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn zero_base_means_no_wait() {
        let backoff = Backoff::new(Duration::ZERO, ms(10));
        assert!(backoff.waits().take(3).all(|w| w.is_zero()));
    }
}
