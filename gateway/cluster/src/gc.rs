//! Online garbage collection across the nodes sharing the storage
//! ([`pier_core::gc::GcPeers`]): `gc:running` holds the running collection's id (`SET NX`,
//! expiring after [`RUN_TTL`] if its node dies); while it is set, writes add the digests
//! they reference to `gc:touched:<id>` and then look them up in `gc:removing:<id>`; the
//! collection adds each digest to `gc:removing:<id>` and then looks it up in
//! `gc:touched:<id>` before removing it. Every command touches one key.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pier_core::{CoreError, gc::GcPeers};
use pier_oci::Digest;

use crate::Shared;

/// A collection's marks outlive a node that died running it by this much at most.
pub const RUN_TTL: Duration = Duration::from_secs(6 * 3600);

/// How long a node trusts what it last read of `gc:running`. Shorter than
/// [`pier_core::gc::SETTLE`]: every write that starts after a collection announced
/// itself and settled sees the announcement. When Redis cannot be read, the last answer
/// read stands, so writes keep working through a failover.
pub const RUNNING_CACHE: Duration = Duration::from_secs(1);

/// [`GcPeers`] in Redis.
pub struct RedisGcPeers {
    /// The shared state.
    pub shared: Shared,
    /// The id of the collection this node runs.
    run: Mutex<Option<String>>,
    /// `gc:running` as last read, and when.
    running: Mutex<Option<(std::time::Instant, Option<String>)>>,
}

impl RedisGcPeers {
    /// Coordinates this node's collections and writes through `shared`.
    pub fn new(shared: Shared) -> RedisGcPeers {
        RedisGcPeers {
            shared,
            run: Mutex::new(None),
            running: Mutex::new(None),
        }
    }

    fn mine(&self) -> Option<String> {
        self.run.lock().expect("gc run poisoned").clone()
    }

    /// The running collection's id, read at most every [`RUNNING_CACHE`].
    async fn running(&self) -> Option<String> {
        let cached = self.running.lock().expect("gc running poisoned").clone();
        if let Some((at, id)) = &cached
            && at.elapsed() < RUNNING_CACHE
        {
            return id.clone();
        }
        let mut get = redis::cmd("GET");
        get.arg(self.shared.inner.keys.gc_running());
        match self
            .shared
            .query::<Option<String>>("gc_running", &get)
            .await
        {
            Ok(id) => {
                *self.running.lock().expect("gc running poisoned") =
                    Some((std::time::Instant::now(), id.clone()));
                id
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading gc:running failed; using the last answer");
                cached.and_then(|(_, id)| id)
            }
        }
    }
}

fn failed(e: crate::ClusterError) -> CoreError {
    CoreError::Coordination(e.to_string())
}

impl Shared {
    async fn gc_add(&self, key: &str, members: &[String]) -> Result<(), CoreError> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(key).arg(members);
        let _: i64 = self.query("gc_add", &cmd).await.map_err(failed)?;
        let mut cmd = redis::cmd("EXPIRE");
        cmd.arg(key).arg(RUN_TTL.as_secs());
        let _: i64 = self.query("gc_expire", &cmd).await.map_err(failed)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl GcPeers for RedisGcPeers {
    async fn begin(&self) -> pier_core::Result<bool> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!("{}-{nanos}", crate::adapters::node_id());
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.shared.inner.keys.gc_running())
            .arg(&id)
            .arg("NX")
            .arg("EX")
            .arg(RUN_TTL.as_secs());
        let set: Option<String> = self.shared.query("gc_begin", &cmd).await.map_err(failed)?;
        if set.is_none() {
            return Ok(false);
        }
        *self.run.lock().expect("gc run poisoned") = Some(id);
        Ok(true)
    }

    async fn end(&self) -> pier_core::Result<()> {
        let Some(id) = self.run.lock().expect("gc run poisoned").take() else {
            return Ok(());
        };
        let keys = &self.shared.inner.keys;
        let mut get = redis::cmd("GET");
        get.arg(keys.gc_running());
        let running: Option<String> = self.shared.query("gc_end", &get).await.map_err(failed)?;
        if running.as_deref() == Some(id.as_str()) {
            let mut del = redis::cmd("DEL");
            del.arg(keys.gc_running());
            let _: i64 = self.shared.query("gc_end", &del).await.map_err(failed)?;
        }
        for key in [keys.gc_touched(&id), keys.gc_removing(&id)] {
            let mut del = redis::cmd("DEL");
            del.arg(key);
            let _: i64 = self.shared.query("gc_end", &del).await.map_err(failed)?;
        }
        Ok(())
    }

    async fn touch(&self, digests: &[Digest]) -> pier_core::Result<Option<Digest>> {
        if digests.is_empty() {
            return Ok(None);
        }
        let keys = &self.shared.inner.keys;
        let Some(run) = self.running().await else {
            return Ok(None);
        };
        let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        // Our mark first, then the collection's.
        self.shared.gc_add(&keys.gc_touched(&run), &names).await?;
        let mut cmd = redis::cmd("SMISMEMBER");
        cmd.arg(keys.gc_removing(&run)).arg(&names);
        let removing: Vec<i64> = self.shared.query("gc_touch", &cmd).await.map_err(failed)?;
        Ok(digests
            .iter()
            .zip(removing)
            .find(|(_, r)| *r == 1)
            .map(|(d, _)| d.clone()))
    }

    async fn claim(&self, digest: &Digest) -> pier_core::Result<bool> {
        let Some(run) = self.mine() else {
            return Ok(true);
        };
        let keys = &self.shared.inner.keys;
        let name = digest.to_string();
        // Our mark first, then the writes'.
        self.shared
            .gc_add(&keys.gc_removing(&run), std::slice::from_ref(&name))
            .await?;
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(keys.gc_touched(&run)).arg(&name);
        let touched: i64 = self.shared.query("gc_claim", &cmd).await.map_err(failed)?;
        if touched == 0 {
            return Ok(true);
        }
        // Kept: writes of it may go on.
        let mut cmd = redis::cmd("SREM");
        cmd.arg(keys.gc_removing(&run)).arg(&name);
        let _: i64 = self.shared.query("gc_claim", &cmd).await.map_err(failed)?;
        Ok(false)
    }
}
