//! pier-cluster against one real redis-server.

mod common;

use std::time::{Duration, Instant};

use common::{Redis, suite};
use pier_cluster::{BusEvent, ClusterError, GapReason, RedisConfig, Shared};

async fn connect(redis: &Redis) -> Shared {
    Shared::connect(RedisConfig::standalone(redis.url()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases() {
    let redis = Redis::start(&[]);
    suite::leases(&connect(&redis).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions() {
    let redis = Redis::start(&[]);
    let shared = connect(&redis).await;
    suite::sessions(&shared).await;
    suite::session_ttl(&shared).await;
    suite::idle_sessions(&shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation() {
    let redis = Redis::start(&[]);
    suite::revocation(&connect(&redis).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_kv() {
    let redis = Redis::start(&[]);
    suite::plugin_kv(&connect(&redis).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls() {
    let redis = Redis::start(&[]);
    suite::pulls(&connect(&redis).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_prefix() {
    let redis = Redis::start(&[]);
    let mut cfg = RedisConfig::standalone(redis.url());
    cfg.key_prefix = "tenant-a:".into();
    let a = Shared::connect(cfg).await.unwrap();
    let b = connect(&redis).await;
    assert!(
        a.try_lease("l", "x", Duration::from_secs(60))
            .await
            .unwrap()
    );
    a.session_put("s", None, b"d", Duration::from_secs(60))
        .await
        .unwrap();
    a.revoke("j", u64::MAX / 4).await.unwrap();
    let mut keys: Vec<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "tenant-a:lease:l",
            "tenant-a:revoked:j",
            "tenant-a:session:s"
        ]
    );
    // Another prefix sees none of it.
    assert_eq!(b.lease_holder("l").await.unwrap(), None);
    assert_eq!(b.session_get("s").await.unwrap(), None);
    assert!(!b.is_revoked("j").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_and_resubscribes() {
    let mut redis = Redis::start(&[]);
    let (a, b, p) = (
        connect(&redis).await,
        connect(&redis).await,
        connect(&redis).await,
    );
    suite::pubsub(&a, &b, &p).await;

    let mut sa = a.subscribe("tags").await.unwrap();
    let mut sb = b.subscribe("tags").await.unwrap();
    p.publish("tags", "one").await.unwrap();
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            suite::next_event(sub).await,
            BusEvent::Message("one".into())
        );
    }

    // The server drops every subscriber connection: both resubscribe and say so.
    let killed: u32 = redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .parse()
        .unwrap();
    assert_eq!(
        killed, 2,
        "the subscriptions of suite::pubsub ended when dropped"
    );
    let started = Instant::now();
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            suite::next_event(sub).await,
            BusEvent::Gap(GapReason::Resubscribed)
        );
    }
    let resubscribed_in = started.elapsed();
    p.publish("tags", "two").await.unwrap();
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            suite::next_event(sub).await,
            BusEvent::Message("two".into())
        );
    }

    // Redis restarts on the same port: resubscribed again; messages published while it was
    // down are lost (pub/sub keeps nothing), later ones arrive.
    let port = redis.port;
    redis.kill();
    assert!(
        p.publish("tags", "lost")
            .await
            .unwrap_err()
            .is_unavailable()
    );
    let _redis = Redis::start_on(port, &[]);
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            suite::next_event(sub).await,
            BusEvent::Gap(GapReason::Resubscribed)
        );
    }
    // The publisher's connection manager reconnects by itself (allow it a few tries).
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.publish("tags", "three").await.is_err() {
        assert!(Instant::now() < deadline, "publisher did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            suite::next_event(sub).await,
            BusEvent::Message("three".into())
        );
    }
    eprintln!("resubscribed after CLIENT KILL in {resubscribed_in:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_notices_a_hung_server() {
    // No connection error comes from a stopped process: only the heartbeat (a PING every
    // 5 s, bounded by op_timeout) notices.
    let redis = Redis::start(&[]);
    let shared = connect(&redis).await;
    let mut sub = shared.subscribe("c").await.unwrap();
    redis.freeze(true);
    tokio::time::sleep(Duration::from_secs(7)).await;
    redis.freeze(false);
    let t = Instant::now();
    assert_eq!(
        suite::next_event(&mut sub).await,
        BusEvent::Gap(GapReason::Resubscribed)
    );
    eprintln!("resubscribed {:?} after SIGCONT", t.elapsed());
    shared.publish("c", "m").await.unwrap();
    assert_eq!(
        suite::next_event(&mut sub).await,
        BusEvent::Message("m".into())
    );
}

/// Every operation, once, recording how long it took and how it failed.
async fn every_op(shared: &Shared) -> Vec<(&'static str, Duration, Result<(), ClusterError>)> {
    let ttl = Duration::from_secs(60);
    let mut out = Vec::new();
    macro_rules! time {
        ($name:literal, $e:expr) => {{
            let t = Instant::now();
            let r = $e.await.map(|_| ());
            out.push(($name, t.elapsed(), r));
        }};
    }
    time!("try_lease", shared.try_lease("l", "o", ttl));
    time!("renew_lease", shared.renew_lease("l", "o", ttl));
    time!("release_lease", shared.release_lease("l", "o"));
    time!("lease_holder", shared.lease_holder("l"));
    time!("session_get", shared.session_get("s"));
    time!("session_put", shared.session_put("s", None, b"d", ttl));
    time!("session_delete", shared.session_delete("s"));
    time!("sessions_idle", shared.sessions_idle_longer_than(ttl));
    time!("revoke", shared.revoke("j", u64::MAX / 4));
    time!("is_revoked", shared.is_revoked("j"));
    time!("publish", shared.publish("c", "m"));
    time!("subscribe", shared.subscribe("c"));
    out
}

fn assert_all_unavailable(
    results: &[(&'static str, Duration, Result<(), ClusterError>)],
    limit: Duration,
) {
    for (op, took, result) in results {
        match result {
            Err(e) if e.is_unavailable() => {}
            other => panic!("{op}: expected Unavailable, got {other:?}"),
        }
        assert!(*took < limit, "{op} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_fast_when_redis_is_gone_or_hung() {
    let op_timeout = Duration::from_millis(300);
    let limit = Duration::from_secs(2);
    let mut redis = Redis::start(&[]);
    let mut cfg = RedisConfig::standalone(redis.url());
    cfg.op_timeout = op_timeout;
    let shared = Shared::connect(cfg.clone()).await.unwrap();

    // Hung: the process is stopped, connections stay open, nothing answers.
    redis.freeze(true);
    let results = every_op(&shared).await;
    assert_all_unavailable(&results, op_timeout + Duration::from_millis(200));
    let t = Instant::now();
    let e = Shared::connect(cfg.clone()).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(t.elapsed() < limit);
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    eprintln!("hung redis: slowest op failed after {slowest:?} (op_timeout {op_timeout:?})");

    // Back: the same handle works again.
    redis.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.lease_holder("l").await.is_err() {
        assert!(Instant::now() < deadline, "did not recover after SIGCONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Gone: the process is killed, connections are refused.
    redis.kill();
    let results = every_op(&shared).await;
    assert_all_unavailable(&results, limit);
    let e = Shared::connect(cfg).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let slowest = results.iter().map(|r| r.1).max().unwrap();
    eprintln!("stopped redis: slowest op failed after {slowest:?}");
}

#[tokio::test]
async fn bad_url_is_a_config_error() {
    let e = Shared::connect(RedisConfig::standalone("http://nope"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Config(_)), "{e:?}");
}
