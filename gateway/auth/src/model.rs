//! The policy vocabulary, mirrored one to one by `wit/types.wit`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a subject wants to do (Harbor's words: read, write, delete, search, manage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
    Search,
    Manage,
    Admin,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Pull,
        Action::Push,
        Action::Delete,
        Action::Search,
        Action::Manage,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Search => "search",
            Action::Manage => "manage",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Actions granted on one project (a robot account's permissions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectPermission {
    pub project: String,
    pub actions: Vec<Action>,
}

/// A verified robot account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    pub name: String,
    pub permissions: Vec<ProjectPermission>,
}

/// A verified person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
}

/// Who is asking, after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Anonymous,
    User(Identity),
    Robot(Robot),
}

impl Subject {
    /// The name tokens carry in `sub`: empty for anonymous, `robot$NAME` for robots.
    pub fn token_name(&self) -> String {
        match self {
            Subject::Anonymous => String::new(),
            Subject::User(i) => i.name.clone(),
            Subject::Robot(r) => format!("{}{}", crate::robots::LOGIN_PREFIX, r.name),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Anonymous => f.write_str("anonymous"),
            Subject::User(i) => write!(f, "user {}", i.name),
            Subject::Robot(r) => write!(f, "robot {}", r.name),
        }
    }
}

/// One question to the authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub subject: Subject,
    pub action: Action,
    pub repository: Option<String>,
    pub client: String,
    /// The request it is asked for.
    pub context: RequestContext,
}

/// Longest `User-Agent` passed to a policy; longer ones are cut.
pub const MAX_USER_AGENT: usize = 256;

/// What the authorizer is told of the request behind an [`AccessRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub route: RequestRoute,
    /// The HTTP method; `None` at the token endpoint and in per-subject listings.
    pub method: Option<String>,
    /// The tag of a manifest request by tag.
    pub tag: Option<String>,
    /// The digest of a manifest request by digest, a blob or a referrers request.
    pub digest: Option<String>,
    /// The client's `User-Agent`, at most [`MAX_USER_AGENT`] bytes.
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// A context with only its route known.
    pub fn new(route: RequestRoute) -> RequestContext {
        RequestContext {
            route,
            method: None,
            tag: None,
            digest: None,
            user_agent: None,
        }
    }

    pub fn with_method(mut self, method: &str) -> RequestContext {
        self.method = Some(method.to_owned());
        self
    }

    /// Keeps a `User-Agent` value: visible ASCII and spaces, cut at [`MAX_USER_AGENT`].
    pub fn with_user_agent(mut self, ua: Option<&[u8]>) -> RequestContext {
        self.user_agent = ua.map(|v| {
            v.iter()
                .take(MAX_USER_AGENT)
                .map(|&b| {
                    if (0x20..0x7f).contains(&b) {
                        b as char
                    } else {
                        '?'
                    }
                })
                .collect()
        });
        self
    }
}

/// Where an access request comes from (`route` in `wit/types.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRoute {
    /// The token endpoint, granting a scope.
    Token,
    /// `/v2/`.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest,
    /// `/v2/<name>/blobs/<digest>`.
    Blob,
    /// `/v2/<name>/blobs/uploads/...`.
    Upload,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers,
    /// The admin API and console.
    Admin,
}

impl AccessRequest {
    /// The project: the first path component of the repository.
    pub fn project(&self) -> Option<&str> {
        self.repository
            .as_deref()
            .map(|r| r.split('/').next().unwrap_or(r))
    }
}

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Credentials handed to a policy that verifies them itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub client: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a policy's `authenticate` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnOutcome {
    /// It vouches for this identity.
    Verified(Identity),
    /// It doesn't handle these credentials: Pier checks its own users and robots.
    NotHandled,
    /// Wrong credentials.
    Invalid,
}

/// How a policy call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFailure {
    /// The plugin trapped (panic, abort, stack overflow, invalid result).
    Trap,
    /// It ran past its deadline.
    Timeout,
    /// It tried to use more memory than its cap.
    OutOfMemory,
    /// Every instance was busy for longer than the deadline.
    Overloaded,
    /// The identity source behind it is unreachable (e.g. LDAP down).
    Unavailable,
    /// It returned something the host refuses (e.g. an oversized reason).
    InvalidResult,
}

impl PolicyFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyFailure::Trap => "trap",
            PolicyFailure::Timeout => "timeout",
            PolicyFailure::OutOfMemory => "out_of_memory",
            PolicyFailure::Overloaded => "overloaded",
            PolicyFailure::Unavailable => "unavailable",
            PolicyFailure::InvalidResult => "invalid_result",
        }
    }
}

/// A policy that could not decide. Callers fail closed (503) and log it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authorization plugin {plugin:?} failed ({}): {message}", kind.as_str())]
pub struct PolicyError {
    pub plugin: String,
    pub kind: PolicyFailure,
    pub message: String,
}
