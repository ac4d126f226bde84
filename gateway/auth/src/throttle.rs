//! Bounds on what one client can make the gateway do: failed logins ([`LoginThrottle`])
//! and calls of a cheap endpoint that leaves state behind ([`RateLimit`], token revocation).
//!
//! Clients are told apart by address. An IPv6 client is keyed by its /64, the block one
//! host usually holds (it can pick any address in it), an IPv4-mapped IPv6 address as the
//! IPv4 address it is. Both maps are moka caches with a maximum size and an idle expiry,
//! so a flood of new addresses or names costs bounded memory (the least useful entries
//! go first).
//!
//! # Failed logins
//!
//! Failures are counted per (account name, client address) and per client address (any
//! account). The first [`ThrottlePolicy::account_failures`] (resp.
//! [`ThrottlePolicy::address_failures`]) are free; each one after that blocks the key for
//! a doubling time (1 s, 2 s, 4 s ... capped at [`ThrottlePolicy::max_backoff`]). While a
//! key is blocked, logins through it are refused before any password is checked, with the
//! time left. Refused attempts don't count (a client retrying blindly doesn't dig itself
//! deeper, nor does an attacker gain anything).
//!
//! The account limit is keyed with the address, so someone guessing bob's password from
//! one address does not lock bob out from his own. There is deliberately no global
//! per-account lock: it would let anyone lock any account out. Guessing from many
//! addresses is bounded per address instead.
//!
//! A success clears the (account, address) count; the address count is left alone (a
//! valid account must not buy more guesses at others). Quiet time forgives: every
//! [`ThrottlePolicy::forgive_every`] without a failure halves a count.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The numbers of the login throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures per (account, address) before backoff.
    pub account_failures: u32,
    /// Failures per address, whatever the account, before backoff. Higher than the
    /// account's: many users may share one address (NAT, a CI runner pool).
    pub address_failures: u32,
    /// The first backoff; it doubles with every further failure.
    pub first_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Quiet time after which a failure count halves.
    pub forgive_every: Duration,
    /// Entries kept per map (accounts x addresses, addresses).
    pub capacity: u64,
}

impl Default for ThrottlePolicy {
    fn default() -> ThrottlePolicy {
        ThrottlePolicy {
            account_failures: 5,
            address_failures: 30,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            forgive_every: Duration::from_secs(15 * 60),
            capacity: 100_000,
        }
    }
}

/// What a throttle was keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An account from one address.
    Account,
    /// An address, any account.
    Address,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Address => "address",
        }
    }
}

/// A refused attempt: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub scope: Scope,
}

/// The key of an address: IPv4 as it is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

impl Record {
    /// The count after the quiet time since the last failure.
    fn decayed(&self, now: Instant, every: Duration) -> u32 {
        let quiet = now.saturating_duration_since(self.last);
        let halvings = quiet.as_nanos() / every.as_nanos().max(1);
        if halvings >= 32 {
            0
        } else {
            self.failures >> halvings
        }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }
}

/// Failure counts; see the module documentation.
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    /// Hashes (account, address): a name of any length costs 8 bytes. The hasher's
    /// per-process random key keeps collisions out of a client's reach.
    hasher: std::hash::RandomState,
    accounts: moka::sync::Cache<u64, Record>,
    addresses: moka::sync::Cache<IpAddr, Record>,
    refused_account: AtomicU64,
    refused_address: AtomicU64,
    failures: AtomicU64,
}

