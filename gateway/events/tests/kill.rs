//! A real `kill -9`: a child process (this test binary again, running the same test with
//! the child's variables set) publishes events with the receiver down and is killed; the
//! parent reopens the directory and gets them all.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Receiver, draft, wait_until};
use pier_events::{Events, EventsConfig, WebhookRouter};

const N: usize = 50;
const DIR_VAR: &str = "PIER_EVENTS_KILL_DIR";
const URL_VAR: &str = "PIER_EVENTS_KILL_URL";

fn config() -> EventsConfig {
    EventsConfig {
        source: "http://pier.test".into(),
        signing_secret: Some(b"k".to_vec()),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        tls_roots: Some(rustls::RootCertStore::empty()),
        ..EventsConfig::default()
    }
}

/// The child's side: this test binary started again by the test below with the directory
/// and the receiver's URL in its environment. Publishes, says so, waits to be killed.
fn child_publishes_then_waits_to_be_killed(dir: &str, url: String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let router = Arc::new(WebhookRouter { urls: vec![url] });
        let events = Arc::new(Events::open_dir(dir, router, config()).unwrap());
        let mut tasks = Vec::new();
        for n in 0..N {
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                events.publish(draft(n)).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Every push is answered: now the parent kills us.
        println!("PUBLISHED");
        std::future::pending::<()>().await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_push_and_delivery_loses_nothing() {
    // One test in two processes: started with the variables set, this is the child.
    if let (Ok(dir), Ok(url)) = (std::env::var(DIR_VAR), std::env::var(URL_VAR)) {
        // The runtime this test runs in cannot block on another: a thread of its own.
        std::thread::spawn(move || child_publishes_then_waits_to_be_killed(&dir, url))
            .join()
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = Receiver::unused_addr();
    let url = format!("http://{addr}/hook");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_between_push_and_delivery_loses_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir.path())
        .env(URL_VAR, &url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("PUBLISHED"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the child publishes in time")
        .unwrap();
    assert!(ready, "the child published");
    tokio::time::sleep(Duration::from_millis(50)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let rx = Receiver::start_on(addr).await;
    let events = Events::open_dir(
        dir.path(),
        Arc::new(WebhookRouter { urls: vec![url] }),
        config(),
    )
    .unwrap();
    wait_until("every event", Duration::from_secs(30), async || {
        let ids: HashSet<u64> = rx.requests().iter().map(|r| r.event_id()).collect();
        ids.len() == N
    })
    .await;
    let mut keys: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in rx.requests() {
        keys.entry(r.event_id()).or_default().insert(r.key());
    }
    assert_eq!(
        keys.keys().copied().collect::<HashSet<_>>(),
        (1..=N as u64).collect::<HashSet<_>>()
    );
    assert!(
        keys.values().all(|k| k.len() == 1),
        "duplicates share the key"
    );
    events.shutdown().await;
}
