//! When tags and digests were last pulled, merged over every node: one hash, a field per
//! `repo:tag` or `repo@digest`, holding the latest Unix second any node reported.

use crate::{ClusterError, Shared};

/// KEYS[1] the hash, ARGV field, time, field, time...: each time kept if later than the
/// stored one.
const MERGE: &str = r"
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if not cur or cur < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1";

impl Shared {
    /// Records pulls (field, Unix seconds), keeping the latest time of each field.
    pub async fn pulls_merge(&self, pulls: &[(String, u64)]) -> Result<(), ClusterError> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut cmd = crate::lease::eval(MERGE, &self.inner.keys.pulls());
        for (field, at) in pulls {
            cmd.arg(field).arg(*at);
        }
        let _: i64 = self.query("pulls_merge", &cmd).await?;
        Ok(())
    }

    /// The latest pull of each field, as every node reported them.
    pub async fn pulls_get(&self, fields: &[String]) -> Result<Vec<Option<u64>>, ClusterError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.inner.keys.pulls());
        for f in fields {
            cmd.arg(f);
        }
        self.query("pulls_get", &cmd).await
    }
}
