//! pier-cluster against a 3-master Redis Cluster.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ClusterSet, suite};

use pier_cluster::{BusEvent, RedisConfig, RedisMode, Shared};

async fn connect(nodes: Vec<String>) -> Shared {
    Shared::connect(RedisConfig::new(RedisMode::Cluster { nodes }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_three_masters() {
    let t = Instant::now();
    let cluster = ClusterSet::start();
    eprintln!("cluster up in {:?}", t.elapsed());
    let shared = connect(cluster.addrs()).await;
    suite::leases(&shared).await;
    suite::sessions(&shared).await;
    suite::session_ttl(&shared).await;
    suite::revocation(&shared).await;
    suite::plugin_kv(&shared).await;
    suite::pulls(&shared).await;

    // Idle listing must scan every master: first check the sessions really spread.
    for i in 0..40 {
        let id = format!("spread-{i}");
        shared
            .session_put(&id, None, b"x", Duration::from_secs(60))
            .await
            .unwrap();
    }
    for node in &cluster.nodes {
        let n: u32 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(n > 0, "no keys on {}", node.addr());
    }
    for i in 0..40 {
        assert!(shared.session_delete(&format!("spread-{i}")).await.unwrap());
    }
    suite::idle_sessions(&shared).await;

    // Pub/sub: subscribers attached to different nodes hear a publisher on a third.
    let mut rotated = cluster.addrs();
    let a = shared.clone();
    rotated.rotate_left(1);
    let b = connect(rotated.clone()).await;
    rotated.rotate_left(1);
    let p = connect(rotated).await;
    suite::pubsub(&a, &b, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_fast_when_the_cluster_is_hung_or_gone() {
    let mut cluster = ClusterSet::start();
    let mut cfg = RedisConfig::new(RedisMode::Cluster {
        nodes: cluster.addrs(),
    });
    cfg.op_timeout = Duration::from_millis(300);
    let shared = Shared::connect(cfg).await.unwrap();
    assert!(
        shared
            .try_lease("l", "a", Duration::from_secs(60))
            .await
            .unwrap()
    );

    // Hung: every node stopped, sockets open, no answers.
    for node in &cluster.nodes {
        node.freeze(true);
    }
    for i in 0..5 {
        let t = Instant::now();
        let e = shared.lease_holder(&format!("l{i}")).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        let e2 = shared
            .sessions_idle_longer_than(Duration::ZERO)
            .await
            .unwrap_err();
        assert!(e2.is_unavailable(), "{e2:?}");
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "took {:?}",
            t.elapsed()
        );
    }
    for node in &cluster.nodes {
        node.freeze(false);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match shared.lease_holder("l").await {
            Ok(holder) => {
                assert_eq!(holder.as_deref(), Some("a"));
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no recovery after SIGCONT: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One seed node dead: subscribing still works through the next one.
    let mut sub_cfg = RedisConfig::new(RedisMode::Cluster {
        nodes: cluster.addrs(),
    });
    sub_cfg.op_timeout = Duration::from_millis(300);
    let sub_shared = Shared::connect(sub_cfg).await.unwrap();
    cluster.nodes[0].kill();
    let mut sub = sub_shared.subscribe("c").await.unwrap();
    drop(sub_shared.publish("c", "m").await); // may land on the dead node's slots: ignore
    let mut direct = Command::new("redis-cli");
    direct.args([
        "-p",
        &cluster.nodes[1].port.to_string(),
        "PUBLISH",
        "pier:bus:c",
        "direct",
    ]);
    direct.stdout(std::process::Stdio::null());
    assert!(direct.status().unwrap().success());
    loop {
        match suite::next_event(&mut sub).await {
            BusEvent::Message(m) if m == "direct" => break,
            BusEvent::Message(m) if m == "m" => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // Gone: every node killed.
    for node in &mut cluster.nodes {
        node.kill();
    }
    for i in 0..5 {
        let t = Instant::now();
        let e = shared.lease_holder(&format!("l{i}")).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        let e2 = shared
            .session_put("s", None, b"x", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e2.is_unavailable(), "{e2:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
}
