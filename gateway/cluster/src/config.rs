//! `[redis]` configuration, read by the server from its TOML file.
//!
//! ```toml
//! [redis]
//! mode = "standalone"            # or "sentinel" / "cluster"
//! url = "redis://127.0.0.1:6379" # standalone
//! # master = "pier"                                           # sentinel
//! # sentinels = ["redis://10.0.0.1:26379", "10.0.0.2:26379"]  # sentinel
//! # nodes = ["redis://10.0.0.1:6379", "10.0.0.2:6379"]        # cluster
//! key_prefix = "pier:"           # default
//! op_timeout_ms = 500            # default
//! # ca_file = "/etc/pier/redis-ca.pem"  # rediss:// servers signed by a private CA
//! ```
//!
//! `rediss://` URLs connect over TLS (rustls), verifying the server's certificate against
//! the system's roots, or only `ca_file`'s when it is set.

use std::time::Duration;

use serde::Deserialize;

/// Default prefix of every key and channel Pier writes.
pub const DEFAULT_KEY_PREFIX: &str = "pier:";
/// Default bound on one Redis round trip.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRedisConfig")]
pub struct RedisConfig {
    /// Which deployment of Redis, and where.
    pub mode: RedisMode,
    /// Prepended to every key and pub/sub channel, so several deployments can share a Redis.
    pub key_prefix: String,
    /// Bound on every operation (connect included). An operation that takes longer fails
    /// with [`ClusterError::Unavailable`](crate::ClusterError::Unavailable).
    pub op_timeout: Duration,
    /// PEM roots that `rediss://` servers are verified against instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// A standalone server at `url`, default prefix and timeout.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::new(RedisMode::Standalone { url: url.into() })
    }

    /// Default prefix and timeout.
    pub fn new(mode: RedisMode) -> Self {
        Self {
            mode,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            ca_file: None,
        }
    }
}

/// The three deployments of Redis that Pier supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`redis://[user:password@]host:port[/db]`). The connection reconnects by itself.
    Standalone {
        /// `redis://[user:password@]host:port[/db]`.
        url: String,
    },
    /// A master found through Sentinel; re-resolved after a failover.
    /// `sentinels` are `host:port` or `redis://host:port` addresses of Sentinel processes.
    Sentinel {
        /// The name the sentinels monitor (`sentinel monitor <name> ...`).
        master: String,
        /// Sentinel addresses.
        sentinels: Vec<String>,
    },
    /// Redis Cluster; `nodes` are seed addresses, the slot map is discovered and refreshed.
    Cluster {
        /// Seed node addresses.
        nodes: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Standalone,
    Sentinel,
    Cluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisConfig {
    mode: ModeName,
    url: Option<String>,
    master: Option<String>,
    sentinels: Option<Vec<String>>,
    nodes: Option<Vec<String>>,
    key_prefix: Option<String>,
    op_timeout_ms: Option<u64>,
    ca_file: Option<std::path::PathBuf>,
}

impl TryFrom<RawRedisConfig> for RedisConfig {
    type Error = String;

    fn try_from(raw: RawRedisConfig) -> Result<Self, String> {
        let RawRedisConfig {
            mode,
            url,
            master,
            sentinels,
            nodes,
            key_prefix,
            op_timeout_ms,
            ca_file,
        } = raw;
        let unexpected =
            |what: &str, mode: &str| format!("`{what}` is not used with mode = \"{mode}\"");
        let mode = match mode {
            ModeName::Standalone => {
                if master.is_some() || sentinels.is_some() || nodes.is_some() {
                    return Err(unexpected("master/sentinels/nodes", "standalone"));
                }
                RedisMode::Standalone {
                    url: url.ok_or("mode = \"standalone\" needs `url`")?,
                }
            }
            ModeName::Sentinel => {
                if url.is_some() || nodes.is_some() {
                    return Err(unexpected("url/nodes", "sentinel"));
                }
                let sentinels = sentinels.unwrap_or_default();
                if sentinels.is_empty() {
                    return Err("mode = \"sentinel\" needs a non-empty `sentinels` list".into());
                }
                RedisMode::Sentinel {
                    master: master.ok_or("mode = \"sentinel\" needs `master`")?,
                    sentinels,
                }
            }
            ModeName::Cluster => {
                if url.is_some() || master.is_some() || sentinels.is_some() {
                    return Err(unexpected("url/master/sentinels", "cluster"));
                }
                let nodes = nodes.unwrap_or_default();
                if nodes.is_empty() {
                    return Err("mode = \"cluster\" needs a non-empty `nodes` list".into());
                }
                RedisMode::Cluster { nodes }
            }
        };
        let op_timeout = match op_timeout_ms {
            Some(0) => return Err("`op_timeout_ms` must be positive".into()),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_OP_TIMEOUT,
        };
        Ok(Self {
            mode,
            key_prefix: key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            op_timeout,
            ca_file,
        })
    }
}

/// `host:port` becomes `redis://host:port`; URLs pass unchanged.
pub(crate) fn as_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        redis: RedisConfig,
    }

    fn parse(s: &str) -> Result<RedisConfig, String> {
        toml::from_str::<File>(s)
            .map(|f| f.redis)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn standalone_with_defaults() {
        let c =
            parse("[redis]\nmode = \"standalone\"\nurl = \"redis://127.0.0.1:6379\"\n").unwrap();
        assert_eq!(c, RedisConfig::standalone("redis://127.0.0.1:6379"));
        assert_eq!(c.key_prefix, "pier:");
        assert_eq!(c.op_timeout, Duration::from_millis(500));
    }

    #[test]
    fn sentinel_and_cluster() {
        let c = parse(
            "[redis]\nmode = \"sentinel\"\nmaster = \"pier\"\nsentinels = [\"a:1\", \"b:2\"]\nkey_prefix = \"x:\"\nop_timeout_ms = 200\n",
        )
        .unwrap();
        assert_eq!(
            c.mode,
            RedisMode::Sentinel {
                master: "pier".into(),
                sentinels: vec!["a:1".into(), "b:2".into()]
            }
        );
        assert_eq!(c.key_prefix, "x:");
        assert_eq!(c.op_timeout, Duration::from_millis(200));
        let c = parse("[redis]\nmode = \"cluster\"\nnodes = [\"a:1\"]\n").unwrap();
        assert_eq!(
            c.mode,
            RedisMode::Cluster {
                nodes: vec!["a:1".into()]
            }
        );
    }

    #[test]
    fn rejects_incomplete_or_mixed() {
        for bad in [
            "[redis]\nmode = \"standalone\"\n",
            "[redis]\nmode = \"sentinel\"\nmaster = \"m\"\n",
            "[redis]\nmode = \"sentinel\"\nsentinels = [\"a:1\"]\n",
            "[redis]\nmode = \"cluster\"\nnodes = []\n",
            "[redis]\nmode = \"cluster\"\nnodes = [\"a:1\"]\nurl = \"redis://x\"\n",
            "[redis]\nmode = \"standalone\"\nurl = \"redis://x\"\nop_timeout_ms = 0\n",
            "[redis]\nmode = \"standalone\"\nurl = \"redis://x\"\ntimeout = 3\n",
            "[redis]\nmode = \"memcached\"\n",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn addresses_become_urls() {
        assert_eq!(as_url("10.0.0.1:26379"), "redis://10.0.0.1:26379");
        assert_eq!(as_url("rediss://h:1"), "rediss://h:1");
    }
}
