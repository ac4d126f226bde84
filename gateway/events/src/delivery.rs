//! Deliveries: what the router asks for, and the outbox entry that tracks one.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::EventsError;
use crate::event::Timestamp;

/// One webhook call the router (the notifier plugin) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRequest {
    /// `http://` or `https://` URL; the request is a `POST`.
    pub url: String,
    /// Extra request headers, within [`crate::check_header`]'s allowlist (the host adds
    /// its own `Idempotency-Key`, `X-Pier-*`). A header outside it fails the delivery.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Why the request must not be sent (e.g. a notifier plugin without the grant or a
    /// URL outside its allowed hosts): it is recorded as `failed` with this error, and
    /// never sent, not even by a redelivery.
    pub refused: Option<String>,
}

/// A delivery's id, also its `Idempotency-Key`: 32 lowercase hex characters, the first
/// half of `sha256(event id (u64 BE) || index (u32 BE) || url)`. Deterministic, so an
/// event routed again after a crash yields the same ids and the outbox keeps one copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryId(String);

impl DeliveryId {
    pub fn derive(event_id: u64, index: u32, url: &str) -> DeliveryId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&event_id.to_be_bytes());
        ctx.update(&index.to_be_bytes());
        ctx.update(url.as_bytes());
        let digest = ctx.finish();
        DeliveryId(hex::encode(&digest.as_ref()[..16]))
    }

    pub fn parse(s: &str) -> Result<DeliveryId, EventsError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(DeliveryId(s.to_owned()))
        } else {
            Err(EventsError::InvalidDeliveryId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeliveryId {
    type Error = EventsError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeliveryId::parse(&s)
    }
}

impl From<DeliveryId> for String {
    fn from(id: DeliveryId) -> String {
        id.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeliveryId({})", self.0)
    }
}

/// Where a delivery sorts: by event id, then by its index in the router's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeliveryKey {
    pub event_id: u64,
    pub index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; sent when `next_attempt` is reached.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Gave up after the configured attempts, or the request cannot be sent at all.
    Failed,
}

/// One outbox entry: the request and its delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub event_id: u64,
    pub index: u32,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
    pub status: DeliveryStatus,
    /// Requests sent so far (reset by a redelivery).
    pub attempts: u32,
    /// HTTP status of the last attempt, if it got a response.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created: Timestamp,
    pub last_attempt: Option<Timestamp>,
    /// When a pending entry is due.
    pub next_attempt: Timestamp,
    /// When it became delivered or failed.
    pub finished: Option<Timestamp>,
    /// Why it is never sent ([`DeliveryRequest::refused`]); a redelivery fails again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Delivery {
    /// A new entry for the `index`th request the router returned for an event: pending,
    /// or failed at once when the request is refused.
    pub fn new(event_id: u64, index: u32, request: DeliveryRequest, now: Timestamp) -> Delivery {
        let refused = request.refused.map(|r| format!("refused: {r}"));
        Delivery {
            id: DeliveryId::derive(event_id, index, &request.url),
            event_id,
            index,
            url: request.url,
            headers: request.headers,
            body: request.body,
            status: if refused.is_some() {
                DeliveryStatus::Failed
            } else {
                DeliveryStatus::Pending
            },
            attempts: 0,
            last_status: None,
            last_error: refused.clone(),
            created: now,
            last_attempt: None,
            next_attempt: now,
            finished: refused.is_some().then_some(now),
            refused,
        }
    }

    /// The delivery-log view for the admin API: status and timing, without the body
    /// or header values (the plugin's headers may carry credentials).
    pub fn log_json(&self) -> serde_json::Value {
        let time = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        serde_json::json!({
            "id": self.id.as_str(),
            "eventId": self.event_id,
            "index": self.index,
            "url": self.url,
            "headers": header_names,
            "bodySize": self.body.len(),
            "status": self.status,
            "attempts": self.attempts,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "created": self.created.to_rfc3339(),
            "lastAttempt": time(self.last_attempt),
            "nextAttempt": (self.status == DeliveryStatus::Pending).then(|| self.next_attempt.to_rfc3339()),
            "finished": time(self.finished),
        })
    }

    pub fn key(&self) -> DeliveryKey {
        DeliveryKey {
            event_id: self.event_id,
            index: self.index,
        }
    }
}

