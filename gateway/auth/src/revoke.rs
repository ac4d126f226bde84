//! Token revocation: a token's `jti` is refused until the token would have expired anyway.
//!
//! [`Revocations`] is the role; [`LocalRevocations`] keeps them in this process and,
//! optionally, in a file so a restart does not bring a revoked token back. Scaled-out
//! nodes put them in Redis (the server implements the role over `pier-cluster`).
//!
//! An entry is useless once its token has expired: [`Revocations::sweep`] (called
//! periodically by the server, and by [`LocalRevocations`] itself on a revocation at most
//! once a second) drops those from memory and rewrites the file when its dead lines
//! outnumber the live ones, so the file stays within about twice the live set.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::AuthError;
use crate::time::now_secs;

/// Where revoked token ids are kept.
#[async_trait]
pub trait Revocations: Send + Sync {
    /// Refuses the token `jti` from now until `exp` (its expiry, unix seconds).
    async fn revoke(&self, jti: &str, exp: u64) -> Result<(), AuthError>;
    /// Whether `jti` was revoked (and would not have expired yet).
    async fn is_revoked(&self, jti: &str) -> Result<bool, AuthError>;
    /// Forgets revocations of tokens that have expired since. Stores whose entries
    /// expire by themselves (Redis keys with an expiry) need do nothing.
    async fn sweep(&self) -> Result<(), AuthError> {
        Ok(())
    }
}

/// Revocations kept in memory, and appended to a file when one is given (one
/// `jti exp` line each).
pub struct LocalRevocations {
    inner: Arc<Inner>,
}

struct Inner {
    /// jti -> expiry (unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
    /// The file; held while it is written, so a compaction never loses an append.
    /// Locked before `revoked` when both are.
    file: Option<Mutex<RevocationFile>>,
    /// When expired entries were last dropped (unix seconds).
    swept: Mutex<u64>,
}

struct RevocationFile {
    path: PathBuf,
    /// Lines in the file, live or not.
    lines: usize,
}

impl RevocationFile {
    /// Replaces the file with `live` (temp file, fsync, rename).
    fn rewrite(&mut self, live: &HashMap<String, u64>) -> Result<(), AuthError> {
        let compact: String = live.iter().map(|(j, e)| format!("{j} {e}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(compact.as_bytes())?;
            f.sync_all()
        };
        write().map_err(|e| AuthError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| AuthError::io(&self.path, e))?;
        self.lines = live.len();
        Ok(())
    }

    /// Appends one line (fsynced).
    fn append(&mut self, jti: &str, exp: u64) -> Result<(), AuthError> {
        let path = &self.path;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| AuthError::io(path, e))?;
        f.write_all(format!("{jti} {exp}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| AuthError::io(path, e))?;
        self.lines += 1;
        Ok(())
    }
}

impl LocalRevocations {
    /// Revocations that last as long as the process.
    pub fn in_memory() -> LocalRevocations {
        LocalRevocations::with(HashMap::new(), None)
    }

    fn with(revoked: HashMap<String, u64>, file: Option<RevocationFile>) -> LocalRevocations {
        LocalRevocations {
            inner: Arc::new(Inner {
                revoked: Mutex::new(revoked),
                file: file.map(Mutex::new),
                swept: Mutex::new(now_secs()),
            }),
        }
    }

    /// Revocations persisted in `path` (created when missing, compacted on open).
    pub fn open(path: &Path) -> Result<LocalRevocations, AuthError> {
        let now = now_secs();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(AuthError::io(path, e)),
        };
        let mut revoked = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let parsed = line
                .split_once(' ')
                .and_then(|(j, e)| Some((j, e.parse::<u64>().ok()?)));
            match parsed {
                Some((jti, exp)) if !jti.is_empty() => {
                    if exp > now {
                        revoked.insert(jti.to_owned(), exp);
                    }
                }
                _ => {
                    return Err(AuthError::Format {
                        path: path.to_owned(),
                        line: i + 1,
                        message: "expected `TOKEN_ID EXPIRY_UNIX_SECONDS`".into(),
                    });
                }
            }
        }
        let mut file = RevocationFile {
            path: path.to_owned(),
            lines: 0,
        };
        file.rewrite(&revoked)?;
        Ok(LocalRevocations::with(revoked, Some(file)))
    }

    /// Records a revocation in memory only (a cache of revocations kept elsewhere).
    pub fn remember(&self, jti: &str, exp: u64) {
        let now = now_secs();
        let mut map = self.inner.revoked.lock().expect("revocations poisoned");
        if map.len() > 1024 {
            map.retain(|_, e| *e > now);
        }
        map.insert(jti.to_owned(), exp);
    }

    /// Whether this process knows `jti` as revoked.
    pub fn knows(&self, jti: &str) -> bool {
        let map = self.inner.revoked.lock().expect("revocations poisoned");
        map.get(jti).is_some_and(|e| *e > now_secs())
    }