impl LoginThrottle {
    pub fn new(policy: ThrottlePolicy) -> LoginThrottle {
        // An entry is useless once its count has halved to nothing.
        let idle = policy
            .forgive_every
            .saturating_mul(6)
            .max(policy.max_backoff)
            .max(Duration::from_secs(1));
        LoginThrottle {
            policy,
            hasher: std::hash::RandomState::new(),
            accounts: moka::sync::Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
            addresses: moka::sync::Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_idle(idle)
                .build(),
            refused_account: AtomicU64::new(0),
            refused_address: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> &ThrottlePolicy {
        &self.policy
    }

    fn account_key(&self, account: &str, addr: IpAddr) -> u64 {
        self.hasher.hash_one((account, addr))
    }

    /// Whether a login as `account` from `addr` may be checked now.
    pub fn check(&self, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        self.check_at(account, addr, Instant::now())
    }

    fn check_at(&self, account: &str, addr: IpAddr, now: Instant) -> Result<(), Throttled> {
        let addr = address_key(addr);
        let refuse = |retry_after, scope, counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
            Err(Throttled { retry_after, scope })
        };
        if let Some(left) = self.addresses.get(&addr).and_then(|r| r.blocked(now)) {
            return refuse(left, Scope::Address, &self.refused_address);
        }
        let key = self.account_key(account, addr);
        if let Some(left) = self.accounts.get(&key).and_then(|r| r.blocked(now)) {
            return refuse(left, Scope::Account, &self.refused_account);
        }
        Ok(())
    }

    /// Records a failed login as `account` from `addr`.
    pub fn failed(&self, account: &str, addr: IpAddr) {
        self.failed_at(account, addr, Instant::now())
    }

    fn failed_at(&self, account: &str, addr: IpAddr, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let addr = address_key(addr);
        let key = self.account_key(account, addr);
        let p = self.policy;
        if let Some(backoff) = bump(&self.accounts, key, p.account_failures, &p, now) {
            audit(Scope::Account, account, addr, p.account_failures, backoff);
        }
        if let Some(backoff) = bump(&self.addresses, addr, p.address_failures, &p, now) {
            audit(Scope::Address, account, addr, p.address_failures, backoff);
        }
    }

    /// Records a successful login: the account's count from this address is cleared.
    pub fn succeeded(&self, account: &str, addr: IpAddr) {
        let key = self.account_key(account, address_key(addr));
        if self.accounts.contains_key(&key) {
            self.accounts.invalidate(&key);
        }
    }

    /// Attempts refused so far, by scope.
    pub fn refused(&self, scope: Scope) -> u64 {
        match scope {
            Scope::Account => self.refused_account.load(Ordering::Relaxed),
            Scope::Address => self.refused_address.load(Ordering::Relaxed),
        }
    }

    /// Entries held (both maps), after pending evictions ran.
    pub fn entries(&self) -> u64 {
        self.accounts.run_pending_tasks();
        self.addresses.run_pending_tasks();
        self.accounts.entry_count() + self.addresses.entry_count()
    }

    /// The login counters, for the binary's metrics registry.
    pub fn encode_metrics(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        let mut family = encoder.encode_descriptor(
            "pier_auth_login_throttled",
            "Logins refused without a password check, by what was throttled (an account \
             from one address, or an address).",
            None,
            MetricType::Counter,
        )?;
        for scope in [Scope::Account, Scope::Address] {
            ConstCounter::new(self.refused(scope))
                .encode(family.encode_family(&[("scope", scope.as_str())])?)?;
        }
        let failures = ConstCounter::new(self.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "pier_auth_login_failures",
            "Logins with wrong credentials.",
            None,
            MetricType::Counter,
        )?)
    }
}

/// Counts one failure of `key`; returns the backoff when this failure starts one
/// (the key was not blocked before).
fn bump<K: Hash + Eq + Send + Sync + Clone + 'static>(
    map: &moka::sync::Cache<K, Record>,
    key: K,
    free: u32,
    p: &ThrottlePolicy,
    now: Instant,
) -> Option<Duration> {
    let mut started = None;
    map.entry(key).and_upsert_with(|old| {
        let old = old.map(|e| e.into_value());
        let failures = old
            .map(|r| r.decayed(now, p.forgive_every))
            .unwrap_or(0)
            .saturating_add(1);
        let until = (failures >= free.max(1)).then(|| {
            let backoff = backoff(failures - free.max(1), p);
            if failures == free.max(1) {
                started = Some(backoff);
            }
            now + backoff
        });
        Record {
            failures,
            last: now,
            until,
        }
    });
    started
}

