//! The event journal and outbox in a real redis-server (standalone and Cluster), and
//! `pier-events` running on them: a crash loses nothing, two nodes deliver once.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ClusterSet, Redis};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pier_cluster::{EventsLeader, RedisConfig, RedisMode, Shared};
use pier_events::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryKey, DeliveryRequest, DeliveryStatus, Event,
    EventDraft, EventKind, Events, EventsConfig, PageRequest, Retention, Stores, Timestamp,
    WebhookRouter,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

async fn connect(redis: &Redis) -> Shared {
    Shared::connect(RedisConfig::standalone(redis.url()))
        .await
        .unwrap()
}

fn draft(n: usize) -> EventDraft {
    EventDraft::new(EventKind::ManifestPushed, "library/app".parse().unwrap())
        .tag(format!("v{n}").parse().unwrap())
        .size(n as u64)
}

fn event(n: usize) -> Event {
    Event::from_draft(draft(n), Timestamp::now(), "test".into())
}

fn delivery(event_id: u64, index: u32, url: &str) -> Delivery {
    Delivery::new(
        event_id,
        index,
        DeliveryRequest {
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(format!("{{\"e\":{event_id}}}")),
            refused: None,
        },
        Timestamp::from_micros(1_000 + event_id),
    )
}

fn keys(v: &[pier_events::PendingDelivery]) -> Vec<(u64, u32)> {
    v.iter().map(|p| (p.key.event_id, p.key.index)).collect()
}

/// Journal: concurrent appends get unique, increasing ids; read_after pages; release trims.
async fn journal_suite(stores: &Stores) {
    let journal = stores.journal.clone();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let batch: Vec<Event> = (0..1 + (i % 3)).map(|k| event(t * 100 + k)).collect();
                let stored = journal.append(batch).await.unwrap();
                let got: Vec<u64> = stored.iter().map(|e| e.id).collect();
                assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
                ids.extend(got);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "per task increasing");
        all.extend(ids);
    }
    let n = all.len();
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), n, "ids unique");
    let read = journal.read_after(0, 10_000).await.unwrap();
    let read_ids: Vec<u64> = read.iter().map(|e| e.id).collect();
    assert_eq!(read_ids, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(read[0].repository.to_string(), "library/app");
    assert_eq!(journal.read_after(5, 3).await.unwrap().len(), 3);
    assert_eq!(journal.read_after(5, 3).await.unwrap()[0].id, 6);
    assert!(journal.read_after(n as u64, 10).await.unwrap().is_empty());

    journal.release(10).await.unwrap();
    assert_eq!(journal.read_after(0, 1).await.unwrap()[0].id, 11);
    journal.release(n as u64).await.unwrap();
    assert!(journal.read_after(0, 10).await.unwrap().is_empty());
    // Ids keep increasing after everything was released.
    let next = journal.append(vec![event(1)]).await.unwrap();
    assert_eq!(next[0].id, n as u64 + 1);
}

