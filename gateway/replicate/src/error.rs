//! The crate's one error type: which side failed, and whether trying again may help.

use std::fmt;

use pier_oci::{Digest, ManifestError};
use pier_upstream::UpstreamError;

/// Which end of a copy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// A registry (or store) call failed; `retryable` when the failure may pass
    /// (unreachable, timeout, 5xx, 429, connection reset mid-body).
    #[error("{side} {context}: {source}")]
    Endpoint {
        side: Side,
        context: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },
    /// The source or destination does not have it.
    #[error("{side} has no {what}")]
    NotFound { side: Side, what: String },
    /// The bytes moved do not hash to the digest they were asked for.
    #[error("{what}: expected {expected}, the bytes moved hash to {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    /// The source sent more or fewer bytes than the descriptor says.
    #[error("blob {digest}: expected {expected} bytes, the source sent {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("manifest {digest} is invalid: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("job {0} not found")]
    JobNotFound(u64),
    #[error("job {id} is {state} and cannot be retried")]
    JobNotRetryable { id: u64, state: String },
    #[error("job log {path}: {source}")]
    JobLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid job: {0}")]
    InvalidJob(String),
}

impl ReplicateError {
    /// An upstream client's error, keeping its retry classification.
    pub fn upstream(side: Side, context: impl Into<String>, error: UpstreamError) -> Self {
        let context = context.into();
        if error.is_not_found() {
            return ReplicateError::NotFound {
                side,
                what: context,
            };
        }
        ReplicateError::Endpoint {
            side,
            retryable: error.is_retryable(),
            context,
            source: Box::new(error),
        }
    }

    /// A failure of some other endpoint implementation (a local store).
    pub fn other(
        side: Side,
        context: impl Into<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        ReplicateError::Endpoint {
            side,
            context: context.into(),
            retryable,
            source: source.into(),
        }
    }

    /// Worth another attempt later: the failure may pass (as opposed to a denial, an
    /// invalid name or manifest, a missing source image).
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicateError::Endpoint { retryable, .. } => *retryable,
            // A corrupted or truncated transfer: fetch again.
            ReplicateError::DigestMismatch { .. } | ReplicateError::SizeMismatch { .. } => true,
            ReplicateError::JobLog { .. } => true,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ReplicateError::NotFound { .. })
    }
}
