//! Components built against `pier:plugin@0.1.0` (`wit/v0.1.0`) keep working.
//!
//! Their imports carry the 0.1.0 names (`pier:plugin/log@0.1.0`, ...), which wasmtime
//! does not match with 0.2.0 (semver: 0.x minors are incompatible), so the linker also
//! has the host interfaces under the old names: the impls below forward to the 0.2.0
//! ones, converting the (identical) types. Exports whose shape did not change
//! (`notify`, `on-event`, `on-tick`, `admit`, `plan`) are checked structurally and
//! called through the 0.2.0 bindings; `authorize` (its `access-request` grew) and the
//! interface exports `projects` and `rules` (their names carry the version) have 0.1.0
//! bindings of their own ([`crate::world`]).

use crate::bindings::admission::pier::plugin::{crypto as new_crypto, registry_read as new_rr};
use crate::bindings::pier::plugin as new;
use crate::bindings::v0_1::pier::plugin as old;
use crate::host::HostState;

impl old::types::Host for HostState {}
impl old::admission_types::Host for HostState {}

impl old::log::Host for HostState {
    async fn write(&mut self, level: old::log::Level, message: String) {
        use old::log::Level as O;
        let level = match level {
            O::Trace => new::log::Level::Trace,
            O::Debug => new::log::Level::Debug,
            O::Info => new::log::Level::Info,
            O::Warn => new::log::Level::Warn,
            O::Error => new::log::Level::Error,
        };
        <HostState as new::log::Host>::write(self, level, message).await
    }
}

impl old::config::Host for HostState {
    async fn document(&mut self) -> String {
        <HostState as new::config::Host>::document(self).await
    }

    async fn get(&mut self, key: String) -> Option<String> {
        <HostState as new::config::Host>::get(self, key).await
    }
}

fn kv_error(e: new::kv::KvError) -> old::kv::KvError {
    match e {
        new::kv::KvError::Denied => old::kv::KvError::Denied,
        new::kv::KvError::TooLarge => old::kv::KvError::TooLarge,
        new::kv::KvError::Io(m) => old::kv::KvError::Io(m),
    }
}

impl old::kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, old::kv::KvError> {
        <HostState as new::kv::Host>::get(self, key)
            .await
            .map_err(kv_error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), old::kv::KvError> {
        <HostState as new::kv::Host>::set(self, key, value)
            .await
            .map_err(kv_error)
    }

    async fn delete(&mut self, key: String) -> Result<(), old::kv::KvError> {
        <HostState as new::kv::Host>::delete(self, key)
            .await
            .map_err(kv_error)
    }
}

impl old::http_outbound::Host for HostState {
    async fn send(
        &mut self,
        req: old::http_outbound::Request,
    ) -> Result<old::http_outbound::Response, old::http_outbound::HttpError> {
        use new::http_outbound as n;
        use old::http_outbound as o;
        let req = n::Request {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
        };
        match <HostState as n::Host>::send(self, req).await {
            Ok(r) => Ok(o::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(n::HttpError::Denied) => Err(o::HttpError::Denied),
            Err(n::HttpError::InvalidUrl) => Err(o::HttpError::InvalidUrl),
            Err(n::HttpError::Transport(m)) => Err(o::HttpError::Transport(m)),
        }
    }
}

impl old::ldap::Host for HostState {
    async fn simple_bind(
        &mut self,
        dn: String,
        password: String,
    ) -> Result<bool, old::ldap::LdapError> {
        <HostState as new::ldap::Host>::simple_bind(self, dn, password)
            .await
            .map_err(|e| match e {
                new::ldap::LdapError::Denied => old::ldap::LdapError::Denied,
                new::ldap::LdapError::Unavailable(m) => old::ldap::LdapError::Unavailable(m),
            })
    }
}

impl old::crypto::Host for HostState {
    async fn verify_ecdsa_p256_sha256(
        &mut self,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, old::crypto::CryptoError> {
        <HostState as new_crypto::Host>::verify_ecdsa_p256_sha256(
            self, public_key, message, signature,
        )
        .await
        .map_err(|e| match e {
            new_crypto::CryptoError::Denied => old::crypto::CryptoError::Denied,
            new_crypto::CryptoError::InvalidKey => old::crypto::CryptoError::InvalidKey,
        })
    }
}

fn read_error(e: new_rr::ReadError) -> old::registry_read::ReadError {
    use old::registry_read::ReadError as O;
    match e {
        new_rr::ReadError::Denied => O::Denied,
        new_rr::ReadError::NotFound => O::NotFound,
        new_rr::ReadError::TooLarge => O::TooLarge,
        new_rr::ReadError::Unavailable(m) => O::Unavailable(m),
    }
}

impl old::registry_read::Host for HostState {
    async fn manifest(
        &mut self,
        reference: String,
    ) -> Result<old::registry_read::ManifestContent, old::registry_read::ReadError> {
        let m = <HostState as new_rr::Host>::manifest(self, reference)
            .await
            .map_err(read_error)?;
        Ok(old::registry_read::ManifestContent {
            digest: m.digest,
            media_type: m.media_type,
            bytes: m.bytes,
        })
    }

