//! Admission: the policies (plugins) asked before a manifest is stored, cached from an
//! upstream, served or deleted ([`Gate`]), and what they read ([`RepoContent`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pier_auth::admission::{
    Admission, AdmissionRequest, ContentReader, MAX_ADMISSION_MANIFEST, MAX_READ, ReadError,
    ReadManifest, Stage,
};
use pier_auth::{Decision, Subject};
use pier_oci::{Digest, Reference, RepoName};
use pier_storage::{BlobBody, BlobRead};

use crate::registry::Stores;
use crate::{CoreError, Result};

/// How long an `admit` of a pull is remembered (per policy generation, repository and
/// digest): a signature removed or a key revoked by a reload takes effect at once, a
/// change a policy reads from storage within this time.
pub const PULL_DECISION_TTL: Duration = Duration::from_secs(60);

/// Who asks for an admission decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: Subject,
    /// The client's address; `pier` for Pier itself.
    pub client: String,
}

impl Caller {
    /// Pier itself (mirror fills, replication jobs, the admin API acting for nobody).
    pub fn pier() -> Caller {
        Caller {
            subject: Subject::Anonymous,
            client: "pier".to_owned(),
        }
    }
}

/// The admission policies of a registry, in order: every one that governs a repository
/// must admit.
pub struct Gate {
    policies: Vec<Arc<dyn Admission>>,
    /// Recent admits: (generations, stage, repository, digest). A pull admitted is not
    /// asked again for a while; an index admitted (pulled or filled) admits its children
    /// at the same stage, as the signature of an index covers its platforms.
    admitted: moka::sync::Cache<(u64, Stage, RepoName, Digest), ()>,
    /// Decisions under way, one per (stage, repository, digest): concurrent requests for
    /// the same manifest wait for the first one's decision instead of asking too.
    /// Each with the number of requests holding or waiting for it.
    flights: std::sync::Mutex<HashMap<FlightKey, FlightEntry>>,
}

type FlightKey = (Stage, RepoName, Digest);
/// The decision's lock and how many requests hold or wait for it.
type FlightEntry = (Arc<tokio::sync::Mutex<()>>, usize);

/// Held while one decision of a key is being made (see [`Gate::flight`]).
pub(crate) struct Flight<'a> {
    gate: &'a Gate,
    key: FlightKey,
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.gate.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = flights.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                flights.remove(&self.key);
            }
        }
    }
}

