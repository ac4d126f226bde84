//! Token revocation: a key per revoked token id (`jti`) that lives until the token would
//! have expired anyway.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{ClusterError, Shared};

const MAX_REVOCATION_SECS: u64 = 100 * 365 * 24 * 3600;

impl Shared {
    /// Revokes the token `jti` until `until_unix_secs` (its `exp`). A token already expired
    /// needs no entry: nothing is written.
    pub async fn revoke(&self, jti: &str, until_unix_secs: u64) -> Result<(), ClusterError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if until_unix_secs <= now {
            return Ok(());
        }
        // Redis rejects absurd expiries (ms overflow); no token lives a century.
        let until = until_unix_secs.min(now + MAX_REVOCATION_SECS);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.keys.revoked(jti))
            .arg(1)
            .arg("EXAT")
            .arg(until);
        let _: Option<String> = self.query("revoke", &cmd).await?;
        Ok(())
    }

    /// True if `jti` was revoked and the revocation has not expired.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.inner.keys.revoked(jti));
        let n: i64 = self.query("is_revoked", &cmd).await?;
        Ok(n == 1)
    }
}
