//! Harbor-style role-based access control for Pier, as an `authorizer` plugin.
//!
//! The rules live in [`policy`] (plain Rust, unit-tested on the host); this file only
//! converts between the WIT types and the policy's, reads the configuration through
//! the `config` capability, and binds against LDAP through the `ldap` capability.
//! See README.md for the configuration schema.
#![deny(rust_2018_idioms)]

pub mod policy;

#[cfg(target_arch = "wasm32")]
#[allow(clippy::too_many_arguments)] // in the generated bindings
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "authorizer",
    });

    use std::sync::OnceLock;

    use crate::policy;
    // The world's `use types.{...}` already brought AccessRequest, Decision,
    // Credentials, Identity and AuthError into this module.
    use pier::plugin::types::{Action, Subject};
    use pier::plugin::{config, ldap, log};

    /// The parsed configuration, or why it is unusable. An instance parses it once;
    /// the host makes new instances (and so parses again) after a reload or a trap.
    static CONFIG: OnceLock<Result<policy::Config, String>> = OnceLock::new();

    fn config() -> &'static Result<policy::Config, String> {
        CONFIG.get_or_init(|| {
            let parsed = policy::Config::parse(&config::document())
                .map_err(|e| format!("rbac: invalid config: {e}"));
            if let Err(e) = &parsed {
                log::write(log::Level::Error, e);
            }
            parsed
        })
    }

    fn action(a: Action) -> policy::Action {
        match a {
            Action::Pull => policy::Action::Pull,
            Action::Push => policy::Action::Push,
            Action::Delete => policy::Action::Delete,
            Action::Search => policy::Action::Search,
            Action::Manage => policy::Action::Manage,
            Action::Admin => policy::Action::Admin,
        }
    }

    fn subject(s: Subject) -> policy::Subject {
        match s {
            Subject::Anonymous => policy::Subject::Anonymous,
            Subject::User(p) => policy::Subject::User {
                name: p.name,
                groups: p.groups,
            },
            Subject::Robot(r) => policy::Subject::Robot {
                name: r.name,
                permissions: r
                    .permissions
                    .into_iter()
                    .map(|p| policy::Permission {
                        project: p.project,
                        actions: p.actions.into_iter().map(action).collect(),
                    })
                    .collect(),
            },
        }
    }

    struct Rbac;

    impl Guest for Rbac {
        fn authorize(request: AccessRequest) -> Decision {
            let cfg = match config() {
                Ok(c) => c,
                Err(e) => return Decision::Deny(e.clone()),
            };
            let req = policy::Request {
                subject: subject(request.subject),
                action: action(request.action),
                project: request.project,
            };
            match cfg.decide(&req) {
                policy::Decision::Allow => Decision::Allow,
                policy::Decision::Deny(reason) => Decision::Deny(reason),
            }
        }

        fn authenticate(credentials: Credentials) -> Result<Identity, AuthError> {
            // Without a usable config nobody can be authorized anyway; say why.
            let cfg = config()
                .as_ref()
                .map_err(|e| AuthError::Unavailable(e.clone()))?;
            let bind = |dn: &str, password: &str| {
                ldap::simple_bind(dn, password).map_err(|e| match e {
                    ldap::LdapError::Denied => policy::BindError::Denied,
                    ldap::LdapError::Unavailable(m) => policy::BindError::Unavailable(m),
                })
            };
            match policy::authenticate(cfg, &credentials.username, &credentials.password, bind) {
                policy::Authn::Verified(name) => Ok(Identity {
                    name,
                    groups: Vec::new(),
                }),
                policy::Authn::NotHandled => Err(AuthError::NotHandled),
                policy::Authn::InvalidCredentials => Err(AuthError::InvalidCredentials),
                policy::Authn::Unavailable(m) => Err(AuthError::Unavailable(m)),
            }
        }
    }

    export!(Rbac);
}
