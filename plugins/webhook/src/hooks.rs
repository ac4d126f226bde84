//! Endpoints, their filters and the bodies they get: no WIT types, so the unit tests
//! run on the host.

use std::collections::BTreeMap;

use pier_glob as glob;
use serde::Deserialize;

/// What happened (the WIT `event-kind`, by its WIT name in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ManifestPushed,
    ManifestPulled,
    ManifestDeleted,
    MirrorFill,
    ReplicationJob,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ManifestPushed => "manifest-pushed",
            Kind::ManifestPulled => "manifest-pulled",
            Kind::ManifestDeleted => "manifest-deleted",
            Kind::MirrorFill => "mirror-fill",
            Kind::ReplicationJob => "replication-job",
        }
    }
}

/// The WIT `event`, as plain Rust.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: Kind,
    pub time: String,
    pub repository: String,
    pub project: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub actor: Option<String>,
    pub cloudevent: String,
}

/// One POST for the host to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Which body an endpoint gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    /// The event's CloudEvents JSON, as Pier builds it (`application/cloudevents+json`).
    #[default]
    Cloudevent,
    /// A flat JSON object of the event's fields (`application/json`).
    Compact,
}

/// One receiver. Every filter that is set must match; an unset (or empty) one matches
/// every event. Patterns use `*` and `?`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `http://` or `https://`.
    pub url: String,
    /// Event kinds, e.g. `["manifest-pushed", "manifest-deleted"]`.
    #[serde(default)]
    pub events: Vec<Kind>,
    /// Project patterns, e.g. `["team", "lib*"]`.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Repository patterns, e.g. `["team/*"]`.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Tag patterns, e.g. `["v*"]`; when set, events without a tag never match.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra request headers (an `Authorization` secret, ...).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Body,
}

/// The whole configuration: `{"endpoints": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub endpoints: Vec<Endpoint>,
}

impl Config {
    /// Parses and checks the configuration; typos (unknown keys, event kinds, body
    /// kinds) and URLs that are not HTTP are errors.
    pub fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for (i, e) in config.endpoints.iter().enumerate() {
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return Err(format!(
                    "endpoints[{i}].url {:?} is not an http:// or https:// URL",
                    e.url
                ));
            }
        }
        Ok(config)
    }

    /// One delivery per endpoint whose filters all match `event`, in configuration order.
    pub fn deliveries(&self, event: &Event) -> Vec<Delivery> {
        self.endpoints
            .iter()
            .filter(|e| e.wants(event))
            .map(|e| e.delivery(event))
            .collect()
    }
}

impl Endpoint {
    fn wants(&self, ev: &Event) -> bool {
        (self.events.is_empty() || self.events.contains(&ev.kind))
            && glob::any(&self.projects, &ev.project)
            && glob::any(&self.repositories, &ev.repository)
            && (self.tags.is_empty() || ev.tag.as_deref().is_some_and(|t| glob::any(&self.tags, t)))
    }

    fn delivery(&self, ev: &Event) -> Delivery {
        let (content_type, body) = match self.body {
            Body::Cloudevent => (
                "application/cloudevents+json",
                ev.cloudevent.clone().into_bytes(),
            ),
            Body::Compact => ("application/json", compact(ev)),
        };
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".to_owned(), content_type.to_owned()));
        }
        Delivery {
            url: self.url.clone(),
            headers,
            body,
        }
    }
}

