//! What Pier may ask of one upstream: its pull budget.
//!
//! Registries rate-limit pulls (Docker Hub per client address and account, counting
//! manifest GETs) and answer `429 Too Many Requests` past the limit. A [`Budget`] keeps
//! Pier inside it, per configured upstream:
//! - at most `max_concurrent` fetches in flight (a blob counts until its body ends);
//! - at most `per_second` requests started per second (a token bucket with a burst of
//!   one second's worth; a request waits for its turn, in order);
//! - after a `429`, nothing at all until its `Retry-After` has passed (or
//!   [`DEFAULT_PAUSE`] when it gives none): neither the request that met it nor any other
//!   waits inside Pier; they fail at once with [`UpstreamError::TooManyRequests`] and the
//!   time left, which the client gets as `429` with `Retry-After`, and the mirror serves
//!   cached tags without asking ([`Budget::paused_for`]). Waiting would hold every pull of
//!   a cached image for as long as the upstream asks.
//!
//! The upstream's own view (`ratelimit-limit` / `ratelimit-remaining`, Docker Hub's
//! headers) is kept for the metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::UpstreamError;

/// The pause after a `429` without a usable `Retry-After`.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(10);
/// The longest pause a `Retry-After` can impose (a hostile or broken upstream asking
/// for a year is held to this).
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// The longest a request waits for its turn under the rate limit; past it (a flood of
/// cold requests) it is refused at once with the wait as `Retry-After`, and its turn is
/// given back, so the queue never outgrows what clients would wait for.
pub const MAX_RATE_WAIT: Duration = Duration::from_secs(30);
/// Default `max_concurrent_fetches` of an upstream.
pub const DEFAULT_MAX_CONCURRENT: usize = 32;

/// The limits of one upstream; zero means no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    pub max_concurrent: usize,
    pub per_second: f64,
}

impl BudgetConfig {
    /// With at most `per_second` requests started per second (0: no limit).
    pub fn with_rate(mut self, per_second: f64) -> Result<BudgetConfig, String> {
        if !(per_second.is_finite() && per_second >= 0.0) {
            return Err(format!(
                "max_requests_per_second must be a number >= 0 (0: no limit), not {per_second}"
            ));
        }
        self.per_second = per_second;
        Ok(self)
    }
}

impl Default for BudgetConfig {
    fn default() -> BudgetConfig {
        BudgetConfig {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            per_second: 0.0,
        }
    }
}

/// One upstream's budget; shared by its client(s) and the metrics.
#[derive(Debug)]
pub struct Budget {
    name: String,
    config: BudgetConfig,
    permits: Option<Arc<Semaphore>>,
    rate: Option<Mutex<TokenBucket>>,
    paused_until: Mutex<Option<Instant>>,
    pauses: AtomicU64,
    /// The upstream's `ratelimit-limit` / `ratelimit-remaining` (-1: never seen).
    limit: AtomicI64,
    remaining: AtomicI64,
}

/// Holds one of the upstream's concurrent fetches until dropped.
#[derive(Debug)]
pub struct Permit {
    _held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub fn new(name: impl Into<String>, config: BudgetConfig) -> Budget {
        Budget {
            name: name.into(),
            config,
            permits: (config.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent))),
            rate: (config.per_second > 0.0)
                .then(|| Mutex::new(TokenBucket::new(config.per_second))),
            paused_until: Mutex::new(None),
            pauses: AtomicU64::new(0),
            limit: AtomicI64::new(-1),
            remaining: AtomicI64::new(-1),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// One of the concurrent fetches; waits while all are taken. Refused at once during a
    /// pause, rather than queueing for a slot only to be refused then.
    pub async fn fetch_permit(&self) -> Result<Permit, UpstreamError> {
        if let Some(left) = self.paused_for() {
            return Err(UpstreamError::TooManyRequests {
                retry_after: Some(left),
            });
        }
        Ok(match &self.permits {
            Some(s) => Permit {
                _held: Some(
                    s.clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                ),
            },
            None => Permit { _held: None },
        })
    }

    /// Fetches in flight now.
    pub fn in_flight(&self) -> usize {
        self.permits.as_ref().map_or(0, |s| {
            self.config.max_concurrent - s.available_permits().min(self.config.max_concurrent)
        })
    }

