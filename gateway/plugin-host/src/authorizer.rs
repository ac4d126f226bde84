//! [`pier_auth::Authorizer`] backed by an authorizer plugin, with hot reload.

use async_trait::async_trait;
use pier_auth::projects::{Member, MemberKind, Project, ProjectError, ProjectStore, Role};
use pier_auth::{
    AccessRequest, Action, AuthnOutcome, Authorizer, Credentials, Decision, Identity, PolicyError,
    PolicyFailure, RequestRoute, Subject,
};

use crate::bindings::managed::exports::pier::plugin::projects as wp;
use crate::bindings::pier::plugin::types as wit;
use crate::plugin::Plugin;
use crate::world::World;

/// The least deadline of a `projects` call: they read and write (and sync) the plugin's
/// `kv`, unlike `authorize`.
const PROJECTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Deny reasons are cut to this many bytes.
const MAX_REASON: usize = 256;

crate::hook::hook_type!(
    /// The current version of an authorizer plugin.
    PluginAuthorizer,
    World::Authorizer
);

fn action(a: Action) -> wit::Action {
    match a {
        Action::Pull => wit::Action::Pull,
        Action::Push => wit::Action::Push,
        Action::Delete => wit::Action::Delete,
        Action::Search => wit::Action::Search,
        Action::Manage => wit::Action::Manage,
        Action::Admin => wit::Action::Admin,
    }
}

fn route(r: RequestRoute) -> wit::Route {
    match r {
        RequestRoute::Token => wit::Route::Token,
        RequestRoute::Base => wit::Route::Base,
        RequestRoute::Catalog => wit::Route::Catalog,
        RequestRoute::Tags => wit::Route::Tags,
        RequestRoute::Manifest => wit::Route::Manifest,
        RequestRoute::Blob => wit::Route::Blob,
        RequestRoute::Upload => wit::Route::Upload,
        RequestRoute::Referrers => wit::Route::Referrers,
        RequestRoute::Admin => wit::Route::Admin,
    }
}

pub(crate) fn subject(s: &Subject) -> wit::Subject {
    match s {
        Subject::Anonymous => wit::Subject::Anonymous,
        Subject::User(i) => wit::Subject::User(wit::Principal {
            name: i.name.clone(),
            groups: i.groups.clone(),
        }),
        Subject::Robot(r) => wit::Subject::Robot(wit::Robot {
            name: r.name.clone(),
            permissions: r
                .permissions
                .iter()
                .map(|p| wit::ProjectPermission {
                    project: p.project.clone(),
                    actions: p.actions.iter().map(|a| action(*a)).collect(),
                })
                .collect(),
        }),
    }
}