    async fn blob(
        &mut self,
        digest: String,
        max_size: u64,
    ) -> Result<Vec<u8>, old::registry_read::ReadError> {
        <HostState as new_rr::Host>::blob(self, digest, max_size)
            .await
            .map_err(read_error)
    }
}

/// The 0.1.0 `access-request`: the 0.2.0 one without the request's context.
pub(crate) fn access_request(r: &new::types::AccessRequest) -> old::types::AccessRequest {
    old::types::AccessRequest {
        subject: subject(&r.subject),
        action: action(r.action),
        repository: r.repository.clone(),
        project: r.project.clone(),
        client: r.client.clone(),
    }
}

fn action(a: new::types::Action) -> old::types::Action {
    use new::types::Action as N;
    use old::types::Action as O;
    match a {
        N::Pull => O::Pull,
        N::Push => O::Push,
        N::Delete => O::Delete,
        N::Search => O::Search,
        N::Manage => O::Manage,
        N::Admin => O::Admin,
    }
}

fn subject(s: &new::types::Subject) -> old::types::Subject {
    use new::types::Subject as N;
    use old::types::Subject as O;
    match s {
        N::Anonymous => O::Anonymous,
        N::User(p) => O::User(old::types::Principal {
            name: p.name.clone(),
            groups: p.groups.clone(),
        }),
        N::Robot(r) => O::Robot(old::types::Robot {
            name: r.name.clone(),
            permissions: r
                .permissions
                .iter()
                .map(|p| old::types::ProjectPermission {
                    project: p.project.clone(),
                    actions: p.actions.iter().map(|a| action(*a)).collect(),
                })
                .collect(),
        }),
    }
}

pub(crate) fn decision(d: old::types::Decision) -> new::types::Decision {
    match d {
        old::types::Decision::Allow => new::types::Decision::Allow,
        old::types::Decision::Deny(r) => new::types::Decision::Deny(r),
    }
}

pub(crate) fn credentials(c: &new::types::Credentials) -> old::types::Credentials {
    old::types::Credentials {
        username: c.username.clone(),
        password: c.password.clone(),
        client: c.client.clone(),
    }
}

pub(crate) fn authn(
    r: Result<old::types::Identity, old::types::AuthError>,
) -> Result<new::types::Identity, new::types::AuthError> {
    use new::types::AuthError as N;
    use old::types::AuthError as O;
    match r {
        Ok(id) => Ok(new::types::Identity {
            name: id.name,
            groups: id.groups,
        }),
        Err(O::NotHandled) => Err(N::NotHandled),
        Err(O::InvalidCredentials) => Err(N::InvalidCredentials),
        Err(O::Unavailable(m)) => Err(N::Unavailable(m)),
    }
}

// ---- the `projects` and `rules` exports of 0.1.0 components ----

use crate::bindings::managed::exports::pier::plugin::projects as wp;
use crate::bindings::managed_replicator::exports::pier::plugin::rules as wr;
use crate::bindings::v0_1::managed::exports::pier::plugin::projects as op;
use crate::bindings::v0_1::managed_replicator::exports::pier::plugin::rules as or;

type Store<'a> = &'a mut wasmtime::Store<HostState>;

/// The `projects` export of an instance, of either version.
pub(crate) enum Projects {
    V2(wp::Guest),
    V1(op::Guest),
}

fn project(p: op::Project) -> wp::Project {
    wp::Project {
        name: p.name,
        public: p.public,
        members: p
            .members
            .into_iter()
            .map(|m| wp::Member {
                kind: match m.kind {
                    op::MemberKind::User => wp::MemberKind::User,
                    op::MemberKind::Group => wp::MemberKind::Group,
                },
                name: m.name,
                role: match m.role {
                    op::Role::ProjectAdmin => wp::Role::ProjectAdmin,
                    op::Role::Developer => wp::Role::Developer,
                    op::Role::Guest => wp::Role::Guest,
                },
            })
            .collect(),
    }
}

fn project_error(e: op::ProjectError) -> wp::ProjectError {
    match e {
        op::ProjectError::NotFound(m) => wp::ProjectError::NotFound(m),
        op::ProjectError::Conflict(m) => wp::ProjectError::Conflict(m),
        op::ProjectError::Invalid(m) => wp::ProjectError::Invalid(m),
        op::ProjectError::Unavailable(m) => wp::ProjectError::Unavailable(m),
    }
}

fn member_kind(k: wp::MemberKind) -> op::MemberKind {
    match k {
        wp::MemberKind::User => op::MemberKind::User,
        wp::MemberKind::Group => op::MemberKind::Group,
    }
}

type ProjectResult<T> = wasmtime::Result<Result<T, wp::ProjectError>>;

fn up<T, U>(
    r: wasmtime::Result<Result<T, op::ProjectError>>,
    f: impl FnOnce(T) -> U,
) -> ProjectResult<U> {
    Ok(r?.map(f).map_err(project_error))
}

impl Projects {
    pub(crate) async fn list(&self, s: Store<'_>) -> ProjectResult<Vec<wp::Project>> {
        match self {
            Projects::V2(g) => g.call_list_projects(s).await,
            Projects::V1(g) => up(g.call_list_projects(s).await, |v| {
                v.into_iter().map(project).collect()
            }),
        }
    }