    /// Before one request: refused at once during a pause, else waits for the request's
    /// turn under the rate limit (refused when that is more than [`MAX_RATE_WAIT`] away).
    pub async fn admit(&self) -> Result<(), UpstreamError> {
        if let Some(left) = self.paused_for() {
            return Err(UpstreamError::TooManyRequests {
                retry_after: Some(left),
            });
        }
        if let Some(rate) = &self.rate {
            let wait = {
                let mut bucket = rate.lock().unwrap_or_else(PoisonError::into_inner);
                let wait = bucket.reserve(Instant::now());
                if wait > MAX_RATE_WAIT {
                    bucket.tokens += 1.0;
                    return Err(UpstreamError::TooManyRequests {
                        retry_after: Some(wait),
                    });
                }
                wait
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// How long the current pause has left; `None` when not paused.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// The upstream answered `429`: no request until `retry_after` (or the default) has
    /// passed. Returns the pause.
    pub fn pause(&self, retry_after: Option<Duration>) -> Duration {
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        let until = Instant::now() + pause;
        let mut current = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
        self.pauses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(upstream = %self.name, pause_s = pause.as_secs_f64(),
            "upstream is rate limiting (429): no requests to it until the pause ends");
        pause
    }

    /// Pauses since start.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Reads the upstream's `ratelimit-limit` and `ratelimit-remaining` headers (Docker
    /// Hub: `100;w=21600`), when present.
    pub fn observe_headers(&self, headers: &HeaderMap) {
        let read = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
        };
        if let Some(n) = read("ratelimit-limit") {
            self.limit.store(n, Ordering::Relaxed);
        }
        if let Some(n) = read("ratelimit-remaining") {
            self.remaining.store(n, Ordering::Relaxed);
        }
    }

    /// The upstream's last `ratelimit-limit` and `ratelimit-remaining`, as seen.
    pub fn upstream_view(&self) -> (Option<u64>, Option<u64>) {
        let get = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).ok();
        (get(&self.limit), get(&self.remaining))
    }
}

/// Requests per second with a burst of one second's worth; a request may reserve a
/// slot in the future (the bucket goes negative) and waits until then, so waiting
/// requests go in order and the long-run rate holds.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(per_second: f64) -> TokenBucket {
        let burst = per_second.max(1.0);
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes one token; how long to wait before using it.
    fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// Every upstream's budget as Prometheus series, registered by the binary.
#[derive(Clone, Debug, Default)]
pub struct UpstreamBudgets(Arc<Mutex<Vec<Arc<Budget>>>>);

impl UpstreamBudgets {
    /// The budget of the upstream `name`, created with `config` (one per upstream).
    pub fn add(&self, name: &str, config: BudgetConfig) -> Arc<Budget> {
        let budget = Arc::new(Budget::new(name, config));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(budget.clone());
        budget
    }

    /// Every upstream's budget, in the order they were added.
    pub fn all(&self) -> Vec<Arc<Budget>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(self.clone()));
    }
}

