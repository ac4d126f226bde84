//! Project quotas: the storage a project uses, counted as Harbor counts it (each blob and
//! manifest once per project, however many of its repositories and manifests name it),
//! against a limit set per project through the admin API.
//!
//! Usage is what the manifests of the project's repositories reference: their own bytes,
//! their configs and layers (index children are manifests of the repository, counted
//! themselves). It is computed from storage when first needed, kept current by this
//! process's pushes, and computed again after deletes and garbage collections, and at
//! least every [`USAGE_TTL`] (other nodes' pushes). A manifest push that would take a
//! project over its limit is refused before anything is stored; so is an upload whose
//! size alone would (its bytes are removed from the repository again). Blobs uploaded
//! by a refused push stay unreferenced: they count for nothing and the next garbage
//! collection removes them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_oci::{Digest, Manifest, RepoName};

use crate::{CoreError, Result};

/// How long a computed usage is trusted without a change seen by this process.
pub const USAGE_TTL: Duration = Duration::from_secs(30);

/// Where project limits are kept.
#[async_trait::async_trait]
pub trait QuotaLimits: Send + Sync {
    /// Every project with a limit, in bytes.
    async fn limits(&self) -> Result<BTreeMap<String, u64>>;
    /// Sets (or with `None` removes) a project's limit.
    async fn set(&self, project: &str, limit: Option<u64>) -> Result<()>;
}

/// Limits in a JSON file (`{"team": 1073741824}`), written through a temp file and a
/// rename; read once, then kept in memory (every push asks, and only [`set`] changes
/// them).
///
/// [`set`]: QuotaLimits::set
pub struct FileQuotaLimits {
    path: PathBuf,
    /// The limits as last read or written; also serializes writes.
    known: tokio::sync::Mutex<Option<BTreeMap<String, u64>>>,
}

impl FileQuotaLimits {
    pub fn new(path: PathBuf) -> FileQuotaLimits {
        FileQuotaLimits {
            path,
            known: tokio::sync::Mutex::new(None),
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> CoreError {
        CoreError::QuotaStore(format!("{}: {e}", self.path.display()))
    }
}

impl FileQuotaLimits {
    async fn read(&self) -> Result<BTreeMap<String, u64>> {
        match tokio::fs::read(&self.path).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| self.failed(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The known limits, read from the file the first time.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, Option<BTreeMap<String, u64>>>> {
        let mut known = self.known.lock().await;
        if known.is_none() {
            *known = Some(self.read().await?);
        }
        Ok(known)
    }
}

#[async_trait::async_trait]
impl QuotaLimits for FileQuotaLimits {
    async fn limits(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.loaded().await?.clone().unwrap_or_default())
    }

    async fn set(&self, project: &str, limit: Option<u64>) -> Result<()> {
        let mut known = self.loaded().await?;
        let mut all = known.clone().unwrap_or_default();
        match limit {
            Some(l) => all.insert(project.to_owned(), l),
            None => all.remove(project),
        };
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.failed(e))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&all).map_err(|e| self.failed(e))?;
        tokio::fs::write(&tmp, body)
            .await
            .map_err(|e| self.failed(e))?;
        tokio::fs::rename(&tmp, &self.path)
            .await
            .map_err(|e| self.failed(e))?;
        *known = Some(all);
        Ok(())
    }
}

/// What a project's manifests reference: digest -> size, with their total. Shared by
/// the cache and its readers and updated in place by pushes (under the project's lock),
/// so a check costs a lookup and a push no copy, however big the project.
#[derive(Debug, Default)]
pub struct Usage {
    counted: Mutex<Counted>,
}

#[derive(Debug, Default)]
struct Counted {
    digests: HashMap<Digest, u64>,
    total: u64,
}

impl Counted {
    fn insert(&mut self, digest: Digest, size: u64) {
        if let Some(old) = self.digests.insert(digest, size) {
            self.total -= old;
        }
        self.total += size;
    }
}

impl Usage {
    fn counted(&self) -> std::sync::MutexGuard<'_, Counted> {
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes referenced, each digest once.
    pub fn bytes(&self) -> u64 {
        self.counted().total
    }

    /// Distinct digests counted.
    pub fn items(&self) -> usize {
        self.counted().digests.len()
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.counted().digests.contains_key(digest)
    }

