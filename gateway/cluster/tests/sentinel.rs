//! pier-cluster against a Sentinel set: master + 1 replica + 3 sentinels.

mod common;

use std::time::{Duration, Instant};

use common::{SentinelSet, info_field, suite};
use pier_cluster::{BusEvent, GapReason, RedisConfig, RedisMode, Shared, Versioned};

fn config(set: &SentinelSet, op_timeout: Duration) -> RedisConfig {
    let mut cfg = RedisConfig::new(RedisMode::Sentinel {
        master: "pier".into(),
        sentinels: set.sentinel_addrs(),
    });
    cfg.op_timeout = op_timeout;
    cfg
}

/// The replica has applied everything the master has written so far.
fn wait_replicated(set: &SentinelSet) {
    common::wait_until(Duration::from_secs(5), || {
        let master = set.master.cli(&["INFO", "replication"]);
        let replica = set.replica.cli(&["INFO", "replication"]);
        let m = info_field(&master, "master_repl_offset");
        m.is_some() && m == info_field(&replica, "slave_repl_offset")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_and_failover() {
    let mut set = SentinelSet::start();
    let old_master = set.master.port;
    let shared = Shared::connect(config(&set, Duration::from_millis(500)))
        .await
        .unwrap();
    suite::leases(&shared).await;
    suite::sessions(&shared).await;

    // Acknowledged and replicated before the failover: must survive it.
    let ttl = Duration::from_secs(300);
    for i in 0..50 {
        let id = format!("before-{i}");
        assert_eq!(
            shared
                .session_put(&id, None, id.as_bytes(), ttl)
                .await
                .unwrap(),
            Some(1)
        );
    }
    wait_replicated(&set);
    let mut sub = shared.subscribe("manifests").await.unwrap();

    // Keep writing; SIGKILL the master 300 ms in.
    let writer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut log = Vec::new(); // (seq, at, took, ok)
            let start = Instant::now();
            let mut seq = 0u32;
            let mut first_ok_after_error = None;
            let mut errors = 0;
            while start.elapsed() < Duration::from_secs(30) {
                let id = format!("during-{seq}");
                let t = Instant::now();
                let r = shared.session_put(&id, None, id.as_bytes(), ttl).await;
                let took = t.elapsed();
                match &r {
                    Ok(v) => {
                        assert_eq!(*v, Some(1));
                        if errors > 0 && first_ok_after_error.is_none() {
                            first_ok_after_error = Some(start.elapsed());
                        }
                    }
                    Err(e) => {
                        assert!(e.is_unavailable(), "{e:?}");
                        errors += 1;
                    }
                }
                log.push((seq, took, r.is_ok()));
                seq += 1;
                // Stop 2 s after the first success that followed errors.
                if first_ok_after_error
                    .is_some_and(|at| start.elapsed() > at + Duration::from_secs(2))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (log, errors, first_ok_after_error, start)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    set.master.kill();
    let (log, errors, recovered, start) = writer.await.unwrap();
    let recovered = recovered.expect("writes never succeeded again after the master was killed");
    let outage = (start + recovered).saturating_duration_since(killed_at);
    let slowest = log.iter().map(|l| l.1).max().unwrap();
    eprintln!(
        "failover: {} writes, {errors} failed, writes succeed again {outage:?} after SIGKILL, slowest op {slowest:?}",
        log.len()
    );
    assert!(errors > 0, "the kill was not noticed");
    assert!(slowest < Duration::from_secs(2), "an op took {slowest:?}");
    assert!(outage < Duration::from_secs(15), "failover took {outage:?}");

    // The sentinels promoted the replica, and we write to it.
    assert_eq!(set.master_port(), Some(set.replica.port));
    assert_ne!(set.replica.port, old_master);
    assert_eq!(
        info_field(&set.replica.cli(&["INFO", "replication"]), "role").as_deref(),
        Some("master")
    );

    // Everything replicated before the kill is there.
    for i in 0..50 {
        let id = format!("before-{i}");
        assert_eq!(
            shared.session_get(&id).await.unwrap(),
            Some(Versioned {
                version: 1,
                data: id.clone().into_bytes()
            }),
            "{id} lost in the failover"
        );
    }
    // Writes acknowledged after recovery are there; CAS continues from the old versions.
    let after_recovery = log.iter().filter(|l| l.2).rev().take(5);
    for (seq, _, _) in after_recovery {
        let id = format!("during-{seq}");
        assert_eq!(
            shared.session_get(&id).await.unwrap().unwrap().data,
            id.as_bytes()
        );
    }
    assert_eq!(
        shared
            .session_put("before-0", Some(1), b"next", ttl)
            .await
            .unwrap(),
        Some(2)
    );
    // Acknowledged writes in the last moments before the kill may be lost (asynchronous
    // replication): count them, do not assert.
    let mut lost = 0;
    for (seq, _, ok) in &log {
        if *ok
            && shared
                .session_get(&format!("during-{seq}"))
                .await
                .unwrap()
                .is_none()
        {
            lost += 1;
        }
    }
    eprintln!("acknowledged writes lost in the failover: {lost}");

    // The subscription followed the master: a gap, then messages again.
    assert_eq!(
        suite::next_event(&mut sub).await,
        BusEvent::Gap(GapReason::Resubscribed)
    );
    shared.publish("manifests", "after-failover").await.unwrap();
    assert_eq!(
        suite::next_event(&mut sub).await,
        BusEvent::Message("after-failover".into())
    );

    // A fresh handle finds the new master through the sentinels.
    let fresh = Shared::connect(config(&set, Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(
        fresh
            .session_get("before-0")
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    suite::revocation(&fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_from_a_hung_master() {
    // SIGSTOP: the old master's sockets stay open and nothing answers, so only timeouts
    // tell the client to ask the sentinels again.
    let set = SentinelSet::start();
    let op_timeout = Duration::from_millis(300);
    let shared = Shared::connect(config(&set, op_timeout)).await.unwrap();
    let ttl = Duration::from_secs(300);
    assert_eq!(
        shared.session_put("s", None, b"v1", ttl).await.unwrap(),
        Some(1)
    );
    wait_replicated(&set);
    set.master.freeze(true);
    let frozen_at = Instant::now();
    let mut slowest = Duration::ZERO;
    let recovered = loop {
        assert!(frozen_at.elapsed() < Duration::from_secs(20), "no failover");
        let t = Instant::now();
        let r = shared.session_get("s").await;
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(v) => break v,
            Err(e) => assert!(e.is_unavailable(), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "hung master: reads work again {:?} after SIGSTOP, slowest op {slowest:?}",
        frozen_at.elapsed()
    );
    assert!(
        slowest < op_timeout + Duration::from_millis(300),
        "{slowest:?}"
    );
    assert_eq!(
        recovered,
        Some(Versioned {
            version: 1,
            data: b"v1".to_vec()
        })
    );
    assert_eq!(set.master_port(), Some(set.replica.port));
    assert_eq!(
        shared.session_put("s", Some(1), b"v2", ttl).await.unwrap(),
        Some(2)
    );
    set.master.freeze(false);
}