/// Outbox: commit dedup and cursor, pending order per URL, update/get/list/prune.
async fn outbox_suite(stores: &Stores) {
    let outbox = stores.outbox.clone();
    let (a, b) = ("http://a.test/hook", "http://b.test/hook");
    assert_eq!(outbox.cursor().await.unwrap(), 0);
    let first = vec![delivery(1, 0, a), delivery(2, 0, b), delivery(3, 0, a)];
    assert_eq!(outbox.commit_routed(3, first.clone()).await.unwrap(), 3);
    assert_eq!(outbox.cursor().await.unwrap(), 3);
    // Routed again after a crash: same ids, nothing new, the attempt state kept.
    let mut sent = first[0].clone();
    sent.attempts = 2;
    outbox.update(&sent).await.unwrap();
    let again = vec![
        delivery(1, 0, a),
        delivery(2, 0, b),
        delivery(3, 0, a),
        delivery(4, 0, b),
        delivery(5, 0, a),
        delivery(5, 1, b),
    ];
    assert_eq!(outbox.commit_routed(5, again).await.unwrap(), 3);
    assert_eq!(outbox.cursor().await.unwrap(), 5);
    assert_eq!(outbox.get(&first[0].id).await.unwrap().unwrap().attempts, 2);
    // The cursor only moves forward (a stale dispatcher cannot move it back).
    assert_eq!(outbox.commit_routed(4, vec![]).await.unwrap(), 0);
    assert_eq!(outbox.cursor().await.unwrap(), 5);
    // An event routed to nothing still moves the cursor.
    assert_eq!(outbox.commit_routed(6, vec![]).await.unwrap(), 0);
    assert_eq!(outbox.cursor().await.unwrap(), 6);

    // Pending: oldest key first; per URL only the head.
    let all = outbox.pending(100, false).await.unwrap();
    assert_eq!(
        keys(&all),
        vec![(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (5, 1)]
    );
    assert_eq!(all[0].url, a);
    assert_eq!(all[0].next_attempt, Timestamp::from_micros(1_001));
    assert_eq!(
        keys(&outbox.pending(2, false).await.unwrap()),
        vec![(1, 0), (2, 0)]
    );
    assert_eq!(
        keys(&outbox.pending(100, true).await.unwrap()),
        vec![(1, 0), (2, 0)]
    );
    assert_eq!(keys(&outbox.pending(1, true).await.unwrap()), vec![(1, 0)]);
    assert!(outbox.pending(0, true).await.unwrap().is_empty());

    // Delivering a's head moves a's head on; b's stays.
    let now = Timestamp::from_micros(10_000_000);
    let mut d1 = outbox.get(&first[0].id).await.unwrap().unwrap();
    d1.status = DeliveryStatus::Delivered;
    d1.finished = Some(now);
    outbox.update(&d1).await.unwrap();
    assert_eq!(
        keys(&outbox.pending(100, true).await.unwrap()),
        vec![(2, 0), (3, 0)]
    );
    // A retry later: next_attempt is what the scheduler sees.
    let mut d2 = outbox.get(&first[1].id).await.unwrap().unwrap();
    d2.attempts = 1;
    d2.next_attempt = Timestamp::from_micros(5_000_000);
    outbox.update(&d2).await.unwrap();
    let heads = outbox.pending(100, true).await.unwrap();
    assert_eq!(heads[0].next_attempt, Timestamp::from_micros(5_000_000));
    // Failing all of b empties b.
    for id in [
        first[1].id.clone(),
        DeliveryId::derive(4, 0, b),
        DeliveryId::derive(5, 1, b),
    ] {
        let mut d = outbox.get(&id).await.unwrap().unwrap();
        d.status = DeliveryStatus::Failed;
        d.finished = Some(now);
        outbox.update(&d).await.unwrap();
    }
    assert_eq!(
        keys(&outbox.pending(100, true).await.unwrap()),
        vec![(3, 0)]
    );
    assert_eq!(
        keys(&outbox.pending(100, false).await.unwrap()),
        vec![(3, 0), (5, 0)]
    );
    // Redelivery: back to pending.
    let mut d4 = outbox
        .get(&DeliveryId::derive(4, 0, b))
        .await
        .unwrap()
        .unwrap();
    d4.status = DeliveryStatus::Pending;
    d4.finished = None;
    outbox.update(&d4).await.unwrap();
    assert_eq!(
        keys(&outbox.pending(100, true).await.unwrap()),
        vec![(3, 0), (4, 0)]
    );

    // Update of an unknown entry does nothing.
    let ghost = delivery(99, 0, a);
    outbox.update(&ghost).await.unwrap();
    assert!(outbox.get(&ghost.id).await.unwrap().is_none());

    // List: newest first, pages, filters.
    let everything = DeliveryFilter::default();
    let page = outbox
        .list(
            &everything,
            &PageRequest {
                before: None,
                limit: 4,
            },
        )
        .await
        .unwrap();
    let listed: Vec<(u64, u32)> = page.items.iter().map(|d| (d.event_id, d.index)).collect();
    assert_eq!(listed, vec![(5, 1), (5, 0), (4, 0), (3, 0)]);
    assert_eq!(
        page.next,
        Some(DeliveryKey {
            event_id: 3,
            index: 0
        })
    );
    let rest = outbox
        .list(
            &everything,
            &PageRequest {
                before: page.next,
                limit: 4,
            },
        )
        .await
        .unwrap();
    let listed: Vec<(u64, u32)> = rest.items.iter().map(|d| (d.event_id, d.index)).collect();
    assert_eq!(listed, vec![(2, 0), (1, 0)]);
    assert_eq!(rest.next, None);
    let failed = DeliveryFilter {
        status: Some(DeliveryStatus::Failed),
        ..Default::default()
    };
    let got = outbox.list(&failed, &PageRequest::default()).await.unwrap();
    assert_eq!(got.items.len(), 2);
    let of5 = DeliveryFilter {
        event_id: Some(5),
        ..Default::default()
    };
    let got = outbox.list(&of5, &PageRequest::default()).await.unwrap();
    assert_eq!(got.items.len(), 2);
    let of5_before = outbox
        .list(
            &of5,
            &PageRequest {
                before: Some(DeliveryKey {
                    event_id: 5,
                    index: 1,
                }),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(of5_before.items.len(), 1);
    assert_eq!(of5_before.items[0].index, 0);
    let to_a = DeliveryFilter {
        url: Some(a.into()),
        ..Default::default()
    };
    assert_eq!(
        outbox
            .list(&to_a, &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    // Prune: delivered (1/0) and failed (2/0, 5/1) finished at `now`.
    let keep = Retention::default();
    assert_eq!(outbox.prune(&keep, now).await.unwrap(), 0);
    let none_delivered = Retention {
        delivered_max_count: 0,
        ..Retention::default()
    };
    assert_eq!(outbox.prune(&none_delivered, now).await.unwrap(), 1);
    assert!(outbox.get(&first[0].id).await.unwrap().is_none());
    let later = now.saturating_add(Duration::from_secs(8 * 24 * 3600));
    assert_eq!(outbox.prune(&keep, later).await.unwrap(), 2);
    let left: Vec<(u64, u32)> = outbox
        .list(&everything, &PageRequest::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| (d.event_id, d.index))
        .collect();
    assert_eq!(left, vec![(5, 0), (4, 0), (3, 0)]);
    // Pending entries are never pruned; indexes still agree.
    assert_eq!(
        keys(&outbox.pending(100, false).await.unwrap()),
        vec![(3, 0), (4, 0), (5, 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_standalone() {
    let redis = Redis::start(&[]);
    let shared = connect(&redis).await;
    journal_suite(&shared.event_stores()).await;
    outbox_suite(&shared.event_stores()).await;
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(
        keys.lines().all(|k| k.starts_with("pier:{events}:")),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_redis_cluster() {
    let cluster = ClusterSet::start();
    let shared = Shared::connect(RedisConfig::new(RedisMode::Cluster {
        nodes: cluster.addrs(),
    }))
    .await
    .unwrap();
    journal_suite(&shared.event_stores()).await;
    outbox_suite(&shared.event_stores()).await;
}

/// A webhook receiver recording `(idempotency key, event id)` of each request.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let key = h("idempotency-key");
                            let event: u64 = h("x-pier-event-id").parse().unwrap_or(0);
                            let _ = req.into_body().collect().await;
                            rec.lock().unwrap().push((key, event));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap().clone()
    }

    /// Distinct event ids received.
    fn events(&self) -> HashSet<u64> {
        self.seen().into_iter().map(|(_, e)| e).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config() -> EventsConfig {
    EventsConfig {
        source: "http://pier.test".into(),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        poll_interval: Some(Duration::from_millis(100)),
        ..EventsConfig::default()
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every request's key is the deterministic delivery id of its event.
fn check_keys(seen: &[(String, u64)], url: &str) {
    for (key, event) in seen {
        assert_eq!(
            key,
            DeliveryId::derive(*event, 0, url).as_str(),
            "event {event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_event() {
    let redis = Redis::start(&[]);
    let rx = Receiver::start().await;
    let router = Arc::new(WebhookRouter {
        urls: vec![rx.url()],
    });
    let first = Events::start(
        connect(&redis).await.event_stores(),
        router.clone(),
        config(),
    )
    .unwrap();
    let mut published = Vec::new();
    for n in 0..100 {
        published.push(first.publish(draft(n)).await.unwrap().id);
    }
    // A crash: tasks gone mid-work, nothing flushed or released.
    drop(first);
    let before = rx.seen().len();

    let second = Events::start(connect(&redis).await.event_stores(), router, config()).unwrap();
    let want: HashSet<u64> = published.iter().copied().collect();
    wait_for("every event delivered", || rx.events() == want).await;
    let seen = rx.seen();
    check_keys(&seen, &rx.url());
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for (k, _) in &seen {
        *per_key.entry(k.as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), 100);
    eprintln!(
        "delivered before the crash: {before}; requests in all: {}",
        seen.len()
    );
    let delivered = DeliveryFilter {
        status: Some(DeliveryStatus::Delivered),
        ..Default::default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let page = second
            .deliveries(
                &delivered,
                &PageRequest {
                    before: None,
                    limit: 1000,
                },
            )
            .await
            .unwrap();
        if page.items.len() == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "log shows {}", page.items.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_event_once() {
    let redis = Redis::start(&[]);
    let rx = Receiver::start().await;
    let router = Arc::new(WebhookRouter {
        urls: vec![rx.url()],
    });
    let ttl = Duration::from_millis(800);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let shared = connect(&redis).await;
        let events =
            Arc::new(Events::publisher(shared.event_stores(), router.clone(), config()).unwrap());
        let leader = EventsLeader::spawn(shared, Arc::downgrade(&events), ttl);
        nodes.push((events, Some(leader)));
    }
    wait_for("a leader", || {
        nodes
            .iter()
            .filter(|(_, l)| l.as_ref().unwrap().is_leading())
            .count()
            == 1
    })
    .await;

    // Both nodes publish at once.
    let mut tasks = Vec::new();
    for (events, _) in &nodes {
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                ids.push(events.publish(draft(n)).await.unwrap().id);
            }
            ids
        }));
    }
    let mut want = HashSet::new();
    for t in tasks {
        want.extend(t.await.unwrap());
    }
    assert_eq!(want.len(), 100);
    wait_for("every event delivered", || rx.events() == want).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen().len(), 100, "each event delivered once");
    // Only one node ever led.
    assert_eq!(
        nodes
            .iter()
            .filter(|(_, l)| l.as_ref().unwrap().is_leading())
            .count(),
        1
    );

    // The leader's node dies: the other takes over once the lease expires.
    let i = nodes
        .iter()
        .position(|(_, l)| l.as_ref().unwrap().is_leading())
        .unwrap();
    let (dead, leader) = nodes.remove(i);
    drop(leader);
    drop(dead);
    let (events, leader) = &nodes[0];
    for n in 0..20 {
        want.insert(events.publish(draft(n)).await.unwrap().id);
    }
    wait_for("the other node takes over", || rx.events() == want).await;
    assert!(leader.as_ref().unwrap().is_leading());
    check_keys(&rx.seen(), &rx.url());
    assert_eq!(rx.seen().len(), 120, "no event delivered twice");

    // A graceful stop releases the lease at once.
    let shared = connect(&redis).await;
    let (events, leader) = nodes.pop().unwrap();
    leader.unwrap().stop().await;
    assert_eq!(
        shared
            .lease_holder(pier_cluster::DISPATCHER_LEASE)
            .await
            .unwrap(),
        None
    );
    drop(events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_the_lease_stops_delivering() {
    let redis = Redis::start(&[]);
    let rx = Receiver::start().await;
    let router = Arc::new(WebhookRouter {
        urls: vec![rx.url()],
    });
    let shared = connect(&redis).await;
    let events =
        Arc::new(Events::publisher(shared.event_stores(), router.clone(), config()).unwrap());
    let leader = EventsLeader::spawn(
        shared.clone(),
        Arc::downgrade(&events),
        Duration::from_millis(800),
    );
    wait_for("leading", || leader.is_leading()).await;
    let first = events.publish(draft(1)).await.unwrap().id;
    wait_for("delivered", || rx.events().contains(&first)).await;

    // Someone else holds the lease now (it expired and another node took it).
    let lease = "pier:lease:events-dispatcher";
    redis.cli(&["SET", lease, "other", "PX", "60000"]);
    wait_for("stepped down", || !leader.is_leading()).await;
    let second = events.publish(draft(2)).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!rx.events().contains(&second), "a follower delivered");

    // The other node is gone: this one takes over and delivers what waited.
    redis.cli(&["DEL", lease]);
    wait_for("leading again", || leader.is_leading()).await;
    wait_for("delivered after take-over", || {
        rx.events().contains(&second)
    })
    .await;
    assert_eq!(rx.seen().len(), 2);
    leader.stop().await;
}