impl Gate {
    pub fn new(policies: Vec<Arc<dyn Admission>>) -> Gate {
        Gate {
            policies,
            admitted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PULL_DECISION_TTL)
                .build(),
            flights: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether any policy decides about `repo`.
    pub fn governs(&self, repo: &RepoName) -> bool {
        self.policies.iter().any(|p| p.governs(repo.as_str()))
    }

    /// The policies' generations, folded into one number.
    fn generation(&self) -> u64 {
        self.policies.iter().fold(0xcbf2_9ce4_8422_2325, |h, p| {
            (h ^ p.generation()).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Waits for a decision of the same (stage, repository, digest) under way, then holds
    /// the key while the caller decides: of many requests that miss the cache at once,
    /// one asks the policies and the others find its admit remembered (a refusal is not
    /// remembered: they ask in turn).
    pub(crate) async fn flight(
        &self,
        stage: Stage,
        repo: &RepoName,
        digest: &Digest,
    ) -> Flight<'_> {
        let key = (stage, repo.clone(), digest.clone());
        let lock = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            let entry = flights.entry(key.clone()).or_default();
            entry.1 += 1;
            entry.0.clone()
        };
        // Counted before waiting: a request dropped while it waits uncounts itself too.
        let mut flight = Flight {
            gate: self,
            key,
            _held: None,
        };
        flight._held = Some(lock.lock_owned().await);
        flight
    }

    /// How many keys have a decision under way or waiting.
    #[cfg(test)]
    pub(crate) fn flights_in_progress(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether `digest` in `repo` was admitted at `stage` lately by these very policies
    /// (itself for pulls, or an index it is a child of).
    pub(crate) fn admitted(&self, stage: Stage, repo: &RepoName, digest: &Digest) -> bool {
        self.admitted
            .contains_key(&(self.generation(), stage, repo.clone(), digest.clone()))
    }

    /// Remembers an admit of `request` (made under `generation`).
    fn remember(&self, generation: u64, request: &AdmissionRequest) {
        let (Ok(repo), Ok(digest)) = (
            request.repository.parse::<RepoName>(),
            request.digest.parse::<Digest>(),
        ) else {
            return;
        };
        let stage = request.stage;
        if !matches!(stage, Stage::Pull | Stage::MirrorFill) {
            return;
        }
        if stage == Stage::Pull {
            self.admitted
                .insert((generation, stage, repo.clone(), digest), ());
        }
        if let Ok(m) = pier_oci::Manifest::parse(&request.manifest, Some(&request.media_type)) {
            for child in m.manifests {
                self.admitted
                    .insert((generation, stage, repo.clone(), child.digest), ());
            }
        }
    }

    /// Asks every policy that governs the request's repository; the first deny (or
    /// failure) ends it.
    pub(crate) async fn decide(
        &self,
        request: &AdmissionRequest,
        content: Arc<dyn ContentReader>,
    ) -> Result<()> {
        let generation = self.generation();
        for p in self
            .policies
            .iter()
            .filter(|p| p.governs(&request.repository))
        {
            match p.admit(request, content.clone()).await {
                Ok(Decision::Allow) => {}
                Ok(Decision::Deny(reason)) => {
                    tracing::info!(
                        policy = p.name(),
                        stage = request.stage.as_str(),
                        repository = %request.repository,
                        tag = request.tag.as_deref().unwrap_or(""),
                        digest = %request.digest,
                        caller = %request.caller,
                        client = %request.client,
                        reason = %reason,
                        "admission denied"
                    );
                    return Err(CoreError::Denied {
                        policy: p.name().to_owned(),
                        reason,
                    });
                }
                Err(e) => {
                    tracing::error!(
                        policy = p.name(),
                        stage = request.stage.as_str(),
                        repository = %request.repository,
                        digest = %request.digest,
                        kind = e.kind.as_str(),
                        error = %e.message,
                        "admission plugin failed; refused (fail closed)"
                    );
                    return Err(CoreError::PolicyFailed(e));
                }
            }
        }
        self.remember(generation, request);
        Ok(())
    }
}

/// The content of one repository, as a policy reads it during a decision.
pub struct RepoContent {
    pub(crate) stores: Stores,
    pub(crate) repo: RepoName,
}

impl RepoContent {
    async fn read_bytes(&self, digest: &Digest, max: u64) -> std::result::Result<Bytes, ReadError> {
        let unavailable = |e: &dyn std::fmt::Display| ReadError::Unavailable(e.to_string());
        match self.stores.blobs.stat(digest).await {
            Ok(Some(size)) if size > max => return Err(ReadError::TooLarge),
            Ok(Some(_)) => {}
            Ok(None) => return Err(ReadError::NotFound),
            Err(e) => return Err(unavailable(&e)),
        }
        match self.stores.blobs.read(digest, None).await {
            Ok(BlobRead::Content {
                body: BlobBody::Bytes(b),
                ..
            }) => Ok(b),
            Ok(BlobRead::Content {
                body: BlobBody::Stream(s),
                ..
            }) => collect_bounded(s, max).await,
            Ok(BlobRead::Redirect(_)) => Err(ReadError::Unavailable(
                "the storage answers with a redirect".into(),
            )),
            Err(pier_storage::StorageError::BlobNotFound(_)) => Err(ReadError::NotFound),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

#[async_trait::async_trait]
impl ContentReader for RepoContent {
    async fn manifest(&self, reference: &str) -> std::result::Result<ReadManifest, ReadError> {
        let unavailable = |e: &dyn std::fmt::Display| ReadError::Unavailable(e.to_string());
        let reference: Reference = reference.parse().map_err(|_| ReadError::NotFound)?;
        let m = &self.stores.manifests;
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(t) => m
                .resolve_tag(&self.repo, &t)
                .await
                .map_err(|e| unavailable(&e))?
                .ok_or(ReadError::NotFound)?,
        };
        if !m
            .manifest_linked(&self.repo, &digest)
            .await
            .map_err(|e| unavailable(&e))?
        {
            return Err(ReadError::NotFound);
        }
        let bytes = self
            .read_bytes(&digest, pier_oci::MAX_MANIFEST_SIZE as u64)
            .await?;
        Ok(ReadManifest {
            digest: digest.to_string(),
            media_type: crate::registry::media_type_of(&bytes),
            bytes,
        })
    }

    async fn blob(&self, digest: &str, max_size: u64) -> std::result::Result<Bytes, ReadError> {
        let unavailable = |e: &dyn std::fmt::Display| ReadError::Unavailable(e.to_string());
        let digest: Digest = digest.parse().map_err(|_| ReadError::NotFound)?;
        let linked = self
            .stores
            .repos
            .blob_linked(&self.repo, &digest)
            .await
            .map_err(|e| unavailable(&e))?
            || self
                .stores
                .manifests
                .manifest_linked(&self.repo, &digest)
                .await
                .map_err(|e| unavailable(&e))?;
        if !linked {
            return Err(ReadError::NotFound);
        }
        self.read_bytes(&digest, max_size.min(MAX_READ)).await
    }
}

/// A blob's bytes for a policy, refused past `max` bytes (this repository's or, through
/// the mirror, the upstream's).
pub(crate) async fn collect_bounded(
    mut body: pier_storage::ByteStream,
    max: u64,
) -> std::result::Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReadError::Unavailable(e.to_string()))?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The manifest as a policy sees it: cut at [`MAX_ADMISSION_MANIFEST`].
pub(crate) fn bounded(bytes: &Bytes) -> Bytes {
    bytes.slice(..bytes.len().min(MAX_ADMISSION_MANIFEST))
}