    /// Counts a manifest that does not parse: its own bytes.
    pub(crate) fn add(&self, digest: &Digest, len: u64) {
        self.counted().insert(digest.clone(), len);
    }

    /// Adds what `manifest` (stored as `digest`, `len` bytes) references.
    pub(crate) fn add_manifest(&self, digest: &Digest, len: u64, manifest: &Manifest) {
        let mut c = self.counted();
        c.insert(digest.clone(), len);
        for d in manifest.blob_references() {
            c.insert(d.digest.clone(), d.size);
        }
    }

    /// The bytes `manifest` would add.
    pub(crate) fn added_by(&self, digest: &Digest, len: u64, manifest: &Manifest) -> u64 {
        let c = self.counted();
        let mut new: HashMap<&Digest, u64> = HashMap::new();
        if !c.digests.contains_key(digest) {
            new.insert(digest, len);
        }
        for d in manifest.blob_references() {
            if !c.digests.contains_key(&d.digest) {
                new.insert(&d.digest, d.size);
            }
        }
        new.values().sum()
    }
}

/// Limits and the usage of projects that have one.
pub struct Quotas {
    limits: Arc<dyn QuotaLimits>,
    usage: moka::sync::Cache<String, Arc<Usage>>,
    /// Checks and the stores they allow run one at a time per project.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Quotas {
    pub fn new(limits: Arc<dyn QuotaLimits>) -> Quotas {
        Quotas {
            limits,
            usage: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(USAGE_TTL)
                .build(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> &Arc<dyn QuotaLimits> {
        &self.limits
    }

    pub(crate) async fn limit(&self, project: &str) -> Result<Option<u64>> {
        Ok(self.limits.limits().await?.get(project).copied())
    }

    pub(crate) fn lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("quota locks poisoned")
            .entry(project.to_owned())
            .or_default()
            .clone()
    }

    pub(crate) fn cached(&self, project: &str) -> Option<Arc<Usage>> {
        self.usage.get(project)
    }

    pub(crate) fn keep(&self, project: &str, usage: Arc<Usage>) {
        self.usage.insert(project.to_owned(), usage);
    }

    /// Drops what is known of `project`'s usage (a delete): computed again when needed.
    pub fn forget(&self, project: &str) {
        self.usage.invalidate(project);
    }

    /// Drops every computed usage (a garbage collection).
    pub fn forget_all(&self) {
        self.usage.invalidate_all();
    }
}

/// The project of a repository: its first path segment.
pub fn project_of(repo: &RepoName) -> &str {
    let s = repo.as_str();
    s.split('/').next().unwrap_or(s)
}

/// `1.5 GiB`, `300.0 KiB`, `12 bytes`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human(12), "12 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 20), "10.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn usage_counts_each_digest_once_and_keeps_its_total() {
        let d = |b: u8| Digest::of(pier_oci::Algorithm::Sha256, &[b]);
        let u = Usage::default();
        u.add(&d(1), 100);
        u.add(&d(2), 50);
        u.add(&d(1), 100);
        assert_eq!((u.bytes(), u.items()), (150, 2));
        // A digest counted again with another size (a manifest re-read) replaces it.
        u.add(&d(2), 70);
        assert_eq!((u.bytes(), u.items()), (170, 2));
        assert!(u.contains(&d(1)) && !u.contains(&d(3)));
        let m = Manifest::parse(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":70}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":30}}]}}"#,
                d(2),
                d(4)
            )
            .as_bytes(),
            None,
        )
        .unwrap();
        // Only what is new counts: the manifest's bytes and the layer, not the config.
        assert_eq!(u.added_by(&d(5), 10, &m), 40);
        u.add_manifest(&d(5), 10, &m);
        assert_eq!((u.bytes(), u.items()), (210, 4));
        assert_eq!(u.added_by(&d(5), 10, &m), 0);
    }

    #[tokio::test]
    async fn limits_persist_and_a_removed_limit_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileQuotaLimits::new(dir.path().join("q").join("quotas.json"));
        assert!(f.limits().await.unwrap().is_empty());
        f.set("team", Some(100)).await.unwrap();
        f.set("ops", Some(5)).await.unwrap();
        f.set("ops", None).await.unwrap();
        let again = FileQuotaLimits::new(dir.path().join("q").join("quotas.json"));
        assert_eq!(
            again.limits().await.unwrap(),
            BTreeMap::from([("team".to_owned(), 100)])
        );
    }
}
