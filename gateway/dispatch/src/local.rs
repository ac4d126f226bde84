//! This gateway's own registry as a replication endpoint: the [`Source`] of push
//! replication and the [`Destination`] of pull replication (`pier-replicate` roles).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pier_core::{CoreError, Registry};
use pier_oci::{Descriptor, Digest, Reference, RepoName, Tag};
use pier_replicate::{
    BlobTransfer, ByteStream, Destination, ReplicateError, Side, Source, SourceBlob, SourceManifest,
};
use pier_storage::{BlobBody, BlobRead, RangeSpec};

/// The local registry, read or written through the core (so caches, links and change
/// announcements stay right).
pub struct LocalRegistry {
    pub registry: Arc<Registry>,
}

fn error(side: Side, context: String, e: CoreError) -> ReplicateError {
    match e {
        CoreError::NameUnknown(_) | CoreError::BlobUnknown(_) | CoreError::ManifestUnknown(_) => {
            ReplicateError::NotFound {
                side,
                what: context,
            }
        }
        e => {
            let retryable = matches!(
                e,
                CoreError::Storage(_)
                    | CoreError::Coordination(_)
                    | CoreError::Upstream(_)
                    | CoreError::Body(_)
                    | CoreError::DigestMismatch { .. }
            );
            ReplicateError::other(side, context, retryable, e)
        }
    }
}

#[async_trait]
impl Source for LocalRegistry {
    fn describe(&self) -> String {
        "local".into()
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<SourceManifest, ReplicateError> {
        let m = self
            .registry
            .manifest_get(repo, reference)
            .await
            .map_err(|e| error(Side::Source, format!("manifest {repo}:{reference}"), e))?;
        Ok(SourceManifest {
            bytes: m.bytes.clone(),
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
        })
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<SourceBlob, ReplicateError> {
        let context = || format!("blob {repo}@{digest}");
        let range = (offset > 0).then_some(RangeSpec::From(offset));
        let read = self
            .registry
            .blob_read(repo, digest, range)
            .await
            .map_err(|e| error(Side::Source, context(), e))?;
        match read {
            BlobRead::Content { size, body, .. } => {
                let stream: ByteStream = match body {
                    BlobBody::Bytes(b) => Box::pin(futures_util::stream::once(async move {
                        Ok::<Bytes, std::io::Error>(b)
                    })),
                    BlobBody::Stream(s) => s,
                };
                Ok(SourceBlob {
                    size: Some(size),
                    stream,
                })
            }
            BlobRead::Redirect(url) => Err(ReplicateError::other(
                Side::Source,
                context(),
                false,
                format!("storage answered with a redirect to {url}; replication reads bytes"),
            )),
        }
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, ReplicateError> {
        self.registry
            .referrers(repo, digest, None)
            .await
            .map_err(|e| error(Side::Source, format!("referrers of {repo}@{digest}"), e))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, ReplicateError> {
        self.registry
            .tags(repo, None, None)
            .await
            .map(|p| p.items)
            .map_err(|e| error(Side::Source, format!("tags of {repo}"), e))
    }
}

#[async_trait]
impl Destination for LocalRegistry {
    fn describe(&self) -> String {
        "local".into()
    }

    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, ReplicateError> {
        match self.registry.blob_size(repo, digest).await {
            Ok(_) => Ok(true),
            Err(CoreError::BlobUnknown(_)) => Ok(false),
            Err(e) => Err(error(Side::Destination, format!("blob {repo}@{digest}"), e)),
        }
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<bool, ReplicateError> {
        self.registry
            .mount(repo, from, digest)
            .await
            .map(|m| m.is_some())
            .map_err(|e| error(Side::Destination, format!("mount {digest} into {repo}"), e))
    }

    async fn put_blob(
        &self,
        repo: &RepoName,
        blob: &BlobTransfer<'_>,
    ) -> Result<(), ReplicateError> {
        let stream = blob.source.open(0).await?;
        let meter = blob.meter.clone();
        let counted: ByteStream = Box::pin(stream.map(move |chunk| {
            if let Ok(b) = &chunk {
                meter.add_bytes(b.len() as u64);
            }
            chunk
        }));
        self.registry
            .upload_monolithic(repo, blob.digest, counted)
            .await
            .map(drop)
            .map_err(|e| error(Side::Destination, format!("blob {repo}@{}", blob.digest), e))
    }

    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, ReplicateError> {
        match self.registry.manifest_get(repo, reference).await {
            Ok(m) => Ok(Some(m.digest.clone())),
            Err(CoreError::ManifestUnknown(_) | CoreError::NameUnknown(_)) => Ok(None),
            Err(e) => Err(error(
                Side::Destination,
                format!("manifest {repo}:{reference}"),
                e,
            )),
        }
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), ReplicateError> {
        match self
            .registry
            .manifest_delete_by(repo, reference, &pier_core::Caller::pier())
            .await
        {
            Ok(()) | Err(CoreError::ManifestUnknown(_) | CoreError::NameUnknown(_)) => Ok(()),
            Err(e) => Err(error(
                Side::Destination,
                format!("delete {repo}:{reference}"),
                e,
            )),
        }
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), ReplicateError> {
        self.registry
            .manifest_put(
                repo,
                reference,
                Some(media_type),
                bytes,
                &pier_core::Caller::pier(),
            )
            .await
            .map(drop)
            .map_err(|e| error(Side::Destination, format!("manifest {repo}:{reference}"), e))
    }
}
