//! The event hooks: [`PluginNotifier`] (world `notifier`) and [`PluginReplicator`]
//! (world `replicator`), and the plain types the server maps its events to. Both run
//! on the same instance pools, deadlines, memory caps and metrics as the authorizer;
//! a failure is a [`PluginFailure`] the caller logs and drops: an event hook never
//! blocks or fails the registry operation behind the event.

use pier_auth::PolicyFailure;

use crate::authorizer::tidy_reason;
use crate::bindings::managed_replicator::exports::pier::plugin::rules as wr;
use crate::bindings::pier::plugin::types as wit;
use crate::error::PluginFailure;
use crate::plugin::Plugin;
use crate::rules::{Rule, RuleError, RuleSource, RuleStore, RuleTrigger};
use crate::world::World;

/// Deliveries one `notify` may return.
pub const MAX_DELIVERIES: usize = 64;
/// Body of one delivery, at most.
pub const MAX_DELIVERY_BODY: usize = 1 << 20;
/// Actions one `on-event` or `on-tick` may return.
pub const MAX_ACTIONS: usize = 1024;

/// What happened (`event-kind` in `wit/types.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ManifestPushed,
    ManifestPulled,
    ManifestDeleted,
    MirrorFill,
    ReplicationJob,
}

/// One registry event, as plugins see it (`event` in `wit/types.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEvent {
    pub id: u64,
    pub kind: EventKind,
    /// RFC 3339, UTC.
    pub time: String,
    pub repository: String,
    /// The first path segment of `repository` ([`PluginEvent::project_of`]).
    pub project: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub actor: Option<String>,
    /// The CloudEvents JSON the host POSTs by default.
    pub cloudevent: String,
}

impl PluginEvent {
    /// The project of a repository: its first path segment (`team` for `team/app`,
    /// `alpine` for `alpine`), as for access requests.
    pub fn project_of(repository: &str) -> String {
        repository.split('/').next().unwrap_or_default().to_owned()
    }
}

/// One HTTP POST a notifier asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `http://` or `https://` (checked).
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// At most [`MAX_DELIVERY_BODY`] bytes (checked).
    pub body: Vec<u8>,
    /// Why it must not be sent: the plugin lacks the `http` grant, or the URL's host is
    /// not on its `allowed_hosts` (the grants of `http-outbound`). The caller records it
    /// as a failed delivery with this reason and never sends it.
    pub refused: Option<String>,
}

/// Which way a [`ReplicationAction`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicationDirection {
    /// From this Pier to the target.
    Push,
    /// From the target into this Pier.
    Pull,
}

/// One replication job a replicator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationAction {
    pub direction: ReplicationDirection,
    /// A target name from Pier's configuration (not checked here).
    pub target: String,
    pub source_repository: String,
    pub destination_repository: String,
    /// Tags or tag patterns (`*`, `?`) to expand against the source's tags.
    pub tags: Vec<String>,
    pub digest: Option<String>,
    /// Delete at the destination instead of copying.
    pub delete: bool,
}

fn wit_event(e: &PluginEvent) -> wit::Event {
    wit::Event {
        id: e.id,
        kind: match e.kind {
            EventKind::ManifestPushed => wit::EventKind::ManifestPushed,
            EventKind::ManifestPulled => wit::EventKind::ManifestPulled,
            EventKind::ManifestDeleted => wit::EventKind::ManifestDeleted,
            EventKind::MirrorFill => wit::EventKind::MirrorFill,
            EventKind::ReplicationJob => wit::EventKind::ReplicationJob,
        },
        time: e.time.clone(),
        repository: e.repository.clone(),
        project: e.project.clone(),
        tag: e.tag.clone(),
        digest: e.digest.clone(),
        media_type: e.media_type.clone(),
        size: e.size,
        actor: e.actor.clone(),
        cloudevent: e.cloudevent.clone(),
    }
}

/// The plugin's own `err(...)`: logged and counted as `unavailable`.
fn plugin_error(plugin: &Plugin, call: &str, message: String) -> PluginFailure {
    let message = tidy_reason(message);
    tracing::error!(plugin = plugin.name(), call, error = %message, "plugin returned an error");
    plugin.failure(
        PolicyFailure::Unavailable,
        format!("{call} returned an error: {message}"),
    )
}

/// An answer the host refuses: logged and counted as `invalid_result`.
fn invalid(plugin: &Plugin, call: &str, message: String) -> PluginFailure {
    tracing::error!(plugin = plugin.name(), call, error = %message, "plugin result refused");
    plugin.failure(PolicyFailure::InvalidResult, format!("{call}: {message}"))
}

fn check_delivery(d: wit::Delivery) -> Result<Delivery, String> {
    if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
        return Err(format!(
            "delivery URL {:?} is not http:// or https://",
            tidy_reason(d.url)
        ));
    }
    if d.body.len() > MAX_DELIVERY_BODY {
        return Err(format!(
            "delivery body of {} bytes (at most {MAX_DELIVERY_BODY})",
            d.body.len()
        ));
    }
    Ok(Delivery {
        url: d.url,
        headers: d.headers,
        body: d.body,
        refused: None,
    })
}