/// `first * 2^n`, at most `max`.
fn backoff(n: u32, p: &ThrottlePolicy) -> Duration {
    let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
    p.first_backoff.saturating_mul(factor).min(p.max_backoff)
}

fn audit(scope: Scope, account: &str, addr: IpAddr, failures: u32, backoff: Duration) {
    // The name is the client's: quoted, escaped and cut, never trusted in a log line.
    let name: String = account.chars().take(64).collect();
    tracing::warn!(
        target: "audit",
        scope = scope.as_str(),
        client = %addr,
        account = ?name,
        failures,
        backoff_secs = backoff.as_secs_f64(),
        "login throttled: too many failed logins"
    );
}

/// A rate limit per client address: `per_minute` calls at once, then one every
/// `60 s / per_minute` (a token bucket, kept as the time it is next full: GCRA). Answers
/// how long to wait when the bucket is empty.
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    /// When each address's bucket would be empty if no time passed ("theoretical
    /// arrival time").
    buckets: moka::sync::Cache<IpAddr, Instant>,
    limited: AtomicU64,
}

impl RateLimit {
    /// `per_minute` 0 is no limit.
    pub fn per_minute(per_minute: u32, capacity: u64) -> RateLimit {
        let interval = Duration::from_secs(60)
            .checked_div(per_minute)
            .unwrap_or_default();
        RateLimit {
            burst: per_minute,
            interval,
            buckets: moka::sync::Cache::builder()
                .max_capacity(capacity)
                // A bucket idle for a minute is full again: the same as none.
                .time_to_idle(Duration::from_secs(61))
                .build(),
            limited: AtomicU64::new(0),
        }
    }

    /// Takes one call from `addr`'s bucket, or says how long until one is there.
    pub fn take(&self, addr: IpAddr) -> Result<(), Duration> {
        self.take_at(addr, Instant::now())
    }

