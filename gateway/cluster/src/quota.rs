//! Project quota limits shared by every node: one hash, a field per project, so a limit
//! set through any node's admin API holds on all of them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pier_core::CoreError;
use pier_core::quota::QuotaLimits;

use crate::{ClusterError, Shared};

/// How long a node trusts the limits it read (every push asks for them).
pub const LIMITS_CACHE: Duration = Duration::from_secs(2);

impl Shared {
    /// Every project with a limit.
    pub async fn quota_limits(&self) -> Result<BTreeMap<String, u64>, ClusterError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.inner.keys.quota_limits());
        self.query("quota_limits", &cmd).await
    }

    /// Sets or (`None`) removes a project's limit.
    pub async fn quota_limit_set(
        &self,
        project: &str,
        limit: Option<u64>,
    ) -> Result<(), ClusterError> {
        let key = self.inner.keys.quota_limits();
        let cmd = match limit {
            Some(l) => {
                let mut c = redis::cmd("HSET");
                c.arg(key).arg(project).arg(l);
                c
            }
            None => {
                let mut c = redis::cmd("HDEL");
                c.arg(key).arg(project);
                c
            }
        };
        let _: i64 = self.query("quota_limit_set", &cmd).await?;
        Ok(())
    }
}

/// [`QuotaLimits`] in Redis (`[redis]` configured). Read at most every
/// [`LIMITS_CACHE`]; when Redis cannot answer, the last limits read stand (a push does
/// not wait for Redis), and before any was read there are none (quotas open, logged):
/// pushes keep working through a Redis outage, as they do without quotas.
pub struct RedisQuotaLimits {
    shared: Shared,
    known: Mutex<Option<(Instant, BTreeMap<String, u64>)>>,
}

impl RedisQuotaLimits {
    /// Limits in `shared`'s `quota:limits` hash.
    pub fn new(shared: Shared) -> RedisQuotaLimits {
        RedisQuotaLimits {
            shared,
            known: Mutex::new(None),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Option<(Instant, BTreeMap<String, u64>)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl QuotaLimits for RedisQuotaLimits {
    async fn limits(&self) -> pier_core::Result<BTreeMap<String, u64>> {
        if let Some((at, l)) = self.known().as_ref()
            && at.elapsed() < LIMITS_CACHE
        {
            return Ok(l.clone());
        }
        match self.shared.quota_limits().await {
            Ok(l) => {
                *self.known() = Some((Instant::now(), l.clone()));
                Ok(l)
            }
            Err(e) => {
                let last = self.known().as_ref().map(|(_, l)| l.clone());
                tracing::warn!(error = %e, kept = last.is_some(), "cannot read the quota limits from Redis; the last ones read stand (none before the first)");
                Ok(last.unwrap_or_default())
            }
        }
    }

    async fn set(&self, project: &str, limit: Option<u64>) -> pier_core::Result<()> {
        self.shared
            .quota_limit_set(project, limit)
            .await
            .map_err(|e| CoreError::QuotaStore(format!("redis: {e}")))?;
        // This node sees its own change at once.
        *self.known() = None;
        Ok(())
    }
}
