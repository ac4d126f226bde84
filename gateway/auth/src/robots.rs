//! Robot accounts: machine identities with a secret, an expiry and a fixed set of
//! project permissions, kept in a JSON file managed with `pier robot`. Clients log in as
//! `robot$NAME` (Harbor's convention) with the secret printed once at creation.

use std::path::Path;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::time::now_secs;
use crate::watched::Watched;
use crate::{Action, AuthError, ProjectPermission, Robot};

/// What robot logins start with.
pub const LOGIN_PREFIX: &str = "robot$";

/// One robot account on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RobotAccount {
    pub name: String,
    /// bcrypt hash of the secret.
    pub secret_hash: String,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<u64>,
    pub permissions: Vec<ProjectPermission>,
    #[serde(default)]
    pub description: String,
}

impl RobotAccount {
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= now_secs())
    }

    pub fn robot(&self) -> Robot {
        Robot {
            name: self.name.clone(),
            permissions: self.permissions.clone(),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct FileBody {
    robots: Vec<RobotAccount>,
}

/// The robots file, re-read when it changes (at most once a second).
pub struct RobotFile {
    file: Watched<Vec<RobotAccount>>,
}

impl RobotFile {
    pub fn open(path: &Path) -> Result<RobotFile, AuthError> {
        Ok(RobotFile {
            file: Watched::open(path, read_file)?,
        })
    }

    /// Reads the file again now (after this process changed it: the next login must see
    /// the change, not wait for the once-a-second look).
    pub fn reload(&self) {
        self.file.reload();
    }

    pub fn generation(&self) -> u64 {
        self.file.generation()
    }

    /// A robot that exists and has not expired.
    pub fn get(&self, name: &str) -> Option<RobotAccount> {
        self.file
            .with(|rs| rs.iter().find(|r| r.name == name && !r.expired()).cloned())
            .flatten()
    }

    /// Checks a robot's secret (bcrypt: call it off the async runtime).
    pub fn verify(&self, name: &str, secret: &str) -> Option<Robot> {
        let Some(r) = self.get(name) else {
            // As slow as a wrong secret: no enumeration of robot names by timing.
            let _ = bcrypt::verify(secret, crate::authn::DUMMY_HASH);
            return None;
        };
        bcrypt::verify(secret, &r.secret_hash)
            .unwrap_or(false)
            .then(|| r.robot())
    }
}

fn read_file(path: &Path) -> Result<Vec<RobotAccount>, AuthError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<FileBody>(&b)
            .map(|f| f.robots)
            .map_err(|e| AuthError::Format {
                path: path.to_owned(),
                line: e.line(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AuthError::io(path, e)),
    }
}

fn write_file(path: &Path, robots: Vec<RobotAccount>) -> Result<(), AuthError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::io(dir, e))?;
    }
    let body = serde_json::to_vec_pretty(&FileBody { robots })
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| AuthError::io(path, e))
}

/// Parses `team:pull,push` into a permission.
pub fn parse_permission(s: &str) -> Result<ProjectPermission, AuthError> {
    let (project, actions) = s.split_once(':').ok_or_else(|| {
        AuthError::Invalid(format!(
            "invalid permission {s:?}: expected PROJECT:ACTION[,ACTION...]"
        ))
    })?;
    let actions = actions
        .split(',')
        .map(|a| {
            Action::parse(a.trim()).ok_or_else(|| {
                AuthError::Invalid(format!(
                    "unknown action {a:?} in {s:?}: use pull, push, delete, search"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if project.is_empty() || project.contains('/') {
        return Err(AuthError::Invalid(format!(
            "invalid project {project:?} in {s:?}"
        )));
    }
    Ok(ProjectPermission {
        project: project.to_owned(),
        actions,
    })
}

/// `pier robot add`: creates the robot and returns its secret (shown once).
pub fn add(
    path: &Path,
    name: &str,
    permissions: Vec<ProjectPermission>,
    expires_in: Option<Duration>,
    description: &str,
) -> Result<String, AuthError> {
    crate::users::validate_name(name)?;
    let mut robots = read_file(path)?;
    if robots.iter().any(|r| r.name == name) {
        return Err(AuthError::Exists(format!("robot {name:?} exists")));
    }
    let secret = new_secret()?;
    robots.push(RobotAccount {
        name: name.to_owned(),
        secret_hash: crate::users::hash(&secret)?,
        expires_at: expires_in.map(|d| now_secs() + d.as_secs()),
        permissions,
        description: description.to_owned(),
    });
    write_file(path, robots)?;
    Ok(secret)
}

/// `pier robot del`.
pub fn delete(path: &Path, name: &str) -> Result<(), AuthError> {
    let mut robots = read_file(path)?;
    let before = robots.len();
    robots.retain(|r| r.name != name);
    if robots.len() == before {
        return Err(AuthError::NotFound(format!("no robot {name:?}")));
    }
    write_file(path, robots)
}

/// Replaces a robot's secret; returns the new one (shown once). The old secret stops
/// working at once for new logins, and so do refresh tokens issued with it (they are bound
/// to the secret's hash); access tokens already issued keep their lifetime.
pub fn rotate(path: &Path, name: &str) -> Result<String, AuthError> {
    let mut robots = read_file(path)?;
    let r = robots
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| AuthError::NotFound(format!("no robot {name:?}")))?;
    let secret = new_secret()?;
    r.secret_hash = crate::users::hash(&secret)?;
    write_file(path, robots)?;
    Ok(secret)
}

/// Changes a robot's permissions and, when given, its description.
pub fn update(
    path: &Path,
    name: &str,
    permissions: Vec<ProjectPermission>,
    description: Option<&str>,
) -> Result<RobotAccount, AuthError> {
    let mut robots = read_file(path)?;
    let r = robots
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| AuthError::NotFound(format!("no robot {name:?}")))?;
    r.permissions = permissions;
    if let Some(d) = description {
        r.description = d.to_owned();
    }
    let updated = r.clone();
    write_file(path, robots)?;
    Ok(updated)
}

/// `pier robot list`.
pub fn list(path: &Path) -> Result<Vec<RobotAccount>, AuthError> {
    read_file(path)
}

fn new_secret() -> Result<String, AuthError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::Invalid("no randomness available".into()))?;
    Ok(b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robots_verify_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("robots.json");
        let perm = parse_permission("team:pull").unwrap();
        let secret = add(&p, "ci", vec![perm.clone()], None, "CI pulls").unwrap();
        let short = add(&p, "short", vec![perm], Some(Duration::from_secs(3)), "").unwrap();
        let f = RobotFile::open(&p).unwrap();
        let r = f.verify("ci", &secret).unwrap();
        assert_eq!(r.permissions[0].actions, [Action::Pull]);
        assert!(f.verify("ci", "wrong").is_none());
        assert!(f.verify("short", &short).is_some());
        // Expiry is in whole seconds: 3 s from creation ends within 4 s.
        std::thread::sleep(Duration::from_millis(4100));
        assert!(f.verify("short", &short).is_none(), "expired robot refused");
        assert!(parse_permission("team:fly").is_err());
        assert!(parse_permission("team").is_err());
        delete(&p, "ci").unwrap();
        assert_eq!(list(&p).unwrap().len(), 1);
    }
}