    fn take_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.burst == 0 {
            return Ok(());
        }
        let tolerance = self.interval * (self.burst - 1);
        let mut wait = None;
        self.buckets
            .entry(address_key(addr))
            .and_upsert_with(|old| {
                let tat = old.map(|e| e.into_value()).unwrap_or(now).max(now);
                let ahead = tat - now;
                if ahead > tolerance {
                    wait = Some(ahead - tolerance);
                    tat
                } else {
                    tat + self.interval
                }
            });
        match wait {
            None => Ok(()),
            Some(w) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                Err(w)
            }
        }
    }

    /// Calls refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            account_failures: 3,
            address_failures: 100,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            forgive_every: Duration::from_secs(600),
            capacity: 1000,
        }
    }

    /// Fails `n` times, each once the previous block is over; returns the time after.
    fn fail_n(t: &LoginThrottle, who: &str, from: IpAddr, n: u32, mut now: Instant) -> Instant {
        for _ in 0..n {
            if let Err(th) = t.check_at(who, from, now) {
                now += th.retry_after;
            }
            t.failed_at(who, from, now);
        }
        now
    }

    #[test]
    fn free_failures_then_a_doubling_backoff_up_to_the_cap() {
        let t = LoginThrottle::new(policy());
        let a = ip("192.0.2.1");
        let mut now = Instant::now();
        for _ in 0..2 {
            t.check_at("bob", a, now).unwrap();
            t.failed_at("bob", a, now);
        }
        t.check_at("bob", a, now).unwrap();
        t.failed_at("bob", a, now); // the third: blocked from now on
        let mut waits = Vec::new();
        for _ in 0..9 {
            let th = t.check_at("bob", a, now).unwrap_err();
            assert_eq!(th.scope, Scope::Account);
            waits.push(th.retry_after.as_secs());
            // Refused attempts don't extend the block.
            assert_eq!(
                t.check_at("bob", a, now + Duration::from_millis(10))
                    .unwrap_err()
                    .retry_after,
                th.retry_after - Duration::from_millis(10)
            );
            now += th.retry_after;
            t.check_at("bob", a, now).unwrap();
            t.failed_at("bob", a, now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(t.refused(Scope::Account), 18);
        assert_eq!(t.refused(Scope::Address), 0);
    }

    #[test]
    fn another_address_or_account_is_not_blocked() {
        let t = LoginThrottle::new(policy());
        let now = fail_n(&t, "bob", ip("192.0.2.1"), 3, Instant::now());
        assert!(t.check_at("bob", ip("192.0.2.1"), now).is_err());
        // bob himself, from elsewhere; alice from the guesser's address.
        t.check_at("bob", ip("192.0.2.2"), now).unwrap();
        t.check_at("alice", ip("192.0.2.1"), now).unwrap();
    }

    #[test]
    fn an_address_guessing_many_accounts_is_blocked_for_all() {
        let mut p = policy();
        p.address_failures = 10;
        let t = LoginThrottle::new(p);
        let a = ip("192.0.2.7");
        let now = Instant::now();
        for i in 0..10 {
            t.check_at(&format!("user{i}"), a, now).unwrap();
            t.failed_at(&format!("user{i}"), a, now);
        }
        let th = t.check_at("someone-else", a, now).unwrap_err();
        assert_eq!(th.scope, Scope::Address);
        assert_eq!(th.retry_after, Duration::from_secs(1));
        t.check_at("someone-else", ip("192.0.2.8"), now).unwrap();
        assert_eq!(t.refused(Scope::Address), 1);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_v4_as_v4() {
        let t = LoginThrottle::new(policy());
        let now = fail_n(&t, "bob", ip("2001:db8:1:2::1"), 3, Instant::now());
        assert!(t.check_at("bob", ip("2001:db8:1:2:ffff::9"), now).is_err());
        t.check_at("bob", ip("2001:db8:1:3::1"), now).unwrap();
        let now = fail_n(&t, "bob", ip("::ffff:192.0.2.9"), 3, now);
        assert!(t.check_at("bob", ip("192.0.2.9"), now).is_err());
    }

    #[test]
    fn success_clears_the_account_and_quiet_time_halves_counts() {
        let p = policy();
        let t = LoginThrottle::new(p);
        let a = ip("192.0.2.1");
        let now = fail_n(&t, "bob", a, 2, Instant::now());
        t.succeeded("bob", a);
        // Two more failures are free again.
        let now = fail_n(&t, "bob", a, 2, now);
        t.check_at("bob", a, now).unwrap();

        // Deep in backoff (3 free + 5: the next block would be 32 s) ...
        let now = fail_n(&t, "carol", a, 8, now);
        let blocked = t.check_at("carol", a, now).unwrap_err().retry_after;
        assert_eq!(blocked, Duration::from_secs(32));
        // ... after one quiet period the count is halved (8 -> 4, and the failure makes
        // 5): the next block is 4 s, not 64 s.
        let later = now + p.forgive_every;
        t.check_at("carol", a, later).unwrap();
        t.failed_at("carol", a, later);
        assert_eq!(
            t.check_at("carol", a, later).unwrap_err().retry_after,
            Duration::from_secs(4)
        );
        // After long enough, nothing is left: the free failures are back.
        let much_later = later + p.forgive_every * 4;
        let after = fail_n(&t, "carol", a, 2, much_later);
        t.check_at("carol", a, after).unwrap();
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = policy();
        p.capacity = 100;
        let t = LoginThrottle::new(p);
        let now = Instant::now();
        for i in 0..5000u32 {
            let from = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.failed_at(&format!("user{i}"), from, now);
        }
        assert!(t.entries() <= 200, "{} entries", t.entries());
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refills() {
        let r = RateLimit::per_minute(6, 100);
        let a = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..6 {
            r.take_at(a, now).unwrap();
        }
        let wait = r.take_at(a, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        r.take_at(ip("192.0.2.2"), now).unwrap();
        r.take_at(a, now + Duration::from_secs(10)).unwrap();
        assert!(r.take_at(a, now + Duration::from_secs(10)).is_err());
        assert_eq!(r.limited(), 2);
        // 0 is no limit.
        let off = RateLimit::per_minute(0, 10);
        for _ in 0..1000 {
            off.take_at(a, now).unwrap();
        }
    }
}
