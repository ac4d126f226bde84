//! Signed images only, for Pier, as an `admission` plugin: on pulls and mirror fills of
//! the repositories a rule names, an image must carry a signature by one of the rule's
//! public keys, in cosign's `.sig` tag layout or as a Sigstore bundle referrer. `enforce`
//! refuses the rest (a mirror never caches it); `warn` serves it and logs why.
//!
//! The verification lives in [`verify`] (plain Rust, unit-tested on the host); this file
//! converts the WIT request and reads through `registry-read`. See README.md.
#![deny(rust_2018_idioms)]

pub mod verify;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "admission",
    });

    use std::sync::OnceLock;

    use crate::verify;
    use pier::plugin::admission_types::Stage;
    use pier::plugin::crypto;
    use pier::plugin::registry_read::{self, ReadError};
    use pier::plugin::{config, log};

    /// Parsed once per instance (a reload or a trap makes a fresh one).
    static CONFIG: OnceLock<Result<verify::Config, String>> = OnceLock::new();

    fn config() -> &'static Result<verify::Config, String> {
        CONFIG.get_or_init(|| {
            let parsed = verify::Config::parse(&config::document())
                .map_err(|e| format!("signatures: invalid config: {e}"));
            if let Err(e) = &parsed {
                log::write(log::Level::Error, e);
            }
            parsed
        })
    }

    fn read_error(e: ReadError) -> verify::ReadError {
        match e {
            ReadError::NotFound => verify::ReadError::NotFound,
            ReadError::Denied => {
                verify::ReadError::Other("registry-read denied: grant `registry`".into())
            }
            ReadError::TooLarge => verify::ReadError::Other("too large".into()),
            ReadError::Unavailable(m) => verify::ReadError::Other(m),
        }
    }

    struct Registry;

    impl verify::Reader for Registry {
        fn manifest(&self, reference: &str) -> Result<verify::Fetched, verify::ReadError> {
            registry_read::manifest(reference)
                .map(|m| verify::Fetched {
                    digest: m.digest,
                    bytes: m.bytes,
                })
                .map_err(read_error)
        }

        fn blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, verify::ReadError> {
            registry_read::blob(digest, max).map_err(read_error)
        }

        fn verify(&self, key: &[u8], message: &[u8], der: &[u8]) -> Option<bool> {
            // Native when granted `crypto`; otherwise the plugin verifies itself.
            crypto::verify_ecdsa_p256_sha256(key, message, der).ok()
        }
    }

    struct Signatures;

    impl Guest for Signatures {
        fn admit(r: AdmissionRequest) -> Decision {
            let stage = match r.stage {
                Stage::Pull => verify::Stage::Pull,
                Stage::MirrorFill => verify::Stage::MirrorFill,
                _ => verify::Stage::Other,
            };
            if stage == verify::Stage::Other {
                return Decision::Allow;
            }
            // An unusable configuration refuses what it was meant to check (fail closed).
            let c = match config() {
                Ok(c) => c,
                Err(e) => return Decision::Deny(e.clone()),
            };
            let referrers: Vec<verify::Referrer> = r
                .referrers
                .iter()
                .map(|f| verify::Referrer {
                    digest: f.digest.clone(),
                    artifact_type: f.artifact_type.clone(),
                })
                .collect();
            let req = verify::Request {
                stage,
                project: &r.project,
                repository: &r.repository,
                digest: &r.digest,
                manifest: &r.manifest,
                referrers: &referrers,
            };
            match verify::decide(c, &req, &Registry) {
                verify::Outcome::Admit => Decision::Allow,
                verify::Outcome::Signed(found) => {
                    log::write(
                        log::Level::Debug,
                        &format!("{} of {}: {found}", r.digest, r.repository),
                    );
                    Decision::Allow
                }
                verify::Outcome::Warn(why) => {
                    log::write(log::Level::Warn, &format!("served unsigned (warn): {why}"));
                    Decision::Allow
                }
                verify::Outcome::Deny(why) => Decision::Deny(why),
            }
        }
    }

    export!(Signatures);
}
