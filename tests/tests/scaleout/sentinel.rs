//! Redis under Sentinel: the master is killed with SIGKILL in the middle of a stream of
//! skopeo pushes through the load balancer. Sentinel promotes the replica; a push that
//! fails meanwhile is retried like a CI client would (bounded, with a short sleep) and
//! succeeds; every image pushed is then served by each node exactly; and the nodes follow
//! the new master: all three are subscribed to the change bus on it, and a tag moved
//! through one node is seen at once by the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{ACCEPT_MANIFESTS, http, push_image};

use crate::clients_support::*;
use crate::cluster::Cluster;
use crate::mirror_support::assert_layout_is;
use crate::support::*;

/// Concurrent skopeo clients.
const PUSHERS: usize = 2;
/// Upper bound on images pushed in all (the loop normally stops well before).
const MAX_IMAGES: usize = 32;
/// Attempts per push (the first included), with [`RETRY_SLEEP`] between them.
const ATTEMPTS: u32 = 6;
const RETRY_SLEEP: Duration = Duration::from_secs(1);
/// Pushes that must *start* after the new master is known before the loop stops.
const PUSHES_AFTER_FAILOVER: usize = 2;
/// The pub/sub channel registry changes are announced on (`pier-server`'s
/// `CHANGES_CHANNEL` under the default key prefix).
const CHANGES_CHANNEL: &str = "pier:bus:registry-changes";

/// One image pushed by the loop.
struct Pushed {
    repo: String,
    img: TestImage,
    /// Since the loop started.
    started: Duration,
    ended: Duration,
    /// What each failed attempt printed (the last lines).
    failures: Vec<String>,
    ok: bool,
}

/// Pushes fresh images (a layer of 3 MiB and more, and a small one) with skopeo through
/// the load balancer until `stop` or [`MAX_IMAGES`], retrying a failed push.
fn push_loop(
    lb: String,
    t0: Instant,
    next: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<Pushed> {
    let sk = Skopeo::new();
    let mut pushed = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= MAX_IMAGES {
            break;
        }
        let img = big_image("v1", &[(6 << 20) + i * 4099, 200 << 10]);
        let src = oci_source(&sk, &img, &format!("img{i}"));
        let repo = format!("team/failover-{i}");
        let dest = format!("docker://{lb}/{repo}:v1");
        let started = t0.elapsed();
        in_flight.fetch_add(1, Ordering::SeqCst);
        let mut failures = Vec::new();
        let ok = loop {
            let o = sk.run(&["copy", "--dest-tls-verify=false", &src, &dest]);
            if o.success() {
                break true;
            }
            failures.push(format!(
                "attempt {} failed at {:.1?}:\n{}",
                failures.len() + 1,
                t0.elapsed(),
                tail(&o.all(), 6)
            ));
            if failures.len() as u32 >= ATTEMPTS {
                break false;
            }
            thread::sleep(RETRY_SLEEP);
        };
        in_flight.fetch_sub(1, Ordering::SeqCst);
        pushed.push(Pushed {
            repo,
            img,
            started,
            ended: t0.elapsed(),
            failures,
            ok,
        });
        done.fetch_add(1, Ordering::SeqCst);
        if !ok {
            break;
        }
    }
    pushed
}

fn digest_of_tag(addr: std::net::SocketAddr, repo: &str, tag: &str) -> Option<String> {
    let r = http::request(
        addr,
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    );
    (r.status == 200).then(|| {
        r.header("docker-content-digest")
            .unwrap_or_default()
            .to_owned()
    })
}

