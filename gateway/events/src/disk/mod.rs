//! The disk backend: one directory holding the journal and the outbox.
//!
//! ```text
//! <dir>/LOCK                                  held (flock) while open: one process per directory
//! <dir>/journal/<first id, 20 digits>.log     journal segments, one event per record
//! <dir>/outbox/outbox.log                     outbox records: put / remove / cursor
//! <dir>/outbox/outbox.log.tmp                 a compaction in progress (deleted on open)
//! ```
//!
//! Every file is a sequence of records `len: u32 LE | crc32(payload): u32 LE | payload`,
//! the payload being JSON: an [`crate::Event`] in the journal; `{"op":"put","entry":
//! <Delivery>}`, `{"op":"remove","id":…}` or `{"op":"cursor","through":<event id>}` in
//! the outbox (the last record for an id wins). On open, a file is read up to the first
//! short or checksum-failing record and the last segment and the outbox log are
//! truncated there (a torn tail from a crash mid-write, never acknowledged).
//!
//! Durability points (fsync):
//! - **publish**: the journal writer thread writes every append waiting for it in one
//!   `write` and one `fdatasync` (group commit), and answers only then. A new segment
//!   (after 16 MiB by default) is created and its directory fsynced before use.
//! - **routing**: the deliveries of a batch of events and the new cursor go in one
//!   write + `fdatasync`, so they land together or (torn) the events are routed again,
//!   yielding the same delivery ids, which the outbox keeps once.
//! - **delivery state** (attempts, delivered, failed, redeliver, prune) is written
//!   without its own fsync (the next synced write or the OS flushes it): a crash may
//!   forget it, so an entry is sent again with the same idempotency key.
//! - **compaction** (when the log has > 1000 + 2 × live records): snapshot to
//!   `outbox.log.tmp`, fsync, rename over `outbox.log`, fsync the directory. After a
//!   failed write the outbox refuses appends until such a snapshot succeeds, so the log
//!   never misses a change it acknowledged.
//!
//! Journal segments whose events are all at or below the outbox cursor are deleted.

mod frame;
mod journal;
mod outbox;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use journal::DiskJournal;
pub use outbox::DiskOutbox;

use crate::EventsError;
use crate::store::Stores;

/// Tuning of the disk backend.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// A journal segment is closed once it is this large.
    pub segment_bytes: u64,
    /// How long `open` waits for another holder of the directory's lock (a previous
    /// instance still shutting down) before failing with [`EventsError::Locked`].
    pub lock_wait: Duration,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            segment_bytes: 16 * 1024 * 1024,
            lock_wait: Duration::from_secs(10),
        }
    }
}

/// The exclusive lock on a directory, held until the last writer thread ends.
pub(crate) struct LockFile(#[allow(dead_code)] File);

/// Requests a writer thread takes in one write + fsync, at most.
const MAX_BATCH: usize = 4096;

/// A writer thread's loop: waits for a request, takes every other one already waiting (up
/// to [`MAX_BATCH`]) and hands the batch to `commit` (group commit); ends when every sender
/// is gone.
pub(crate) fn run_batches<T>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    mut commit: impl FnMut(&mut Vec<T>),
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        commit(&mut batch);
        batch.clear();
    }
}

pub(crate) fn io_err(context: String, source: io::Error) -> EventsError {
    EventsError::Io { context, source }
}

/// Opens (or creates) the store in `dir` with default options. Blocking file I/O: call
/// it at startup (or from `spawn_blocking`), inside a tokio runtime.
pub fn open(dir: impl AsRef<Path>) -> Result<Stores, EventsError> {
    open_with(dir, DiskOptions::default())
}

pub fn open_with(dir: impl AsRef<Path>, options: DiskOptions) -> Result<Stores, EventsError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
    let lock_path = dir.join("LOCK");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err(format!("opening {}", lock_path.display()), e))?;
    let deadline = Instant::now() + options.lock_wait;
    loop {
        match lock_file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => return Err(EventsError::Locked(dir.to_owned())),
            Err(TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", lock_path.display()), e));
            }
        }
    }
    let lock = Arc::new(LockFile(lock_file));
    let outbox = DiskOutbox::open(&dir.join("outbox"), lock.clone())?;
    let cursor = outbox.cursor_now();
    let journal = DiskJournal::open(&dir.join("journal"), cursor, options.segment_bytes, lock)?;
    Ok(Stores {
        journal: Arc::new(journal),
        outbox: Arc::new(outbox),
    })
}
