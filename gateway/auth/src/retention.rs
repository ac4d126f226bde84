//! The retention policy vocabulary, mirrored one to one by `wit/retention.wit`: given a
//! project's tags (digest, push and pull times, size) and untagged manifests, a retention
//! plugin answers what to delete.

use async_trait::async_trait;

use crate::PolicyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub tag: String,
    pub digest: String,
    pub pushed: Option<u64>,
    pub pulled: Option<u64>,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntaggedManifest {
    pub digest: String,
    pub pushed: Option<u64>,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    pub repository: String,
    pub tags: Vec<TagInfo>,
    pub untagged: Vec<UntaggedManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRequest {
    pub project: String,
    pub repositories: Vec<RepositoryInfo>,
    pub now: u64,
}

/// Something a plan deletes: a tag (`tag`), or an untagged manifest (`digest`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Removal {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub reason: String,
}

/// A retention policy: implemented by the plugin host with a retention plugin.
#[async_trait]
pub trait RetentionPolicy: Send + Sync {
    fn name(&self) -> &str;
    /// What to delete in the request's project. `Err`: the plan failed (the plugin
    /// trapped, or answered an error): nothing is deleted.
    async fn plan(&self, request: &RetentionRequest) -> Result<Vec<Removal>, PolicyError>;
}