/// `PUBSUB NUMSUB channel` on the server at `port`.
fn subscribers(port: u16, channel: &str) -> Option<u32> {
    let o = run(
        std::process::Command::new(require_bin("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["pubsub", "numsub", channel]),
        Duration::from_secs(10),
    );
    o.success()
        .then(|| o.stdout.lines().nth(1)?.trim().parse().ok())
        .flatten()
}

#[test]
fn sentinel_master_killed_during_pushes_fails_over_and_nothing_is_lost() {
    let mut c = timed("cluster start (redis under sentinel)", || {
        Cluster::builder().sentinel().start()
    });
    let old_master = c.redis_master_port();
    assert_eq!(
        old_master, c.redis_port,
        "the first master is the one started as master"
    );
    assert!(
        poll(Duration::from_secs(5), || subscribers(
            old_master,
            CHANGES_CHANNEL
        ) == Some(3)),
        "not every node subscribed to the change bus on the first master (:{old_master} counts {:?})",
        subscribers(old_master, CHANGES_CHANNEL)
    );

    // The push loop.
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|_| {
            let (lb, next, done, in_flight, stop) = (
                c.lb_host(),
                next.clone(),
                done.clone(),
                in_flight.clone(),
                stop.clone(),
            );
            thread::spawn(move || push_loop(lb, t0, next, done, in_flight, stop))
        })
        .collect();

    // Kill the master once two pushes are through and others are under way (100 ms in).
    assert!(
        poll(Duration::from_secs(120), || done.load(Ordering::SeqCst)
            >= 2
            && in_flight.load(Ordering::SeqCst) == PUSHERS),
        "the first pushes did not complete in 120 s\n{}",
        c.logs(30)
    );
    thread::sleep(Duration::from_millis(100));
    let killed = c.kill9_redis_master();
    let killed_at = t0.elapsed();
    assert_eq!(killed, old_master);
    let (new_master, failover) = c.wait_for_new_redis_master(killed, Duration::from_secs(30));
    let failed_over_at = t0.elapsed();
    eprintln!(
        "[scaleout] redis master :{killed} killed {killed_at:.1?} into the push loop; sentinel named :{new_master} after {failover:.1?}"
    );
    assert_ne!(new_master, killed, "the new master is another server");

    // Let pushes start (and end) after the failover, then stop the loop.
    let started_after = next.load(Ordering::SeqCst);
    assert!(
        poll(Duration::from_secs(180), || {
            done.load(Ordering::SeqCst) >= started_after + PUSHES_AFTER_FAILOVER
                || next.load(Ordering::SeqCst) >= MAX_IMAGES
        }),
        "pushes stalled after the failover\n{}",
        c.logs(30)
    );
    stop.store(true, Ordering::SeqCst);
    let pushed: Vec<Pushed> = pushers
        .into_iter()
        .flat_map(|t| t.join().expect("push thread"))
        .collect();

    let mut report = String::new();
    for p in &pushed {
        report.push_str(&format!(
            "  {}: {:.1?}..{:.1?}, {} failed attempt(s){}\n",
            p.repo,
            p.started,
            p.ended,
            p.failures.len(),
            if p.ok { "" } else { ", GAVE UP" }
        ));
        for f in &p.failures {
            report.push_str(&format!("    {}\n", f.replace('\n', "\n    ")));
        }
    }
    eprintln!(
        "[scaleout] {} pushes ({} retried); master killed at {killed_at:.1?}, new master known at {failed_over_at:.1?}:\n{report}",
        pushed.len(),
        pushed.iter().filter(|p| !p.failures.is_empty()).count()
    );
    assert!(
        pushed.iter().all(|p| p.ok),
        "a push failed {ATTEMPTS} times\n{report}\n{}",
        c.logs(40)
    );
    assert!(
        pushed
            .iter()
            .any(|p| p.started < killed_at && p.ended > killed_at),
        "no push was under way when the master was killed\n{report}"
    );
    assert!(
        pushed.iter().filter(|p| p.started > failed_over_at).count() >= PUSHES_AFTER_FAILOVER
            || pushed.len() == MAX_IMAGES,
        "too few pushes after the failover\n{report}"
    );

    // Nothing lost: every image, from every node, byte for byte.
    let sk = Skopeo::new();
    timed(
        &format!("pull back {} images from each node", pushed.len()),
        || {
            for p in &pushed {
                for node in &c.nodes {
                    let reference = format!("{}/{}:v1", node.host(), p.repo);
                    assert_eq!(
                        inspect_raw_digest(&sk, &reference),
                        p.img.manifest_digest,
                        "manifest digest of {} from node{}",
                        p.repo,
                        node.n
                    );
                    let name = format!("{}-node{}", p.repo.replace('/', "-"), node.n);
                    let out = sk.pull_to_oci(&format!("docker://{reference}"), &name);
                    assert_layout_is(&out, &p.img, &format!("{} from node{}", p.repo, node.n));
                }
            }
        },
    );
    assert!(
        poll(Duration::from_secs(10), || !c.has_upload_keys()),
        "upload session keys left in the bucket after every push completed"
    );

    // The nodes follow the new master: all three are subscribed to the change bus there...
    assert!(
        poll(Duration::from_secs(10), || subscribers(
            new_master,
            CHANGES_CHANNEL
        ) == Some(3)),
        "the nodes did not all resubscribe on the new master (:{new_master} counts {:?})\n{}",
        subscribers(new_master, CHANGES_CHANNEL),
        c.logs(40)
    );
    // ...and a change published after the failover reaches the others' tag caches at once
    // (well before their 5 s TTL).
    let (n1, n2, n3) = (c.node(0).addr, c.node(1).addr, c.node(2).addr);
    let repo = "team/after-failover";
    let v1 = push_image(n1, repo, Some("latest"), &[b"before the move"]);
    for n in [n2, n3] {
        assert_eq!(
            digest_of_tag(n, repo, "latest").as_deref(),
            Some(v1.digest.as_str())
        );
    }
    let v2 = push_image(n1, repo, Some("latest"), &[b"after the move"]);
    assert_ne!(v1.digest, v2.digest);
    for (name, n) in [("node2", n2), ("node3", n3)] {
        let t = Instant::now();
        assert!(
            poll(Duration::from_secs(2), || digest_of_tag(n, repo, "latest")
                .as_deref()
                == Some(v2.digest.as_str())),
            "{name} still answers the old digest of a tag moved through node1 after the failover\n{}",
            c.logs(40)
        );
        eprintln!(
            "[scaleout] tag moved through node1 seen by {name} after {:.0?}",
            t.elapsed()
        );
    }
    // And the logs say so: each node renewed its subscription.
    for node in &c.nodes {
        let log = node.log_text();
        assert!(
            log.contains("bus subscription renewed"),
            "node{} never renewed its bus subscription\n{}",
            node.n,
            node.log_tail(40)
        );
    }
    eprintln!(
        "[scaleout] node log lines about redis:\n{}",
        c.nodes
            .iter()
            .flat_map(|n| {
                n.log_text()
                    .lines()
                    .filter(|l| {
                        !l.contains("pier::access")
                            && (l.to_ascii_lowercase().contains("redis")
                                || l.contains("bus subscription"))
                    })
                    .map(|l| format!("node{}: {l}", n.n))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_blob_store_consistent(&c.s3_root());
}