    pub(crate) async fn get(&self, s: Store<'_>, name: &str) -> ProjectResult<wp::Project> {
        match self {
            Projects::V2(g) => g.call_get_project(s, name).await,
            Projects::V1(g) => up(g.call_get_project(s, name).await, project),
        }
    }

    pub(crate) async fn create(
        &self,
        s: Store<'_>,
        name: &str,
        public: bool,
    ) -> ProjectResult<wp::Project> {
        match self {
            Projects::V2(g) => g.call_create_project(s, name, public).await,
            Projects::V1(g) => up(g.call_create_project(s, name, public).await, project),
        }
    }

    pub(crate) async fn set_public(
        &self,
        s: Store<'_>,
        name: &str,
        public: bool,
    ) -> ProjectResult<wp::Project> {
        match self {
            Projects::V2(g) => g.call_set_public(s, name, public).await,
            Projects::V1(g) => up(g.call_set_public(s, name, public).await, project),
        }
    }

    pub(crate) async fn delete(&self, s: Store<'_>, name: &str) -> ProjectResult<()> {
        match self {
            Projects::V2(g) => g.call_delete_project(s, name).await,
            Projects::V1(g) => up(g.call_delete_project(s, name).await, |()| ()),
        }
    }

    pub(crate) async fn set_member(
        &self,
        s: Store<'_>,
        name: &str,
        m: &wp::Member,
    ) -> ProjectResult<wp::Project> {
        match self {
            Projects::V2(g) => g.call_set_member(s, name, m).await,
            Projects::V1(g) => {
                let m = op::Member {
                    kind: member_kind(m.kind),
                    name: m.name.clone(),
                    role: match m.role {
                        wp::Role::ProjectAdmin => op::Role::ProjectAdmin,
                        wp::Role::Developer => op::Role::Developer,
                        wp::Role::Guest => op::Role::Guest,
                    },
                };
                up(g.call_set_member(s, name, &m).await, project)
            }
        }
    }

