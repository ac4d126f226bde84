//! Upload session state, shared so any node can take the next chunk.
//!
//! A session is a hash `{v: version, d: bytes, t: last write in server milliseconds}` with a
//! TTL renewed by every write. Writes are compare-and-set on the version (Lua, one key):
//! two nodes that read version 3 and both try to write cannot both win.

use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::conn::{Backend, Conn};
use crate::lease::eval;
use crate::{ClusterError, Shared, ttl_ms};

/// A session's bytes and the version to pass to the next [`Shared::session_put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Starts at 1 on creation, +1 on each write.
    pub version: u64,
    /// Opaque to this crate.
    pub data: Vec<u8>,
}

/// KEYS[1] session, ARGV[1] expected version ('' = must not exist), ARGV[2] data,
/// ARGV[3] ttl ms. Returns the new version, or -1 on a version conflict.
const PUT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if cur then return -1 end
elseif cur ~= ARGV[1] then
  return -1
end
local nv = 1
if cur then nv = tonumber(cur) + 1 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'v', string.format('%d', nv), 'd', ARGV[2], 't', string.format('%d', ms))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return nv";

/// KEYS[1] session, ARGV[1] age ms. 1 if the last write is older than that (server clock).
const IDLE: &str = r"
local t = redis.call('HGET', KEYS[1], 't')
if not t then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms - tonumber(t) > tonumber(ARGV[1]) then return 1 end
return 0";

/// Where a `SCAN` runs: the one server, or one cluster master.
enum ScanTarget {
    Default,
    Node { host: String, port: u16 },
}

impl Shared {
    /// The session's state, or None if it does not exist (never written, deleted, expired).
    pub async fn session_get(&self, id: &str) -> Result<Option<Versioned>, ClusterError> {
        let key = self.inner.keys.session(id);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key).arg("v").arg("d");
        let (version, data): (Option<u64>, Option<Vec<u8>>) =
            self.query("session_get", &cmd).await?;
        match (version, data) {
            (None, None) => Ok(None),
            (Some(version), Some(data)) => Ok(Some(Versioned { version, data })),
            _ => Err(ClusterError::Corrupt {
                key,
                reason: "session hash lacks `v` or `d`",
            }),
        }
    }

    /// Writes the session if its version is still `expected` (`None`: only if it does not
    /// exist yet), and sets its TTL to `ttl`. Returns the new version, or `None` when
    /// another writer got there first (re-read and retry, or give up).
    pub async fn session_put(
        &self,
        id: &str,
        expected: Option<u64>,
        data: &[u8],
        ttl: Duration,
    ) -> Result<Option<u64>, ClusterError> {
        let mut cmd = eval(PUT, &self.inner.keys.session(id));
        cmd.arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(data)
            .arg(ttl_ms(ttl));
        let n: i64 = self.query("session_put", &cmd).await?;
        Ok(u64::try_from(n).ok())
    }

    /// Deletes the session. True if it existed.
    pub async fn session_delete(&self, id: &str) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.inner.keys.session(id));
        let n: i64 = self.query("session_delete", &cmd).await?;
        Ok(n == 1)
    }

    /// Ids of sessions not written for longer than `age` (by the Redis server's clock), for
    /// the cleanup task. Walks every session key with `SCAN` (on every master in cluster
    /// mode); each round trip is bounded by `op_timeout`, the whole walk is not.
    pub async fn sessions_idle_longer_than(
        &self,
        age: Duration,
    ) -> Result<Vec<String>, ClusterError> {
        let pattern = self.inner.keys.session_pattern();
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX / 2);
        let mut idle = Vec::new();
        for target in self.scan_targets().await? {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.scan_page(&target, cursor, &pattern).await?;
                let checks = keys.iter().filter_map(|key| {
                    let key = std::str::from_utf8(key).ok()?;
                    let id = self.inner.keys.session_id(key)?;
                    let mut cmd = eval(IDLE, key);
                    cmd.arg(age_ms);
                    Some(async move { (id, self.query::<i64>("sessions_idle", &cmd).await) })
                });
                for (id, result) in join_all(checks).await {
                    if result? == 1 {
                        idle.push(id.to_owned());
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        idle.sort();
        idle.dedup();
        Ok(idle)
    }

    async fn scan_targets(&self) -> Result<Vec<ScanTarget>, ClusterError> {
        if !matches!(self.inner.backend, Backend::Cluster { .. }) {
            return Ok(vec![ScanTarget::Default]);
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let slots: Value = self.query("sessions_idle", &cmd).await?;
        let mut masters = cluster_masters(&slots).ok_or_else(|| ClusterError::Corrupt {
            key: "CLUSTER SLOTS".into(),
            reason: "unexpected reply shape",
        })?;
        masters.sort();
        masters.dedup();
        Ok(masters
            .into_iter()
            .map(|(host, port)| ScanTarget::Node { host, port })
            .collect())
    }

    async fn scan_page(
        &self,
        target: &ScanTarget,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), ClusterError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        match target {
            ScanTarget::Default => self.query("sessions_idle", &cmd).await,
            ScanTarget::Node { host, port } => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                self.with_conn("sessions_idle", |conn| async move {
                    let Conn::Cluster(mut conn) = conn else {
                        unreachable!("node targets exist only in cluster mode")
                    };
                    let value = conn.route_command(cmd, routing).await?;
                    Ok(redis::from_redis_value(value)?)
                })
                .await
            }
        }
    }
}

/// `(host, port)` of the master of each slot range in a `CLUSTER SLOTS` reply.
fn cluster_masters(slots: &Value) -> Option<Vec<(String, u16)>> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let Value::Array(master) = range.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else {
                return None;
            };
            Some((host, u16::try_from(*port).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_slots() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(
            cluster_masters(&slots),
            Some(vec![("10.0.0.1".into(), 7000), ("10.0.0.2".into(), 7001)])
        );
        assert_eq!(cluster_masters(&Value::Nil), None);
    }
}
