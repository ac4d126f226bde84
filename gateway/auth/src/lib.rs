//! Identities and access for Pier: who is asking ([`Subject`]), what they may do (the
//! [`Authorizer`] policy trait, implemented by WebAssembly plugins in `pier-plugin-host`),
//! and how clients prove it: Docker token auth ([`token`]), local users in an
//! htpasswd-compatible bcrypt file ([`users`]), robot accounts ([`robots`]) and a short
//! memory of verified passwords so bcrypt's cost is paid once ([`authn`]).
//!
//! No HTTP here: `pier-http` maps requests to [`AccessRequest`]s and errors to the wire.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admission;
pub mod authn;
mod error;
mod model;
pub mod projects;
pub mod retention;
pub mod revoke;
pub mod robots;
pub mod scope;
pub mod throttle;
pub mod time;
pub mod token;
pub mod users;
mod watched;

pub use error::AuthError;
pub use model::{
    AccessRequest, Action, AuthnOutcome, Credentials, Decision, Identity, PolicyError,
    PolicyFailure, ProjectPermission, RequestContext, RequestRoute, Robot, Subject,
};

use async_trait::async_trait;

/// The access-control policy: implemented by the plugin host with a WebAssembly
/// authorizer, and by simple policies in tests.
#[async_trait]
pub trait Authorizer: Send + Sync {
    /// Decides one request. `Err` means the policy could not decide (it trapped, timed
    /// out, ran out of memory, was overloaded): callers fail closed.
    async fn authorize(&self, request: &AccessRequest) -> Result<Decision, PolicyError>;

    /// Lets the policy verify credentials itself (LDAP, an identity service).
    /// The default leaves it to Pier's own users and robots.
    async fn authenticate(&self, _credentials: &Credentials) -> Result<AuthnOutcome, PolicyError> {
        Ok(AuthnOutcome::NotHandled)
    }
}

/// Allows everything: the policy when no authorizer plugin is configured but
/// authentication is (every authenticated user may do everything).
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(&self, _request: &AccessRequest) -> Result<Decision, PolicyError> {
        Ok(Decision::Allow)
    }
}
