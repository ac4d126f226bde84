//! [`pier_auth::Authorizer`] backed by an authorizer plugin, with hot reload.

use async_trait::async_trait;
use pier_auth::{
    AccessRequest, Action, AuthnOutcome, Authorizer, Credentials, Decision, Identity, PolicyError,
    PolicyFailure, Subject,
};

use crate::bindings::pier::plugin::types as wit;
use crate::world::World;

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

fn subject(s: &Subject) -> wit::Subject {
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
        };
        let d = plugin
            .with_instance(async |b, store| b.authorizer()?.call_authorize(store, &wreq).await)
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
            .with_instance(async |b, store| b.authorizer()?.call_authenticate(store, &wc).await)
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
