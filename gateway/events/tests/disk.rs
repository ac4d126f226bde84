//! The disk backend through the `Journal` and `Outbox` traits.

use std::time::Duration;

use bytes::Bytes;
use pier_events::disk::{self, DiskOptions};
use pier_events::{
    Delivery, DeliveryFilter, DeliveryRequest, DeliveryStatus, Event, EventDraft, EventKind,
    PageRequest, Retention, Stores, Timestamp,
};

fn event(n: u64) -> Event {
    let draft = EventDraft::new(EventKind::ManifestPulled, "a/b".parse().unwrap())
        .size(n)
        .detail(serde_json::json!({ "n": n }));
    Event::from_draft(draft, Timestamp::from_micros(n), "test".into())
}

fn delivery(event_id: u64, index: u32) -> Delivery {
    Delivery::new(
        event_id,
        index,
        DeliveryRequest {
            url: format!("http://r{index}/hook"),
            headers: vec![],
            body: Bytes::from(format!("{event_id}")),
            refused: None,
        },
        Timestamp::from_micros(event_id),
    )
}

fn reopen(dir: &std::path::Path, stores: Stores) -> Stores {
    drop(stores);
    disk::open(dir).unwrap()
}

#[tokio::test]
async fn journal_assigns_increasing_ids_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let a = stores
        .journal
        .append(vec![event(1), event(2)])
        .await
        .unwrap();
    assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
    let stores = reopen(dir.path(), stores);
    let all = stores.journal.read_after(0, 10).await.unwrap();
    assert_eq!(all, a);
    stores.journal.release(2).await.unwrap();
    assert!(stores.journal.read_after(0, 10).await.unwrap().is_empty());
    let b = stores.journal.append(vec![event(3)]).await.unwrap();
    assert_eq!(b[0].id, 3);
}

#[tokio::test]
async fn released_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        segment_bytes: 1024,
        ..DiskOptions::default()
    };
    let stores = disk::open_with(dir.path(), options.clone()).unwrap();
    for n in 1..=100 {
        stores.journal.append(vec![event(n)]).await.unwrap();
    }
    let segments = || {
        std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .count()
    };
    let before = segments();
    assert!(before > 5, "{before} segments");
    // The outbox cursor is what lets the journal go, across restarts too.
    stores.outbox.commit_routed(50, vec![]).await.unwrap();
    stores.journal.release(50).await.unwrap();
    let after = segments();
    assert!(after < before, "{after} of {before} segments left");
    drop(stores);
    let stores = disk::open_with(dir.path(), options).unwrap();
    let rest = stores.journal.read_after(50, 1000).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.id).collect::<Vec<_>>(),
        (51..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        stores.journal.append(vec![event(0)]).await.unwrap()[0].id,
        101
    );
}

#[tokio::test]
async fn outbox_dedups_rerouted_entries_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let (a, b) = (delivery(1, 0), delivery(1, 1));
    assert_eq!(
        stores
            .outbox
            .commit_routed(1, vec![a.clone(), b.clone()])
            .await
            .unwrap(),
        2
    );
    let mut sent = a.clone();
    sent.status = DeliveryStatus::Delivered;
    sent.attempts = 1;
    stores.outbox.update(&sent).await.unwrap();
    // Routed again (a crash before the cursor moved): same ids, nothing new.
    assert_eq!(
        stores
            .outbox
            .commit_routed(1, vec![a.clone(), b.clone()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(stores.outbox.get(&a.id).await.unwrap().unwrap(), sent);

    let stores = reopen(dir.path(), stores);
    assert_eq!(stores.outbox.cursor().await.unwrap(), 1);
    assert_eq!(stores.outbox.get(&a.id).await.unwrap().unwrap(), sent);
    let pending = stores.outbox.pending(10, false).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, b.id);
    // An update of an entry that is gone does not bring it back.
    let ghost = delivery(9, 0);
    stores.outbox.update(&ghost).await.unwrap();
    assert!(stores.outbox.get(&ghost.id).await.unwrap().is_none());
}

#[tokio::test]
async fn outbox_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let mut d = delivery(1, 0);
    stores
        .outbox
        .commit_routed(1, vec![d.clone()])
        .await
        .unwrap();
    for attempt in 1..=5000 {
        d.attempts = attempt;
        stores.outbox.update(&d).await.unwrap();
    }
    let log = dir.path().join("outbox").join("outbox.log");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 1100 * 400, "log is {size} bytes");
    let stores = reopen(dir.path(), stores);
    assert_eq!(
        stores.outbox.get(&d.id).await.unwrap().unwrap().attempts,
        5000
    );
    assert_eq!(stores.outbox.cursor().await.unwrap(), 1);
}