/// `{"id":..,"event":"manifest-pushed","time":..,"repository":..,...}`; absent
/// fields are `null`.
fn compact(ev: &Event) -> Vec<u8> {
    serde_json::json!({
        "id": ev.id,
        "event": ev.kind.as_str(),
        "time": ev.time,
        "repository": ev.repository,
        "project": ev.project,
        "tag": ev.tag,
        "digest": ev.digest,
        "media_type": ev.media_type,
        "size": ev.size,
        "actor": ev.actor,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, repository: &str, tag: Option<&str>) -> Event {
        Event {
            id: 7,
            kind,
            time: "2026-11-27T23:45:00Z".into(),
            repository: repository.into(),
            project: repository.split('/').next().unwrap().into(),
            tag: tag.map(Into::into),
            digest: Some("sha256:abc".into()),
            media_type: None,
            size: Some(42),
            actor: Some("alice".into()),
            cloudevent: r#"{"specversion":"1.0"}"#.into(),
        }
    }

    const CONFIG: &str = r#"{"endpoints": [
        {"url": "http://hooks.test/all"},
        {"url": "http://hooks.test/team-releases", "events": ["manifest-pushed"],
         "projects": ["team"], "repositories": ["team/*"], "tags": ["v*"],
         "headers": {"Authorization": "Bearer s3cret"}, "body": "compact"},
        {"url": "https://hooks.test/deletes", "events": ["manifest-deleted"],
         "headers": {"Content-Type": "text/plain"}}
    ]}"#;

    fn urls(c: &Config, e: &Event) -> Vec<String> {
        c.deliveries(e).into_iter().map(|d| d.url).collect()
    }

    #[test]
    fn filters() {
        let c = Config::parse(CONFIG).unwrap();
        let push = event(Kind::ManifestPushed, "team/app", Some("v1.2"));
        assert_eq!(
            urls(&c, &push),
            ["http://hooks.test/all", "http://hooks.test/team-releases"]
        );
        // tag filter: wrong tag, no tag at all
        let latest = event(Kind::ManifestPushed, "team/app", Some("latest"));
        assert_eq!(urls(&c, &latest), ["http://hooks.test/all"]);
        let by_digest = event(Kind::ManifestPushed, "team/app", None);
        assert_eq!(urls(&c, &by_digest), ["http://hooks.test/all"]);
        // project and repository filters
        let other = event(Kind::ManifestPushed, "other/app", Some("v1"));
        assert_eq!(urls(&c, &other), ["http://hooks.test/all"]);
        // event filter
        let pull = event(Kind::ManifestPulled, "team/app", Some("v1"));
        assert_eq!(urls(&c, &pull), ["http://hooks.test/all"]);
        let del = event(Kind::ManifestDeleted, "x", None);
        assert_eq!(
            urls(&c, &del),
            ["http://hooks.test/all", "https://hooks.test/deletes"]
        );
    }

    #[test]
    fn bodies_and_headers() {
        let c = Config::parse(CONFIG).unwrap();
        let d = c.deliveries(&event(Kind::ManifestPushed, "team/app", Some("v1")));
        assert_eq!(d[0].body, br#"{"specversion":"1.0"}"#);
        assert_eq!(
            d[0].headers,
            [(
                "content-type".to_owned(),
                "application/cloudevents+json".to_owned()
            )]
        );
        let v: serde_json::Value = serde_json::from_slice(&d[1].body).unwrap();
        assert_eq!(v["event"], "manifest-pushed");
        assert_eq!(v["repository"], "team/app");
        assert_eq!(v["tag"], "v1");
        assert_eq!(v["size"], 42);
        assert_eq!(v["media_type"], serde_json::Value::Null);
        assert!(
            d[1].headers
                .contains(&("Authorization".into(), "Bearer s3cret".into()))
        );
        assert!(
            d[1].headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        // a configured content type wins
        let d = c.deliveries(&event(Kind::ManifestDeleted, "a/b", None));
        assert_eq!(
            d[1].headers,
            [("Content-Type".to_owned(), "text/plain".to_owned())]
        );
    }

    #[test]
    fn invalid_configs_are_errors() {
        for bad in [
            "",
            "{}",
            r#"{"endpoints": [{"url": "ftp://x"}]}"#,
            r#"{"endpoints": [{"url": "http://x", "events": ["pushed"]}]}"#,
            r#"{"endpoints": [{"url": "http://x", "body": "xml"}]}"#,
            r#"{"endpoints": [{"url": "http://x", "repos": ["a"]}]}"#,
            r#"{"endpoints": [], "extra": 1}"#,
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
        assert!(Config::parse(r#"{"endpoints": []}"#).is_ok());
    }
}
