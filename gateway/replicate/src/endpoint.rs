//! The two ends of a copy, as roles: a [`Source`] to read from and a [`Destination`] to
//! write to. The remote implementations speak the OCI distribution API; the server
//! implements both over its own storage.

use async_trait::async_trait;
use bytes::Bytes;
use pier_oci::{Descriptor, Digest, Reference, RepoName, Tag};

use crate::copy::Meter;
use crate::{ByteStream, ReplicateError};

/// A manifest as the source holds it.
#[derive(Debug, Clone)]
pub struct SourceManifest {
    pub bytes: Bytes,
    pub media_type: String,
    /// The digest of `bytes` (computed, not trusted from a header).
    pub digest: Digest,
}

/// A blob being read from an offset.
pub struct SourceBlob {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The bytes from the requested offset on.
    pub stream: ByteStream,
}

/// Where images are copied from.
#[async_trait]
pub trait Source: Send + Sync {
    /// For logs and job records (a registry URL, `local`).
    fn describe(&self) -> String;

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<SourceManifest, ReplicateError>;

    /// The blob's bytes from `offset` on (a resumed upload asks for the rest only).
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<SourceBlob, ReplicateError>;

    /// Descriptors of the manifests whose `subject` is `digest` (signatures, SBOMs);
    /// empty when the source has none or no referrers API.
    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, ReplicateError>;

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, ReplicateError>;
}

/// Opens the source's bytes of one blob from an offset: what a destination reads from,
/// again after a failure, from where the destination stands.
#[async_trait]
pub trait BlobOpener: Send + Sync {
    async fn open(&self, offset: u64) -> Result<ByteStream, ReplicateError>;
}

/// One blob to write.
pub struct BlobTransfer<'a> {
    pub digest: &'a Digest,
    pub size: u64,
    pub source: &'a dyn BlobOpener,
    /// Counts bytes sent, resumes and the bytes they saved.
    pub meter: &'a Meter,
}

/// Where images are copied to. A destination verifies what it commits: a blob is
/// visible only once its bytes hash to its digest.
#[async_trait]
pub trait Destination: Send + Sync {
    fn describe(&self) -> String;

    /// Whether `repo` already has the blob (then it is not sent).
    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, ReplicateError>;

    /// Link a blob `from` another repository of this destination without sending it;
    /// `false` when that did not happen (no such blob there, mounts unsupported).
    async fn mount_blob(
        &self,
        _repo: &RepoName,
        _digest: &Digest,
        _from: &RepoName,
    ) -> Result<bool, ReplicateError> {
        Ok(false)
    }

    /// Write a blob, reading from `blob.source` (as often as resuming needs).
    async fn put_blob(
        &self,
        repo: &RepoName,
        blob: &BlobTransfer<'_>,
    ) -> Result<(), ReplicateError>;

    /// The digest `reference` resolves to in `repo`, if it exists.
    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, ReplicateError>;

    /// Delete a tag or a manifest (deletion propagation). A destination that cannot
    /// says so with a permanent error.
    async fn delete_manifest(
        &self,
        _repo: &RepoName,
        _reference: &Reference,
    ) -> Result<(), ReplicateError> {
        Err(ReplicateError::InvalidJob(format!(
            "{} does not support deleting manifests",
            self.describe()
        )))
    }

    /// Store a manifest under a digest or a tag; its blobs and children, and its
    /// subject, are already there.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), ReplicateError>;
}
