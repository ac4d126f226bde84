//! Authentication: credentials -> [`Subject`]. Robots (`robot$NAME`) are checked against
//! the robots file, names in the users file against their bcrypt hash, and any other name
//! by the authorizer's `authenticate` (LDAP...). A verified password is remembered briefly under an HMAC of
//! (user, password) with a per-process random key, so bcrypt's deliberate cost is paid
//! once per minute, not per request, and a changed password or a deleted user takes
//! effect as soon as the file changes.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use ring::rand::SystemRandom;

use crate::robots::{LOGIN_PREFIX, RobotFile};
use crate::token::Claims;
use crate::users::UserFile;
use crate::{AuthError, AuthnOutcome, Authorizer, Credentials, Identity, Subject};

/// A bcrypt hash (cost 10) checked for unknown user names.
pub(crate) const DUMMY_HASH: &str = "$2y$10$nTe9qnwAmGcNgQirxk/d1uJY9w2FgtHZjnftQOzjHd65dc1TUsbq2";

/// How long a verified password is remembered.
pub const REMEMBER: Duration = Duration::from_secs(60);

pub struct Authenticator {
    users: UserFile,
    robots: RobotFile,
    key: hmac::Key,
    verified: moka::sync::Cache<[u8; 32], Subject>,
}

impl Authenticator {
    pub fn new(users: UserFile, robots: RobotFile) -> Result<Authenticator, AuthError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| AuthError::Invalid("no randomness available".into()))?;
        Ok(Authenticator {
            users,
            robots,
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REMEMBER)
                .build(),
        })
    }

    pub fn users(&self) -> &UserFile {
        &self.users
    }

    fn cache_key(&self, c: &Credentials) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.users.generation().to_le_bytes());
        ctx.update(&self.robots.generation().to_le_bytes());
        ctx.update(c.username.as_bytes());
        ctx.update(&[0]);
        ctx.update(c.password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Verifies credentials. `Ok(None)`: wrong credentials. `Err`: the policy's identity
    /// source failed (fail closed with 503).
    pub async fn authenticate(
        self: &Arc<Self>,
        policy: &dyn Authorizer,
        creds: &Credentials,
    ) -> Result<Option<Subject>, AuthError> {
        let key = self.cache_key(creds);
        if let Some(s) = self.verified.get(&key) {
            // A robot may have expired since (expiry doesn't change the file).
            if let Subject::Robot(r) = &s
                && self.robots.get(&r.name).is_none()
            {
                self.verified.invalidate(&key);
                return Ok(None);
            }
            return Ok(Some(s));
        }
        let local = |me: Arc<Self>, c: Credentials| {
            blocking(move || {
                me.users.verify(&c.username, &c.password).then(|| {
                    Subject::User(Identity {
                        name: c.username.clone(),
                        groups: Vec::new(),
                    })
                })
            })
        };
        let subject = if let Some(robot) = creds.username.strip_prefix(LOGIN_PREFIX) {
            let (me, robot, secret) = (self.clone(), robot.to_owned(), creds.password.clone());
            blocking(move || me.robots.verify(&robot, &secret).map(Subject::Robot)).await?
        } else if self.users.contains(&creds.username) {
            // Local accounts are checked locally only: they keep working when the
            // policy's identity source (LDAP) is down, and a plugin can't take them over.
            local(self.clone(), creds.clone()).await?
        } else {
            match policy.authenticate(creds).await? {
                AuthnOutcome::Verified(id) => Some(Subject::User(id)),
                AuthnOutcome::Invalid | AuthnOutcome::NotHandled => {
                    // Spend a bcrypt check anyway, so an unknown name answers as slowly
                    // as a wrong password (no user enumeration by timing).
                    let pw = creds.password.clone();
                    blocking(move || {
                        let _ = bcrypt::verify(pw, DUMMY_HASH);
                    })
                    .await?;
                    None
                }
            }
        };
        if let Some(s) = &subject {
            self.verified.insert(key, s.clone());
        }
        Ok(subject)
    }

    /// The subject a verified token speaks for (robots are looked up again, so a deleted
    /// or expired robot's token stops working for lookups such as the catalog).
    pub fn subject_of(&self, claims: &Claims) -> Subject {
        if claims.sub.is_empty() {
            Subject::Anonymous
        } else if let Some(name) = claims.sub.strip_prefix(LOGIN_PREFIX) {
            match self.robots.get(name) {
                Some(r) => Subject::Robot(r.robot()),
                None => Subject::Anonymous,
            }
        } else {
            Subject::User(Identity {
                name: claims.sub.clone(),
                groups: claims.groups.clone(),
            })
        }
    }

    /// The subject of a refresh token, if it still exists: local users and unexpired
    /// robots. (Users a plugin vouches for get no refresh tokens; see `refreshable`.)
    pub fn still_valid(&self, sub: &str) -> Option<Subject> {
        if let Some(name) = sub.strip_prefix(LOGIN_PREFIX) {
            return self.robots.get(name).map(|r| Subject::Robot(r.robot()));
        }
        self.users.contains(sub).then(|| {
            Subject::User(Identity {
                name: sub.to_owned(),
                groups: Vec::new(),
            })
        })
    }

    /// Whether a refresh token may be issued for this subject (see `still_valid`).
    pub fn refreshable(&self, subject: &Subject) -> bool {
        match subject {
            Subject::Anonymous => false,
            Subject::Robot(_) => true,
            Subject::User(i) => self.users.contains(&i.name),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Invalid(format!("password check failed: {e}")))
}
