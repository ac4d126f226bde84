//! Local users: an htpasswd-compatible file of bcrypt hashes (`name:$2y$...`), the same
//! format `htpasswd -B` writes and distribution reads. Managed with `pier user`; the
//! gateway notices changes to the file within a second.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::AuthError;
use crate::watched::Watched;

/// bcrypt cost for new hashes (htpasswd -B uses 5; distribution's docs suggest 10+).
pub const BCRYPT_COST: u32 = 10;

/// Checks a user name: 1-64 printable characters, no `:` (the file's separator), no `%`
/// (names go into admin API paths, where a literal `%` is mangled by common HTTP
/// clients; Harbor refuses it too), no spaces, and not starting with `robot$` (robot
/// logins).
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(crate::robots::LOGIN_PREFIX)
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ':' && c != '%');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid user name {name:?}: use 1-64 printable ASCII characters without ':', '%' or spaces, not starting with \"robot$\""
        )))
    }
}

/// The users file, re-read when it changes.
pub struct UserFile {
    file: Watched<HashMap<String, String>>,
}

impl UserFile {
    /// Opens the file (a missing file means no users yet).
    pub fn open(path: &Path) -> Result<UserFile, AuthError> {
        Ok(UserFile {
            file: Watched::open(path, |p| Ok(read_file(p)?.into_iter().collect()))?,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the file again now (after this process changed it: the next login must see
    /// the change, not wait for the once-a-second look).
    pub fn reload(&self) {
        self.file.reload();
    }

    /// A number that changes whenever the file's content is re-read after a change.
    pub fn generation(&self) -> u64 {
        self.file.generation()
    }

    /// Checks a password (bcrypt: slow on purpose, call it off the async runtime).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let hash = self.stored_hash(name);
        hash.is_some_and(|h| bcrypt::verify(password, &h).unwrap_or(false))
    }

    /// The user's stored bcrypt hash, for binding refresh tokens to it (never leaves the
    /// crate).
    pub(crate) fn stored_hash(&self, name: &str) -> Option<String> {
        self.file.with(|u| u.get(name).cloned()).flatten()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.with(|u| u.contains_key(name)).unwrap_or(false)
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuthError::io(path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fmt = |message: &str| AuthError::Format {
            path: path.to_owned(),
            line: i + 1,
            message: message.to_owned(),
        };
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| fmt("expected name:hash"))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(fmt("only bcrypt hashes are accepted (htpasswd -B)"));
        }
        out.push((name.to_owned(), hash.to_owned()));
    }
    Ok(out)
}

fn write_file(path: &Path, users: &[(String, String)]) -> Result<(), AuthError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for (n, h) in users {
            writeln!(f, "{n}:{h}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| AuthError::io(path, e))
}

/// `pier user add`: fails if the user exists.
pub fn add(path: &Path, name: &str, password: &str) -> Result<(), AuthError> {
    validate_name(name)?;
    validate_password(password)?;
    let mut users = read_file(path)?;
    if users.iter().any(|(n, _)| n == name) {
        return Err(AuthError::Exists(format!(
            "user {name:?} exists; use `pier user passwd` to change the password"
        )));
    }
    users.push((name.to_owned(), hash(password)?));
    write_file(path, &users)
}

/// `pier user passwd`.
pub fn set_password(path: &Path, name: &str, password: &str) -> Result<(), AuthError> {
    validate_password(password)?;
    let mut users = read_file(path)?;
    let entry = users
        .iter_mut()
        .find(|(n, _)| n == name)
        .ok_or_else(|| AuthError::NotFound(format!("no user {name:?}")))?;
    entry.1 = hash(password)?;
    write_file(path, &users)
}

/// `pier user del`.
pub fn delete(path: &Path, name: &str) -> Result<(), AuthError> {
    let mut users = read_file(path)?;
    let before = users.len();
    users.retain(|(n, _)| n != name);
    if users.len() == before {
        return Err(AuthError::NotFound(format!("no user {name:?}")));
    }
    write_file(path, &users)
}

/// `pier user list`.
pub fn list(path: &Path) -> Result<Vec<String>, AuthError> {
    Ok(read_file(path)?.into_iter().map(|(n, _)| n).collect())
}

fn validate_password(p: &str) -> Result<(), AuthError> {
    if p.is_empty() || p.len() > 72 {
        return Err(AuthError::Invalid(
            "passwords must be 1-72 bytes (bcrypt reads no further)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn hash(password: &str) -> Result<String, AuthError> {
    let h = bcrypt::hash(password, BCRYPT_COST).map_err(|e| AuthError::Invalid(e.to_string()))?;
    // htpasswd writes $2y$; bcrypt crates read both.
    Ok(h.replacen("$2b$", "$2y$", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_change_delete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users.htpasswd");
        add(&p, "alice", "wonderland").unwrap();
        assert!(add(&p, "alice", "x").is_err());
        assert!(add(&p, "bad:name", "x").is_err());
        assert!(add(&p, "robot$x", "x").is_err());
        assert!(add(&p, "50%off", "x").is_err(), "no '%' (admin API paths)");
        let f = UserFile::open(&p).unwrap();
        assert!(f.verify("alice", "wonderland"));
        assert!(!f.verify("alice", "Wonderland"));
        assert!(!f.verify("bob", "wonderland"));
        let g = f.generation();
        set_password(&p, "alice", "looking-glass").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(f.generation() > g);
        assert!(f.verify("alice", "looking-glass"));
        assert_eq!(list(&p).unwrap(), ["alice"]);
        delete(&p, "alice").unwrap();
        assert!(delete(&p, "alice").is_err());
    }

    #[test]
    fn reads_htpasswd_b_output_and_refuses_other_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h");
        // `htpasswd -nbB admin secret` (cost 5)
        std::fs::write(
            &p,
            "admin:$2y$05$VrrgPK0DJEO7L7piBIMMjOTq2L/MNvggTrmNnBGmFoPkPRv5UJqSK\n",
        )
        .unwrap();
        let f = UserFile::open(&p).unwrap();
        assert!(f.verify("admin", "secret"), "htpasswd -B hash");
        std::fs::write(&p, "admin:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
        assert!(matches!(
            UserFile::open(&p),
            Err(AuthError::Format { line: 1, .. })
        ));
    }
}
