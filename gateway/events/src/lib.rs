//! Pier's registry events, their durable outbox and webhook delivery.
//!
//! The flow, all behind [`Events`]:
//! 1. [`Events::publish`] gives an [`EventDraft`] the next id and the time, and appends
//!    it to the [`Journal`]; it returns once the event is on disk (fsync, shared by
//!    concurrent publishers), so a push acknowledged to a client never loses its event.
//! 2. The dispatcher reads unprocessed events in id order, asks the [`Router`] (the
//!    notifier plugin) for [`DeliveryRequest`]s, and stores them in the [`Outbox`]
//!    together with the new cursor. A crash in between routes the events again; the
//!    delivery ids (the idempotency keys) are derived from (event id, index, url), so
//!    the outbox keeps one copy.
//!    A request the router marks refused ([`DeliveryRequest::refused`]), with a URL that
//!    is not http(s) or with a header outside [`check_header`]'s allowlist is stored as
//!    `failed` at once and never sent.
//! 3. The scheduler sends due entries: `POST` with the router's headers plus
//!    `Idempotency-Key`, `X-Pier-Delivery` (both the delivery id), `X-Pier-Event-Id`,
//!    `X-Pier-Attempt` and, with a secret for the URL, `X-Pier-Timestamp` and
//!    `X-Pier-Signature` ([`signing`]: HMAC-SHA256 over timestamp, event id, delivery id
//!    and body, with the endpoint's own secret). 2xx is delivered; anything else is
//!    retried with exponential backoff and jitter ([`pier_upstream::Backoff`], the policy
//!    of every outbound client of Pier), then failed.
//! 4. The outbox is the delivery log ([`Events::deliveries`], [`Events::redeliver`]);
//!    finished entries are pruned by [`Retention`].
//!
//! Guarantees and limits:
//! - Delivery is at least once: a receiver must use `Idempotency-Key` to drop
//!   duplicates (a crash may resend an entry whose "delivered" was not yet recorded).
//! - With [`EventsConfig::ordered_per_url`] (the default) one URL gets its deliveries one
//!   at a time in event order, so a failing receiver holds back its later deliveries
//!   until the earlier one is delivered or failed; other URLs are not held back.
//! - Routing is sequential, one event at a time, each call bounded by
//!   [`EventsConfig::router_timeout`]; a slow router delays deliveries, never publishes.
//! - Redirects are not followed (a 3xx is a failed attempt).
//! - `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are honoured ([`pier_upstream::proxy`]).
//!
//! Storage is two small traits ([`Journal`], [`Outbox`]); [`disk`] implements both.
//! Stores shared by several instances (Redis, in `pier-cluster`) take
//! [`Events::publisher`] on every instance, [`Events::spawn_workers`] on one at a time
//! (the lease holder), and [`EventsConfig::poll_interval`] to see the others' events.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io;
use std::path::PathBuf;

pub mod delivery;
pub mod disk;
mod engine;
pub mod event;
mod sender;
pub mod signing;
pub mod store;

pub use delivery::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryKey, DeliveryPage, DeliveryRequest,
    DeliveryStatus, PageRequest, PendingDelivery, Retention,
};
pub use engine::{Events, EventsConfig, RouteError, Router, WebhookRouter, Workers};
pub use event::{Event, EventDraft, EventKind, Timestamp};
pub use sender::{MAX_ROUTER_HEADER_VALUE, MAX_ROUTER_HEADERS, check_header, check_headers};
pub use signing::{EndpointSecret, SignatureError, SignedHeaders, signature, verify};
pub use store::{Journal, Outbox, Stores};

/// The crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the event store {0} is locked by another instance")]
    Locked(PathBuf),
    #[error("invalid delivery id {0:?}")]
    InvalidDeliveryId(String),
    #[error("no delivery {0}")]
    NotFound(DeliveryId),
    #[error("the event store is closed")]
    Closed,
    #[error("TLS setup for webhooks: {0}")]
    Tls(String),
    #[error("proxy settings for webhooks")]
    Proxy(#[source] pier_upstream::proxy::ProxyConfigError),
    /// A storage backend's own failure (for backends other than [`disk`]).
    #[error("event store backend: {context}")]
    Backend {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}
