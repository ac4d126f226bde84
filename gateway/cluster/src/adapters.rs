//! The roles other crates define, played over Redis: fill leases and the change bus
//! (`pier-core`), token revocations (`pier-auth`), upload session locks (`pier-storage`),
//! the plugins' shared `kv` and their reload announcements (`pier-plugin-host`).

use std::sync::Arc;
use std::time::Duration;

use crate::{ClusterError, Shared};
use async_trait::async_trait;
use pier_core::{CoreError, Leases};

fn coordination(e: ClusterError) -> CoreError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if !e.is_unavailable() {
        tracing::error!(error = %msg, "redis answered an error");
    }
    CoreError::Coordination(msg)
}

/// A name for this process among the nodes: host, pid and a random part.
pub fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..8])
}

/// Fill leases shared by every node through Redis.
pub struct RedisLeases {
    /// The Redis connection every node shares.
    pub shared: Shared,
    /// This node's name ([`node_id`]), recorded as the holder.
    pub owner: String,
}

#[async_trait]
impl Leases for RedisLeases {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> pier_core::Result<bool> {
        self.shared
            .try_lease(name, &self.owner, ttl)
            .await
            .map_err(coordination)
    }

    async fn renew(&self, name: &str, ttl: Duration) -> pier_core::Result<bool> {
        self.shared
            .renew_lease(name, &self.owner, ttl)
            .await
            .map_err(coordination)
    }

    async fn release(&self, name: &str) -> pier_core::Result<()> {
        self.shared
            .release_lease(name, &self.owner)
            .await
            .map(drop)
            .map_err(coordination)
    }

    async fn held(&self, name: &str) -> pier_core::Result<bool> {
        self.shared
            .lease_holder(name)
            .await
            .map(|h| h.is_some())
            .map_err(coordination)
    }
}

/// The channel registry changes are announced on.
pub const CHANGES_CHANNEL: &str = "registry-changes";

/// Publishes this node's registry changes (fire and forget: a lost announcement only
/// leaves another node on its cache's time to live).
pub struct RedisChanges {
    /// The Redis connection every node shares.
    pub shared: Shared,
}

impl pier_core::ChangeSink for RedisChanges {
    fn publish(&self, change: pier_core::Change) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.publish(CHANGES_CHANNEL, &change.encode()).await {
                tracing::warn!(error = %e, "announcing a registry change failed; other nodes see it after their cache TTL");
            }
        });
    }
}

