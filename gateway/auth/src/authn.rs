//! Authentication: credentials -> [`Subject`]. Robots (`robot$NAME`) are checked against
//! the robots file, names in the users file against their bcrypt hash, and any other name
//! by the authorizer's `authenticate` (LDAP...). A verified password is remembered briefly under an HMAC of
//! (user, password) with a per-process random key, so bcrypt's deliberate cost is paid
//! once per minute, not per request, and a changed password or a deleted user takes
//! effect as soon as the file changes. Refresh tokens are bound to the credential they
//! were issued for ([`Authenticator::refresh_binding`]), so that change ends them too.
//!
//! Guessing is bounded twice: a login from an address that failed too often lately is
//! refused before anything is checked ([`crate::throttle`]), and password checks run on
//! at most [`LoginLimits::password_checks`] blocking threads at once, a login waiting at
//! most [`LoginLimits::password_check_wait`] for one (then 503), so a flood of guesses
//! cannot queue without bound or starve the runtime.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::{digest, hmac};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::robots::{LOGIN_PREFIX, RobotFile};
use crate::throttle::{LoginThrottle, ThrottlePolicy};
use crate::token::Claims;
use crate::users::UserFile;
use crate::{AuthError, AuthnOutcome, Authorizer, Credentials, Identity, Subject};

/// A bcrypt hash (cost 10) checked for unknown user names.
pub(crate) const DUMMY_HASH: &str = "$2y$10$nTe9qnwAmGcNgQirxk/d1uJY9w2FgtHZjnftQOzjHd65dc1TUsbq2";

/// How long a verified password is remembered.
pub const REMEMBER: Duration = Duration::from_secs(60);

/// Bounds on password checking: the failed-login throttle, and how many checks (bcrypt,
/// a plugin's `authenticate`) run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub throttle: ThrottlePolicy,
    /// Password checks running at once (each holds a blocking thread for bcrypt's
    /// deliberate ~50-100 ms). Default: the number of cores, so guessing can take the CPU
    /// from logins but not from everything else.
    pub password_checks: usize,
    /// How long a login waits for a check slot before it is answered 503.
    pub password_check_wait: Duration,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            throttle: ThrottlePolicy::default(),
            password_checks: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            password_check_wait: Duration::from_secs(5),
        }
    }
}

pub struct Authenticator {
    users: UserFile,
    robots: RobotFile,
    key: hmac::Key,
    verified: moka::sync::Cache<[u8; 32], Subject>,
    throttle: LoginThrottle,
    checks: Arc<Semaphore>,
    limits: LoginLimits,
    busy: AtomicU64,
}

/// What a login may do once it holds a check slot.
enum Slot {
    /// Someone verified the same credentials while it waited.
    Cached(Subject),
    Held(OwnedSemaphorePermit),
}

impl Authenticator {
    pub fn new(users: UserFile, robots: RobotFile) -> Result<Authenticator, AuthError> {
        Authenticator::with_limits(users, robots, LoginLimits::default())
    }

    /// Reads the users and robots files again now: for changes this process just made
    /// (the admin API), which apply to the very next request.
    pub fn reload_accounts(&self) {
        self.users.reload();
        self.robots.reload();
    }

