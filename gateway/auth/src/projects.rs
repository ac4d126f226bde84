//! Projects and their members as an authorizer that manages them keeps them (the RBAC
//! plugin, in its `kv`): the [`ProjectStore`] role trait the admin API calls, and its
//! types. Implemented by `pier-plugin-host` over the plugin's `projects` export.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Harbor's project roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ProjectAdmin,
    Developer,
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "project-admin",
            Role::Developer => "developer",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "project-admin" => Some(Role::ProjectAdmin),
            "developer" => Some(Role::Developer),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }
}

/// Whether a member entry names a user or a group of the identity source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberKind {
    User,
    Group,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<MemberKind> {
        match s {
            "user" => Some(MemberKind::User),
            "group" => Some(MemberKind::Group),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub kind: MemberKind,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub public: bool,
    pub members: Vec<Member>,
}

/// Why a project call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The store failed, or the plugin trapped or timed out.
    #[error("{0}")]
    Unavailable(String),
    /// The authorizer does not manage projects (configured in TOML, or no plugin).
    #[error(
        "projects are not managed here: the authorizer plugin does not export pier:plugin/projects (use the RBAC plugin with the kv grant)"
    )]
    NotManaged,
}

/// Projects and members, changed at once for every later access decision.
#[async_trait]
pub trait ProjectStore: Send + Sync {
    /// Every project, sorted by name.
    async fn list(&self) -> Result<Vec<Project>, ProjectError>;
    async fn get(&self, name: &str) -> Result<Project, ProjectError>;
    async fn create(&self, name: &str, public: bool) -> Result<Project, ProjectError>;
    async fn set_public(&self, name: &str, public: bool) -> Result<Project, ProjectError>;
    async fn delete(&self, name: &str) -> Result<(), ProjectError>;
    /// Adds the member or changes its role.
    async fn set_member(&self, project: &str, member: &Member) -> Result<Project, ProjectError>;
    async fn remove_member(
        &self,
        project: &str,
        kind: MemberKind,
        name: &str,
    ) -> Result<Project, ProjectError>;
}