#[tokio::test]
async fn torn_outbox_tail_is_cut_off() {
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    stores
        .outbox
        .commit_routed(1, vec![delivery(1, 0)])
        .await
        .unwrap();
    drop(stores);
    let stores = disk::open(dir.path()).unwrap();
    let log = dir.path().join("outbox").join("outbox.log");
    let good = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&[7, 0, 0])
        .unwrap();
    let stores = reopen(dir.path(), stores);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), good);
    assert_eq!(stores.outbox.pending(10, false).await.unwrap().len(), 1);
    stores
        .outbox
        .commit_routed(2, vec![delivery(2, 0)])
        .await
        .unwrap();
    let stores = reopen(dir.path(), stores);
    assert_eq!(stores.outbox.pending(10, false).await.unwrap().len(), 2);
    assert_eq!(stores.outbox.cursor().await.unwrap(), 2);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let entries: Vec<Delivery> = (1..=7)
        .flat_map(|e| [delivery(e, 0), delivery(e, 1)])
        .collect();
    stores.outbox.commit_routed(7, entries).await.unwrap();
    let mut seen = Vec::new();
    let mut page = PageRequest {
        before: None,
        limit: 4,
    };
    loop {
        let p = stores
            .outbox
            .list(&DeliveryFilter::default(), &page)
            .await
            .unwrap();
        seen.extend(p.items.iter().map(|d| (d.event_id, d.index)));
        match p.next {
            Some(next) => page.before = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<(u64, u32)> = (1..=7).flat_map(|e| [(e, 0), (e, 1)]).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    let filter = DeliveryFilter {
        url: Some("http://r1/hook".into()),
        event_id: Some(3),
        ..Default::default()
    };
    let p = stores
        .outbox
        .list(&filter, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(p.items.len(), 1);
    assert_eq!((p.items[0].event_id, p.items[0].index), (3, 1));
}

#[tokio::test]
async fn prune_keeps_the_newest_delivered_and_young_failures() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let now = Timestamp::from_micros(1_000_000_000_000);
    let mut entries = Vec::new();
    for e in 1..=6 {
        let mut d = delivery(e, 0);
        d.status = DeliveryStatus::Delivered;
        d.finished = Some(now);
        entries.push(d);
    }
    let mut old_failure = delivery(7, 0);
    old_failure.status = DeliveryStatus::Failed;
    old_failure.finished = Some(Timestamp::from_micros(1));
    let mut new_failure = delivery(8, 0);
    new_failure.status = DeliveryStatus::Failed;
    new_failure.finished = Some(now);
    entries.extend([old_failure.clone(), new_failure.clone(), delivery(9, 0)]);
    stores.outbox.commit_routed(9, entries).await.unwrap();

    let retention = Retention {
        delivered_max_count: 2,
        delivered_max_age: Duration::from_secs(3600),
        failed_max_age: Duration::from_secs(3600),
    };
    assert_eq!(stores.outbox.prune(&retention, now).await.unwrap(), 5);
    let stores = reopen(dir.path(), stores);
    let left = stores
        .outbox
        .list(&DeliveryFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    let ids: Vec<u64> = left.items.iter().map(|d| d.event_id).collect();
    assert_eq!(ids, [9, 8, 6, 5]);
}

#[tokio::test]
async fn a_second_opener_waits_for_the_lock_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _held = disk::open(dir.path()).unwrap();
    let err = disk::open_with(
        dir.path(),
        DiskOptions {
            lock_wait: Duration::from_millis(100),
            ..DiskOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, pier_events::EventsError::Locked(_)), "{err}");
}

#[tokio::test]
async fn pending_heads_are_the_oldest_entry_of_each_url() {
    let dir = tempfile::tempdir().unwrap();
    let stores = disk::open(dir.path()).unwrap();
    let entries: Vec<Delivery> = (1..=3)
        .flat_map(|e| [delivery(e, 0), delivery(e, 1)])
        .collect();
    stores
        .outbox
        .commit_routed(3, entries.clone())
        .await
        .unwrap();
    let keys = |p: Vec<pier_events::PendingDelivery>| {
        p.iter()
            .map(|d| (d.key.event_id, d.key.index))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(stores.outbox.pending(10, true).await.unwrap()),
        [(1, 0), (1, 1)]
    );
    let mut done = entries[0].clone();
    done.status = DeliveryStatus::Delivered;
    stores.outbox.update(&done).await.unwrap();
    assert_eq!(
        keys(stores.outbox.pending(10, true).await.unwrap()),
        [(1, 1), (2, 0)]
    );
    assert_eq!(
        keys(stores.outbox.pending(1, true).await.unwrap()),
        [(1, 1)]
    );
    assert_eq!(stores.outbox.pending(10, false).await.unwrap().len(), 5);
    let stores = reopen(dir.path(), stores);
    assert_eq!(
        keys(stores.outbox.pending(10, true).await.unwrap()),
        [(1, 1), (2, 0)]
    );
}