    pub fn with_limits(
        users: UserFile,
        robots: RobotFile,
        limits: LoginLimits,
    ) -> Result<Authenticator, AuthError> {
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
            throttle: LoginThrottle::new(limits.throttle),
            checks: Arc::new(Semaphore::new(limits.password_checks.max(1))),
            limits,
            busy: AtomicU64::new(0),
        })
    }

    pub fn users(&self) -> &UserFile {
        &self.users
    }

    /// The failed-login throttle.
    pub fn throttle(&self) -> &LoginThrottle {
        &self.throttle
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

    /// The subject of credentials verified in the last minute.
    fn cached(&self, key: &[u8; 32]) -> Option<Subject> {
        let s = self.verified.get(key)?;
        // A robot may have expired since (expiry doesn't change the file).
        if let Subject::Robot(r) = &s
            && self.robots.get(&r.name).is_none()
        {
            self.verified.invalidate(key);
            return None;
        }
        Some(s)
    }

    /// Waits (boundedly) for a password check slot, then looks again: failures recorded
    /// or the same credentials verified while this login waited count.
    async fn slot(
        &self,
        creds: &Credentials,
        from: IpAddr,
        key: &[u8; 32],
    ) -> Result<Slot, AuthError> {
        let acquired = tokio::time::timeout(
            self.limits.password_check_wait,
            self.checks.clone().acquire_owned(),
        )
        .await;
        let Ok(Ok(permit)) = acquired else {
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Err(AuthError::Unavailable(
                "too many logins are being checked; retry in a moment".into(),
            ));
        };
        self.throttle
            .check(&creds.username, from)
            .map_err(|t| AuthError::Throttled {
                retry_after: t.retry_after,
            })?;
        Ok(match self.cached(key) {
            Some(s) => Slot::Cached(s),
            None => Slot::Held(permit),
        })
    }

    /// Verifies credentials presented from `from` (the client's address, for the
    /// failed-login throttle). `Ok(None)`: wrong credentials. `Err`:
    /// [`AuthError::Throttled`] when this account from this address, or this address,
    /// failed too often lately (nothing is checked then); `Unavailable` when every
    /// password check slot stayed taken, or the policy's identity source failed (fail
    /// closed with 503).
    pub async fn authenticate(
        self: &Arc<Self>,
        policy: &dyn Authorizer,
        creds: &Credentials,
        from: IpAddr,
    ) -> Result<Option<Subject>, AuthError> {
        // Throttled first: a cache hit must not tell a guesser that a guess is right.
        self.throttle
            .check(&creds.username, from)
            .map_err(|t| AuthError::Throttled {
                retry_after: t.retry_after,
            })?;
        let key = self.cache_key(creds);
        if let Some(s) = self.cached(&key) {
            self.throttle.succeeded(&creds.username, from);
            return Ok(Some(s));
        }
        let permit = match self.slot(creds, from, &key).await? {
            Slot::Cached(s) => {
                self.throttle.succeeded(&creds.username, from);
                return Ok(Some(s));
            }
            Slot::Held(p) => p,
        };
        let subject = if let Some(robot) = creds.username.strip_prefix(LOGIN_PREFIX) {
            let (me, robot, secret) = (self.clone(), robot.to_owned(), creds.password.clone());
            blocking(permit, move || {
                me.robots.verify(&robot, &secret).map(Subject::Robot)
            })
            .await?
        } else if self.users.contains(&creds.username) {
            // Local accounts are checked locally only: they keep working when the
            // policy's identity source (LDAP) is down, and a plugin can't take them over.
            let (me, c) = (self.clone(), creds.clone());
            blocking(permit, move || {
                me.users.verify(&c.username, &c.password).then(|| {
                    Subject::User(Identity {
                        name: c.username.clone(),
                        groups: Vec::new(),
                    })
                })
            })
            .await?
        } else {
            // The slot is held through the plugin's call too: its deadline bounds it,
            // and a directory is no more a thing to guess against than a file.
            match policy.authenticate(creds).await? {
                AuthnOutcome::Verified(id) => Some(Subject::User(id)),
                AuthnOutcome::Invalid | AuthnOutcome::NotHandled => {
                    // Spend a bcrypt check anyway, so an unknown name answers as slowly
                    // as a wrong password (no user enumeration by timing).
                    let pw = creds.password.clone();
                    blocking(permit, move || {
                        let _ = bcrypt::verify(pw, DUMMY_HASH);
                    })
                    .await?;
                    None
                }
            }
        };
        match &subject {
            Some(s) => {
                self.verified.insert(key, s.clone());
                self.throttle.succeeded(&creds.username, from);
            }
            None => self.throttle.failed(&creds.username, from),
        }
        Ok(subject)
    }

    /// The login counters, for the binary's metrics registry (read at scrape time).
    pub fn encode_metrics(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        self.throttle.encode_metrics(encoder)?;
        let in_use = self
            .limits
            .password_checks
            .max(1)
            .saturating_sub(self.checks.available_permits());
        ConstCounter::new(self.busy.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
            "pier_auth_password_checks_busy",
            "Logins answered 503 because every password check slot stayed taken.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(in_use as i64).encode(encoder.encode_descriptor(
            "pier_auth_password_checks_in_flight",
            "Password checks running now.",
            None,
            MetricType::Gauge,
        )?)
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

    /// The binding a new refresh token for `subject` carries (its `pier_cred` claim), or
    /// `None` when the subject gets no refresh token.
    ///
    /// The binding is a digest of the account's stored credential: a local user's bcrypt
    /// hash in the users file, a robot's secret hash. bcrypt salts every hash afresh, so
    /// `pier user passwd`, a robot's secret rotation and a delete + re-create under the
    /// same name (even with the same password) all change it, and the refresh grant
    /// ([`Self::refresh_subject`]) refuses the refresh tokens issued before. Tokens are
    /// signed, not encrypted: whoever holds one can read the claim, but it is a one-way
    /// digest of a string whose 128-bit salt never leaves the server, so it gives nothing
    /// to test password guesses against. Unkeyed on purpose: a refresh token must keep
    /// working across restarts and on every node that reads the same accounts files.
    /// The credential is read here, a moment after the login was checked: a change the
    /// gateway notices in between (milliseconds, within the second in which the old
    /// password still works anyway) binds the token to the new credential.
    ///
    /// Users a plugin vouches for (LDAP) get none: Pier holds no credential of theirs to
    /// bind to, and cannot ask the directory whether the password changed or the account
    /// was disabled without the password, so such a token would keep minting access
    /// tokens for its whole lifetime after either. Their clients log in again instead.
    pub fn refresh_binding(&self, subject: &Subject) -> Option<String> {
        let stored = match subject {
            Subject::Anonymous => return None,
            Subject::Robot(r) => self.robots.get(&r.name)?.secret_hash,
            Subject::User(i) => self.users.stored_hash(&i.name)?,
        };
        Some(binding(&subject.token_name(), &stored))
    }

    /// The subject a verified refresh token speaks for: its account must still exist (a
    /// local user, an unexpired robot) with the credential the token was bound to (see
    /// [`Self::refresh_binding`]). Refresh tokens without a binding are refused.
    pub fn refresh_subject(&self, refresh: &Claims) -> Result<Subject, AuthError> {
        let sub = &refresh.sub;
        let gone = || AuthError::InvalidToken(format!("account {sub:?} no longer exists"));
        let (subject, stored) = if let Some(name) = sub.strip_prefix(LOGIN_PREFIX) {
            let r = self.robots.get(name).ok_or_else(gone)?;
            (Subject::Robot(r.robot()), r.secret_hash)
        } else {
            let hash = self.users.stored_hash(sub).ok_or_else(gone)?;
            let id = Identity {
                name: sub.clone(),
                groups: Vec::new(),
            };
            (Subject::User(id), hash)
        };
        match &refresh.pier_cred {
            Some(b) if *b == binding(sub, &stored) => Ok(subject),
            Some(_) => Err(AuthError::InvalidToken(format!(
                "the password or secret of {sub:?} changed since the refresh token was issued \
                 (or the account was re-created); log in again"
            ))),
            None => Err(AuthError::InvalidToken(
                "the refresh token is bound to no credential (issued by an older Pier); log in again"
                    .into(),
            )),
        }
    }
}

