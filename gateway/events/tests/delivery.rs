//! Webhook delivery end to end: real HTTP receivers, real directories.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{Receiver, body_event_id, draft, wait_until};
use pier_events::{
    DeliveryFilter, DeliveryId, DeliveryRequest, DeliveryStatus, Event, Events, EventsConfig,
    PageRequest, RouteError, Router, WebhookRouter,
};

const SECRET: &[u8] = b"s3cret";
const WAIT: Duration = Duration::from_secs(20);

fn config() -> EventsConfig {
    EventsConfig {
        source: "http://pier.test".into(),
        signing_secret: Some(SECRET.to_vec()),
        max_attempts: 5,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        router_timeout: Duration::from_millis(300),
        tls_roots: Some(rustls::RootCertStore::empty()),
        ..EventsConfig::default()
    }
}

fn webhook(url: String) -> Arc<dyn Router> {
    Arc::new(WebhookRouter { urls: vec![url] })
}

/// Never answers: events stay in the journal, unrouted.
struct Hang;

#[async_trait]
impl Router for Hang {
    async fn route(&self, _: &Event) -> Result<Vec<DeliveryRequest>, RouteError> {
        std::future::pending().await
    }
}

async fn all_delivered(events: &Events, n: usize) -> bool {
    let page = events
        .deliveries(
            &DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                ..Default::default()
            },
            &PageRequest {
                before: None,
                limit: usize::MAX - 1,
            },
        )
        .await
        .unwrap();
    page.items.len() == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let events = Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap();
    let mut published = Vec::new();
    for n in 0..20 {
        published.push(events.publish(draft(n)).await.unwrap());
    }
    assert_eq!(common::ids(&published), (1..=20).collect::<Vec<_>>());
    wait_until("20 requests", WAIT, async || rx.count() == 20).await;

    let requests = rx.requests();
    for (req, event) in requests.iter().zip(&published) {
        assert_eq!(req.path, "/hook");
        assert_eq!(req.verify(SECRET), Ok(()));
        assert_eq!(req.key(), req.header("x-pier-delivery"));
        assert_eq!(req.key().len(), 32);
        assert_eq!(req.event_id(), event.id, "in event order");
        assert_eq!(body_event_id(&req.body), event.id.to_string());
        assert_eq!(req.header("content-type"), "application/cloudevents+json");
        let ce: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(ce["type"], "dev.pier.manifest.pushed");
        assert_eq!(ce["source"], "http://pier.test");
        assert_eq!(ce["subject"], format!("library/app:v{}", event.id - 1));
    }
    let keys: HashSet<String> = requests.iter().map(|r| r.key()).collect();
    assert_eq!(keys.len(), 20);

    wait_until("the log to say delivered", WAIT, async || {
        all_delivered(&events, 20).await
    })
    .await;
    let id = DeliveryId::parse(&requests[0].key()).unwrap();
    let d = events.delivery(&id).await.unwrap().unwrap();
    assert_eq!(d.attempts, 1);
    assert_eq!(d.last_status, Some(200));
    assert!(d.finished.is_some());
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_key_until_success() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    rx.script(&[500, 500]);
    let events = Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap();
    events.publish(draft(1)).await.unwrap();
    wait_until("3 attempts", WAIT, async || rx.count() == 3).await;
    wait_until("delivered", WAIT, async || all_delivered(&events, 1).await).await;

    let requests = rx.requests();
    let key = requests[0].key();
    assert!(requests.iter().all(|r| r.key() == key));
    let attempts: Vec<&str> = requests
        .iter()
        .map(|r| r.header("x-pier-attempt"))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    for r in &requests {
        assert_eq!(r.verify(SECRET), Ok(()));
    }
    let d = events
        .delivery(&DeliveryId::parse(&key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeliveryStatus::Delivered);
    assert_eq!(d.attempts, 3);
    assert_eq!(d.last_status, Some(200));
    assert_eq!(d.last_error, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.count(), 3, "nothing after success");
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_then_redelivers_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    rx.set_default_status(503);
    let cfg = EventsConfig {
        max_attempts: 2,
        ..config()
    };
    let events = Events::open_dir(dir.path(), webhook(rx.url()), cfg).unwrap();
    events.publish(draft(1)).await.unwrap();
    let failed = DeliveryFilter {
        status: Some(DeliveryStatus::Failed),
        ..Default::default()
    };
    wait_until("failed", WAIT, async || {
        events
            .deliveries(&failed, &PageRequest::default())
            .await
            .unwrap()
            .items
            .len()
            == 1
    })
    .await;
    let d = events
        .deliveries(&failed, &PageRequest::default())
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.last_status, Some(503));
    assert_eq!(d.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(rx.count(), 2);

    rx.set_default_status(200);
    let again = events.redeliver(&d.id).await.unwrap();
    assert_eq!(again.status, DeliveryStatus::Pending);
    wait_until("redelivered", WAIT, async || {
        all_delivered(&events, 1).await
    })
    .await;
    let requests = rx.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.key() == d.id.as_str()));
    let d = events.delivery(&d.id).await.unwrap().unwrap();
    assert_eq!(d.attempts, 1, "a redelivery counts from 1");

    let missing = DeliveryId::derive(999, 0, "http://nowhere/");
    assert!(events.redeliver(&missing).await.is_err());
    events.shutdown().await;
}