/// Cuts a plugin's deny reason (or error message) to size and drops control characters.
pub(crate) fn tidy_reason(r: String) -> String {
    let mut s: String = r.chars().filter(|c| !c.is_control()).collect();
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[async_trait]
impl Authorizer for PluginAuthorizer {
    async fn authorize(&self, req: &AccessRequest) -> Result<Decision, PolicyError> {
        let plugin = self.hook.current();
        let wreq = wit::AccessRequest {
            subject: subject(&req.subject),
            action: action(req.action),
            repository: req.repository.clone(),
            project: req.project().map(str::to_owned),
            client: req.client.clone(),
            route: route(req.context.route),
            method: req.context.method.clone(),
            tag: req.context.tag.clone(),
            digest: req.context.digest.clone(),
            user_agent: req.context.user_agent.clone(),
        };
        let d = plugin
            .with_instance(async |b, store| b.authorizer()?.authorize(store, &wreq).await)
            .await?;
        Ok(match d {
            wit::Decision::Allow => Decision::Allow,
            wit::Decision::Deny(reason) => {
                self.hook.metrics().denial();
                Decision::Deny(tidy_reason(reason))
            }
        })
    }

    async fn authenticate(&self, creds: &Credentials) -> Result<AuthnOutcome, PolicyError> {
        let plugin = self.hook.current();
        let wc = wit::Credentials {
            username: creds.username.clone(),
            password: creds.password.clone(),
            client: creds.client.clone(),
        };
        let r = plugin
            .with_instance(async |b, store| b.authorizer()?.authenticate(store, &wc).await)
            .await?;
        match r {
            Ok(id) => Ok(AuthnOutcome::Verified(Identity {
                name: id.name,
                groups: id.groups,
            })),
            Err(wit::AuthError::NotHandled) => Ok(AuthnOutcome::NotHandled),
            Err(wit::AuthError::InvalidCredentials) => Ok(AuthnOutcome::Invalid),
            Err(wit::AuthError::Unavailable(m)) => {
                tracing::error!(plugin = plugin.name(), error = %m, "plugin's identity source unavailable");
                Err(plugin
                    .failure(PolicyFailure::Unavailable, tidy_reason(m))
                    .into())
            }
        }
    }
}

fn project_error(e: wp::ProjectError) -> ProjectError {
    match e {
        wp::ProjectError::NotFound(m) => ProjectError::NotFound(tidy_reason(m)),
        wp::ProjectError::Conflict(m) => ProjectError::Conflict(tidy_reason(m)),
        wp::ProjectError::Invalid(m) => ProjectError::Invalid(tidy_reason(m)),
        wp::ProjectError::Unavailable(m) => ProjectError::Unavailable(tidy_reason(m)),
    }
}

fn role(r: wp::Role) -> Role {
    match r {
        wp::Role::ProjectAdmin => Role::ProjectAdmin,
        wp::Role::Developer => Role::Developer,
        wp::Role::Guest => Role::Guest,
    }
}

fn wit_role(r: Role) -> wp::Role {
    match r {
        Role::ProjectAdmin => wp::Role::ProjectAdmin,
        Role::Developer => wp::Role::Developer,
        Role::Guest => wp::Role::Guest,
    }
}

fn wit_kind(k: MemberKind) -> wp::MemberKind {
    match k {
        MemberKind::User => wp::MemberKind::User,
        MemberKind::Group => wp::MemberKind::Group,
    }
}

fn project(p: wp::Project) -> Project {
    Project {
        name: p.name,
        public: p.public,
        members: p
            .members
            .into_iter()
            .map(|m| Member {
                kind: match m.kind {
                    wp::MemberKind::User => MemberKind::User,
                    wp::MemberKind::Group => MemberKind::Group,
                },
                name: m.name,
                role: role(m.role),
            })
            .collect(),
    }
}

impl PluginAuthorizer {
    /// Whether the loaded version manages projects (exports `pier:plugin/projects`).
    pub fn manages_projects(&self) -> bool {
        self.hook.current().manages_projects()
    }

    /// One call of the `projects` export ([`crate::hook::Hook::manage`]: a change makes
    /// every later `authorize` read the store again).
    async fn projects_call<R: Send>(
        &self,
        change: bool,
        call: impl AsyncFnOnce(
            &crate::compat::Projects,
            &mut wasmtime::Store<crate::host::HostState>,
        ) -> wasmtime::Result<Result<R, wp::ProjectError>>,
    ) -> Result<R, ProjectError> {
        let r = self
            .hook
            .manage(
                change,
                PROJECTS_DEADLINE,
                Plugin::manages_projects,
                async |b, store| match b.projects()? {
                    Some(p) => call(p, store).await,
                    None => Err(wasmtime::Error::msg("instance without the projects export")),
                },
            )
            .await;
        match r {
            None => Err(ProjectError::NotManaged),
            Some(Ok(Ok(v))) => Ok(v),
            Some(Ok(Err(e))) => Err(project_error(e)),
            Some(Err(f)) => Err(ProjectError::Unavailable(f.to_string())),
        }
    }
}

#[async_trait]
impl ProjectStore for PluginAuthorizer {
    async fn list(&self) -> Result<Vec<Project>, ProjectError> {
        let ps = self
            .projects_call(false, async |p, s| p.list(s).await)
            .await?;
        Ok(ps.into_iter().map(project).collect())
    }

    async fn get(&self, name: &str) -> Result<Project, ProjectError> {
        self.projects_call(false, async |p, s| p.get(s, name).await)
            .await
            .map(project)
    }

    async fn create(&self, name: &str, public: bool) -> Result<Project, ProjectError> {
        self.projects_call(true, async |p, s| p.create(s, name, public).await)
            .await
            .map(project)
    }

    async fn set_public(&self, name: &str, public: bool) -> Result<Project, ProjectError> {
        self.projects_call(true, async |p, s| p.set_public(s, name, public).await)
            .await
            .map(project)
    }

    async fn delete(&self, name: &str) -> Result<(), ProjectError> {
        self.projects_call(true, async |p, s| p.delete(s, name).await)
            .await
    }

    async fn set_member(
        &self,
        project_name: &str,
        member: &Member,
    ) -> Result<Project, ProjectError> {
        let m = wp::Member {
            kind: wit_kind(member.kind),
            name: member.name.clone(),
            role: wit_role(member.role),
        };
        self.projects_call(true, async |p, s| p.set_member(s, project_name, &m).await)
            .await
            .map(project)
    }

    async fn remove_member(
        &self,
        project_name: &str,
        kind: MemberKind,
        name: &str,
    ) -> Result<Project, ProjectError> {
        self.projects_call(true, async |p, s| {
            p.remove_member(s, project_name, wit_kind(kind), name).await
        })
        .await
        .map(project)
    }
}