fn check_action(a: wit::ReplicationAction) -> Result<ReplicationAction, String> {
    for (what, v) in [
        ("target", &a.target),
        ("source-repository", &a.source_repository),
        ("destination-repository", &a.destination_repository),
    ] {
        if v.is_empty() {
            return Err(format!("replication action with an empty {what}"));
        }
    }
    Ok(ReplicationAction {
        direction: match a.direction {
            wit::ReplicationDirection::Push => ReplicationDirection::Push,
            wit::ReplicationDirection::Pull => ReplicationDirection::Pull,
        },
        target: a.target,
        source_repository: a.source_repository,
        destination_repository: a.destination_repository,
        tags: a.tags,
        digest: a.digest,
        delete: a.delete,
    })
}

fn check_all<T, U>(
    plugin: &Plugin,
    call: &str,
    items: Vec<T>,
    max: usize,
    check: impl Fn(T) -> Result<U, String>,
) -> Result<Vec<U>, PluginFailure> {
    if items.len() > max {
        return Err(invalid(
            plugin,
            call,
            format!("{} results (at most {max})", items.len()),
        ));
    }
    items
        .into_iter()
        .map(check)
        .collect::<Result<_, _>>()
        .map_err(|m| invalid(plugin, call, m))
}

crate::hook::hook_type!(
    /// The current version of a notifier plugin (hot reload like [`crate::PluginAuthorizer`]).
    PluginNotifier,
    World::Notifier
);

impl PluginNotifier {
    /// The deliveries for one event. Returns within about twice the plugin's deadline
    /// (waiting for a free instance, then the call); call it off the request path.
    /// Deliveries the plugin's grants do not allow come back with
    /// [`Delivery::refused`] set (and are logged); the caller must not send them.
    pub async fn notify(&self, event: &PluginEvent) -> Result<Vec<Delivery>, PluginFailure> {
        let plugin = self.hook.current();
        let ev = wit_event(event);
        let r = plugin
            .with_instance(async |b, store| b.notifier()?.call_notify(store, &ev).await)
            .await?;
        let deliveries = r.map_err(|m| plugin_error(&plugin, "notify", m))?;
        let mut deliveries = check_all(
            &plugin,
            "notify",
            deliveries,
            MAX_DELIVERIES,
            check_delivery,
        )?;
        for d in &mut deliveries {
            d.refused = plugin.caps.delivery_refusal(&d.url);
            if let Some(why) = &d.refused {
                tracing::warn!(plugin = plugin.name(), event = event.id, url = %tidy_reason(d.url.clone()),
                    reason = %why, "delivery refused: not sent");
            }
        }
        Ok(deliveries)
    }
}

crate::hook::hook_type!(
    /// The current version of a replicator plugin (hot reload like [`crate::PluginAuthorizer`]).
    PluginReplicator,
    World::Replicator
);

/// The least deadline of a `rules` call: they read and write (and sync) the plugin's
/// `kv`.
const RULES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

fn rule_error(e: wr::RuleError) -> RuleError {
    match e {
        wr::RuleError::NotFound(m) => RuleError::NotFound(tidy_reason(m)),
        wr::RuleError::Invalid(m) => RuleError::Invalid(tidy_reason(m)),
        wr::RuleError::Unavailable(m) => RuleError::Unavailable(tidy_reason(m)),
    }
}

fn wit_direction(d: ReplicationDirection) -> wit::ReplicationDirection {
    match d {
        ReplicationDirection::Push => wit::ReplicationDirection::Push,
        ReplicationDirection::Pull => wit::ReplicationDirection::Pull,
    }
}

fn direction(d: wit::ReplicationDirection) -> ReplicationDirection {
    match d {
        wit::ReplicationDirection::Push => ReplicationDirection::Push,
        wit::ReplicationDirection::Pull => ReplicationDirection::Pull,
    }
}

fn wit_rule(r: &Rule) -> wr::Rule {
    wr::Rule {
        name: r.name.clone(),
        source: match &r.source {
            RuleSource::Project(p) => wr::RuleSource::Project(p.clone()),
            RuleSource::Repository(p) => wr::RuleSource::Repository(p.clone()),
        },
        tags: r.tags.clone(),
        target: r.target.clone(),
        destination: r.destination.clone(),
        trigger: match r.trigger {
            RuleTrigger::Event => wr::RuleTrigger::Event,
            RuleTrigger::EverySecs(s) => wr::RuleTrigger::EverySecs(s),
        },
        delete: r.delete,
        direction: wit_direction(r.direction),
    }
}

