//! Tag retention for Pier, as a `retention` plugin, with Harbor's rule shapes: keep the N
//! most recently pushed or pulled, keep what was pushed or pulled within D days, keep
//! tags matching patterns, remove untagged manifests after D days.
//!
//! The rules live in [`rules`] (plain Rust, unit-tested on the host); this file converts
//! the WIT request and reads the configuration through `config`. See README.md.
#![deny(rust_2018_idioms)]

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "retention",
    });

    use std::sync::OnceLock;

    use crate::rules;
    use pier::plugin::config;

    static CONFIG: OnceLock<Result<rules::Config, String>> = OnceLock::new();

    struct Retain;

    impl Guest for Retain {
        fn plan(r: RetentionRequest) -> Result<Vec<Removal>, String> {
            // An unusable configuration fails the run: nothing is deleted.
            let c = CONFIG
                .get_or_init(|| {
                    rules::Config::parse(&config::document())
                        .map_err(|e| format!("retain: invalid config: {e}"))
                })
                .as_ref()
                .map_err(Clone::clone)?;
            let repos: Vec<rules::Repository> = r
                .repositories
                .into_iter()
                .map(|repo| rules::Repository {
                    repository: repo.repository,
                    tags: repo
                        .tags
                        .into_iter()
                        .map(|t| rules::Tag {
                            tag: t.tag,
                            pushed: t.pushed,
                            pulled: t.pulled,
                        })
                        .collect(),
                    untagged: repo
                        .untagged
                        .into_iter()
                        .map(|u| rules::Untagged {
                            digest: u.digest,
                            pushed: u.pushed,
                        })
                        .collect(),
                })
                .collect();
            Ok(rules::plan(c, &r.project, &repos, r.now)
                .into_iter()
                .map(|x| Removal {
                    repository: x.repository,
                    tag: x.tag,
                    digest: x.digest,
                    reason: x.reason,
                })
                .collect())
        }
    }

    export!(Retain);
}
