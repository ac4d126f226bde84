//! A lock per upload session across processes, so two nodes never append to (or commit)
//! one session at the same time: a client that retries a chunk on another node while the
//! first node is still writing it waits instead of writing the same part numbers.
//!
//! The store works without one (a single node needs only its in-process lock); scaled-out
//! nodes get one over Redis from the server. When the lock service is unreachable the
//! store goes on unlocked (logged): pushes keep working with Redis down, as reads do.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Where session locks are kept (Redis leases when scaled out).
#[async_trait]
pub trait SessionLocks: Send + Sync + 'static {
    /// Takes `name` for `ttl` if nobody holds it; `Ok(false)` when another process does.
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<bool, String>;
    /// Extends a lock this process holds; `Ok(false)` when it was lost.
    async fn renew(&self, name: &str, ttl: Duration) -> Result<bool, String>;
    async fn unlock(&self, name: &str) -> Result<(), String>;
}

/// How long a lock lives without renewal (a dead node's lock frees itself after this).
const TTL: Duration = Duration::from_secs(15);
/// How long a request waits for a session another node is writing, by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A held lock: renewed in the background, released when dropped.
pub(crate) struct Held {
    locks: Arc<dyn SessionLocks>,
    name: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        let locks = self.locks.clone();
        let name = std::mem::take(&mut self.name);
        tokio::spawn(async move {
            if let Err(e) = locks.unlock(&name).await {
                tracing::warn!(lock = %name, error = %e, "releasing an upload session lock failed; it expires by itself");
            }
        });
    }
}

/// Why a session could not be locked.
pub(crate) enum LockError {
    /// Another node kept it longer than the wait.
    Busy,
}

/// Takes the session's lock, waiting up to `wait` while another node holds it. `None`
/// when no lock service is configured or it is unreachable (then the caller goes on).
pub(crate) async fn acquire(
    locks: Option<&Arc<dyn SessionLocks>>,
    name: String,
    wait: Duration,
) -> Result<Option<Held>, LockError> {
    let Some(locks) = locks else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match locks.try_lock(&name, TTL).await {
            Ok(true) => break,
            Ok(false) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            Ok(false) => return Err(LockError::Busy),
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "upload session lock service unreachable; going on without it");
                return Ok(None);
            }
        }
    }
    let renewer = {
        let locks = locks.clone();
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TTL / 3).await;
                match locks.renew(&name, TTL).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lock = %name, "upload session lock lost while held");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "renewing an upload session lock failed")
                    }
                }
            }
        })
    };
    Ok(Some(Held {
        locks: locks.clone(),
        name,
        renewer,
    }))
}
