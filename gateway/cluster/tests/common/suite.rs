//! The behaviour every Redis mode must show, run against standalone, Sentinel and Cluster.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use pier_cluster::{BusEvent, Shared, Versioned};

const LONG: Duration = Duration::from_secs(60);

/// 20 concurrent takers, exactly one wins; only the owner renews or releases; expiry frees.
pub async fn leases(shared: &Shared) {
    let takers = (0..20).map(|i| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let owner = format!("node-{i}");
            let won = shared
                .try_lease("blob/sha256:aa", &owner, LONG)
                .await
                .unwrap();
            (owner, won)
        })
    });
    let results: Vec<(String, bool)> = join_all(takers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<&String> = results.iter().filter(|(_, w)| *w).map(|(o, _)| o).collect();
    assert_eq!(winners.len(), 1, "exactly one winner: {results:?}");
    let winner = winners[0].clone();
    let loser = results.iter().find(|(_, w)| !*w).unwrap().0.clone();
    let name = "blob/sha256:aa";
    assert_eq!(
        shared.lease_holder(name).await.unwrap(),
        Some(winner.clone())
    );
    // The holder cannot take it twice; others cannot renew or release it.
    assert!(!shared.try_lease(name, &winner, LONG).await.unwrap());
    assert!(!shared.renew_lease(name, &loser, LONG).await.unwrap());
    assert!(!shared.release_lease(name, &loser).await.unwrap());
    assert_eq!(
        shared.lease_holder(name).await.unwrap(),
        Some(winner.clone())
    );
    // The owner can.
    assert!(shared.renew_lease(name, &winner, LONG).await.unwrap());
    assert!(shared.release_lease(name, &winner).await.unwrap());
    assert_eq!(shared.lease_holder(name).await.unwrap(), None);
    assert!(!shared.release_lease(name, &winner).await.unwrap());
    assert!(!shared.renew_lease(name, &winner, LONG).await.unwrap());
    // Expiry frees the lease, and the old owner cannot renew the new owner's lease.
    let short = Duration::from_millis(300);
    assert!(shared.try_lease("short", "a", short).await.unwrap());
    assert!(!shared.try_lease("short", "b", short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(shared.lease_holder("short").await.unwrap(), None);
    assert!(shared.try_lease("short", "b", LONG).await.unwrap());
    assert!(!shared.renew_lease("short", "a", LONG).await.unwrap());
    assert!(!shared.release_lease("short", "a").await.unwrap());
    assert_eq!(
        shared.lease_holder("short").await.unwrap(),
        Some("b".into())
    );
    // Renewal really extends: renewed to 1 s at 200 ms, still held at 500 ms.
    assert!(shared.try_lease("renewed", "a", short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        shared
            .renew_lease("renewed", "a", Duration::from_secs(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        shared.lease_holder("renewed").await.unwrap(),
        Some("a".into())
    );
}

/// Create-only, compare-and-set, binary data, delete.
pub async fn sessions(shared: &Shared) {
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(shared.session_get("u1").await.unwrap(), None);
    assert_eq!(
        shared.session_put("u1", None, &bytes, LONG).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        shared
            .session_put("u1", None, b"again", LONG)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        shared.session_get("u1").await.unwrap(),
        Some(Versioned {
            version: 1,
            data: bytes.clone()
        })
    );
    // A version that does not exist yet, or on a missing session, is a conflict.
    assert_eq!(
        shared.session_put("u1", Some(2), b"x", LONG).await.unwrap(),
        None
    );
    assert_eq!(
        shared
            .session_put("nope", Some(1), b"x", LONG)
            .await
            .unwrap(),
        None
    );
    assert_eq!(shared.session_get("nope").await.unwrap(), None);

    // Two writers that both read version 1: exactly one wins.
    let (a, b) = tokio::join!(
        shared.session_put("u1", Some(1), b"writer-a", LONG),
        shared.session_put("u1", Some(1), b"writer-b", LONG),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let winner: &[u8] = match (a, b) {
        (Some(2), None) => b"writer-a",
        (None, Some(2)) => b"writer-b",
        other => panic!("expected exactly one winner with version 2, got {other:?}"),
    };
    assert_eq!(
        shared.session_get("u1").await.unwrap(),
        Some(Versioned {
            version: 2,
            data: winner.to_vec()
        })
    );

    // Twenty writers on version 2: exactly one wins.
    let writers = (0..20).map(|i| {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared
                .session_put("u1", Some(2), format!("w{i}").as_bytes(), LONG)
                .await
                .unwrap()
                .map(|v| (v, i))
        })
    });
    let won: Vec<(u64, i32)> = join_all(writers)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
    assert_eq!(won.len(), 1, "exactly one of 20 writers: {won:?}");
    let (version, i) = won[0];
    assert_eq!(version, 3);
    assert_eq!(
        shared.session_get("u1").await.unwrap().unwrap().data,
        format!("w{i}").into_bytes()
    );

    // A stale writer loses; the current one continues.
    assert_eq!(
        shared
            .session_put("u1", Some(2), b"stale", LONG)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        shared.session_put("u1", Some(3), b"", LONG).await.unwrap(),
        Some(4)
    );
    assert_eq!(
        shared.session_get("u1").await.unwrap(),
        Some(Versioned {
            version: 4,
            data: vec![]
        })
    );

    assert!(shared.session_delete("u1").await.unwrap());
    assert!(!shared.session_delete("u1").await.unwrap());
    assert_eq!(shared.session_get("u1").await.unwrap(), None);
    assert_eq!(
        shared.session_put("u1", None, b"new", LONG).await.unwrap(),
        Some(1)
    );
    assert!(shared.session_delete("u1").await.unwrap());
}

/// The TTL is set, and renewed by each write.
pub async fn session_ttl(shared: &Shared) {
    let ttl = Duration::from_millis(400);
    assert_eq!(
        shared.session_put("t1", None, b"a", ttl).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        shared.session_put("t2", None, b"a", ttl).await.unwrap(),
        Some(1)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        shared.session_put("t2", Some(1), b"b", ttl).await.unwrap(),
        Some(2)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    // t1 is 500 ms old with a 400 ms TTL: gone. t2 was rewritten 250 ms ago: alive.
    assert_eq!(shared.session_get("t1").await.unwrap(), None);
    assert_eq!(
        shared.session_get("t2").await.unwrap(),
        Some(Versioned {
            version: 2,
            data: b"b".to_vec()
        })
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shared.session_get("t2").await.unwrap(), None);
    // Expired means absent: create-only works again.
    assert_eq!(
        shared.session_put("t1", None, b"c", LONG).await.unwrap(),
        Some(1)
    );
    assert!(shared.session_delete("t1").await.unwrap());
}

/// Idle listing returns exactly the sessions not written for longer than the age. With 40
/// sessions the cluster run has keys on every master.
pub async fn idle_sessions(shared: &Shared) {
    for i in 0..40 {
        let id = format!("old-{i:02}");
        assert_eq!(
            shared.session_put(&id, None, b"x", LONG).await.unwrap(),
            Some(1)
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..10 {
        let id = format!("fresh-{i:02}");
        assert_eq!(
            shared.session_put(&id, None, b"x", LONG).await.unwrap(),
            Some(1)
        );
    }
    // Rewriting touches: old-00 is no longer idle.
    assert_eq!(
        shared
            .session_put("old-00", Some(1), b"y", LONG)
            .await
            .unwrap(),
        Some(2)
    );
    // Non-session keys are never listed.
    assert!(shared.try_lease("old-99", "a", LONG).await.unwrap());

    let idle = shared
        .sessions_idle_longer_than(Duration::from_millis(400))
        .await
        .unwrap();
    let expected: Vec<String> = (1..40).map(|i| format!("old-{i:02}")).collect();
    assert_eq!(idle, expected);
    let everything = shared.sessions_idle_longer_than(Duration::ZERO).await;
    // Fresh ones may be 0 ms old: just check the set grows and stays sessions-only.
    let everything: BTreeSet<String> = everything.unwrap().into_iter().collect();
    assert!(
        everything.len() >= 39 && everything.len() <= 50,
        "{everything:?}"
    );
    assert!(
        everything
            .iter()
            .all(|id| id.starts_with("old-") || id.starts_with("fresh-"))
    );
    assert_eq!(
        shared.sessions_idle_longer_than(LONG).await.unwrap(),
        Vec::<String>::new()
    );
    for i in 0..40 {
        shared.session_delete(&format!("old-{i:02}")).await.unwrap();
    }
    for i in 0..10 {
        shared
            .session_delete(&format!("fresh-{i:02}"))
            .await
            .unwrap();
    }
    assert!(shared.release_lease("old-99", "a").await.unwrap());
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Revoked until the token's expiry, then forgotten.
pub async fn revocation(shared: &Shared) {
    let until = now_secs() + 2;
    shared.revoke("jti-1", until).await.unwrap();
    assert!(shared.is_revoked("jti-1").await.unwrap());
    assert!(!shared.is_revoked("jti-2").await.unwrap());
    // Already expired: nothing to remember.
    shared.revoke("jti-0", now_secs() - 10).await.unwrap();
    assert!(!shared.is_revoked("jti-0").await.unwrap());
    while SystemTime::now() < UNIX_EPOCH + Duration::from_secs(until) + Duration::from_millis(100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!shared.is_revoked("jti-1").await.unwrap());
}

/// Plugins' `kv`: values by plugin and key (binary safe), deletes, and the key limit
/// that refuses a new key but still replaces an existing one.
pub async fn plugin_kv(shared: &Shared) {
    assert_eq!(shared.plugin_kv_get("p", "k").await.unwrap(), None);
    let bytes = [0u8, 255, b'\n', 7];
    assert!(shared.plugin_kv_set("p", "k", &bytes, 2).await.unwrap());
    assert_eq!(
        shared.plugin_kv_get("p", "k").await.unwrap().as_deref(),
        Some(&bytes[..])
    );
    assert_eq!(
        shared.plugin_kv_get("other", "k").await.unwrap(),
        None,
        "per plugin"
    );
    assert!(shared.plugin_kv_set("p", "k2", b"2", 2).await.unwrap());
    assert!(
        !shared.plugin_kv_set("p", "k3", b"3", 2).await.unwrap(),
        "a third key"
    );
    assert_eq!(shared.plugin_kv_get("p", "k3").await.unwrap(), None);
    assert!(
        shared.plugin_kv_set("p", "k2", b"two", 2).await.unwrap(),
        "a replacement"
    );
    assert_eq!(
        shared.plugin_kv_get("p", "k2").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    shared.plugin_kv_delete("p", "k").await.unwrap();
    shared.plugin_kv_delete("p", "k").await.unwrap();
    assert_eq!(shared.plugin_kv_get("p", "k").await.unwrap(), None);
    assert!(
        shared.plugin_kv_set("p", "k3", b"3", 2).await.unwrap(),
        "room again"
    );
    shared.plugin_kv_delete("p", "k2").await.unwrap();
    shared.plugin_kv_delete("p", "k3").await.unwrap();
}

/// Last pulls: the latest time of each field wins, whichever node reports first.
pub async fn pulls(shared: &Shared) {
    let f = |s: &str| s.to_owned();
    shared
        .pulls_merge(&[(f("a/b:v1"), 100), (f("a/b@sha256:x"), 50)])
        .await
        .unwrap();
    shared
        .pulls_merge(&[(f("a/b:v1"), 90), (f("a/b@sha256:x"), 60)])
        .await
        .unwrap();
    shared.pulls_merge(&[]).await.unwrap();
    assert_eq!(
        shared
            .pulls_get(&[f("a/b:v1"), f("a/b@sha256:x"), f("a/b:never")])
            .await
            .unwrap(),
        [Some(100), Some(60), None]
    );
    assert!(shared.pulls_get(&[]).await.unwrap().is_empty());
}

/// Next event within 5 s.
pub async fn next_event(sub: &mut pier_cluster::Subscription) -> BusEvent {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no bus event within 5 s")
        .expect("subscriptions never end")
}

/// Two subscribers on two handles receive what a third publishes, and nothing from other
/// channels.
pub async fn pubsub(a: &Shared, b: &Shared, publisher: &Shared) {
    let mut sa = a.subscribe("manifests").await.unwrap();
    let mut sb = b.subscribe("manifests").await.unwrap();
    publisher.publish("other", "ignored").await.unwrap();
    publisher
        .publish("manifests", "repo/x:latest")
        .await
        .unwrap();
    publisher.publish("manifests", "repo/y:1").await.unwrap();
    for sub in [&mut sa, &mut sb] {
        assert_eq!(
            next_event(sub).await,
            BusEvent::Message("repo/x:latest".into())
        );
        assert_eq!(next_event(sub).await, BusEvent::Message("repo/y:1".into()));
    }
}