/// A webhook endpoint's redirect is an answer, not a hop: a `307` to another address (here
/// a private one) is recorded as a failed attempt and nothing is sent there. This is why
/// webhooks need no outbound-address policy: they only ever reach the configured URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = Receiver::start().await;
    let rx = Receiver::start().await;
    rx.set_default_status(307);
    rx.set_location(&elsewhere.url());
    let cfg = EventsConfig {
        max_attempts: 2,
        ..config()
    };
    let events = Events::open_dir(dir.path(), webhook(rx.url()), cfg).unwrap();
    events.publish(draft(1)).await.unwrap();
    let failed = DeliveryFilter {
        status: Some(DeliveryStatus::Failed),
        ..Default::default()
    };
    wait_until("failed", WAIT, async || {
        events
            .deliveries(&failed, &PageRequest::default())
            .await
            .unwrap()
            .items
            .len()
            == 1
    })
    .await;
    let d = events
        .deliveries(&failed, &PageRequest::default())
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(d.last_status, Some(307));
    assert_eq!(rx.count(), 2);
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Receiver::unused_addr();
    let url = format!("http://{addr}/hook");
    let events = Events::open_dir(dir.path(), webhook(url), config()).unwrap();
    events.publish(draft(1)).await.unwrap();
    events.publish(draft(2)).await.unwrap();
    wait_until("failed attempts", WAIT, async || {
        let page = events
            .deliveries(&DeliveryFilter::default(), &PageRequest::default())
            .await
            .unwrap();
        page.items
            .iter()
            .any(|d| d.attempts >= 2 && d.last_error.is_some())
    })
    .await;
    let rx = Receiver::start_on(addr).await;
    wait_until("both delivered", WAIT, async || {
        all_delivered(&events, 2).await
    })
    .await;
    let got: Vec<u64> = rx.requests().iter().map(|r| r.event_id()).collect();
    assert_eq!(got, [1, 2]);
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_events_survive_a_crash_before_routing() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    {
        let events = Events::open_dir(dir.path(), Arc::new(Hang), config()).unwrap();
        for n in 0..5 {
            events.publish(draft(n)).await.unwrap();
        }
        // Dropped without shutdown: the "kill -9" right after the pushes were answered.
    }
    let events = Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap();
    wait_until("5 requests", WAIT, async || rx.count() == 5).await;
    let got: Vec<u64> = rx.requests().iter().map(|r| r.event_id()).collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);
    let next = events.publish(draft(6)).await.unwrap();
    assert_eq!(next.id, 6, "ids keep increasing across restarts");
    wait_until("6 requests", WAIT, async || rx.count() == 6).await;
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_entries_survive_a_crash_and_delivered_ones_are_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Receiver::unused_addr();
    let url = format!("http://{addr}/hook");
    {
        let events = Events::open_dir(dir.path(), webhook(url.clone()), config()).unwrap();
        for n in 0..4 {
            events.publish(draft(n)).await.unwrap();
        }
        // Routed into the outbox, but the receiver is down.
        wait_until("routed", WAIT, async || {
            events
                .deliveries(&DeliveryFilter::default(), &PageRequest::default())
                .await
                .unwrap()
                .items
                .len()
                == 4
        })
        .await;
    }
    let rx = Receiver::start_on(addr).await;
    let events = Events::open_dir(dir.path(), webhook(url.clone()), config()).unwrap();
    wait_until("4 delivered", WAIT, async || {
        all_delivered(&events, 4).await
    })
    .await;
    for n in 4..6 {
        events.publish(draft(n)).await.unwrap();
    }
    wait_until("6 delivered", WAIT, async || {
        all_delivered(&events, 6).await
    })
    .await;
    drop(events);

    // A third start: nothing left to send. Only duplicates of a delivery whose
    // "delivered" record was lost may come again, with the same key.
    let before = rx.requests();
    let events = Events::open_dir(dir.path(), webhook(url), config()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rx.requests();
    let known: HashSet<String> = before.iter().map(|r| r.key()).collect();
    assert_eq!(known.len(), 6);
    assert!(
        after[before.len()..]
            .iter()
            .all(|r| known.contains(&r.key()))
    );
    let mut per_event: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in &after {
        per_event.entry(r.event_id()).or_default().insert(r.key());
    }
    assert_eq!(per_event.len(), 6);
    assert!(
        per_event.values().all(|keys| keys.len() == 1),
        "one key per event"
    );
    assert!(all_delivered(&events, 6).await);
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_cut_off() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    {
        let events = Events::open_dir(dir.path(), Arc::new(Hang), config()).unwrap();
        for n in 0..3 {
            events.publish(draft(n)).await.unwrap();
        }
    }
    // Wait for the writer threads to let go, then tear the tail: a header promising
    // 100 bytes followed by 10.
    drop(pier_events::disk::open(dir.path()).unwrap());
    let segment = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let good_len = std::fs::metadata(&segment).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[0xAB; 14]).unwrap();
    drop(f);

    let rx = Receiver::start().await;
    let events = Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap();
    let next = events.publish(draft(3)).await.unwrap();
    assert_eq!(next.id, 4);
    wait_until("4 requests", WAIT, async || rx.count() == 4).await;
    let got: Vec<u64> = rx.requests().iter().map(|r| r.event_id()).collect();
    assert_eq!(got, [1, 2, 3, 4]);
    assert!(std::fs::metadata(&segment).unwrap().len() > good_len);
    events.shutdown().await;
}

