//! The disk outbox: the entries live in memory and every change is appended to
//! `outbox.log` as a framed record (`put` an entry, `remove` one, move the `cursor`).
//! When the log holds many more records than live entries it is compacted: a snapshot
//! is written to `outbox.log.tmp`, fsynced and renamed over the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::frame::{self, frame};
use super::{LockFile, io_err};
use crate::EventsError;
use crate::delivery::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryKey, DeliveryPage, DeliveryStatus, PageRequest,
    PendingDelivery, Retention,
};
use crate::event::Timestamp;
use crate::store::Outbox;

const LOG: &str = "outbox.log";
const TMP: &str = "outbox.log.tmp";

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum RecordRef<'a> {
    Cursor { through: u64 },
    Put { entry: &'a Delivery },
    Remove { id: &'a DeliveryId },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Cursor { through: u64 },
    Put { entry: Delivery },
    Remove { id: DeliveryId },
}

fn push(record: RecordRef<'_>, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(&record).expect("an outbox record always serializes");
    frame(&json, out);
}

#[derive(Default)]
struct State {
    cursor: u64,
    entries: BTreeMap<DeliveryKey, Delivery>,
    keys: HashMap<DeliveryId, DeliveryKey>,
    pending: BTreeSet<DeliveryKey>,
    /// The pending keys of each URL.
    pending_by_url: HashMap<String, BTreeSet<DeliveryKey>>,
    /// Records in the log since it was last written whole.
    records: usize,
}

impl State {
    fn put(&mut self, entry: Delivery) {
        let key = entry.key();
        if let Some(old) = self.keys.insert(entry.id.clone(), key)
            && old != key
        {
            self.entries.remove(&old);
            self.pending.remove(&old);
        }
        if entry.status == DeliveryStatus::Pending {
            self.pending.insert(key);
            self.pending_by_url
                .entry(entry.url.clone())
                .or_default()
                .insert(key);
        } else if self.pending.remove(&key) {
            self.unlist_pending(&entry.url, key);
        }
        self.entries.insert(key, entry);
    }

    fn unlist_pending(&mut self, url: &str, key: DeliveryKey) {
        if let Some(keys) = self.pending_by_url.get_mut(url) {
            keys.remove(&key);
            if keys.is_empty() {
                self.pending_by_url.remove(url);
            }
        }
    }

    fn remove(&mut self, id: &DeliveryId) {
        if let Some(key) = self.keys.remove(id)
            && let Some(entry) = self.entries.remove(&key)
            && self.pending.remove(&key)
        {
            self.unlist_pending(&entry.url, key);
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        push(
            RecordRef::Cursor {
                through: self.cursor,
            },
            &mut out,
        );
        for entry in self.entries.values() {
            push(RecordRef::Put { entry }, &mut out);
        }
        out
    }

    fn wants_compaction(&self) -> bool {
        self.records > 1000 + 2 * self.entries.len()
    }
}

enum WriteReq {
    Append {
        bytes: Vec<u8>,
        sync: bool,
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// Replace the whole log with this snapshot.
    Compact {
        bytes: Vec<u8>,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// The disk [`Outbox`]; see the module doc of [`crate::disk`] for the format.
pub struct DiskOutbox {
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<WriteReq>,
    /// Set by the writer after a failed write: the next change writes a snapshot.
    needs_compaction: Arc<AtomicBool>,
}

impl DiskOutbox {
    pub(crate) fn open(dir: &Path, lock: Arc<LockFile>) -> Result<DiskOutbox, EventsError> {
        fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        let path = dir.join(LOG);
        let _ = fs::remove_file(dir.join(TMP));
        let mut state = State::default();
        match frame::scan(&path) {
            Ok(scan) => {
                if scan.torn_bytes > 0 {
                    warn!(log = %path.display(), bytes = scan.torn_bytes, "truncating a torn outbox tail");
                    frame::truncate(&path, scan.valid_len)
                        .map_err(|e| io_err(format!("truncating {}", path.display()), e))?;
                }
                for record in &scan.records {
                    match serde_json::from_slice::<Record>(record) {
                        Ok(Record::Cursor { through }) => state.cursor = state.cursor.max(through),
                        Ok(Record::Put { entry }) => state.put(entry),
                        Ok(Record::Remove { id }) => state.remove(&id),
                        Err(e) => {
                            error!(log = %path.display(), error = %e, "unreadable outbox record skipped")
                        }
                    }
                }
                state.records = scan.records.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("reading {}", path.display()), e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
        frame::sync_dir(dir).map_err(|e| io_err(format!("syncing {}", dir.display()), e))?;
        debug!(dir = %dir.display(), cursor = state.cursor, entries = state.entries.len(), pending = state.pending.len(), "outbox opened");

        let needs_compaction = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            file,
            dir: dir.to_owned(),
            failed: false,
            flag: needs_compaction.clone(),
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("pier-events-outbox".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err("starting the outbox writer".into(), e))?;
        Ok(DiskOutbox {
            state: Mutex::new(state),
            tx,
            needs_compaction,
        })
    }

    /// The cursor as read from disk (for opening the journal).
    pub(crate) fn cursor_now(&self) -> u64 {
        self.state().cursor
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the records of a change already applied to `state`, in the order of the
    /// changes (the caller holds the state lock), or a snapshot instead when due.
    fn enqueue(
        &self,
        state: &mut State,
        bytes: Vec<u8>,
        records: usize,
        sync: bool,
    ) -> oneshot::Receiver<io::Result<()>> {
        let (reply, rx) = oneshot::channel();
        state.records += records;
        let req = if self.needs_compaction.load(Ordering::Acquire) || state.wants_compaction() {
            let snapshot = state.snapshot();
            state.records = 1 + state.entries.len();
            WriteReq::Compact {
                bytes: snapshot,
                reply,
            }
        } else {
            WriteReq::Append { bytes, sync, reply }
        };
        // A closed channel drops `reply`, which the caller sees as `Closed`.
        let _ = self.tx.send(req);
        rx
    }
}

async fn written(rx: oneshot::Receiver<io::Result<()>>) -> Result<(), EventsError> {
    rx.await
        .map_err(|_| EventsError::Closed)?
        .map_err(|e| io_err("writing the outbox".into(), e))
}

#[async_trait]
impl Outbox for DiskOutbox {
    async fn cursor(&self) -> Result<u64, EventsError> {
        Ok(self.state().cursor)
    }

    async fn pending_count(&self) -> Result<u64, EventsError> {
        Ok(self.state().pending.len() as u64)
    }

    async fn commit_routed(
        &self,
        through: u64,
        entries: Vec<Delivery>,
    ) -> Result<usize, EventsError> {
        let rx = {
            let mut state = self.state();
            let mut bytes = Vec::new();
            let mut added = 0;
            for entry in entries {
                if state.keys.contains_key(&entry.id) {
                    continue;
                }
                push(RecordRef::Put { entry: &entry }, &mut bytes);
                state.put(entry);
                added += 1;
            }
            state.cursor = state.cursor.max(through);
            push(RecordRef::Cursor { through }, &mut bytes);
            let rx = self.enqueue(&mut state, bytes, added + 1, true);
            (rx, added)
        };
        written(rx.0).await?;
        Ok(rx.1)
    }

    async fn update(&self, entry: &Delivery) -> Result<(), EventsError> {
        let rx = {
            let mut state = self.state();
            if !state.keys.contains_key(&entry.id) {
                return Ok(());
            }
            let mut bytes = Vec::new();
            push(RecordRef::Put { entry }, &mut bytes);
            state.put(entry.clone());
            self.enqueue(&mut state, bytes, 1, false)
        };
        written(rx).await
    }

    async fn get(&self, id: &DeliveryId) -> Result<Option<Delivery>, EventsError> {
        let state = self.state();
        Ok(state
            .keys
            .get(id)
            .and_then(|key| state.entries.get(key))
            .cloned())
    }

    async fn pending(
        &self,
        limit: usize,
        oldest_per_url: bool,
    ) -> Result<Vec<PendingDelivery>, EventsError> {
        let state = self.state();
        let keys: Vec<DeliveryKey> = if oldest_per_url {
            let mut heads: Vec<DeliveryKey> = state
                .pending_by_url
                .values()
                .filter_map(|keys| keys.first().copied())
                .collect();
            heads.sort_unstable();
            heads.truncate(limit);
            heads
        } else {
            state.pending.iter().take(limit).copied().collect()
        };
        Ok(keys
            .iter()
            .filter_map(|key| state.entries.get(key))
            .map(PendingDelivery::from)
            .collect())
    }

    async fn list(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<DeliveryPage, EventsError> {
        let state = self.state();
        let range = match page.before {
            Some(before) => state.entries.range(..before),
            None => state.entries.range(..),
        };
        let mut items: Vec<Delivery> = range
            .rev()
            .map(|(_, d)| d)
            .filter(|d| filter.matches(d))
            .take(page.limit.saturating_add(1))
            .cloned()
            .collect();
        let next = if items.len() > page.limit {
            items.truncate(page.limit);
            items.last().map(Delivery::key)
        } else {
            None
        };
        Ok(DeliveryPage { items, next })
    }

    async fn prune(&self, retention: &Retention, now: Timestamp) -> Result<usize, EventsError> {
        let rx = {
            let mut state = self.state();
            let mut doomed = Vec::new();
            let mut delivered_kept = 0usize;
            for entry in state.entries.values().rev() {
                let Some(finished) = entry.finished else {
                    continue;
                };
                let age = finished.until(now);
                let drop = match entry.status {
                    DeliveryStatus::Pending => false,
                    DeliveryStatus::Delivered => {
                        if age > retention.delivered_max_age
                            || delivered_kept >= retention.delivered_max_count
                        {
                            true
                        } else {
                            delivered_kept += 1;
                            false
                        }
                    }
                    DeliveryStatus::Failed => age > retention.failed_max_age,
                };
                if drop {
                    doomed.push(entry.id.clone());
                }
            }
            if doomed.is_empty() {
                return Ok(0);
            }
            let mut bytes = Vec::new();
            for id in &doomed {
                push(RecordRef::Remove { id }, &mut bytes);
                state.remove(id);
            }
            (
                self.enqueue(&mut state, bytes, doomed.len(), false),
                doomed.len(),
            )
        };
        written(rx.0).await?;
        Ok(rx.1)
    }
}

struct Writer {
    file: File,
    dir: PathBuf,
    /// A write failed: appends are refused until a snapshot replaces the log.
    failed: bool,
    flag: Arc<AtomicBool>,
    _lock: Arc<LockFile>,
}

impl Writer {
    fn run(mut self, rx: mpsc::UnboundedReceiver<WriteReq>) {
        super::run_batches(rx, |batch| self.commit(batch.drain(..)));
        debug!("outbox writer stopped");
    }

    fn fail(&mut self, e: &io::Error) {
        error!(error = %e, "outbox write failed; the next change rewrites the log");
        self.failed = true;
        self.flag.store(true, Ordering::Release);
    }

    fn commit(&mut self, batch: impl Iterator<Item = WriteReq>) {
        let mut buf = Vec::new();
        let mut sync = false;
        let mut waiting: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
        for req in batch {
            match req {
                WriteReq::Append {
                    bytes,
                    sync: s,
                    reply,
                } => {
                    if self.failed {
                        let _ = reply.send(Err(io::Error::other("outbox log awaiting rewrite")));
                    } else {
                        buf.extend_from_slice(&bytes);
                        sync |= s;
                        waiting.push(reply);
                    }
                }
                WriteReq::Compact { bytes, reply } => {
                    // The snapshot holds every change queued before it: the buffered
                    // appends are covered by it.
                    buf.clear();
                    sync = false;
                    match self.compact(&bytes) {
                        Ok(()) => {
                            self.failed = false;
                            self.flag.store(false, Ordering::Release);
                            waiting.push(reply);
                        }
                        Err(e) => {
                            self.fail(&e);
                            for r in waiting.drain(..).chain(std::iter::once(reply)) {
                                let _ = r.send(Err(io::Error::new(e.kind(), e.to_string())));
                            }
                        }
                    }
                }
            }
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            self.file
                .write_all(&buf)
                .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) })
        };
        if let Err(e) = &result {
            self.fail(e);
        }
        for r in waiting {
            let _ = r.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    fn compact(&mut self, snapshot: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(TMP);
        let log = self.dir.join(LOG);
        let mut file = File::create(&tmp)?;
        file.write_all(snapshot)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &log)?;
        frame::sync_dir(&self.dir)?;
        self.file = OpenOptions::new().append(true).open(&log)?;
        debug!(bytes = snapshot.len(), "outbox log compacted");
        Ok(())
    }
}
