//! Webhook signatures: which secret signs a delivery, what the signature covers, and how
//! a receiver checks it.
//!
//! A signed request carries
//! - `X-Pier-Timestamp`: the Unix time (seconds) of this attempt,
//! - `X-Pier-Event-Id`: the event's id,
//! - `X-Pier-Delivery` (and `Idempotency-Key`): the delivery's id,
//! - `X-Pier-Signature: sha256=<hex>`: HMAC-SHA256 with the endpoint's secret over
//!   `"<timestamp>.<event id>.<delivery id>.<body>"` ([`signed_payload`]).
//!
//! A receiver recomputes the HMAC with its own secret, compares in constant time, rejects
//! a timestamp older (or further in the future) than its tolerance, and drops a delivery
//! id it has already processed. Each endpoint should have its own secret
//! ([`EndpointSecret`]): a request captured at (or written by) one receiver then fails
//! verification at every other, and a replay to the same one is stale after the
//! tolerance and a duplicate before it. [`verify`] does all of it.

use std::fmt;
use std::time::Duration;

use ring::hmac;

/// How old (or how far in the future) [`verify`] accepts a timestamp, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The secret of the deliveries to one endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSecret {
    /// Matches a delivery URL that is equal to it, that continues with a query (`?`), or,
    /// when it ends with `/`, that starts with it. The longest match wins.
    pub url: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSecret")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EndpointSecret {
    /// Whether it applies to `url`; `Some(length of the match)` when it does.
    fn matches(&self, url: &str) -> Option<usize> {
        let rest = url.strip_prefix(self.url.as_str())?;
        let ok = rest.is_empty() || rest.starts_with('?') || self.url.ends_with('/');
        ok.then_some(self.url.len())
    }
}

/// The keys of the sender: one per endpoint, and a default for the rest.
pub(crate) struct SigningKeys {
    endpoints: Vec<(EndpointSecret, hmac::Key)>,
    default: Option<hmac::Key>,
}

impl SigningKeys {
    pub(crate) fn new(default: Option<&[u8]>, endpoints: &[EndpointSecret]) -> SigningKeys {
        SigningKeys {
            endpoints: endpoints
                .iter()
                .map(|e| (e.clone(), hmac::Key::new(hmac::HMAC_SHA256, &e.secret)))
                .collect(),
            default: default.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
        }
    }

    /// The key signing deliveries to `url`: its endpoint's, else the default, else none
    /// (the request goes unsigned).
    pub(crate) fn for_url(&self, url: &str) -> Option<&hmac::Key> {
        self.endpoints
            .iter()
            .filter_map(|(e, k)| e.matches(url).map(|n| (n, k)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, k)| k)
            .or(self.default.as_ref())
    }
}

/// The bytes the signature covers: `"<timestamp>.<event id>.<delivery id>.<body>"`.
pub fn signed_payload(timestamp: u64, event_id: u64, delivery_id: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}.{event_id}.{delivery_id}.").into_bytes();
    m.extend_from_slice(body);
    m
}

pub(crate) fn sign_with(
    key: &hmac::Key,
    timestamp: u64,
    event_id: u64,
    delivery_id: &str,
    body: &[u8],
) -> String {
    let tag = hmac::sign(key, &signed_payload(timestamp, event_id, delivery_id, body));
    format!("sha256={}", hex::encode(tag.as_ref()))
}

/// The `X-Pier-Signature` value of a request: `sha256=<hex HMAC-SHA256(secret,
/// signed_payload(...))>`.
pub fn signature(
    secret: &[u8],
    timestamp: u64,
    event_id: u64,
    delivery_id: &str,
    body: &[u8],
) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    sign_with(&key, timestamp, event_id, delivery_id, body)
}

/// The header values a receiver checks, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// `X-Pier-Timestamp`.
    pub timestamp: &'a str,
    /// `X-Pier-Event-Id`.
    pub event_id: &'a str,
    /// `X-Pier-Delivery`.
    pub delivery: &'a str,
    /// `X-Pier-Signature`.
    pub signature: &'a str,
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature headers: {0}")]
    Malformed(&'static str),
    #[error("timestamp {timestamp} is {skew_secs} s away from now (tolerance {tolerance_secs} s)")]
    Stale {
        timestamp: u64,
        skew_secs: u64,
        tolerance_secs: u64,
    },
    #[error("signature does not match")]
    Mismatch,
}

