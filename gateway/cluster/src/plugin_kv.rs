//! Plugins' `kv` shared by every node: one hash per plugin, a field per key, so the rbac
//! plugin's projects and the replicate plugin's rules are the same on every gateway.

use crate::{ClusterError, Shared};

/// KEYS[1] the plugin's hash, ARGV[1] field, ARGV[2] value, ARGV[3] most fields. 1 when
/// stored, 0 when the field is new and the hash already holds the most fields.
const SET_BOUNDED: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1";

impl Shared {
    /// The value of `key` in `plugin`'s store.
    pub async fn plugin_kv_get(
        &self,
        plugin: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, ClusterError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.inner.keys.plugin_kv(plugin)).arg(key);
        self.query("plugin_kv_get", &cmd).await
    }

    /// Stores `value` under `key`; false (nothing written) when `key` is new and the
    /// plugin already keeps `max_keys` keys.
    pub async fn plugin_kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        max_keys: usize,
    ) -> Result<bool, ClusterError> {
        let mut cmd = crate::lease::eval(SET_BOUNDED, &self.inner.keys.plugin_kv(plugin));
        cmd.arg(key).arg(value).arg(max_keys);
        let stored: i64 = self.query("plugin_kv_set", &cmd).await?;
        Ok(stored == 1)
    }

    /// Removes `key` from `plugin`'s store (nothing to do when it is absent).
    pub async fn plugin_kv_delete(&self, plugin: &str, key: &str) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.inner.keys.plugin_kv(plugin)).arg(key);
        let _: i64 = self.query("plugin_kv_delete", &cmd).await?;
        Ok(())
    }
}