/// A subscription to `channel`, retried every second until Redis takes it.
async fn subscribe(shared: &Shared, channel: &str) -> crate::Subscription {
    loop {
        match shared.subscribe(channel).await {
            Ok(s) => return s,
            Err(e) => {
                tracing::warn!(channel, error = %e, "subscribing to the bus failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Applies other nodes' announcements to this node's registry caches.
pub async fn follow_changes(shared: Shared, registry: std::sync::Arc<pier_core::Registry>) {
    use futures_util::StreamExt;
    let mut sub = subscribe(&shared, CHANGES_CHANNEL).await;
    while let Some(ev) = sub.next().await {
        match ev {
            crate::BusEvent::Message(m) => match pier_core::Change::decode(&m) {
                Some(c) => registry.apply_remote(&c),
                None => tracing::warn!(message = %m, "unreadable registry change announcement"),
            },
            crate::BusEvent::Gap(reason) => {
                tracing::info!(
                    ?reason,
                    "registry change announcements may have been missed; dropping cached answers"
                );
                registry.forget_cached();
            }
        }
    }
}

/// Token revocations in Redis, shared by every node. A node remembers what it revoked and,
/// for one second, what Redis answered; so a revocation takes effect at once on the node
/// that received it and within a second on the others. Redis down: revoking fails (503),
/// checking answers from what this node knows.
pub struct RedisRevocations {
    shared: Shared,
    local: pier_auth::revoke::LocalRevocations,
    recent: moka::sync::Cache<String, bool>,
}

impl RedisRevocations {
    /// Revocations kept in `shared`, with a local cache of recent answers.
    pub fn new(shared: Shared) -> RedisRevocations {
        RedisRevocations {
            shared,
            local: pier_auth::revoke::LocalRevocations::in_memory(),
            recent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
        }
    }
}

fn revocation_error(e: ClusterError) -> pier_auth::AuthError {
    pier_auth::AuthError::Unavailable(format!("token revocations in Redis: {e}"))
}

#[async_trait]
impl pier_auth::revoke::Revocations for RedisRevocations {
    async fn revoke(&self, jti: &str, exp: u64) -> Result<(), pier_auth::AuthError> {
        self.shared
            .revoke(jti, exp)
            .await
            .map_err(revocation_error)?;
        self.local.remember(jti, exp);
        self.recent.insert(jti.to_owned(), true);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, pier_auth::AuthError> {
        if self.local.knows(jti) {
            return Ok(true);
        }
        if let Some(r) = self.recent.get(jti) {
            return Ok(r);
        }
        let r = self
            .shared
            .is_revoked(jti)
            .await
            .map_err(revocation_error)?;
        self.recent.insert(jti.to_owned(), r);
        Ok(r)
    }

    /// Redis keys expire by themselves; the local memory of recent ones is swept.
    async fn sweep(&self) -> Result<(), pier_auth::AuthError> {
        self.local.sweep().await
    }
}

/// Upload session locks shared by every node (S3 multipart sessions; see pier-storage).
pub struct RedisSessionLocks {
    /// The Redis connection every node shares.
    pub shared: Shared,
    /// This node's name ([`node_id`]), recorded as the holder.
    pub owner: String,
}

#[async_trait]
impl pier_storage::s3::SessionLocks for RedisSessionLocks {
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<bool, String> {
        self.shared
            .try_lease(name, &self.owner, ttl)
            .await
            .map_err(|e| e.to_string())
    }

    async fn renew(&self, name: &str, ttl: Duration) -> Result<bool, String> {
        self.shared
            .renew_lease(name, &self.owner, ttl)
            .await
            .map_err(|e| e.to_string())
    }

    async fn unlock(&self, name: &str) -> Result<(), String> {
        self.shared
            .release_lease(name, &self.owner)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A plugin's `kv` in Redis (`[redis]` configured): the same projects, members and rules
/// on every node.
pub struct RedisPluginKv {
    /// The Redis connection every node shares.
    pub shared: Shared,
    /// The plugin whose keys these are.
    pub plugin: String,
}

fn kv_fault(e: ClusterError) -> pier_plugin_host::KvFault {
    pier_plugin_host::KvFault::Io(format!("shared kv: {e}"))
}

#[async_trait]
impl pier_plugin_host::KvStore for RedisPluginKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, pier_plugin_host::KvFault> {
        self.shared
            .plugin_kv_get(&self.plugin, key)
            .await
            .map_err(kv_fault)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), pier_plugin_host::KvFault> {
        let max = pier_plugin_host::kv::KV_MAX_KEYS;
        match self
            .shared
            .plugin_kv_set(&self.plugin, key, value, max)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(pier_plugin_host::KvFault::TooManyKeys),
            Err(e) => Err(kv_fault(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), pier_plugin_host::KvFault> {
        self.shared
            .plugin_kv_delete(&self.plugin, key)
            .await
            .map_err(kv_fault)
    }

    fn place(&self) -> String {
        format!("redis plugin-kv:{}", self.plugin)
    }
}

/// The channel plugins' changes through the admin API are announced on.
pub const PLUGIN_CHANGES_CHANNEL: &str = "plugin-changes";

/// Announces a change to a plugin's shared state (fire and forget; a node that misses it
/// recycles everything when its subscription reports the gap).
pub fn plugin_announcer(shared: Shared) -> pier_plugin_host::Announcer {
    Arc::new(move |plugin: &str| {
        let (shared, plugin) = (shared.clone(), plugin.to_owned());
        tokio::spawn(async move {
            if let Err(e) = shared.publish(PLUGIN_CHANGES_CHANNEL, &plugin).await {
                tracing::warn!(plugin = %plugin, error = %e, "announcing a plugin change failed; other nodes see it at their next reload");
            }
        });
    })
}

/// Plugins whose instances remember state kept in the shared `kv`: recycled by name.
pub type Recyclers = Vec<(String, Box<dyn Fn() + Send + Sync>)>;

/// Recycles this node's instances of the plugins other nodes changed (all of them after
/// a gap in the announcements).
pub async fn follow_plugin_changes(shared: Shared, plugins: Recyclers) {
    use futures_util::StreamExt;
    let mut sub = subscribe(&shared, PLUGIN_CHANGES_CHANNEL).await;
    while let Some(ev) = sub.next().await {
        match ev {
            crate::BusEvent::Message(name) => {
                for (_, recycle) in plugins.iter().filter(|(n, _)| *n == name) {
                    recycle();
                }
            }
            crate::BusEvent::Gap(reason) => {
                tracing::info!(
                    ?reason,
                    "plugin change announcements may have been missed; replacing every plugin instance"
                );
                for (_, recycle) in &plugins {
                    recycle();
                }
            }
        }
    }
}
