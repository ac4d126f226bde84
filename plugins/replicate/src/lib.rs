//! Harbor-like replication rules for Pier, as a `replicator` plugin: for each push
//! (and, when asked, each delete) matching a rule, and for scheduled rules on each
//! tick, the replication actions Pier should run. Pier moves the bytes; this plugin
//! only decides what goes where.
//!
//! The rules live in [`rules`] (plain Rust, unit-tested on the host); this file
//! converts the WIT types, reads the configuration through the `config` capability
//! and keeps its state (each scheduled rule's last run, the repositories it has seen)
//! in the `kv` capability when granted, else in the instance's memory (lost on a
//! reload, a restart or a trap: a scheduled rule then runs on the next tick). See
//! README.md for the configuration.
#![deny(rust_2018_idioms)]

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod guest {
    // The `replicator` world of ../../wit: the `Guest` trait with `on_event` and
    // `on_tick`, the WIT types and the host capabilities as plain functions.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "replicator",
    });

    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Mutex, OnceLock};

    use crate::rules;
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
            let config = config().as_ref().map_err(Clone::clone)?;
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
            let config = config().as_ref().map_err(Clone::clone)?;
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

    export!(Replicate);
}
