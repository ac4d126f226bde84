//! The storage roles: a [`Journal`] of events and an [`Outbox`] of deliveries. The disk
//! backend is [`crate::disk`]; a Redis backend can implement the same two traits.

use std::sync::Arc;

use async_trait::async_trait;

use crate::EventsError;
use crate::delivery::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryPage, PageRequest, PendingDelivery, Retention,
};
use crate::event::{Event, Timestamp};

/// The event journal: an append-only, durable sequence of events with increasing ids.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Gives each event the next id (their `id` fields are overwritten, in order) and
    /// stores them durably: once this returns `Ok`, the events survive a crash. Ids are
    /// unique and increasing across restarts.
    async fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, EventsError>;

    /// Up to `limit` stored events with an id above `after`, in id order.
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventsError>;

    /// Events up to `through` are processed; the journal may discard them.
    async fn release(&self, through: u64) -> Result<(), EventsError>;
}

/// The outbox: delivery entries and the dispatcher's cursor.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// The id of the last event whose deliveries are in the outbox (0 at first).
    async fn cursor(&self) -> Result<u64, EventsError>;

    /// Atomically and durably: add the entries whose id is not present yet, and move the
    /// cursor to `through`. Returns how many entries were new.
    async fn commit_routed(
        &self,
        through: u64,
        entries: Vec<Delivery>,
    ) -> Result<usize, EventsError>;

    /// Replace an existing entry (same id); does nothing if it is gone (pruned). Need
    /// not be durable at once: a lost update makes an entry be sent again, with the
    /// same idempotency key.
    async fn update(&self, entry: &Delivery) -> Result<(), EventsError>;

    async fn get(&self, id: &DeliveryId) -> Result<Option<Delivery>, EventsError>;

    /// Up to `limit` pending entries, oldest key first; with `oldest_per_url`, only the
    /// oldest pending entry of each URL (what in-order delivery may send next).
    async fn pending(
        &self,
        limit: usize,
        oldest_per_url: bool,
    ) -> Result<Vec<PendingDelivery>, EventsError>;

    /// How many entries are pending (neither delivered nor failed yet).
    async fn pending_count(&self) -> Result<u64, EventsError>;

    /// The delivery log, newest key first.
    async fn list(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<DeliveryPage, EventsError>;

    /// Drops finished entries beyond the retention; returns how many went.
    async fn prune(&self, retention: &Retention, now: Timestamp) -> Result<usize, EventsError>;
}

/// A journal and an outbox from one backend.
#[derive(Clone)]
pub struct Stores {
    pub journal: Arc<dyn Journal>,
    pub outbox: Arc<dyn Outbox>,
}
