//! Registry events and their CloudEvents 1.0 JSON form.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pier_oci::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ManifestPushed,
    ManifestPulled,
    ManifestDeleted,
    /// The mirror stored something it fetched from an upstream.
    MirrorFill,
    /// A replication job changed state (`detail` says which job and state).
    ReplicationJob,
}

impl EventKind {
    /// The CloudEvents `type` attribute.
    pub fn cloudevents_type(self) -> &'static str {
        match self {
            EventKind::ManifestPushed => "dev.pier.manifest.pushed",
            EventKind::ManifestPulled => "dev.pier.manifest.pulled",
            EventKind::ManifestDeleted => "dev.pier.manifest.deleted",
            EventKind::MirrorFill => "dev.pier.mirror.filled",
            EventKind::ReplicationJob => "dev.pier.replication.job",
        }
    }
}

/// A point in time, microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let micros = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
        Timestamp(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let add = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(add))
    }

    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_micros(later.0.saturating_sub(self.0))
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-27T23:45:00.123456Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1_000_000;
        let micros = self.0 % 1_000_000;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What the server knows when something happens; [`crate::Events::publish`] turns it
/// into an [`Event`] (id, time, source).
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub kind: EventKind,
    pub repository: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub actor: Option<String>,
    pub detail: Option<Value>,
}

impl EventDraft {
    pub fn new(kind: EventKind, repository: RepoName) -> EventDraft {
        EventDraft {
            kind,
            repository,
            tag: None,
            digest: None,
            media_type: None,
            size: None,
            actor: None,
            detail: None,
        }
    }

    pub fn tag(mut self, tag: Tag) -> Self {
        self.tag = Some(tag);
        self
    }

    pub fn digest(mut self, digest: Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    pub fn media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = Some(media_type.into());
        self
    }

    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// A published event. `id` is unique and increasing on this journal (it survives
/// restarts); the serde form is the journal's record, [`Event::to_cloudevent`] the wire form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub kind: EventKind,
    pub time: Timestamp,
    /// The CloudEvents `source` (the node's URL or name, from the config).
    pub source: String,
    #[serde(with = "as_string")]
    pub repository: RepoName,
    #[serde(
        with = "as_opt_string",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tag: Option<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl Event {
    /// An event from a draft, with `id` still 0: the journal assigns it.
    pub fn from_draft(draft: EventDraft, time: Timestamp, source: String) -> Event {
        Event {
            id: 0,
            kind: draft.kind,
            time,
            source,
            repository: draft.repository,
            tag: draft.tag,
            digest: draft.digest,
            media_type: draft.media_type,
            size: draft.size,
            actor: draft.actor,
            detail: draft.detail,
        }
    }

    /// `repository[:tag]`, the CloudEvents `subject`.
    pub fn subject(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{}", self.repository, tag),
            None => self.repository.to_string(),
        }
    }

    /// The CloudEvents 1.0 structured-mode JSON object.
    pub fn to_cloudevent(&self) -> Value {
        let mut data = Map::new();
        data.insert("repository".into(), json!(self.repository.as_str()));
        if let Some(tag) = &self.tag {
            data.insert("tag".into(), json!(tag.as_str()));
        }
        if let Some(digest) = &self.digest {
            data.insert("digest".into(), json!(digest.to_string()));
        }
        if let Some(media_type) = &self.media_type {
            data.insert("mediaType".into(), json!(media_type));
        }
        if let Some(size) = self.size {
            data.insert("size".into(), json!(size));
        }
        if let Some(actor) = &self.actor {
            data.insert("actor".into(), json!(actor));
        }
        if let Some(detail) = &self.detail {
            data.insert("detail".into(), detail.clone());
        }
        json!({
            "specversion": "1.0",
            "id": self.id.to_string(),
            "source": self.source,
            "type": self.kind.cloudevents_type(),
            "time": self.time.to_rfc3339(),
            "datacontenttype": "application/json",
            "subject": self.subject(),
            "data": Value::Object(data),
        })
    }

    /// The CloudEvents JSON as text: what the notifier plugin sees, and a sensible
    /// webhook body.
    pub fn to_json(&self) -> String {
        self.to_cloudevent().to_string()
    }
}

mod as_string {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

mod as_opt_string {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            Timestamp::from_micros(0).to_rfc3339(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_micros(1_700_000_000_000_000 + 42).to_rfc3339(),
            "2023-11-14T22:13:20.000042Z"
        );
        // 2024-02-29T12:00:00Z, a leap day.
        assert_eq!(
            Timestamp::from_micros(1_709_208_000_000_000).to_rfc3339(),
            "2024-02-29T12:00:00.000000Z"
        );
    }

    fn sample() -> Event {
        let draft = EventDraft::new(EventKind::ManifestPushed, "library/alpine".parse().unwrap())
            .tag("3.20".parse().unwrap())
            .digest(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                    .parse()
                    .unwrap(),
            )
            .media_type("application/vnd.oci.image.manifest.v1+json")
            .size(1234)
            .actor("alice");
        let mut e = Event::from_draft(
            draft,
            Timestamp::from_micros(1_700_000_000_000_000),
            "https://pier.example".into(),
        );
        e.id = 7;
        e
    }

    #[test]
    fn cloudevent_shape() {
        let v = sample().to_cloudevent();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "7");
        assert_eq!(v["type"], "dev.pier.manifest.pushed");
        assert_eq!(v["source"], "https://pier.example");
        assert_eq!(v["subject"], "library/alpine:3.20");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["size"], 1234);
        assert_eq!(v["data"]["actor"], "alice");
        assert_eq!(
            v["data"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert!(v["data"].get("detail").is_none());
    }

    #[test]
    fn journal_form_round_trips() {
        let e = sample();
        let bytes = serde_json::to_vec(&e).unwrap();
        let back: Event = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
    }
}
