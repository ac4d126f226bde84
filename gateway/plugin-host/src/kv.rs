//! Where the `kv` capability keeps a plugin's keys: a directory on this node by default,
//! or a [`KvStore`] shared by every node (Pier's scale-out passes one over Redis, so the
//! rbac plugin's projects and the replicate plugin's rules are the same on every node).
//! The host checks the grant and the key and value sizes before either is asked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

/// Most keys one plugin may keep.
pub const KV_MAX_KEYS: usize = 10_000;

/// Why a store refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFault {
    /// A new key over [`KV_MAX_KEYS`].
    TooManyKeys,
    /// The store failed; the message is for the plugin (and its log).
    Io(String),
}

/// A plugin's keys somewhere other than this node's disk.
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFault>;
    /// Stores `value`; refuses a new key once [`KV_MAX_KEYS`] are kept.
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFault>;
    async fn delete(&self, key: &str) -> Result<(), KvFault>;
    /// Where the keys are, for logs; two stores with the same place hold the same keys.
    fn place(&self) -> String;
}

/// Where one plugin's `kv` lives.
#[derive(Clone)]
pub enum KvPlace {
    /// A file per key (named by the key's SHA-256) in this directory of this node.
    Dir(PathBuf),
    /// A store shared with other nodes.
    Shared(Arc<dyn KvStore>),
}

impl fmt::Debug for KvPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvPlace::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            KvPlace::Shared(s) => f.debug_tuple("Shared").field(&s.place()).finish(),
        }
    }
}

/// Same directory, or a shared store in the same place (a reload with settings built
/// again is not a change).
impl PartialEq for KvPlace {
    fn eq(&self, other: &KvPlace) -> bool {
        match (self, other) {
            (KvPlace::Dir(a), KvPlace::Dir(b)) => a == b,
            (KvPlace::Shared(a), KvPlace::Shared(b)) => a.place() == b.place(),
            _ => false,
        }
    }
}

impl KvPlace {
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        match self {
            KvPlace::Dir(dir) => {
                let p = file_of(dir, key);
                match tokio::fs::read(&p).await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(KvFault::Io(e.to_string())),
                }
            }
            KvPlace::Shared(s) => s.get(key).await,
        }
    }

    pub(crate) async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFault> {
        match self {
            KvPlace::Dir(dir) => {
                let (dir, p, value) = (dir.clone(), file_of(dir, key), value.to_vec());
                tokio::task::spawn_blocking(move || dir_set(&dir, &p, &value))
                    .await
                    .map_err(|e| KvFault::Io(e.to_string()))?
            }
            KvPlace::Shared(s) => s.set(key, value).await,
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), KvFault> {
        match self {
            KvPlace::Dir(dir) => match tokio::fs::remove_file(file_of(dir, key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(KvFault::Io(e.to_string()))
                }
                _ => Ok(()),
            },
            KvPlace::Shared(s) => s.delete(key).await,
        }
    }
}

fn file_of(dir: &Path, key: &str) -> PathBuf {
    dir.join(hex::encode(Sha256::digest(key.as_bytes())))
}

/// Written whole, on disk, then renamed: a crash leaves the old value or the new.
fn dir_set(dir: &Path, p: &Path, value: &[u8]) -> Result<(), KvFault> {
    let io = |e: std::io::Error| KvFault::Io(e.to_string());
    std::fs::create_dir_all(dir).map_err(io)?;
    if !p.exists() {
        let n = std::fs::read_dir(dir).map_err(io)?.count();
        if n >= KV_MAX_KEYS {
            return Err(KvFault::TooManyKeys);
        }
    }
    let tmp = p.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, value)?;
        f.sync_all()?;
        std::fs::rename(&tmp, p)
    };
    write().map_err(io)
}
