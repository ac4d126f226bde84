//! Readiness: whether this node should get traffic. `/readyz` on both listeners asks
//! [`Readiness::check`]: not while shutting down, not while the blocking pool (where blob
//! and file I/O runs) is stuck, and not while a dependency the node cannot serve without
//! (the storage backend, Redis) does not answer. Dependency checks are cached for
//! [`CHECK_TTL`] so frequent probes cost the backend one call per few seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a dependency check's answer is reused.
pub const CHECK_TTL: Duration = Duration::from_secs(2);
/// The longest a dependency check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency's check: `Err` says what is wrong, for the log.
pub type CheckFn =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

struct Check {
    name: &'static str,
    run: CheckFn,
}

/// See the module documentation.
pub struct Readiness {
    serving: AtomicBool,
    checks: Vec<Check>,
    /// When the dependencies were last checked, and the first that failed then.
    last: tokio::sync::Mutex<Option<(Instant, Result<(), &'static str>)>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Ready, with no dependencies to check.
    pub fn new() -> Readiness {
        Readiness {
            serving: AtomicBool::new(true),
            checks: Vec::new(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Also not ready while `run` fails (or takes longer than [`CHECK_TIMEOUT`]).
    pub fn with_check(mut self, name: &'static str, run: CheckFn) -> Readiness {
        self.checks.push(Check { name, run });
        self
    }

    /// From now on not ready (shutdown has begun).
    pub fn stop(&self) {
        self.serving.store(false, Ordering::Relaxed);
    }

    /// `Ok` when ready, else what is not: `shutting down`, `blob I/O`, or a dependency's
    /// name (its error is logged).
    pub async fn check(&self) -> Result<(), &'static str> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        if !crate::blocking_pool_answers().await {
            return Err("blob I/O");
        }
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = *last
            && at.elapsed() < CHECK_TTL
        {
            return answer;
        }
        let mut answer = Ok(());
        for c in &self.checks {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            if let Err(error) = outcome {
                tracing::warn!(dependency = c.name, %error, "not ready: a dependency does not answer");
                answer = Err(c.name);
                break;
            }
        }
        *last = Some((Instant::now(), answer));
        answer
    }
}

/// A shared handle, as the listeners hold it.
pub type SharedReadiness = Arc<Readiness>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_failing_dependency_makes_it_unready_and_answers_are_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let (c, u) = (calls.clone(), up.clone());
        let r = Readiness::new().with_check(
            "storage",
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                let ok = u.load(Ordering::SeqCst);
                Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
            }),
        );
        assert_eq!(r.check().await, Ok(()));
        up.store(false, Ordering::SeqCst);
        assert_eq!(r.check().await, Ok(()), "cached within the TTL");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        *r.last.lock().await = None;
        assert_eq!(r.check().await, Err("storage"));
        r.stop();
        assert_eq!(r.check().await, Err("shutting down"));
    }

    #[tokio::test]
    async fn a_hanging_dependency_counts_as_failed() {
        let r = Readiness::new().with_check(
            "redis",
            Box::new(|| Box::pin(std::future::pending::<Result<(), String>>())),
        );
        assert_eq!(r.check().await, Err("redis"));
    }
}
