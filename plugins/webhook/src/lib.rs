//! A generic JSON webhook for Pier, as a `notifier` plugin: for each registry event,
//! one HTTP POST per configured endpoint whose filters match. Pier makes the requests
//! (with its own timeouts and retries); this plugin only decides who gets what.
//!
//! The filters live in [`hooks`] (plain Rust, unit-tested on the host); this file
//! converts the WIT event and reads the configuration through the `config`
//! capability. See README.md for the configuration.
#![deny(rust_2018_idioms)]

pub mod hooks;

#[cfg(target_arch = "wasm32")]
mod guest {
    // The `notifier` world of ../../wit: the `Guest` trait with `notify`, the WIT
    // types and the host capabilities as plain functions.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "notifier",
    });

    use std::sync::OnceLock;

    use crate::hooks;
    // The world's `use types.{event, delivery}` brought `Event` and `Delivery` here.
    use pier::plugin::types::EventKind;
    use pier::plugin::{config, log};

    /// The parsed configuration, or why it is unusable: parsed once per instance (the
    /// host makes a fresh instance after a reload or a trap, which parses it again).
    static CONFIG: OnceLock<Result<hooks::Config, String>> = OnceLock::new();

    fn config() -> &'static Result<hooks::Config, String> {
        CONFIG.get_or_init(|| {
            let parsed = hooks::Config::parse(&config::document())
                .map_err(|e| format!("webhook: invalid config: {e}"));
            if let Err(e) = &parsed {
                log::write(log::Level::Error, e);
            }
            parsed
        })
    }

    fn kind(k: EventKind) -> hooks::Kind {
        match k {
            EventKind::ManifestPushed => hooks::Kind::ManifestPushed,
            EventKind::ManifestPulled => hooks::Kind::ManifestPulled,
            EventKind::ManifestDeleted => hooks::Kind::ManifestDeleted,
            EventKind::MirrorFill => hooks::Kind::MirrorFill,
            EventKind::ReplicationJob => hooks::Kind::ReplicationJob,
        }
    }

    struct Webhook;

    impl Guest for Webhook {
        fn notify(event: Event) -> Result<Vec<Delivery>, String> {
            // An unusable configuration is an error on every call (Pier logs and
            // counts it), never a silent "nobody wants this".
            let config = config().as_ref().map_err(Clone::clone)?;
            let event = hooks::Event {
                id: event.id,
                kind: kind(event.kind),
                time: event.time,
                repository: event.repository,
                project: event.project,
                tag: event.tag,
                digest: event.digest,
                media_type: event.media_type,
                size: event.size,
                actor: event.actor,
                cloudevent: event.cloudevent,
            };
            Ok(config
                .deliveries(&event)
                .into_iter()
                .map(|d| Delivery {
                    url: d.url,
                    headers: d.headers,
                    body: d.body,
                })
                .collect())
        }
    }

    export!(Webhook);
}