/// `base64url(SHA-256("pier-refresh-binding-v1" 0 sub 0 stored)[..16])`: 128 bits are
/// plenty to tell one hash of an account from the next.
fn binding(sub: &str, stored: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [b"pier-refresh-binding-v1".as_slice(), sub.as_bytes()] {
        ctx.update(part);
        ctx.update(&[0]);
    }
    ctx.update(stored.as_bytes());
    B64.encode(&ctx.finish().as_ref()[..16])
}

/// Runs `f` on a blocking thread, holding `permit` until it returns (also when the
/// request that started it went away).
async fn blocking<T: Send + 'static>(
    permit: OwnedSemaphorePermit,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| AuthError::Invalid(format!("password check failed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::token::{SigningKey, TokenService, TokenSettings};
    use crate::{robots, users};

    /// Longer than the accounts files' once-a-second re-read.
    const RELOAD: Duration = Duration::from_millis(1100);

    fn accounts(dir: &Path) -> Authenticator {
        let u = dir.join("users.htpasswd");
        users::add(&u, "alice", "alice-pass").unwrap();
        users::add(&u, "bob", "bob-pass").unwrap();
        Authenticator::new(
            UserFile::open(&u).unwrap(),
            RobotFile::open(&dir.join("robots.json")).unwrap(),
        )
        .unwrap()
    }

    fn tokens(dir: &Path) -> TokenService {
        TokenService::new(
            SigningKey::load_or_generate(&dir.join("key.pem")).unwrap(),
            TokenSettings {
                issuer: "pier".into(),
                service: "pier".into(),
                ttl: Duration::from_secs(60),
                refresh_ttl: Duration::from_secs(3600),
            },
            vec![],
        )
    }

    fn user(name: &str) -> Subject {
        Subject::User(Identity {
            name: name.into(),
            groups: Vec::new(),
        })
    }

    /// A refresh token for `subject` as the token endpoint issues it.
    fn refresh_token(a: &Authenticator, t: &TokenService, subject: &Subject) -> String {
        let binding = a.refresh_binding(subject).expect("a refreshable account");
        t.issue_refresh(&subject.token_name(), &binding).unwrap()
    }

    /// What the refresh grant does with it.
    fn redeem(a: &Authenticator, t: &TokenService, token: &str) -> Result<Subject, AuthError> {
        a.refresh_subject(&t.verify_refresh(token)?)
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: password.into(),
            client: String::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The authenticator's series as the binary's registry encodes them.
    fn metrics_text(a: &Arc<Authenticator>) -> String {
        struct Series(Arc<Authenticator>);
        impl std::fmt::Debug for Series {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Series")
            }
        }
        impl prometheus_client::collector::Collector for Series {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
            ) -> std::fmt::Result {
                self.0.encode_metrics(&mut encoder)
            }
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Series(a.clone())));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn limited(dir: &Path, limits: LoginLimits) -> Arc<Authenticator> {
        let u = dir.join("users.htpasswd");
        users::add(&u, "bob", "bob-pass").unwrap();
        Arc::new(
            Authenticator::with_limits(
                UserFile::open(&u).unwrap(),
                RobotFile::open(&dir.join("robots.json")).unwrap(),
                limits,
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn guessing_is_throttled_before_any_password_check_but_not_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let a = limited(dir.path(), LoginLimits::default());
        let policy = crate::AllowAll;
        let guesser = ip("192.0.2.66");
        for i in 0..5 {
            let r = a
                .authenticate(&policy, &creds("bob", &format!("guess{i}")), guesser)
                .await;
            assert!(matches!(r, Ok(None)), "{r:?}");
        }
        // Every check slot taken: a login that needed one would wait and fail with
        // Unavailable; a throttled one is refused at once, before any check.
        let held = a
            .checks
            .clone()
            .acquire_many_owned(a.limits.password_checks as u32);
        let held = held.await.unwrap();
        let r = a
            .authenticate(&policy, &creds("bob", "bob-pass"), guesser)
            .await;
        match r {
            Err(AuthError::Throttled { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        drop(held);
        // Bob from his own address is not locked out; a success there is remembered.
        let s = a
            .authenticate(&policy, &creds("bob", "bob-pass"), ip("192.0.2.10"))
            .await
            .unwrap();
        assert_eq!(s, Some(user("bob")));
        assert_eq!(a.throttle().refused(crate::throttle::Scope::Account), 1);
        let text = metrics_text(&a);
        assert!(
            text.contains("pier_auth_login_throttled_total{scope=\"account\"} 1"),
            "{text}"
        );
        assert!(text.contains("pier_auth_login_failures_total 5"), "{text}");
    }

    #[tokio::test]
    async fn password_checks_run_on_a_bounded_pool_with_a_bounded_wait() {
        let dir = tempfile::tempdir().unwrap();
        let a = limited(
            dir.path(),
            LoginLimits {
                password_checks: 1,
                password_check_wait: Duration::from_millis(1),
                ..LoginLimits::default()
            },
        );
        // Distinct accounts and addresses: no throttle, only the pool.
        let logins = (0..4).map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                let from = ip(&format!("192.0.2.{}", 20 + i));
                a.authenticate(&crate::AllowAll, &creds("bob", &format!("x{i}")), from)
                    .await
            })
        });
        let mut busy = 0;
        for l in logins.collect::<Vec<_>>() {
            match l.await.unwrap() {
                Ok(None) => {}
                Err(AuthError::Unavailable(_)) => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(
            busy >= 1,
            "one slot, four concurrent bcrypt checks: some must wait out"
        );
        assert_eq!(a.busy.load(Ordering::Relaxed), busy);
    }

    #[test]
    fn a_password_change_ends_the_users_refresh_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, t) = (accounts(dir.path()), tokens(dir.path()));
        let bob = refresh_token(&a, &t, &user("bob"));
        let alice = refresh_token(&a, &t, &user("alice"));
        assert_eq!(redeem(&a, &t, &bob).unwrap(), user("bob"));

        users::set_password(&dir.path().join("users.htpasswd"), "bob", "new-pass").unwrap();
        std::thread::sleep(RELOAD);
        let e = redeem(&a, &t, &bob).unwrap_err();
        assert!(
            matches!(&e, AuthError::InvalidToken(m) if m.contains("changed")),
            "{e}"
        );
        // A token issued with the new password works; alice's is untouched.
        let again = refresh_token(&a, &t, &user("bob"));
        assert_eq!(redeem(&a, &t, &again).unwrap(), user("bob"));
        assert_eq!(redeem(&a, &t, &alice).unwrap(), user("alice"));
    }

    #[test]
    fn a_user_deleted_and_recreated_with_the_same_password_is_a_new_account() {
        let dir = tempfile::tempdir().unwrap();
        let (a, t) = (accounts(dir.path()), tokens(dir.path()));
        let file = dir.path().join("users.htpasswd");
        let bob = refresh_token(&a, &t, &user("bob"));
        users::delete(&file, "bob").unwrap();
        std::thread::sleep(RELOAD);
        let e = redeem(&a, &t, &bob).unwrap_err();
        assert!(
            matches!(&e, AuthError::InvalidToken(m) if m.contains("no longer exists")),
            "{e}"
        );
        users::add(&file, "bob", "bob-pass").unwrap();
        std::thread::sleep(RELOAD);
        assert!(
            matches!(redeem(&a, &t, &bob), Err(AuthError::InvalidToken(_))),
            "a refresh token of the deleted bob"
        );
    }

    #[test]
    fn a_secret_rotation_or_re_creation_ends_the_robots_refresh_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, t) = (accounts(dir.path()), tokens(dir.path()));
        let file = dir.path().join("robots.json");
        let perm = || vec![robots::parse_permission("team:pull").unwrap()];
        robots::add(&file, "ci", perm(), None, "").unwrap();
        robots::add(&file, "other", perm(), None, "").unwrap();
        std::thread::sleep(RELOAD);
        let ci = Subject::Robot(a.robots.get("ci").unwrap().robot());
        let other = Subject::Robot(a.robots.get("other").unwrap().robot());
        let before = refresh_token(&a, &t, &ci);
        let kept = refresh_token(&a, &t, &other);
        assert_eq!(redeem(&a, &t, &before).unwrap(), ci);

        robots::rotate(&file, "ci").unwrap();
        std::thread::sleep(RELOAD);
        assert!(matches!(
            redeem(&a, &t, &before),
            Err(AuthError::InvalidToken(_))
        ));
        let rotated = refresh_token(&a, &t, &ci);
        assert_eq!(redeem(&a, &t, &rotated).unwrap(), ci);

        robots::delete(&file, "ci").unwrap();
        robots::add(&file, "ci", perm(), None, "").unwrap();
        std::thread::sleep(RELOAD);
        assert!(matches!(
            redeem(&a, &t, &rotated),
            Err(AuthError::InvalidToken(_))
        ));
        assert_eq!(redeem(&a, &t, &kept).unwrap(), other, "untouched robot");
    }

    #[test]
    fn unbound_and_foreign_bindings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, t) = (accounts(dir.path()), tokens(dir.path()));
        let mut claims = t
            .verify_refresh(&refresh_token(&a, &t, &user("bob")))
            .unwrap();
        assert!(a.refresh_subject(&claims).is_ok());
        // Issued before refresh tokens carried a binding.
        claims.pier_cred = None;
        assert!(matches!(
            a.refresh_subject(&claims),
            Err(AuthError::InvalidToken(_))
        ));
        // Alice's binding does not open bob's account.
        claims.pier_cred = a.refresh_binding(&user("alice"));
        assert!(a.refresh_subject(&claims).is_err());
    }

    #[test]
    fn the_binding_is_a_short_digest_and_only_for_local_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(dir.path());
        let hash = a.users.stored_hash("bob").unwrap();
        let b = a.refresh_binding(&user("bob")).unwrap();
        assert_eq!(b.len(), 22, "16 bytes, base64url: {b}");
        assert!(
            !hash.contains(&b) && !b.contains(&hash[7..29]),
            "no salt in {b}"
        );
        assert_eq!(a.refresh_binding(&user("bob")), Some(b), "stable");
        // Plugin (LDAP) users have no local credential to bind to; anonymous has none.
        assert_eq!(a.refresh_binding(&user("ldap-user")), None);
        assert_eq!(a.refresh_binding(&Subject::Anonymous), None);
    }
}