impl prometheus_client::collector::Collector for UpstreamBudgets {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let budgets = self.all();
        let gauge = |encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
                     name: &str,
                     help: &str,
                     value: &dyn Fn(&Budget) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            let rows: Vec<_> = budgets
                .iter()
                .filter_map(|b| value(b).map(|v| (b.name(), v)))
                .collect();
            if rows.is_empty() {
                return Ok(());
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (upstream, v) in rows {
                let labels = [("upstream", upstream)];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "pier_upstream_pause_seconds",
            "Seconds left of the pause an upstream's 429 imposed (0: not paused)",
            &|b| Some(b.paused_for().map_or(0.0, |d| d.as_secs_f64())),
        )?;
        gauge(
            &mut encoder,
            "pier_upstream_fetches_in_flight",
            "Upstream fetches in flight (a blob until its body ends), by upstream",
            &|b| Some(b.in_flight() as f64),
        )?;
        gauge(
            &mut encoder,
            "pier_upstream_ratelimit_limit",
            "The upstream's ratelimit-limit header, last seen (Docker Hub: pulls per window)",
            &|b| b.upstream_view().0.map(|n| n as f64),
        )?;
        gauge(
            &mut encoder,
            "pier_upstream_ratelimit_remaining",
            "The upstream's ratelimit-remaining header, last seen",
            &|b| b.upstream_view().1.map(|n| n as f64),
        )?;
        if !budgets.is_empty() {
            let mut family = encoder.encode_descriptor(
                "pier_upstream_pauses",
                "Pauses after a 429 from the upstream",
                None,
                MetricType::Counter,
            )?;
            for b in &budgets {
                let labels = [("upstream", b.name())];
                ConstCounter::new(b.pauses()).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_holds_the_rate_after_its_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0);
        // The burst: two at once, then one every half second, in order.
        assert_eq!(b.reserve(start), Duration::ZERO);
        assert_eq!(b.reserve(start), Duration::ZERO);
        assert_eq!(b.reserve(start), Duration::from_millis(500));
        assert_eq!(b.reserve(start), Duration::from_millis(1000));
        // A second later, two tokens came back, both already promised.
        assert_eq!(
            b.reserve(start + Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        // Idle for long: never more than the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert!(b.reserve(later) > Duration::ZERO);
    }

    #[tokio::test]
    async fn a_pause_refuses_every_request_until_it_ends() {
        let b = Budget::new("hub", BudgetConfig::default());
        assert!(b.paused_for().is_none());
        b.admit().await.expect("not paused");
        b.pause(Some(Duration::from_millis(300)));
        let left = b.paused_for().expect("paused");
        assert!(left <= Duration::from_millis(300));
        match b.admit().await {
            Err(UpstreamError::TooManyRequests {
                retry_after: Some(d),
            }) => {
                assert!(d <= Duration::from_millis(300))
            }
            other => panic!("admitted during a pause: {other:?}"),
        }
        assert!(
            b.fetch_permit().await.is_err(),
            "no fetch slot is handed out during a pause"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(b.paused_for().is_none());
        b.admit().await.expect("the pause is over");
        assert_eq!(b.pauses(), 1);
        // No Retry-After: the default; a year: held to the cap; a shorter one never
        // shortens a pause already running.
        assert!(b.pause(None) == DEFAULT_PAUSE);
        assert!(b.pause(Some(Duration::from_secs(365 * 86400))) == MAX_PAUSE);
        b.pause(Some(Duration::from_secs(1)));
        assert!(b.paused_for().unwrap() > Duration::from_secs(3000));
    }

    /// A flood of requests under a rate limit: those whose turn is more than
    /// MAX_RATE_WAIT away are refused at once and give their turn back.
    #[tokio::test]
    async fn a_rate_queue_longer_than_the_wait_bound_is_refused() {
        let b = Budget::new(
            "hub",
            BudgetConfig {
                max_concurrent: 0,
                per_second: 0.1,
            },
        );
        // A burst of one, then one every 10 s: three more turns reach 30 s ahead, so the
        // next is past the bound.
        b.admit().await.unwrap();
        let tokens = |b: &Budget| b.rate.as_ref().unwrap().lock().unwrap().tokens;
        let before = tokens(&b);
        {
            let mut bucket = b.rate.as_ref().unwrap().lock().unwrap();
            for _ in 0..3 {
                bucket.reserve(Instant::now());
            }
        }
        let queued = tokens(&b);
        assert!(queued < before - 2.9, "three turns reserved");
        match b.admit().await {
            Err(UpstreamError::TooManyRequests {
                retry_after: Some(d),
            }) => {
                assert!(d > MAX_RATE_WAIT, "{d:?}")
            }
            other => panic!("a turn {:?} away was admitted: {other:?}", MAX_RATE_WAIT),
        }
        assert!(
            (tokens(&b) - queued).abs() < 0.01,
            "the refused turn was given back"
        );
    }

    #[tokio::test]
    async fn concurrent_fetches_are_capped() {
        let b = Arc::new(Budget::new(
            "hub",
            BudgetConfig {
                max_concurrent: 2,
                per_second: 0.0,
            },
        ));
        let p1 = b.fetch_permit().await.unwrap();
        let _p2 = b.fetch_permit().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let b2 = b.clone();
        let third = tokio::spawn(async move { b2.fetch_permit().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third fetch started beside two");
        drop(p1);
        let _p3 = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the third starts once one ends")
            .unwrap();
        assert_eq!(b.in_flight(), 2);
    }

    #[test]
    fn docker_hubs_headers_are_read() {
        let b = Budget::new("hub", BudgetConfig::default());
        assert_eq!(b.upstream_view(), (None, None));
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        b.observe_headers(&h);
        assert_eq!(b.upstream_view(), (Some(100), Some(76)));
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", "-5".parse().unwrap());
        b.observe_headers(&h);
        assert_eq!(
            b.upstream_view(),
            (Some(100), Some(76)),
            "garbage is ignored"
        );
    }
}