    pub(crate) async fn remove_member(
        &self,
        s: Store<'_>,
        name: &str,
        kind: wp::MemberKind,
        member: &str,
    ) -> ProjectResult<wp::Project> {
        match self {
            Projects::V2(g) => g.call_remove_member(s, name, kind, member).await,
            Projects::V1(g) => up(
                g.call_remove_member(s, name, member_kind(kind), member)
                    .await,
                project,
            ),
        }
    }
}

/// The `rules` export of an instance, of either version.
pub(crate) enum Rules {
    V2(wr::Guest),
    V1(or::Guest),
}

fn direction_up(d: old::types::ReplicationDirection) -> new::types::ReplicationDirection {
    match d {
        old::types::ReplicationDirection::Push => new::types::ReplicationDirection::Push,
        old::types::ReplicationDirection::Pull => new::types::ReplicationDirection::Pull,
    }
}

fn rule_up(r: or::Rule) -> wr::Rule {
    wr::Rule {
        name: r.name,
        source: match r.source {
            or::RuleSource::Project(p) => wr::RuleSource::Project(p),
            or::RuleSource::Repository(p) => wr::RuleSource::Repository(p),
        },
        tags: r.tags,
        target: r.target,
        destination: r.destination,
        trigger: match r.trigger {
            or::RuleTrigger::Event => wr::RuleTrigger::Event,
            or::RuleTrigger::EverySecs(s) => wr::RuleTrigger::EverySecs(s),
        },
        delete: r.delete,
        direction: direction_up(r.direction),
    }
}

fn rule_down(r: &wr::Rule) -> or::Rule {
    or::Rule {
        name: r.name.clone(),
        source: match &r.source {
            wr::RuleSource::Project(p) => or::RuleSource::Project(p.clone()),
            wr::RuleSource::Repository(p) => or::RuleSource::Repository(p.clone()),
        },
        tags: r.tags.clone(),
        target: r.target.clone(),
        destination: r.destination.clone(),
        trigger: match r.trigger {
            wr::RuleTrigger::Event => or::RuleTrigger::Event,
            wr::RuleTrigger::EverySecs(s) => or::RuleTrigger::EverySecs(s),
        },
        delete: r.delete,
        direction: match r.direction {
            new::types::ReplicationDirection::Push => old::types::ReplicationDirection::Push,
            new::types::ReplicationDirection::Pull => old::types::ReplicationDirection::Pull,
        },
    }
}

fn rule_error(e: or::RuleError) -> wr::RuleError {
    match e {
        or::RuleError::NotFound(m) => wr::RuleError::NotFound(m),
        or::RuleError::Invalid(m) => wr::RuleError::Invalid(m),
        or::RuleError::Unavailable(m) => wr::RuleError::Unavailable(m),
    }
}

type RuleResult<T> = wasmtime::Result<Result<T, wr::RuleError>>;

impl Rules {
    pub(crate) async fn list(&self, s: Store<'_>) -> RuleResult<Vec<wr::Rule>> {
        match self {
            Rules::V2(g) => g.call_list_rules(s).await,
            Rules::V1(g) => Ok(g
                .call_list_rules(s)
                .await?
                .map(|v| v.into_iter().map(rule_up).collect())
                .map_err(rule_error)),
        }
    }

    pub(crate) async fn put(&self, s: Store<'_>, r: &wr::Rule) -> RuleResult<wr::Rule> {
        match self {
            Rules::V2(g) => g.call_put_rule(s, r).await,
            Rules::V1(g) => Ok(g
                .call_put_rule(s, &rule_down(r))
                .await?
                .map(rule_up)
                .map_err(rule_error)),
        }
    }

    pub(crate) async fn delete(&self, s: Store<'_>, name: &str) -> RuleResult<()> {
        match self {
            Rules::V2(g) => g.call_delete_rule(s, name).await,
            Rules::V1(g) => Ok(g.call_delete_rule(s, name).await?.map_err(rule_error)),
        }
    }
}

// ---- `authorize` and `authenticate` ----

/// The authorizer exports of an instance, of either version.
pub(crate) enum Authorizer {
    V2(crate::bindings::Authorizer),
    V1(crate::bindings::v0_1::authorizer::Authorizer),
}

impl Authorizer {
    pub(crate) async fn authorize(
        &self,
        s: Store<'_>,
        r: &new::types::AccessRequest,
    ) -> wasmtime::Result<new::types::Decision> {
        match self {
            Authorizer::V2(b) => b.call_authorize(s, r).await,
            Authorizer::V1(b) => Ok(decision(b.call_authorize(s, &access_request(r)).await?)),
        }
    }

    pub(crate) async fn authenticate(
        &self,
        s: Store<'_>,
        c: &new::types::Credentials,
    ) -> wasmtime::Result<Result<new::types::Identity, new::types::AuthError>> {
        match self {
            Authorizer::V2(b) => b.call_authenticate(s, c).await,
            Authorizer::V1(b) => Ok(authn(b.call_authenticate(s, &credentials(c)).await?)),
        }
    }
}
