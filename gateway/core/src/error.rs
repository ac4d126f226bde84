use std::io;

use pier_oci::{Digest, ManifestError, RepoName};
use pier_storage::StorageError;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything a use case can fail with. Variants say who caused the failure: the client
/// (bad input, unknown names), or Pier itself (`Storage`).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error("manifest references {0}, which this repository does not hold")]
    ManifestBlobUnknown(Digest),
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(#[source] ManifestError),
    #[error("manifest is {0} bytes, over the 4 MiB limit")]
    ManifestTooLarge(usize),
    #[error("content has digest {computed}, not {expected}")]
    DigestMismatch { expected: Digest, computed: Digest },
    #[error("upload session {0} is not known")]
    UploadUnknown(String),
    #[error("chunk starts at byte {got}, but the upload is at byte {expected}")]
    ChunkOutOfOrder { expected: u64, got: u64 },
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("reading the request body failed")]
    Body(#[source] io::Error),
    #[error("storage failed")]
    Storage(#[source] StorageError),
    #[error("the upstream registry failed")]
    Upstream(#[source] pier_upstream::UpstreamError),
    /// The shared state of a scaled-out deployment (Redis) could not be reached.
    #[error("cluster coordination unavailable: {0}")]
    Coordination(String),
    /// A fleet peer asked for a blob this node is fetching from that same peer (the
    /// nodes disagree on the owner for a moment): the peer takes its next source.
    #[error("this node is fetching {0} from the asking peer")]
    PeerBusy(Digest),
    /// An admission policy refused the manifest; `reason` is the policy's own words.
    #[error("denied by policy {policy:?}: {reason}")]
    Denied { policy: String, reason: String },
    /// The push would take the project over its quota.
    #[error(
        "quota exceeded: project {project} uses {} of its {} quota, and this push needs {} more",
        crate::quota::human(*used), crate::quota::human(*limit), crate::quota::human(*needed)
    )]
    QuotaExceeded {
        project: String,
        used: u64,
        limit: u64,
        needed: u64,
    },
    /// The quota limits could not be read or written.
    #[error("quota limits unavailable: {0}")]
    QuotaStore(String),
    /// An admission policy could not decide: refused (fail closed).
    #[error("admission plugin {:?} failed ({}): {}", .0.plugin, .0.kind.as_str(), .0.message)]
    PolicyFailed(pier_auth::PolicyError),
}

impl From<StorageError> for CoreError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::BlobNotFound(d) => CoreError::BlobUnknown(d),
            StorageError::UploadNotFound(id) => CoreError::UploadUnknown(id),
            StorageError::OffsetMismatch { expected, got } => {
                CoreError::ChunkOutOfOrder { expected, got }
            }
            StorageError::RangeNotSatisfiable { size } => CoreError::RangeNotSatisfiable { size },
            StorageError::DigestMismatch { expected, computed } => {
                CoreError::DigestMismatch { expected, computed }
            }
            StorageError::Body(e) => CoreError::Body(e),
            other => CoreError::Storage(other),
        }
    }
}

impl From<ManifestError> for CoreError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::TooLarge(n) => CoreError::ManifestTooLarge(n),
            other => CoreError::ManifestInvalid(other),
        }
    }
}