    /// Revocations held in memory (live, or expired and not swept yet).
    pub fn len(&self) -> usize {
        self.inner
            .revoked
            .lock()
            .expect("revocations poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Notes a revocation, in the file first when there is one. Blocking (file I/O).
    fn add(&self, jti: &str, exp: u64) -> Result<(), AuthError> {
        let mut file = self
            .file
            .as_ref()
            .map(|f| f.lock().expect("revocation file poisoned"));
        if let Some(f) = file.as_mut() {
            f.append(jti, exp)?;
        }
        // In memory while the file lock is held: a compaction sees it.
        self.revoked
            .lock()
            .expect("revocations poisoned")
            .insert(jti.to_owned(), exp);
        Ok(())
    }

    /// Drops expired entries from memory; rewrites the file when its dead lines
    /// outnumber the live ones. Blocking (file I/O).
    fn sweep(&self) -> Result<(), AuthError> {
        let now = now_secs();
        *self.swept.lock().expect("revocations poisoned") = now;
        let mut file = self
            .file
            .as_ref()
            .map(|f| f.lock().expect("revocation file poisoned"));
        let live = {
            let mut map = self.revoked.lock().expect("revocations poisoned");
            map.retain(|_, e| *e > now);
            match &file {
                Some(f) if f.lines > 2 * map.len() => map.clone(),
                _ => return Ok(()),
            }
        };
        if let Some(f) = file.as_mut() {
            let dead = f.lines - live.len();
            f.rewrite(&live)?;
            tracing::debug!(live = live.len(), dead, "revoked-tokens file compacted");
        }
        Ok(())
    }

    /// Whether the last sweep was in an earlier second.
    fn sweep_due(&self) -> bool {
        *self.swept.lock().expect("revocations poisoned") < now_secs()
    }
}

#[async_trait]
impl Revocations for LocalRevocations {
    async fn revoke(&self, jti: &str, exp: u64) -> Result<(), AuthError> {
        if exp <= now_secs() || jti.is_empty() || jti.contains(char::is_whitespace) {
            return Ok(());
        }
        let (inner, jti) = (self.inner.clone(), jti.to_owned());
        blocking(move || {
            inner.add(&jti, exp)?;
            if inner.sweep_due() {
                inner.sweep()?;
            }
            Ok(())
        })
        .await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, AuthError> {
        Ok(self.knows(jti))
    }

    async fn sweep(&self) -> Result<(), AuthError> {
        let inner = self.inner.clone();
        blocking(move || inner.sweep()).await
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), AuthError> + Send + 'static,
) -> Result<(), AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Invalid(format!("revocation task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_survive_a_reopen_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let r = LocalRevocations::open(&path).unwrap();
        let later = now_secs() + 3600;
        r.revoke("a", later).await.unwrap();
        r.revoke("gone", now_secs() - 1).await.unwrap();
        assert!(r.is_revoked("a").await.unwrap());
        assert!(!r.is_revoked("gone").await.unwrap());
        assert!(!r.is_revoked("b").await.unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("old {}\n", now_secs() - 5).as_bytes())
            .unwrap();
        let r = LocalRevocations::open(&path).unwrap();
        assert!(r.is_revoked("a").await.unwrap());
        assert!(!r.is_revoked("old").await.unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("a {later}\n")
        );
    }

    fn lines(path: &Path) -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    }

    #[tokio::test]
    async fn expired_entries_leave_memory_and_the_file_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let r = LocalRevocations::open(&path).unwrap();
        let (now, later) = (now_secs(), now_secs() + 3600);
        // Tokens revoked a while ago that have expired since.
        for j in ["dead1", "dead2", "dead3"] {
            r.inner.add(j, now - 1).unwrap();
        }
        r.revoke("live1", later).await.unwrap();
        r.revoke("live2", later).await.unwrap();
        assert_eq!(lines(&path).len(), 5);
        assert_eq!(r.len(), 5);
        // 3 dead of 5 lines: not yet more dead than live... but after a sweep in memory
        // only the live are left, and 5 lines > 2 x 2 live: rewritten.
        r.sweep().await.unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            lines(&path),
            [format!("live1 {later}"), format!("live2 {later}")]
        );
        // Few dead lines beside many live ones: left alone until they outnumber them.
        r.inner.add("dead4", now - 1).unwrap();
        r.sweep().await.unwrap();
        assert_eq!(lines(&path).len(), 3, "3 lines, 2 live: no rewrite yet");
        assert_eq!(r.len(), 2, "but gone from memory");
        // A revocation sweeps by itself when the last sweep was in an earlier second.
        for j in ["dead5", "dead6", "dead7"] {
            r.inner.add(j, now - 1).unwrap();
        }
        *r.inner.swept.lock().unwrap() = 0;
        r.revoke("live3", later).await.unwrap();
        assert_eq!(
            lines(&path),
            [
                format!("live1 {later}"),
                format!("live2 {later}"),
                format!("live3 {later}")
            ]
        );
        assert!(r.is_revoked("live3").await.unwrap() && r.is_revoked("live1").await.unwrap());
        assert!(!r.is_revoked("dead5").await.unwrap());
        // What was kept reopens.
        let again = LocalRevocations::open(&path).unwrap();
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn a_malformed_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        std::fs::write(&path, "a 1\nnonsense\n").unwrap();
        let e = LocalRevocations::open(&path).err().unwrap().to_string();
        assert!(e.contains(":2:"), "{e}");
    }
}
