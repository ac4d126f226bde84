//! Token revocation: a token's `jti` is refused until the token would have expired anyway.
//!
//! [`Revocations`] is the role; [`LocalRevocations`] keeps them in this process and,
//! optionally, in a file so a restart does not bring a revoked token back. Scaled-out
//! nodes put them in Redis (the server implements the role over `pier-cluster`).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
}

/// Revocations kept in memory, and appended to a file when one is given (one
/// `jti exp` line each; expired lines are dropped when the file is loaded).
pub struct LocalRevocations {
    revoked: Mutex<HashMap<String, u64>>,
    file: Option<PathBuf>,
}

impl LocalRevocations {
    /// Revocations that last as long as the process.
    pub fn in_memory() -> LocalRevocations {
        LocalRevocations {
            revoked: Mutex::new(HashMap::new()),
            file: None,
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
        let compact: String = revoked.iter().map(|(j, e)| format!("{j} {e}\n")).collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, compact).map_err(|e| AuthError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| AuthError::io(path, e))?;
        Ok(LocalRevocations {
            revoked: Mutex::new(revoked),
            file: Some(path.to_owned()),
        })
    }

    /// Records a revocation in memory only (a cache of revocations kept elsewhere).
    pub fn remember(&self, jti: &str, exp: u64) {
        let now = now_secs();
        let mut map = self.revoked.lock().expect("revocations poisoned");
        if map.len() > 1024 {
            map.retain(|_, e| *e > now);
        }
        map.insert(jti.to_owned(), exp);
    }

    /// Whether this process knows `jti` as revoked.
    pub fn knows(&self, jti: &str) -> bool {
        let map = self.revoked.lock().expect("revocations poisoned");
        map.get(jti).is_some_and(|e| *e > now_secs())
    }
}

#[async_trait]
impl Revocations for LocalRevocations {
    async fn revoke(&self, jti: &str, exp: u64) -> Result<(), AuthError> {
        if exp <= now_secs() || jti.is_empty() || jti.contains(char::is_whitespace) {
            return Ok(());
        }
        if let Some(path) = &self.file {
            let line = format!("{jti} {exp}\n");
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| AuthError::io(&path, e))?;
                f.write_all(line.as_bytes())
                    .and_then(|()| f.sync_data())
                    .map_err(|e| AuthError::io(&path, e))
            })
            .await
            .map_err(|e| AuthError::Invalid(format!("revocation task failed: {e}")))??;
        }
        self.remember(jti, exp);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, AuthError> {
        Ok(self.knows(jti))
    }
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

    #[test]
    fn a_malformed_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        std::fs::write(&path, "a 1\nnonsense\n").unwrap();
        let e = LocalRevocations::open(&path).err().unwrap().to_string();
        assert!(e.contains(":2:"), "{e}");
    }
}
