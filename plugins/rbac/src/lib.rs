//! Harbor-style role-based access control for Pier, as an `authorizer` plugin.
//!
//! The rules live in [`policy`] and the project store in [`store`] (plain Rust,
//! unit-tested on the host); this file only converts between the WIT types and theirs,
//! reads the configuration through the `config` capability, keeps projects in the `kv`
//! capability, and binds against LDAP through the `ldap` capability. See README.md for
//! the configuration schema.
#![deny(rust_2018_idioms)]

pub mod policy;
pub mod store;

#[cfg(target_arch = "wasm32")]
#[allow(clippy::too_many_arguments)] // in the generated bindings
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "managed-authorizer",
    });

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use crate::{policy, store};
    // The world's `use types.{...}` already brought AccessRequest, Decision,
    // Credentials, Identity and AuthError into this module.
    use exports::pier::plugin::projects::{
        self as wit_projects, Member, MemberKind, Project, ProjectError, Role,
    };
    use pier::plugin::types::{Action, Subject};
    use pier::plugin::{config, kv, ldap, log};

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

    /// The `kv` capability. Without the grant the store is never in use (the
    /// configuration's projects answer) and changes fail with a message saying so.
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
                "the kv capability is not granted: add \"kv\" to the plugin's grants to manage projects".into(),
            ),
            kv::KvError::TooLarge => store::KvFailure::TooLarge,
            kv::KvError::Io(m) => store::KvFailure::Other(m),
        }
    }

    /// What this instance has read from the store. Pier replaces every instance after
    /// a change, so nothing here goes stale.
    #[derive(Default)]
    struct Cache {
        in_use: Option<bool>,
        projects: HashMap<String, Option<policy::Project>>,
    }

    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    }

    /// The request's project as the store knows it, remembered for this instance.
    fn project(
        cfg: &policy::Config,
        name: &str,
    ) -> Result<Option<policy::Project>, store::StoreError> {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(p) = c.projects.get(name) {
                return Ok(p.clone());
            }
            let s = store::Store::new(&KvCap, cfg);
            let in_use = match c.in_use {
                Some(u) => u,
                None => *c.in_use.insert(s.in_use()?),
            };
            let p = s.lookup(name, in_use)?;
            c.projects.insert(name.to_owned(), p.clone());
            Ok(p)
        })
    }

    struct Rbac;

    impl Guest for Rbac {
        fn authorize(request: AccessRequest) -> Decision {
            let cfg = match config() {
                Ok(c) => c,
                Err(e) => return Decision::Deny(e.clone()),
            };
            let found = match request.project.as_deref().map(|p| project(cfg, p)) {
                None => None,
                Some(Ok(p)) => p,
                Some(Err(e)) => return Decision::Deny(store_message(e)),
            };
            let req = policy::Request {
                subject: subject(request.subject),
                action: action(request.action),
                project: request.project,
            };
            match cfg.decide_in(&req, found.as_ref()) {
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

    fn store_message(e: store::StoreError) -> String {
        match e {
            store::StoreError::NotFound(m)
            | store::StoreError::Conflict(m)
            | store::StoreError::Invalid(m)
            | store::StoreError::Unavailable(m) => m,
        }
    }

    fn project_error(e: store::StoreError) -> ProjectError {
        match e {
            store::StoreError::NotFound(m) => ProjectError::NotFound(m),
            store::StoreError::Conflict(m) => ProjectError::Conflict(m),
            store::StoreError::Invalid(m) => ProjectError::Invalid(m),
            store::StoreError::Unavailable(m) => ProjectError::Unavailable(m),
        }
    }

    fn role(r: Role) -> policy::Role {
        match r {
            Role::ProjectAdmin => policy::Role::ProjectAdmin,
            Role::Developer => policy::Role::Developer,
            Role::Guest => policy::Role::Guest,
        }
    }

    fn wit_role(r: policy::Role) -> Role {
        match r {
            policy::Role::ProjectAdmin => Role::ProjectAdmin,
            policy::Role::Developer => Role::Developer,
            policy::Role::Guest => Role::Guest,
        }
    }

    fn kind(k: MemberKind) -> store::MemberKind {
        match k {
            MemberKind::User => store::MemberKind::User,
            MemberKind::Group => store::MemberKind::Group,
        }
    }

    fn wit_project(p: policy::Project) -> Project {
        let entries = |table: std::collections::BTreeMap<String, policy::Role>, k: MemberKind| {
            table.into_iter().map(move |(name, r)| Member {
                kind: k,
                name,
                role: wit_role(r),
            })
        };
        let mut members: Vec<Member> = entries(p.members, MemberKind::User).collect();
        members.extend(entries(p.groups, MemberKind::Group));
        Project {
            name: p.name,
            public: p.public,
            members,
        }
    }

    /// Runs a store call with the configuration, mapping both ends to WIT.
    fn with_store<T>(
        call: impl FnOnce(&store::Store<'_, KvCap>) -> Result<T, store::StoreError>,
    ) -> Result<T, ProjectError> {
        let cfg = config()
            .as_ref()
            .map_err(|e| ProjectError::Unavailable(e.clone()))?;
        call(&store::Store::new(&KvCap, cfg)).map_err(project_error)
    }

    impl wit_projects::Guest for Rbac {
        fn list_projects() -> Result<Vec<Project>, ProjectError> {
            with_store(|s| s.list()).map(|ps| ps.into_iter().map(wit_project).collect())
        }

        fn get_project(name: String) -> Result<Project, ProjectError> {
            with_store(|s| s.get(&name)).map(wit_project)
        }

        fn create_project(name: String, public: bool) -> Result<Project, ProjectError> {
            with_store(|s| s.create(&name, public)).map(wit_project)
        }

        fn set_public(name: String, public: bool) -> Result<Project, ProjectError> {
            with_store(|s| s.set_public(&name, public)).map(wit_project)
        }

        fn delete_project(name: String) -> Result<(), ProjectError> {
            with_store(|s| s.delete(&name))
        }

        fn set_member(project: String, member: Member) -> Result<Project, ProjectError> {
            with_store(|s| {
                s.set_member(&project, kind(member.kind), &member.name, role(member.role))
            })
            .map(wit_project)
        }

        fn remove_member(
            project: String,
            k: MemberKind,
            name: String,
        ) -> Result<Project, ProjectError> {
            with_store(|s| s.remove_member(&project, kind(k), &name)).map(wit_project)
        }
    }

    export!(Rbac);
}