fn rule(r: wr::Rule) -> Rule {
    Rule {
        name: r.name,
        source: match r.source {
            wr::RuleSource::Project(p) => RuleSource::Project(p),
            wr::RuleSource::Repository(p) => RuleSource::Repository(p),
        },
        tags: r.tags,
        target: r.target,
        destination: r.destination,
        trigger: match r.trigger {
            wr::RuleTrigger::Event => RuleTrigger::Event,
            wr::RuleTrigger::EverySecs(s) => RuleTrigger::EverySecs(s),
        },
        delete: r.delete,
        direction: direction(r.direction),
    }
}

impl PluginReplicator {
    /// The replication actions one event calls for (off the request path).
    pub async fn on_event(
        &self,
        event: &PluginEvent,
    ) -> Result<Vec<ReplicationAction>, PluginFailure> {
        let plugin = self.hook.current();
        let ev = wit_event(event);
        let r = plugin
            .with_instance(async |b, store| b.replicator()?.call_on_event(store, &ev).await)
            .await?;
        let actions = r.map_err(|m| plugin_error(&plugin, "on-event", m))?;
        check_all(&plugin, "on-event", actions, MAX_ACTIONS, check_action)
    }

    /// The actions due at `unix_secs` (the host calls it periodically).
    pub async fn on_tick(&self, unix_secs: u64) -> Result<Vec<ReplicationAction>, PluginFailure> {
        let plugin = self.hook.current();
        let r = plugin
            .with_instance(async |b, store| b.replicator()?.call_on_tick(store, unix_secs).await)
            .await?;
        let actions = r.map_err(|m| plugin_error(&plugin, "on-tick", m))?;
        check_all(&plugin, "on-tick", actions, MAX_ACTIONS, check_action)
    }

    /// One call of the `rules` export ([`crate::hook::Hook::manage`]: a change makes every
    /// later `on-event` and `on-tick` read the rules again).
    async fn rules_call<R: Send>(
        &self,
        change: bool,
        call: impl AsyncFnOnce(
            &crate::compat::Rules,
            &mut wasmtime::Store<crate::host::HostState>,
        ) -> wasmtime::Result<Result<R, wr::RuleError>>,
    ) -> Result<R, RuleError> {
        let r = self
            .hook
            .manage(
                change,
                RULES_DEADLINE,
                Plugin::manages_rules,
                async |b, store| match b.rules()? {
                    Some(r) => call(r, store).await,
                    None => Err(wasmtime::Error::msg("instance without the rules export")),
                },
            )
            .await;
        match r {
            None => Err(RuleError::NotManaged),
            Some(Ok(Ok(v))) => Ok(v),
            Some(Ok(Err(e))) => Err(rule_error(e)),
            Some(Err(f)) => Err(RuleError::Unavailable(f.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl RuleStore for PluginReplicator {
    /// Whether the loaded version manages rules (exports `pier:plugin/rules`).
    fn manages_rules(&self) -> bool {
        self.hook.current().manages_rules()
    }

    async fn list_rules(&self) -> Result<Vec<Rule>, RuleError> {
        let rs = self.rules_call(false, async |r, s| r.list(s).await).await?;
        Ok(rs.into_iter().map(rule).collect())
    }

    async fn put_rule(&self, new: &Rule) -> Result<Rule, RuleError> {
        let w = wit_rule(new);
        self.rules_call(true, async |r, s| r.put(s, &w).await)
            .await
            .map(rule)
    }

    async fn delete_rule(&self, name: &str) -> Result<(), RuleError> {
        self.rules_call(true, async |r, s| r.delete(s, name).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_is_the_first_segment() {
        assert_eq!(PluginEvent::project_of("team/app/web"), "team");
        assert_eq!(PluginEvent::project_of("alpine"), "alpine");
        assert_eq!(PluginEvent::project_of(""), "");
    }

    fn delivery(url: &str, body: usize) -> wit::Delivery {
        wit::Delivery {
            url: url.into(),
            headers: vec![("a".into(), "b".into())],
            body: vec![b'x'; body],
        }
    }

    #[test]
    fn deliveries_are_checked() {
        assert!(check_delivery(delivery("http://h:1/x", 10)).is_ok());
        assert!(check_delivery(delivery("https://h/x", MAX_DELIVERY_BODY)).is_ok());
        assert!(check_delivery(delivery("ftp://h/x", 0)).is_err());
        assert!(check_delivery(delivery("/relative", 0)).is_err());
        assert!(check_delivery(delivery("http://h/x", MAX_DELIVERY_BODY + 1)).is_err());
    }

    #[test]
    fn actions_are_checked() {
        let a = |target: &str, from: &str, to: &str| wit::ReplicationAction {
            direction: wit::ReplicationDirection::Pull,
            target: target.into(),
            source_repository: from.into(),
            destination_repository: to.into(),
            tags: vec!["v*".into()],
            digest: None,
            delete: false,
        };
        let ok = check_action(a("site-b", "team/app", "team/app")).unwrap();
        assert_eq!(ok.direction, ReplicationDirection::Pull);
        assert_eq!(ok.tags, ["v*"]);
        for bad in [a("", "a", "b"), a("t", "", "b"), a("t", "a", "")] {
            assert!(check_action(bad).is_err());
        }
    }
}
