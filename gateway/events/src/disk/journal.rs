//! The disk journal: segment files of framed event records, one writer thread doing
//! group commit (every append waiting while an fsync runs goes into the next write).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::frame::{self, frame};
use super::{LockFile, io_err};
use crate::EventsError;
use crate::event::Event;
use crate::store::Journal;

struct Segment {
    start: u64,
    path: PathBuf,
}

struct Shared {
    dir: PathBuf,
    /// Stored events above the released mark, by id.
    unprocessed: Mutex<BTreeMap<u64, Event>>,
    /// Segment files, oldest first; the last one is being written.
    segments: Mutex<Vec<Segment>>,
}

struct AppendReq {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<Event>, EventsError>>,
}

/// The disk [`Journal`]; see the module doc of [`crate::disk`] for the format.
pub struct DiskJournal {
    tx: mpsc::UnboundedSender<AppendReq>,
    shared: Arc<Shared>,
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

impl DiskJournal {
    /// Opens (or creates) the journal in `dir`; events up to `cursor` are already processed.
    pub(crate) fn open(
        dir: &Path,
        cursor: u64,
        segment_bytes: u64,
        lock: Arc<LockFile>,
    ) -> Result<DiskJournal, EventsError> {
        fs::create_dir_all(dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        let mut segments = Vec::new();
        let entries =
            fs::read_dir(dir).map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(start) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push(Segment {
                start,
                path: entry.path(),
            });
        }
        segments.sort_by_key(|s| s.start);

        let mut unprocessed = BTreeMap::new();
        let mut max_id = cursor;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            let scan = frame::scan(&seg.path)
                .map_err(|e| io_err(format!("reading {}", seg.path.display()), e))?;
            if scan.torn_bytes > 0 {
                if i + 1 == count {
                    warn!(segment = %seg.path.display(), bytes = scan.torn_bytes, "truncating a torn journal tail");
                    frame::truncate(&seg.path, scan.valid_len)
                        .map_err(|e| io_err(format!("truncating {}", seg.path.display()), e))?;
                } else {
                    error!(segment = %seg.path.display(), bytes = scan.torn_bytes, "corrupt record inside an older journal segment; the rest of it is skipped");
                }
            }
            for record in scan.records {
                match serde_json::from_slice::<Event>(&record) {
                    Ok(event) => {
                        max_id = max_id.max(event.id);
                        if event.id > cursor {
                            unprocessed.insert(event.id, event);
                        }
                    }
                    Err(e) => {
                        error!(segment = %seg.path.display(), error = %e, "unreadable journal record skipped")
                    }
                }
            }
        }
        if let Some(last) = segments.last() {
            max_id = max_id.max(last.start.saturating_sub(1));
        }
        let next_id = max_id + 1;

        if segments.is_empty() {
            let path = dir.join(segment_name(next_id));
            File::create(&path).map_err(|e| io_err(format!("creating {}", path.display()), e))?;
            frame::sync_dir(dir).map_err(|e| io_err(format!("syncing {}", dir.display()), e))?;
            segments.push(Segment {
                start: next_id,
                path,
            });
        }
        let last = segments.last().expect("at least one segment");
        let file = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(|e| io_err(format!("opening {}", last.path.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| io_err(format!("opening {}", last.path.display()), e))?
            .len();
        debug!(dir = %dir.display(), next_id, unprocessed = unprocessed.len(), "journal opened");

        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            unprocessed: Mutex::new(unprocessed),
            segments: Mutex::new(segments),
        });
        shared.release_segments(cursor);

        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            file,
            size,
            next_id,
            segment_bytes,
            poisoned: false,
            shared: shared.clone(),
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("pier-events-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err("starting the journal writer".into(), e))?;
        Ok(DiskJournal { tx, shared })
    }
}

impl Shared {
    /// Deletes the segments whose events are all at or below `through` (never the last).
    fn release_segments(&self, through: u64) {
        let mut segments = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        let mut drop = 0;
        while drop + 1 < segments.len() && segments[drop + 1].start <= through.saturating_add(1) {
            drop += 1;
        }
        for seg in segments.drain(..drop) {
            match fs::remove_file(&seg.path) {
                Ok(()) => debug!(segment = %seg.path.display(), "journal segment released"),
                Err(e) => {
                    warn!(segment = %seg.path.display(), error = %e, "cannot delete a released journal segment")
                }
            }
        }
    }
}

#[async_trait]
impl Journal for DiskJournal {
    async fn append(&self, events: Vec<Event>) -> Result<Vec<Event>, EventsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AppendReq { events, reply })
            .map_err(|_| EventsError::Closed)?;
        rx.await.map_err(|_| EventsError::Closed)?
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventsError> {
        let map = self
            .shared
            .unprocessed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(map
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn release(&self, through: u64) -> Result<(), EventsError> {
        {
            let mut map = self
                .shared
                .unprocessed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let rest = map.split_off(&through.saturating_add(1));
            *map = rest;
        }
        self.shared.release_segments(through);
        Ok(())
    }
}

struct Writer {
    file: File,
    size: u64,
    next_id: u64,
    segment_bytes: u64,
    /// A failed write could not be undone: refuse appends rather than write after garbage.
    poisoned: bool,
    shared: Arc<Shared>,
    _lock: Arc<LockFile>,
}

impl Writer {
    fn run(mut self, rx: mpsc::UnboundedReceiver<AppendReq>) {
        super::run_batches(rx, |batch| self.commit(batch));
        debug!("journal writer stopped");
    }

    fn commit(&mut self, batch: &mut Vec<AppendReq>) {
        if self.poisoned {
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(EventsError::Io {
                    context: "journal append".into(),
                    source: io::Error::other("the journal is unusable after a failed write"),
                }));
            }
            return;
        }
        // The crash tests slow the journal write down here, to prove that a push is
        // answered only after its event is on disk.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("events-journal-write");
        let first_id = self.next_id;
        let mut buf = Vec::new();
        for req in batch.iter_mut() {
            for event in &mut req.events {
                event.id = self.next_id;
                self.next_id += 1;
                let json = serde_json::to_vec(event).expect("an Event always serializes");
                frame(&json, &mut buf);
            }
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.size += buf.len() as u64;
                {
                    let mut map = self
                        .shared
                        .unprocessed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for req in batch.iter() {
                        for event in &req.events {
                            map.insert(event.id, event.clone());
                        }
                    }
                }
                for req in batch.drain(..) {
                    let _ = req.reply.send(Ok(req.events));
                }
                if self.size >= self.segment_bytes {
                    self.roll();
                }
            }
            Err(e) => {
                error!(error = %e, "journal write failed");
                self.next_id = first_id;
                if let Err(e) = self.file.set_len(self.size) {
                    error!(error = %e, "cannot undo a failed journal write; refusing further appends");
                    self.poisoned = true;
                }
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(EventsError::Io {
                        context: "journal append".into(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    }));
                }
            }
        }
    }

    /// Starts a new segment named by the next id.
    fn roll(&mut self) {
        let path = self.shared.dir.join(segment_name(self.next_id));
        let opened = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| frame::sync_dir(&self.shared.dir).map(|()| f));
        match opened {
            Ok(file) => {
                self.file = file;
                self.size = 0;
                self.shared
                    .segments
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Segment {
                        start: self.next_id,
                        path,
                    });
            }
            Err(e) => {
                warn!(segment = %path.display(), error = %e, "cannot start a new journal segment; keeping the current one")
            }
        }
    }
}
