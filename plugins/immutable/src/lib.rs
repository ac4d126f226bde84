//! Immutable tags for Pier, as an `admission` plugin: a tag matching a rule is set once;
//! pushing another manifest under it, deleting it, or deleting the manifest it is on is
//! refused with the rule named. Harbor's tag immutability rules, as a plugin.
//!
//! The rules live in [`rules`] (plain Rust, unit-tested on the host); this file converts
//! the WIT request and reads the configuration through the `config` capability. See
//! README.md.
#![deny(rust_2018_idioms)]

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "admission",
    });

    use std::sync::OnceLock;

    use crate::rules;
    use pier::plugin::admission_types::Stage;
    use pier::plugin::{config, log};

    /// Parsed once per instance (a reload or a trap makes a fresh one).
    static CONFIG: OnceLock<Result<rules::Config, String>> = OnceLock::new();

    fn config() -> &'static Result<rules::Config, String> {
        CONFIG.get_or_init(|| {
            let parsed = rules::Config::parse(&config::document())
                .map_err(|e| format!("immutable: invalid config: {e}"));
            if let Err(e) = &parsed {
                log::write(log::Level::Error, e);
            }
            parsed
        })
    }

    struct Immutable;

    impl Guest for Immutable {
        fn admit(r: AdmissionRequest) -> Decision {
            // An unusable configuration refuses every change it might have protected
            // (fail closed) and lets reads through.
            let c = match config() {
                Ok(c) => c,
                Err(e) => {
                    return match r.stage {
                        Stage::Push | Stage::Delete => Decision::Deny(e.clone()),
                        _ => Decision::Allow,
                    };
                }
            };
            let stage = match r.stage {
                Stage::Push => rules::Stage::Push,
                Stage::Delete => rules::Stage::Delete,
                _ => rules::Stage::Other,
            };
            let req = rules::Request {
                stage,
                project: &r.project,
                repository: &r.repository,
                tag: r.tag.as_deref(),
                digest: &r.digest,
                current_digest: r.current_digest.as_deref(),
                tags: &r.tags,
            };
            match rules::decide(c, &req) {
                Ok(()) => Decision::Allow,
                Err(reason) => Decision::Deny(reason),
            }
        }
    }

    export!(Immutable);
}
