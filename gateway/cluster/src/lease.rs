//! Leases: "I am fetching this blob from upstream" across nodes.
//!
//! A lease is a key holding its owner's id with a TTL. The holder renews it while it works
//! and releases it when done; if the holder dies, the lease expires and another node takes
//! over. Renew and release compare the owner atomically (Lua, one key), so a node whose
//! lease already expired and was taken by another cannot extend or delete the new one.

use std::time::Duration;

use crate::{ClusterError, Shared, ttl_ms};

/// KEYS[1] lease, ARGV[1] owner, ARGV[2] ttl ms. 1 if renewed, 0 if not the owner.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// KEYS[1] lease, ARGV[1] owner. 1 if released, 0 if not the owner.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

impl Shared {
    /// Takes the lease `name` for `owner` if nobody holds it (`SET NX PX`). True if taken.
    /// Taking a lease one already holds returns false (use [`Shared::renew_lease`]).
    pub async fn try_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.keys.lease(name))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl));
        let reply: Option<String> = self.query("try_lease", &cmd).await?;
        Ok(reply.is_some())
    }

    /// Extends the lease to `ttl` from now if `owner` still holds it. False otherwise.
    pub async fn renew_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut cmd = eval(RENEW, &self.inner.keys.lease(name));
        cmd.arg(owner).arg(ttl_ms(ttl));
        let n: i64 = self.query("renew_lease", &cmd).await?;
        Ok(n == 1)
    }

    /// Gives the lease up if `owner` holds it. False otherwise (expired, or someone else's).
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<bool, ClusterError> {
        let mut cmd = eval(RELEASE, &self.inner.keys.lease(name));
        cmd.arg(owner);
        let n: i64 = self.query("release_lease", &cmd).await?;
        Ok(n == 1)
    }

    /// Who holds the lease, if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, ClusterError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.inner.keys.lease(name));
        self.query("lease_holder", &cmd).await
    }
}

/// `EVAL script 1 key`: the script text is sent each time (small), so there is no
/// `NOSCRIPT` dance after a failover or on a cluster node that never saw `SCRIPT LOAD`.
pub(crate) fn eval(script: &str, key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(1).arg(key);
    cmd
}
