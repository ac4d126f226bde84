//! Webhooks: every pushed manifest is delivered to every endpoint, signed
//! (`X-Pier-Signature`, checked here with an HMAC of our own); a kill -9 between the push
//! and the delivery loses nothing (the event is on disk before the push is answered);
//! retries, duplicates and a redelivery by hand (`pier events redeliver`) carry one
//! idempotency key per manifest and endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pier_e2e::{push_image, random_bytes, wait_until};

use crate::clients_support::{CMD_TIMEOUT, run};
use crate::support::*;

const ENDPOINTS: [&str; 2] = ["/hooks/a", "/hooks/b"];

/// Checks every request the receiver got and that each `(endpoint, digest)` of
/// `pushed` was answered 200 at least once with one idempotency key in all.
#[track_caller]
fn check_hooks(receiver: &Receiver, pushed: &[String]) {
    let hooks = receiver.hooks();
    let mut keys: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut delivered: BTreeSet<(String, String)> = BTreeSet::new();
    for h in &hooks {
        if let Err(e) = verify_hook(h, SECRET) {
            panic!(
                "bad signature on {} (event {:?}): {e}",
                h.path,
                h.header("x-pier-event-id")
            );
        }
        let key = h
            .header("idempotency-key")
            .unwrap_or_else(|| panic!("a webhook without Idempotency-Key: {h:?}"))
            .to_owned();
        assert_eq!(h.header("x-pier-delivery"), Some(key.as_str()));
        let v = h.json();
        assert_eq!(
            v["type"], "dev.pier.manifest.pushed",
            "body is not the push's CloudEvent: {v}"
        );
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(
            h.header("x-pier-event-id"),
            v["id"].as_str(),
            "X-Pier-Event-Id and the body's id differ"
        );
        let id = (h.path.clone(), h.digest());
        keys.entry(id.clone()).or_default().insert(key);
        if h.answered == 200 {
            delivered.insert(id);
        }
    }
    for d in pushed {
        for e in ENDPOINTS {
            let id = (e.to_owned(), d.clone());
            assert!(
                delivered.contains(&id),
                "{d} was never delivered to {e}; got {} requests",
                hooks.len()
            );
            let k = &keys[&id];
            assert_eq!(
                k.len(),
                1,
                "{d} reached {e} under {} idempotency keys: {k:?}",
                k.len()
            );
        }
    }
    // Different manifests or endpoints never share a key.
    let all: Vec<&String> = keys.values().flatten().collect();
    let distinct: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a key names two deliveries");
}

/// Waits until every `(endpoint, digest)` of `pushed` got a 200.
fn all_delivered(receiver: &Receiver, pushed: &[String]) -> bool {
    let hooks = receiver.hooks();
    pushed.iter().all(|d| {
        ENDPOINTS.iter().all(|e| {
            hooks
                .iter()
                .any(|h| h.answered == 200 && h.path == *e && h.digest() == *d)
        })
    })
}

#[test]
fn every_push_delivered_signed_once_per_endpoint_even_across_kill_9() {
    let receiver = Receiver::start();
    let urls: Vec<String> = ENDPOINTS.iter().map(|e| receiver.url(e)).collect();
    let config = base_config("", &[]) + &webhook("webhook", &urls);
    // Each journal write takes 400 ms longer: a push answered before its event is on disk
    // would be answered at once, and the kill -9 right after the last answer would then
    // lose that event on every run, not only when the background write loses a race.
    let mut site = start_site_with_env(
        &config,
        &[("FAILPOINTS", "events-journal-write=sleep(400)")],
    );

    // 1. Receiver up: every push arrives at both endpoints, signed.
    let mut pushed = Vec::new();
    for i in 0..5 {
        let img = push_image(
            site.addr,
            &format!("team/hooks-{}", i % 2),
            Some(&format!("v{i}")),
            &[&random_bytes(512)],
        );
        pushed.push(img.digest);
    }
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            all_delivered(&receiver, &pushed)
        }),
        "not every push was delivered: {:#?}\n{}",
        deliveries(&site, None),
        site.log_tail(30)
    );
    check_hooks(&receiver, &pushed);
    assert!(deliveries(&site, Some("failed")).is_empty());

    // 2. Receiver failing (500) while pushing, kill -9 right after the last push is
    //    answered, restart on the same root and config, receiver back.
    receiver.answer(500);
    let mut during = Vec::new();
    for i in 0..6 {
        let img = push_image(
            site.addr,
            "team/crash",
            Some(&format!("c{i}")),
            &[&random_bytes(512)],
        );
        during.push(img.digest);
    }
    site.kill9();
    let before_restart = receiver.hooks().len();
    let answered_200 = receiver
        .hooks()
        .iter()
        .filter(|h| h.answered == 200)
        .count();
    eprintln!(
        "webhooks: killed with {before_restart} requests received ({answered_200} answered 200)"
    );
    site.remove_env("FAILPOINTS");
    site.start_again();
    receiver.answer(200);
    pushed.extend(during.iter().cloned());
    assert!(
        wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
            all_delivered(&receiver, &pushed)
        }),
        "pushes answered before kill -9 were not delivered after the restart \
         ({before_restart} requests before it): {:#?}\n{}",
        deliveries(&site, Some("pending")),
        site.log_tail(30)
    );
    check_hooks(&receiver, &pushed);
    let hooks = receiver.hooks();
    eprintln!(
        "webhooks: {} requests in all, {} answered 200, for {} pushes x {} endpoints",
        hooks.len(),
        hooks.iter().filter(|h| h.answered == 200).count(),
        pushed.len(),
        ENDPOINTS.len()
    );

    // The outbox agrees: everything delivered, nothing failed or left pending.
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            deliveries(&site, Some("pending")).is_empty()
        }),
        "pending deliveries left: {:#?}",
        deliveries(&site, Some("pending"))
    );
    assert!(deliveries(&site, Some("failed")).is_empty());
    let delivered = deliveries(&site, Some("delivered"));
    assert_eq!(
        delivered.len(),
        pushed.len() * ENDPOINTS.len(),
        "one delivery per push and endpoint in the outbox: {delivered:#?}"
    );

    // `pier events deliveries` lists them; `pier events redeliver ID` sends one again
    // under the same idempotency key.
    let cli = |args: &[&str]| {
        let mut c = pier_e2e::pier_command();
        c.args(args).arg("--admin").arg(site.admin_url());
        run(&mut c, CMD_TIMEOUT)
    };
    let out = cli(&[
        "events",
        "deliveries",
        "--status",
        "delivered",
        "--limit",
        "100",
    ]);
    assert!(out.success(), "{out}");
    let id = delivered[0]["id"].as_str().expect("delivery id").to_owned();
    assert!(out.stdout.contains(&id), "delivery {id} not listed\n{out}");
    let before = receiver.hooks().len();
    let out = cli(&["events", "redeliver", &id]);
    assert!(out.success(), "{out}");
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            receiver.hooks()[before..]
                .iter()
                .any(|h| h.answered == 200 && h.header("idempotency-key") == Some(id.as_str()))
        }),
        "the redelivery of {id} never arrived"
    );
    check_hooks(&receiver, &pushed);
}