/// Fails, panics or hangs for some repositories; a webhook for the rest.
struct Moody {
    url: String,
}

#[async_trait]
impl Router for Moody {
    async fn route(&self, event: &Event) -> Result<Vec<DeliveryRequest>, RouteError> {
        match event.repository.as_str() {
            "bad/repo" => Err(RouteError::new("plugin said no")),
            "panic/repo" => panic!("plugin trapped"),
            "slow/repo" => std::future::pending().await,
            "invalid/repo" => Ok(vec![DeliveryRequest {
                url: "ftp://nope/".into(),
                headers: vec![],
                body: "x".into(),
                refused: None,
            }]),
            _ => Ok(vec![DeliveryRequest {
                url: self.url.clone(),
                headers: vec![("x-custom".into(), "yes".into())],
                body: event.to_json().into(),
                refused: None,
            }]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_failures_do_not_stall_later_events() {
    use pier_events::{EventDraft, EventKind};

    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let router = Arc::new(Moody { url: rx.url() });
    let events = Events::open_dir(dir.path(), router, config()).unwrap();
    for repo in [
        "bad/repo",
        "panic/repo",
        "slow/repo",
        "invalid/repo",
        "good/repo",
        "good/repo",
    ] {
        let started = Instant::now();
        events
            .publish(EventDraft::new(
                EventKind::ManifestDeleted,
                repo.parse().unwrap(),
            ))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "publish never waits for the router"
        );
    }
    wait_until("2 requests", WAIT, async || rx.count() == 2).await;
    let requests = rx.requests();
    assert_eq!(
        requests.iter().map(|r| r.event_id()).collect::<Vec<_>>(),
        [5, 6]
    );
    assert!(requests.iter().all(|r| r.header("x-custom") == "yes"));
    assert!(
        requests
            .iter()
            .all(|r| r.header("content-type") == "application/json")
    );

    let failed = events
        .deliveries(
            &DeliveryFilter {
                status: Some(DeliveryStatus::Failed),
                ..Default::default()
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!(failed.items[0].event_id, 4);
    assert!(
        failed.items[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("ftp://nope/")
    );
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_publishes_are_each_delivered_once() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let events = Arc::new(Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..N {
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let e = events.publish(draft(n)).await.unwrap();
            (e.id, t.elapsed())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let wall = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().map(|r| r.1).collect();
    let first: Duration = latencies[..100].iter().sum::<Duration>() / 100;
    let last: Duration = latencies[N - 100..].iter().sum::<Duration>() / 100;
    latencies.sort();
    println!(
        "{N} concurrent publishes: wall {wall:?} ({:.1} µs/publish amortized), latency p50 {:?} p99 {:?} max {:?}; first 100 avg {first:?}, last 100 avg {last:?}",
        wall.as_secs_f64() * 1e6 / N as f64,
        latencies[N / 2],
        latencies[N * 99 / 100],
        latencies[N - 1],
    );
    let mut ids: Vec<u64> = results.iter().map(|r| r.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        (1..=N as u64).collect::<Vec<_>>(),
        "unique, gap-free ids"
    );

    let t0 = Instant::now();
    wait_until("1000 requests", Duration::from_secs(120), async || {
        rx.count() >= N
    })
    .await;
    wait_until("1000 delivered", Duration::from_secs(30), async || {
        all_delivered(&events, N).await
    })
    .await;
    println!(
        "{N} deliveries took {:?} after the last publish",
        t0.elapsed()
    );
    let requests = rx.requests();
    assert_eq!(requests.len(), N, "no duplicates without a crash");
    let got: Vec<u64> = requests.iter().map(|r| r.event_id()).collect();
    assert_eq!(
        got,
        (1..=N as u64).collect::<Vec<_>>(),
        "each once, in order"
    );
    let keys: HashSet<String> = requests.iter().map(|r| r.key()).collect();
    assert_eq!(keys.len(), N);
    assert!(requests.iter().all(|r| r.verify(SECRET).is_ok()));

    // Sequential publishes: each one pays a whole fsync.
    let t = Instant::now();
    for n in 0..100 {
        events.publish(draft(n)).await.unwrap();
    }
    println!(
        "sequential publish: {:.1} µs each",
        t.elapsed().as_secs_f64() * 1e6 / 100.0
    );
    Arc::try_unwrap(events).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_latency_stays_flat_under_sustained_load() {
    const CLIENTS: usize = 25;
    const EACH: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let events = Arc::new(Events::open_dir(dir.path(), webhook(rx.url()), config()).unwrap());
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in 0..EACH {
                let t = Instant::now();
                events.publish(draft(c * EACH + i)).await.unwrap();
                samples.push((t - origin, t.elapsed()));
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let wall = origin.elapsed();
    samples.sort();
    let window = samples.len() / 5;
    let means: Vec<String> = samples
        .chunks(window)
        .map(|c| {
            let mean = c.iter().map(|s| s.1).sum::<Duration>() / c.len() as u32;
            let mut sorted: Vec<Duration> = c.iter().map(|s| s.1).collect();
            sorted.sort();
            format!(
                "{:.0}/{:.0}",
                mean.as_secs_f64() * 1e6,
                sorted[sorted.len() / 2].as_secs_f64() * 1e6
            )
        })
        .collect();
    println!(
        "{} publishes from {CLIENTS} clients in {wall:?} ({:.1} µs/publish amortized); latency mean/median per fifth, in start order (µs): {}",
        samples.len(),
        wall.as_secs_f64() * 1e6 / samples.len() as f64,
        means.join(" / "),
    );
    wait_until("all delivered", Duration::from_secs(120), async || {
        rx.count() >= CLIENTS * EACH
    })
    .await;
    assert_eq!(rx.count(), CLIENTS * EACH);
    Arc::try_unwrap(events).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_urls_go_through_tls() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let url = format!("https://{}/hook", rx.addr);
    let cfg = EventsConfig {
        max_attempts: 1,
        ..config()
    };
    let events = Events::open_dir(dir.path(), webhook(url), cfg).unwrap();
    events.publish(draft(1)).await.unwrap();
    let failed = DeliveryFilter {
        status: Some(DeliveryStatus::Failed),
        ..Default::default()
    };
    wait_until("failed", WAIT, async || {
        !events
            .deliveries(&failed, &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    let d = events
        .deliveries(&failed, &PageRequest::default())
        .await
        .unwrap()
        .items
        .remove(0);
    // A TLS handshake against a plain-HTTP listener: no HTTP status, an error recorded.
    assert_eq!(d.last_status, None);
    assert!(!d.last_error.unwrap_or_default().is_empty());
    assert_eq!(rx.count(), 0);
    events.shutdown().await;
}

/// For each event: a refused request, one with a forged Pier header, one with a header
/// split by CR/LF, and a good one to each of two receivers.
struct Forger {
    a: String,
    b: String,
}

#[async_trait]
impl Router for Forger {
    async fn route(&self, event: &Event) -> Result<Vec<DeliveryRequest>, RouteError> {
        let req = |url: &str, headers: &[(&str, &str)], refused: Option<&str>| DeliveryRequest {
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: event.to_json().into(),
            refused: refused.map(str::to_owned),
        };
        Ok(vec![
            req(&self.a, &[], Some("not in the plugin's allowed_hosts")),
            req(&self.a, &[("X-Pier-Signature", "sha256=forged")], None),
            req(&self.a, &[("X-Ok", "1\r\nX-Pier-Signature: forged")], None),
            req(&self.a, &[("X-Event", "a")], None),
            req(&self.b, &[("X-Event", "b")], None),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_forged_requests_are_never_sent_and_each_endpoint_has_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (rx_a, rx_b) = (Receiver::start().await, Receiver::start().await);
    let config = EventsConfig {
        signing_secret: None,
        endpoint_secrets: vec![
            pier_events::EndpointSecret {
                url: rx_a.url(),
                secret: b"secret-a".to_vec(),
            },
            pier_events::EndpointSecret {
                url: rx_b.url(),
                secret: b"secret-b".to_vec(),
            },
        ],
        ..config()
    };
    let router = Arc::new(Forger {
        a: rx_a.url(),
        b: rx_b.url(),
    });
    let events = Events::open_dir(dir.path(), router, config).unwrap();
    events.publish(draft(1)).await.unwrap();
    wait_until("a and b", WAIT, async || {
        rx_a.count() == 1 && rx_b.count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Only the good requests arrived, each verifiable with its endpoint's secret only.
    let (a, b) = (rx_a.requests(), rx_b.requests());
    assert_eq!((a.len(), b.len()), (1, 1), "a: {a:#?}\nb: {b:#?}");
    assert_eq!(a[0].header("x-event"), "a");
    assert_eq!(b[0].header("x-event"), "b");
    assert_eq!(a[0].verify(b"secret-a"), Ok(()));
    assert_eq!(b[0].verify(b"secret-b"), Ok(()));
    // a delivery captured at a and replayed to b fails b's check (and vice versa)
    assert_eq!(
        a[0].verify(b"secret-b"),
        Err(pier_events::SignatureError::Mismatch)
    );
    assert_eq!(
        b[0].verify(b"secret-a"),
        Err(pier_events::SignatureError::Mismatch)
    );

    // The three others are in the log as failed, with the reason, never attempted.
    let failed = events
        .deliveries(
            &DeliveryFilter {
                status: Some(DeliveryStatus::Failed),
                ..Default::default()
            },
            &PageRequest::default(),
        )
        .await
        .unwrap()
        .items;
    let mut why: Vec<(u32, String)> = failed
        .iter()
        .map(|d| (d.index, d.last_error.clone().unwrap_or_default()))
        .collect();
    why.sort();
    assert_eq!(why.len(), 3, "{why:?}");
    assert_eq!(
        why[0],
        (0, "refused: not in the plugin's allowed_hosts".into())
    );
    assert!(
        why[1]
            .1
            .starts_with("refused: header X-Pier-Signature is not allowed"),
        "{why:?}"
    );
    assert!(
        why[2]
            .1
            .starts_with("refused: header X-Ok: value has the byte 0x0d"),
        "{why:?}"
    );
    assert!(failed.iter().all(|d| d.attempts == 0));

    // A redelivery of the refused one fails again without a request.
    let refused = failed.iter().find(|d| d.index == 0).unwrap();
    events.redeliver(&refused.id).await.unwrap();
    wait_until("the redelivery to fail", WAIT, async || {
        events
            .delivery(&refused.id)
            .await
            .unwrap()
            .is_some_and(|d| d.status == DeliveryStatus::Failed && d.attempts == 1)
    })
    .await;
    assert_eq!(rx_a.count(), 1, "the refused request was sent");
    events.shutdown().await;
}
