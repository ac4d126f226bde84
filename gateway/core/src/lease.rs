//! Leases: which node of a scaled-out deployment fetches a cold mirrored blob. Nodes that
//! share blob storage (S3) take a lease per blob before asking the upstream; the others
//! wait for the blob to appear in the shared store. `pier-cluster` implements this over
//! Redis; [`MemoryLeases`] serves one process (and tests of several "nodes" in one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::Result;

/// Named, expiring, exclusive leases held by this node.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes the lease if nobody (alive) holds it.
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<bool>;
    /// Extends a lease this node holds; false when it lost it.
    async fn renew(&self, name: &str, ttl: Duration) -> Result<bool>;
    /// Gives up a lease this node holds.
    async fn release(&self, name: &str) -> Result<()>;
    /// Whether anyone holds it.
    async fn held(&self, name: &str) -> Result<bool>;
}

/// Leases in memory: one table, viewed by several owners.
#[derive(Clone, Default)]
pub struct MemoryLeases {
    table: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    owner: String,
}

impl MemoryLeases {
    /// The same table seen by another owner (another "node").
    pub fn for_owner(&self, owner: &str) -> MemoryLeases {
        MemoryLeases {
            table: self.table.clone(),
            owner: owner.to_owned(),
        }
    }
}

#[async_trait]
impl Leases for MemoryLeases {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<bool> {
        let mut t = self.table.lock().expect("leases poisoned");
        let now = Instant::now();
        match t.get(name) {
            Some((_, until)) if *until > now => Ok(false),
            _ => {
                t.insert(name.to_owned(), (self.owner.clone(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn renew(&self, name: &str, ttl: Duration) -> Result<bool> {
        let mut t = self.table.lock().expect("leases poisoned");
        match t.get_mut(name) {
            Some((o, until)) if *o == self.owner && *until > Instant::now() => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, name: &str) -> Result<()> {
        let mut t = self.table.lock().expect("leases poisoned");
        if t.get(name).is_some_and(|(o, _)| *o == self.owner) {
            t.remove(name);
        }
        Ok(())
    }

    async fn held(&self, name: &str) -> Result<bool> {
        let t = self.table.lock().expect("leases poisoned");
        Ok(t.get(name)
            .is_some_and(|(_, until)| *until > Instant::now()))
    }
}
