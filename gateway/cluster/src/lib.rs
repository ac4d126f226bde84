//! What scaled-out Pier nodes share through Redis (standalone, Sentinel or Cluster):
//!
//! - **leases** ([`Shared::try_lease`]): one node fetches a cold mirrored blob, the others wait;
//! - **upload sessions** ([`Shared::session_put`]): opaque state with a version for
//!   compare-and-set, so any node can take the next chunk;
//! - **token revocation** ([`Shared::revoke`]);
//! - **plugins' `kv`** ([`Shared::plugin_kv_get`]): projects, members and rules the admin
//!   API changes, the same on every node;
//! - **last pulls** ([`Shared::pulls_merge`]): when each tag was last pulled, over every node;
//! - **the invalidation bus** ([`Shared::publish`], [`Shared::subscribe`]);
//! - **the event journal and delivery outbox** ([`Shared::event_stores`], [`RedisJournal`],
//!   [`RedisOutbox`]) with one dispatching node at a time ([`EventsLeader`]).
//!
//! Every operation is bounded by [`RedisConfig::op_timeout`] and fails with
//! [`ClusterError::Unavailable`] when Redis cannot answer in time: it never hangs. The key
//! layout is documented on [`Shared`].
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod adapters;
mod bus;
mod config;
mod conn;
mod error;
mod events;
mod gc;
mod keys;
mod lease;
mod plugin_kv;
mod pulls;
mod quota;
mod revoke;
mod session;

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, FromRedisValue};
use tokio::time::{Instant, timeout_at};

pub use bus::{BusEvent, GapReason, Subscription};
pub use config::{DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT, RedisConfig, RedisMode};
pub use error::{ClusterError, UnavailableCause};
pub use events::{DEFAULT_LEADER_TTL, DISPATCHER_LEASE, EventsLeader, RedisJournal, RedisOutbox};
pub use gc::RedisGcPeers;
pub use quota::{LIMITS_CACHE, RedisQuotaLimits};
pub use session::Versioned;

use conn::{Backend, Conn};
use keys::Keys;

/// Handle on the shared state. Cheap to clone; reconnects by itself.
///
/// Keys (all under `key_prefix`, default `pier:`; built in `src/keys.rs`). Every command
/// and Lua script touches one key, so Redis Cluster needs no hash tags, except the
/// events' keys, which share the `{events}` hash tag (one slot):
///
/// | key / channel            | type    | content                                            | expiry |
/// |--------------------------|---------|----------------------------------------------------|--------|
/// | `lease:{name}`           | string  | owner id                                           | lease TTL |
/// | `session:{id}`           | hash    | `v` version, `d` bytes, `t` last write (server ms) | session TTL, renewed by each write |
/// | `revoked:{jti}`          | string  | `1`                                                | the token's own expiry |
/// | `plugin-kv:{plugin}`     | hash    | the plugin's `kv`: a field per key                 | none |
/// | `pulls`                  | hash    | last pull (Unix s) per `repo:tag` / `repo@digest`  | none |
/// | `quota:limits`           | hash    | project quota limits in bytes, a field per project | none |
/// | `gc:running`             | string  | the running garbage collection's id (`SET NX`)     | 6 h (deleted when it ends) |
/// | `gc:touched:{run}`       | set     | digests writes referenced while it ran             | 6 h (deleted when it ends) |
/// | `gc:removing:{run}`      | set     | digests it is removing                             | 6 h (deleted when it ends) |
/// | `bus:{channel}`          | pub/sub | UTF-8 message                                      | — |
/// | `{events}:…`             | several | the event journal and outbox (layout in `src/events.rs`) | none (trimmed by release/prune) |
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    keys: Keys,
    op_timeout: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.inner.backend {
            Backend::Standalone { .. } => "standalone",
            Backend::Sentinel(_) => "sentinel",
            Backend::Cluster { .. } => "cluster",
        };
        f.debug_struct("Shared")
            .field("mode", &mode)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects (bounded by `op_timeout`) and checks Redis answers. Fails with
    /// [`ClusterError::Unavailable`] if it does not, [`ClusterError::Config`] on a bad address.
    pub async fn connect(cfg: RedisConfig) -> Result<Self, ClusterError> {
        if cfg.op_timeout.is_zero() {
            return Err(ClusterError::Config("op_timeout must be positive".into()));
        }
        let backend = tokio::time::timeout(cfg.op_timeout, Backend::connect(&cfg))
            .await
            .map_err(|_| ClusterError::timed_out("connect", cfg.op_timeout))??;
        let shared = Self {
            inner: Arc::new(Inner {
                backend,
                keys: Keys::new(&cfg.key_prefix),
                op_timeout: cfg.op_timeout,
            }),
        };
        shared.query::<String>("ping", &redis::cmd("PING")).await?;
        Ok(shared)
    }

    /// Whether Redis answers (`PING`), within the operation bound.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        self.query::<String>("ping", &redis::cmd("PING"))
            .await
            .map(drop)
    }

    /// The bound on each operation.
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// One command, bounded by `op_timeout` (getting a connection included).
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, ClusterError> {
        self.with_conn(op, |mut conn| async move {
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// Runs `f` on a connection, bounded by `op_timeout` (getting the connection included).
    pub(crate) async fn with_conn<T, F, Fut>(
        &self,
        op: &'static str,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let limit = self.inner.op_timeout;
        let deadline = Instant::now() + limit;
        let backend = &self.inner.backend;
        let (conn, generation) = match timeout_at(deadline, backend.conn()).await {
            Err(_) => return Err(ClusterError::timed_out(op, limit)),
            Ok(Err(e)) => return Err(ClusterError::from_redis(op, e)),
            Ok(Ok(c)) => c,
        };
        match timeout_at(deadline, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                backend.failed(generation, Some(&e));
                tracing::debug!(op, error = %e, "redis operation failed");
                Err(ClusterError::from_redis(op, e))
            }
            Err(_) => {
                backend.failed(generation, None);
                tracing::debug!(op, ?limit, "redis operation timed out");
                Err(ClusterError::timed_out(op, limit))
            }
        }
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis rejects 0).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}