/// A receiver's check of a request: the signature matches `secret` (compared in constant
/// time) and the timestamp is within `tolerance` of `now_secs`. Deduplicating by
/// delivery id is left to the receiver.
pub fn verify(
    secret: &[u8],
    headers: SignedHeaders<'_>,
    body: &[u8],
    now_secs: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let timestamp: u64 = headers
        .timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("X-Pier-Timestamp is not a number"))?;
    let event_id: u64 = headers
        .event_id
        .parse()
        .map_err(|_| SignatureError::Malformed("X-Pier-Event-Id is not a number"))?;
    let hex_sig = headers
        .signature
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed(
            "X-Pier-Signature is not sha256=...",
        ))?;
    let tag = hex::decode(hex_sig)
        .map_err(|_| SignatureError::Malformed("X-Pier-Signature is not hex"))?;
    let skew = now_secs.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale {
            timestamp,
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let payload = signed_payload(timestamp, event_id, headers.delivery, body);
    hmac::verify(&key, &payload, &tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_rfc4231_case_2_over_the_payload() {
        // RFC 4231 test case 2, with the message split as Pier composes it.
        let body = b"what do ya want for nothing?";
        assert_eq!(
            signed_payload(1, 2, "d", body),
            b"1.2.d.what do ya want for nothing?"
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let whole = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(whole.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_covers_timestamp_event_delivery_and_body() {
        let s = signature(b"k", 1_700_000_000, 7, "abc", b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert_ne!(s, signature(b"k", 1_700_000_001, 7, "abc", b"{}"));
        assert_ne!(s, signature(b"k", 1_700_000_000, 8, "abc", b"{}"));
        assert_ne!(s, signature(b"k", 1_700_000_000, 7, "abd", b"{}"));
        assert_ne!(s, signature(b"k", 1_700_000_000, 7, "abc", b"{ }"));
        assert_ne!(s, signature(b"other", 1_700_000_000, 7, "abc", b"{}"));
    }

    fn headers<'a>(ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            timestamp: ts,
            event_id: "7",
            delivery: "abc",
            signature: sig,
        }
    }

    #[test]
    fn verify_checks_secret_time_and_format() {
        let now = 1_700_000_000;
        let sig = signature(b"mine", now, 7, "abc", b"body");
        let ok = verify(
            b"mine",
            headers("1700000000", &sig),
            b"body",
            now + 10,
            DEFAULT_TOLERANCE,
        );
        assert_eq!(ok, Ok(()));
        // another endpoint's secret: a delivery replayed there fails
        assert_eq!(
            verify(
                b"theirs",
                headers("1700000000", &sig),
                b"body",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        // a changed body, timestamp or delivery id fails
        assert_eq!(
            verify(
                b"mine",
                headers("1700000000", &sig),
                b"bodx",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"mine",
                headers("1700000001", &sig),
                b"body",
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        let mut other = headers("1700000000", &sig);
        other.delivery = "abd";
        assert_eq!(
            verify(b"mine", other, b"body", now, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        // replayed after the tolerance
        assert!(matches!(
            verify(
                b"mine",
                headers("1700000000", &sig),
                b"body",
                now + 301,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Stale { skew_secs: 301, .. })
        ));
        for (ts, s) in [
            ("x", sig.as_str()),
            ("1700000000", "md5=00"),
            ("1700000000", "sha256=zz"),
        ] {
            assert!(matches!(
                verify(b"mine", headers(ts, s), b"body", now, DEFAULT_TOLERANCE),
                Err(SignatureError::Malformed(_))
            ));
        }
    }

    #[test]
    fn each_endpoint_gets_its_own_key() {
        let e = |url: &str, secret: &[u8]| EndpointSecret {
            url: url.into(),
            secret: secret.to_vec(),
        };
        let keys = SigningKeys::new(
            Some(b"default"),
            &[
                e("http://a.test/hook", b"a"),
                e("http://b.test/", b"b"),
                e("http://b.test/special/", b"b2"),
            ],
        );
        let sig = |url: &str| {
            keys.for_url(url)
                .map(|k| sign_with(k, 1, 1, "d", b""))
                .unwrap()
        };
        let with = |s: &[u8]| signature(s, 1, 1, "d", b"");
        assert_eq!(sig("http://a.test/hook"), with(b"a"));
        assert_eq!(sig("http://a.test/hook?x=1"), with(b"a"));
        // no prefix match without a trailing `/`: /hooked is another endpoint
        assert_eq!(sig("http://a.test/hooked"), with(b"default"));
        assert_eq!(sig("http://a.test.evil/hook"), with(b"default"));
        assert_eq!(sig("http://b.test/x/y"), with(b"b"));
        assert_eq!(sig("http://b.test/special/z"), with(b"b2"), "longest match");
        assert!(
            SigningKeys::new(None, &[])
                .for_url("http://a.test/")
                .is_none()
        );
        let debug = format!("{:?}", e("http://a/", b"hunter2"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
