//! Replication rules, kept by the replicator plugins that manage them
//! (`pier:plugin/rules`): list every rule, create or replace one, delete one. System
//! administrators only; every change is an audit line. Without events and replication
//! configured every call answers 409; with replicators of which none manages its rules,
//! 501.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_plugin_host::{
    PluginReplicator, ReplicationDirection, Rule, RuleError, RuleSource, RuleStore, RuleTrigger,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiFailure, Caller, audit, json_response, no_content};
use crate::router::AdminState;

/// Longest rule name (the plugin's limit).
const MAX_NAME: usize = 128;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

impl From<RuleError> for ApiFailure {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::NotFound(m) => ApiFailure::NotFound(m),
            RuleError::Invalid(m) => ApiFailure::BadRequest(m),
            RuleError::Unavailable(m) => ApiFailure::Backend(m),
            e @ RuleError::NotManaged => ApiFailure::NotManaged(e.to_string()),
        }
    }
}

/// The replicators that manage their rules, by name: 409 without events, 501 when none.
fn managing(state: &AdminState) -> Result<Vec<(String, Arc<PluginReplicator>)>, ApiFailure> {
    let events = super::replication::runtime(state)?;
    let found: Vec<_> = events
        .replicators
        .iter()
        .filter(|(_, r)| r.manages_rules())
        .cloned()
        .collect();
    if found.is_empty() {
        return Err(RuleError::NotManaged.into());
    }
    Ok(found)
}

/// The one replicator `plugin` names, or the only one.
fn pick(
    all: Vec<(String, Arc<PluginReplicator>)>,
    plugin: Option<&str>,
) -> Result<(String, Arc<PluginReplicator>), ApiFailure> {
    match plugin {
        Some(p) => all.into_iter().find(|(n, _)| n == p).ok_or_else(|| {
            ApiFailure::NotFound(format!("no replicator plugin {p:?} that manages its rules"))
        }),
        None if all.len() == 1 => Ok(all.into_iter().next().expect("one")),
        None => Err(ApiFailure::BadRequest(format!(
            "{} replicator plugins manage rules ({}): name one in \"plugin\"",
            all.len(),
            all.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub(crate) fn rule_json(plugin: &str, r: &Rule) -> Value {
    let source = match &r.source {
        RuleSource::Project(p) => json!({ "project": p }),
        RuleSource::Repository(p) => json!({ "repository": p }),
    };
    let trigger = match r.trigger {
        RuleTrigger::Event => json!("event"),
        RuleTrigger::EverySecs(s) => json!({ "everySecs": s }),
    };
    json!({
        "name": r.name,
        "plugin": plugin,
        "source": source,
        "tags": r.tags,
        "target": r.target,
        "destination": r.destination.as_deref().unwrap_or("{repository}"),
        "trigger": trigger,
        "delete": r.delete,
        "direction": match r.direction {
            ReplicationDirection::Push => "push",
            ReplicationDirection::Pull => "pull",
        },
    })
}

/// `GET /api/v1/replication/rules`: every rule of every replicator that manages them,
/// by plugin then name.
pub async fn list(state: &AdminState) -> Answer {
    let mut rules = Vec::new();
    for (name, r) in managing(state)? {
        for rule in r.list_rules().await? {
            rules.push(rule_json(&name, &rule));
        }
    }
    Ok(json_response(StatusCode::OK, &json!({ "rules": rules })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum SourceBody {
    Project(String),
    Repository(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TriggerBody {
    Named(NamedTrigger),
    Every(EveryBody),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum NamedTrigger {
    Event,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EveryBody {
    every_secs: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum DirectionBody {
    Push,
    Pull,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleBody {
    /// Which replicator keeps it (needed when several manage rules).
    #[serde(default, deserialize_with = "present")]
    plugin: Option<String>,
    source: SourceBody,
    #[serde(default)]
    tags: Vec<String>,
    target: String,
    #[serde(default, deserialize_with = "present")]
    destination: Option<String>,
    trigger: TriggerBody,
    #[serde(default)]
    delete: bool,
    #[serde(default, deserialize_with = "present")]
    direction: Option<DirectionBody>,
}

/// An optional field that may be left out but not `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `PUT /api/v1/replication/rules/{name}`: creates the rule or replaces it; effective
/// for the next event or tick.
pub async fn put(state: &AdminState, caller: &Caller, name: &str, body: Bytes) -> Answer {
    // Stricter than the plugin (which takes any name without control characters, as in
    // the TOML): names the API creates are safe in paths and shells.
    if name.len() > MAX_NAME || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'%') {
        return Err(ApiFailure::BadRequest(format!(
            "rule name {name:?} must be 1 to {MAX_NAME} printable ASCII characters without spaces or '%'"
        )));
    }
    let b: RuleBody = super::parse_json(&body)?;
    let (plugin, r) = pick(managing(state)?, b.plugin.as_deref())?;
    let rule = Rule {
        name: name.to_owned(),
        source: match b.source {
            SourceBody::Project(p) => RuleSource::Project(p),
            SourceBody::Repository(p) => RuleSource::Repository(p),
        },
        tags: b.tags,
        target: b.target,
        destination: b.destination,
        trigger: match b.trigger {
            TriggerBody::Named(NamedTrigger::Event) => RuleTrigger::Event,
            TriggerBody::Every(e) => RuleTrigger::EverySecs(e.every_secs),
        },
        delete: b.delete,
        direction: match b.direction {
            None | Some(DirectionBody::Push) => ReplicationDirection::Push,
            Some(DirectionBody::Pull) => ReplicationDirection::Pull,
        },
    };
    let out = r.put_rule(&rule).await;
    audit(
        caller,
        "replication.rule.put",
        &format!("{plugin}/{name}"),
        &out,
    );
    Ok(json_response(StatusCode::OK, &rule_json(&plugin, &out?)))
}

/// `DELETE /api/v1/replication/rules/{name}?plugin=`: from the named replicator, the only
/// one, or the one that has the rule.
pub async fn delete(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    query: &[(String, String)],
) -> Answer {
    let all = managing(state)?;
    let plugin = query
        .iter()
        .find(|(k, _)| k == "plugin")
        .map(|(_, v)| v.as_str());
    let (plugin, r) = if plugin.is_some() || all.len() == 1 {
        pick(all, plugin)?
    } else {
        let mut having = Vec::new();
        for (n, r) in all {
            if r.list_rules().await?.iter().any(|x| x.name == name) {
                having.push((n, r));
            }
        }
        match having.len() {
            0 => return Err(RuleError::NotFound(format!("no rule {name:?}")).into()),
            _ => pick(having, None)?,
        }
    };
    let out = r.delete_rule(name).await;
    audit(
        caller,
        "replication.rule.delete",
        &format!("{plugin}/{name}"),
        &out,
    );
    out?;
    Ok(no_content())
}
