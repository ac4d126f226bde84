//! The admission policy vocabulary, mirrored one to one by `wit/admission.wit`: what enters
//! and leaves the registry (pushes, mirror fills, pulls, deletes of manifests), decided by
//! admission plugins (signatures, immutable tags) in `pier-plugin-host`.

use std::fmt;

use async_trait::async_trait;

use crate::{Decision, PolicyError, Subject};

/// Manifests are passed to a policy up to this many bytes.
pub const MAX_ADMISSION_MANIFEST: usize = 1 << 20;
/// At most this many referrers are passed.
pub const MAX_REFERRERS: usize = 64;
/// `registry-read` reads nothing larger.
pub const MAX_READ: u64 = 4 << 20;

/// Where a decision is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Push,
    MirrorFill,
    Pull,
    Delete,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Push => "push",
            Stage::MirrorFill => "mirror-fill",
            Stage::Pull => "pull",
            Stage::Delete => "delete",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manifest referring to the one in question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub annotations: Vec<(String, String)>,
}

/// One admission question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRequest {
    pub stage: Stage,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    /// At most [`MAX_ADMISSION_MANIFEST`] bytes of it.
    pub manifest: bytes::Bytes,
    pub manifest_size: u64,
    pub subject_digest: Option<String>,
    pub referrers: Vec<Referrer>,
    pub signature_tags: Vec<String>,
    pub current_digest: Option<String>,
    pub tags: Vec<String>,
    pub caller: Subject,
    pub client: String,
}

impl AdmissionRequest {
    /// The project: the first path component of the repository.
    pub fn project(&self) -> &str {
        self.repository
            .split('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

/// Why a `registry-read` answered no content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotFound,
    TooLarge,
    Unavailable(String),
}

/// A manifest read by a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

/// Reads content of one repository for a policy during one decision.
#[async_trait]
pub trait ContentReader: Send + Sync {
    /// A manifest by tag or digest.
    async fn manifest(&self, reference: &str) -> Result<ReadManifest, ReadError>;
    /// A blob of at most `max_size` bytes.
    async fn blob(&self, digest: &str, max_size: u64) -> Result<bytes::Bytes, ReadError>;
}

/// Reads nothing: for decisions with no content around them.
pub struct NoContent;

#[async_trait]
impl ContentReader for NoContent {
    async fn manifest(&self, _reference: &str) -> Result<ReadManifest, ReadError> {
        Err(ReadError::NotFound)
    }
    async fn blob(&self, _digest: &str, _max_size: u64) -> Result<bytes::Bytes, ReadError> {
        Err(ReadError::NotFound)
    }
}

/// An admission policy: implemented by the plugin host with an admission plugin, and by
/// simple policies in tests.
#[async_trait]
pub trait Admission: Send + Sync {
    /// Its name, for logs and deny messages.
    fn name(&self) -> &str;
    /// Whether it decides about `repository` at all (its `repositories` patterns).
    fn governs(&self, repository: &str) -> bool;
    /// Changes whenever the policy may decide differently (a reload): remembered
    /// decisions of another generation are not used.
    fn generation(&self) -> u64;
    /// Decides one request. `Err`: the policy could not decide; callers fail closed.
    async fn admit(
        &self,
        request: &AdmissionRequest,
        content: std::sync::Arc<dyn ContentReader>,
    ) -> Result<Decision, PolicyError>;
}