/// A pending entry as the scheduler sees it (no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub key: DeliveryKey,
    pub id: DeliveryId,
    pub url: String,
    pub next_attempt: Timestamp,
}

impl From<&Delivery> for PendingDelivery {
    fn from(d: &Delivery) -> Self {
        PendingDelivery {
            key: d.key(),
            id: d.id.clone(),
            url: d.url.clone(),
            next_attempt: d.next_attempt,
        }
    }
}

/// Which entries [`crate::Events::deliveries`] lists; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<u64>,
    pub url: Option<String>,
}

impl DeliveryFilter {
    pub fn matches(&self, d: &Delivery) -> bool {
        self.status.is_none_or(|s| s == d.status)
            && self.event_id.is_none_or(|e| e == d.event_id)
            && self.url.as_deref().is_none_or(|u| u == d.url)
    }
}

/// A page of the delivery log, newest first: entries with a key below `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub before: Option<DeliveryKey>,
    pub limit: usize,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            before: None,
            limit: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    pub items: Vec<Delivery>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<DeliveryKey>,
}

/// How long finished entries stay in the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// At most this many delivered entries are kept (the newest).
    pub delivered_max_count: usize,
    pub delivered_max_age: Duration,
    /// Failed entries stay this long (for redelivery), then go.
    pub failed_max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            delivered_max_count: 10_000,
            delivered_max_age: Duration::from_secs(24 * 3600),
            failed_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = DeliveryId::derive(1, 0, "http://a/");
        assert_eq!(a, DeliveryId::derive(1, 0, "http://a/"));
        assert_ne!(a, DeliveryId::derive(1, 1, "http://a/"));
        assert_ne!(a, DeliveryId::derive(2, 0, "http://a/"));
        assert_ne!(a, DeliveryId::derive(1, 0, "http://b/"));
        assert_eq!(DeliveryId::parse(a.as_str()).unwrap(), a);
        assert!(DeliveryId::parse("xyz").is_err());
    }

    #[test]
    fn entry_round_trips() {
        let req = DeliveryRequest {
            url: "http://x/hook".into(),
            headers: vec![("x-a".into(), "1".into())],
            body: Bytes::from_static(b"\x00\xffbody"),
            refused: None,
        };
        let d = Delivery::new(3, 1, req, Timestamp::from_micros(5));
        let back: Delivery = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let log = d.log_json();
        assert_eq!(log["status"], "pending");
        assert_eq!(log["eventId"], 3);
        assert_eq!(log["headers"], serde_json::json!(["x-a"]));
        assert_eq!(log["bodySize"], 6);
        assert_eq!(log["created"], "1970-01-01T00:00:00.000005Z");
        assert!(log.get("body").is_none());
    }

    #[test]
    fn a_refused_request_is_failed_from_the_start() {
        let req = DeliveryRequest {
            url: "http://elsewhere.test/".into(),
            headers: vec![],
            body: Bytes::from_static(b"{}"),
            refused: Some("not in allowed_hosts".into()),
        };
        let d = Delivery::new(3, 0, req, Timestamp::from_micros(5));
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.attempts, 0);
        assert_eq!(
            d.last_error.as_deref(),
            Some("refused: not in allowed_hosts")
        );
        assert_eq!(d.finished, Some(Timestamp::from_micros(5)));
        let back: Delivery = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        // entries stored before the field existed read as not refused
        let mut old = serde_json::to_value(&d).unwrap();
        old.as_object_mut().unwrap().remove("refused");
        let old: Delivery = serde_json::from_value(old).unwrap();
        assert_eq!(old.refused, None);
    }
}
