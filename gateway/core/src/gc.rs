//! Mark and sweep garbage collection.
//!
//! Mark: every manifest linked in a repository (with `untagged`, only manifests reachable
//! from a tag — through index children and referrers), and the blobs they reference.
//! Sweep: blobs nobody marked, older than the grace period, so content pushed while the
//! collection runs (blobs whose manifest has not arrived yet) is never removed.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use pier_oci::{Digest, Manifest, Reference, RepoName};

use crate::{CoreError, Registry, Result};

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Also remove manifests no tag reaches.
    pub untagged: bool,
    /// Blobs modified more recently than this are kept.
    pub grace: Duration,
}

/// What a collection freed (or, in a dry run, would free).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub manifests_removed: Vec<(RepoName, Digest)>,
    pub blobs_removed: Vec<(Digest, u64)>,
    pub blobs_kept_by_grace: usize,
    pub blobs_marked: usize,
}

impl GcReport {
    pub fn bytes_freed(&self) -> u64 {
        self.blobs_removed.iter().map(|(_, s)| s).sum()
    }
}

/// Runs one collection, calling `progress` with a line per item freed.
pub async fn collect(
    registry: &Registry,
    opts: &GcOptions,
    mut progress: impl FnMut(&str),
) -> Result<GcReport> {
    let stores = registry.stores();
    let mut report = GcReport::default();
    let mut marked: HashSet<Digest> = HashSet::new();

    for repo in stores.repos.repositories().await? {
        let linked: BTreeSet<Digest> = stores
            .manifests
            .manifests(&repo)
            .await?
            .into_iter()
            .collect();
        let keep: BTreeSet<Digest> = if opts.untagged {
            let mut roots = Vec::new();
            for t in stores.manifests.tags(&repo).await?.unwrap_or_default() {
                if let Some(d) = stores.manifests.resolve_tag(&repo, &t).await? {
                    roots.push(d);
                }
            }
            reachable(registry, &repo, roots).await?
        } else {
            linked.clone()
        };
        for d in &linked {
            if keep.contains(d) {
                continue;
            }
            progress(&format!("manifest {repo}@{d}: untagged, removing"));
            if !opts.dry_run {
                registry
                    .manifest_delete(&repo, &Reference::Digest(d.clone()))
                    .await?;
            }
            report.manifests_removed.push((repo.clone(), d.clone()));
        }
        for d in keep.iter().filter(|d| linked.contains(d)) {
            marked.insert(d.clone());
            // Everything a manifest names is kept, even in a manifest this version cannot
            // parse; a manifest that cannot be read stops the collection instead of
            // letting its blobs be swept.
            match registry
                .manifest_get(&repo, &Reference::Digest(d.clone()))
                .await
            {
                Ok(content) => match Manifest::referenced_digests(&content.bytes) {
                    Ok(ds) => marked.extend(ds),
                    Err(e) => {
                        return Err(CoreError::ManifestInvalid(e));
                    }
                },
                Err(CoreError::ManifestUnknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    report.blobs_marked = marked.len();

    let now = SystemTime::now();
    for blob in stores.blobs.list().await? {
        if marked.contains(&blob.digest) {
            continue;
        }
        if now.duration_since(blob.modified).unwrap_or_default() < opts.grace {
            report.blobs_kept_by_grace += 1;
            continue;
        }
        progress(&format!(
            "blob {}: {} bytes, unreferenced, removing",
            blob.digest, blob.size
        ));
        if !opts.dry_run {
            stores.blobs.delete(&blob.digest).await?;
        }
        report.blobs_removed.push((blob.digest, blob.size));
    }
    Ok(report)
}

/// Manifests reachable from `roots`: index children and referrers, transitively.
async fn reachable(
    registry: &Registry,
    repo: &RepoName,
    roots: Vec<Digest>,
) -> Result<BTreeSet<Digest>> {
    let stores = registry.stores();
    let mut seen = BTreeSet::new();
    let mut todo = roots;
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        if let Ok(content) = registry
            .manifest_get(repo, &Reference::Digest(d.clone()))
            .await
            && let Ok(m) = Manifest::parse(&content.bytes, Some(&content.media_type))
        {
            todo.extend(m.manifests.iter().map(|c| c.digest.clone()));
        }
        todo.extend(stores.manifests.referrers(repo, &d).await?);
    }
    Ok(seen)
}
