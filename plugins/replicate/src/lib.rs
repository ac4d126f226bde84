//! Harbor-like replication rules for Pier, as a `replicator` plugin: for each push
//! (and, when asked, each delete) matching a rule, and for scheduled rules on each
//! tick, the replication actions Pier should run. Pier moves the bytes; this plugin
//! only decides what goes where.
//!
//! The rules live in [`rules`] and the rule store in [`store`] (plain Rust, unit-tested
//! on the host); this file converts the WIT types, reads the configuration through the
//! `config` capability, keeps the rules Pier's admin API changes in the `kv` capability
//! (world `managed-replicator`: the configuration's rules only seed them) and keeps its
//! state (each scheduled rule's last run, the repositories it has seen)
//! in the `kv` capability when granted, else in the instance's memory (lost on a
//! reload, a restart or a trap: a scheduled rule then runs on the next tick). See
//! README.md for the configuration.
#![deny(rust_2018_idioms)]

pub mod rules;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod guest {
    // The `managed-replicator` world of ../../wit: the `Guest` trait with `on_event`
    // and `on_tick`, the `rules` export, the WIT types and the host capabilities as
    // plain functions.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "managed-replicator",
    });

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex, OnceLock};

    use crate::{rules, store};
    use exports::pier::plugin::rules::{
        self as wit_rules, Rule, RuleError, RuleSource, RuleTrigger,
    };
    // The world's `use types.{event, replication-action}` brought `Event` and
    // `ReplicationAction` here.
    use pier::plugin::types::{EventKind, ReplicationDirection};
    use pier::plugin::{config, kv, log};

    /// Repositories remembered for scheduled rules, at most.
    const MAX_REPOS: usize = 1000;
    const REPOS_KEY: &str = "repos";

    static CONFIG: OnceLock<Result<rules::Config, String>> = OnceLock::new();

    fn config() -> &'static Result<rules::Config, String> {
        CONFIG.get_or_init(|| {
            let parsed = rules::Config::parse(&config::document())
                .map_err(|e| format!("replicate: invalid config: {e}"));
            if let Err(e) = &parsed {
                log::write(log::Level::Error, e);
            }
            parsed
        })
    }

    /// The `kv` capability for the rule store. Without the grant the store is never in
    /// use (the configuration's rules answer) and changes fail with a message saying so.
    struct KvCap;

    impl store::Kv for KvCap {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, store::KvFailure> {
            match kv::get(key) {
                Ok(v) => Ok(v),
                Err(kv::KvError::Denied) => Ok(None),
                Err(e) => Err(kv_error(e)),
            }
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), store::KvFailure> {
            kv::set(key, value).map_err(kv_error)
        }
        fn delete(&self, key: &str) -> Result<(), store::KvFailure> {
            kv::delete(key).map_err(kv_error)
        }
    }

    fn kv_error(e: kv::KvError) -> store::KvFailure {
        match e {
            kv::KvError::Denied => store::KvFailure::Other(
                "the kv capability is not granted: add \"kv\" to the plugin's grants to manage rules".into(),
            ),
            kv::KvError::TooLarge => store::KvFailure::TooLarge,
            kv::KvError::Io(m) => store::KvFailure::Other(m),
        }
    }

    fn store_message(e: store::StoreError) -> String {
        match e {
            store::StoreError::NotFound(m)
            | store::StoreError::Conflict(m)
            | store::StoreError::Invalid(m)
            | store::StoreError::Unavailable(m) => m,
        }
    }

    /// The rules in force, read once per instance: Pier replaces every instance after
    /// a change, so they never go stale. A failed read is not remembered.
    static ACTIVE: Mutex<Option<Arc<rules::Config>>> = Mutex::new(None);

    fn active() -> Result<Arc<rules::Config>, String> {
        let seeds = config().as_ref().map_err(Clone::clone)?;
        let mut a = ACTIVE
            .lock()
            .map_err(|_| "replicate: poisoned".to_owned())?;
        if let Some(c) = a.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(
            store::Store::new(&KvCap, seeds)
                .active()
                .map_err(store_message)?,
        );
        *a = Some(c.clone());
        Ok(c)
    }

    /// The state when `kv` is not granted (or fails): this instance's memory.
    static MEMORY: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

    fn load(key: &str) -> Option<Vec<u8>> {
        match kv::get(key) {
            Ok(Some(v)) => Some(v),
            Ok(None) | Err(kv::KvError::Denied) => MEMORY.lock().ok()?.get(key).cloned(),
            Err(e) => {
                log::write(log::Level::Warn, &format!("replicate: kv get {key}: {e:?}"));
                MEMORY.lock().ok()?.get(key).cloned()
            }
        }
    }

    fn save(key: &str, value: Vec<u8>) {
        match kv::set(key, &value) {
            Ok(()) | Err(kv::KvError::Denied) => {}
            Err(e) => log::write(log::Level::Warn, &format!("replicate: kv set {key}: {e:?}")),
        }
        if let Ok(mut m) = MEMORY.lock() {
            m.insert(key.to_owned(), value);
        }
    }

    fn last_run(rule: &str) -> Option<u64> {
        let v = load(&format!("last-run/{rule}"))?;
        String::from_utf8(v).ok()?.parse().ok()
    }

    fn known_repos() -> BTreeSet<String> {
        load(REPOS_KEY)
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    fn remember(repository: &str) {
        let mut repos = known_repos();
        if repos.len() < MAX_REPOS && repos.insert(repository.to_owned()) {
            save(REPOS_KEY, serde_json::to_vec(&repos).unwrap_or_default());
        }
    }

    fn kind(k: EventKind) -> rules::Kind {
        match k {
            EventKind::ManifestPushed => rules::Kind::ManifestPushed,
            EventKind::ManifestPulled => rules::Kind::ManifestPulled,
            EventKind::ManifestDeleted => rules::Kind::ManifestDeleted,
            EventKind::MirrorFill => rules::Kind::MirrorFill,
            EventKind::ReplicationJob => rules::Kind::ReplicationJob,
        }
    }

    fn wit_action(a: rules::Action) -> ReplicationAction {
        ReplicationAction {
            direction: match a.direction {
                rules::Direction::Push => ReplicationDirection::Push,
                rules::Direction::Pull => ReplicationDirection::Pull,
            },
            target: a.target,
            source_repository: a.source_repository,
            destination_repository: a.destination_repository,
            tags: a.tags,
            digest: a.digest,
            delete: a.delete,
        }
    }

    struct Replicate;

    impl Guest for Replicate {
        fn on_event(event: Event) -> Result<Vec<ReplicationAction>, String> {
            let config = active()?;
            let ev = rules::Event {
                kind: kind(event.kind),
                repository: event.repository,
                project: event.project,
                tag: event.tag,
                digest: event.digest,
            };
            // Scheduled push rules replicate the repositories seen here (the plugin
            // can not list the registry's catalog).
            if matches!(
                ev.kind,
                rules::Kind::ManifestPushed | rules::Kind::ManifestPulled | rules::Kind::MirrorFill
            ) && config.scheduled_source(&ev.repository)
            {
                remember(&ev.repository);
            }
            Ok(config.on_event(&ev).into_iter().map(wit_action).collect())
        }

        fn on_tick(unix_secs: u64) -> Result<Vec<ReplicationAction>, String> {
            let config = active()?;
            let known: Vec<String> = known_repos().into_iter().collect();
            let (due, actions) = config.on_tick(unix_secs, last_run, &known);
            for rule in due {
                save(
                    &format!("last-run/{}", rule.name),
                    unix_secs.to_string().into_bytes(),
                );
            }
            Ok(actions.into_iter().map(wit_action).collect())
        }
    }

    fn rule_error(e: store::StoreError) -> RuleError {
        match e {
            store::StoreError::NotFound(m) => RuleError::NotFound(m),
            // Rules are put (created or replaced), never created only: no conflict.
            store::StoreError::Invalid(m) | store::StoreError::Conflict(m) => RuleError::Invalid(m),
            store::StoreError::Unavailable(m) => RuleError::Unavailable(m),
        }
    }

    fn direction(d: ReplicationDirection) -> rules::Direction {
        match d {
            ReplicationDirection::Push => rules::Direction::Push,
            ReplicationDirection::Pull => rules::Direction::Pull,
        }
    }

    fn rule(r: Rule) -> rules::Rule {
        rules::Rule {
            name: r.name,
            source: match r.source {
                RuleSource::Project(p) => rules::Source::Project(p),
                RuleSource::Repository(p) => rules::Source::Repository(p),
            },
            tags: r.tags,
            target: r.target,
            destination: r.destination.unwrap_or_else(|| "{repository}".to_owned()),
            trigger: match r.trigger {
                RuleTrigger::Event => rules::Trigger::Named(rules::Named::Event),
                RuleTrigger::EverySecs(every_secs) => rules::Trigger::Every { every_secs },
            },
            delete: r.delete,
            direction: direction(r.direction),
        }
    }

    fn wit_rule(r: rules::Rule) -> Rule {
        Rule {
            name: r.name,
            source: match r.source {
                rules::Source::Project(p) => RuleSource::Project(p),
                rules::Source::Repository(p) => RuleSource::Repository(p),
            },
            tags: r.tags,
            target: r.target,
            destination: Some(r.destination),
            trigger: match r.trigger {
                rules::Trigger::Named(rules::Named::Event) => RuleTrigger::Event,
                rules::Trigger::Every { every_secs } => RuleTrigger::EverySecs(every_secs),
            },
            delete: r.delete,
            direction: match r.direction {
                rules::Direction::Push => ReplicationDirection::Push,
                rules::Direction::Pull => ReplicationDirection::Pull,
            },
        }
    }

    /// Runs a store call with the configuration's rules as seeds, mapping both ends to
    /// WIT.
    fn with_store<T>(
        call: impl FnOnce(&store::Store<'_, KvCap>) -> Result<T, store::StoreError>,
    ) -> Result<T, RuleError> {
        let seeds = config()
            .as_ref()
            .map_err(|e| RuleError::Unavailable(e.clone()))?;
        call(&store::Store::new(&KvCap, seeds)).map_err(rule_error)
    }

    impl wit_rules::Guest for Replicate {
        fn list_rules() -> Result<Vec<Rule>, RuleError> {
            with_store(|s| s.list()).map(|rs| rs.into_iter().map(wit_rule).collect())
        }

        fn put_rule(r: Rule) -> Result<Rule, RuleError> {
            with_store(|s| s.put(rule(r))).map(wit_rule)
        }

        fn delete_rule(name: String) -> Result<(), RuleError> {
            with_store(|s| s.delete(&name))
        }
    }

    export!(Replicate);
}
