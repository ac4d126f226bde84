//! A file read into memory and read again when it changes (checked at most once a
//! second), for the users and robots files that `pier user` / `pier robot` edit while the
//! gateway runs.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use crate::AuthError;

/// What tells a changed file: its modification time, length and inode (an edit that
/// keeps the length within the clock's granularity, such as a new bcrypt hash, still
/// replaces the file, and so its inode).
type Stamp = (SystemTime, u64, u64);

struct Loaded<T> {
    value: T,
    stamp: Option<Stamp>,
    checked: Option<Instant>,
    generation: u64,
}

pub(crate) struct Watched<T> {
    path: PathBuf,
    read: fn(&Path) -> Result<T, AuthError>,
    state: RwLock<Loaded<T>>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    })
}

impl<T> Watched<T> {
    /// Reads the file now (errors are the caller's to report at start-up).
    pub(crate) fn open(
        path: &Path,
        read: fn(&Path) -> Result<T, AuthError>,
    ) -> Result<Self, AuthError> {
        let value = read(path)?;
        Ok(Watched {
            path: path.to_owned(),
            read,
            state: RwLock::new(Loaded {
                value,
                stamp: stamp(path),
                checked: Some(Instant::now()),
                generation: 1,
            }),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since the last look (at most once a second); a
    /// file that no longer parses keeps the last good copy.
    fn refresh(&self) {
        let due = self
            .state
            .read()
            .map(|s| {
                s.checked
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            })
            .unwrap_or(true);
        if !due {
            return;
        }
        let now = stamp(&self.path);
        {
            let Ok(mut s) = self.state.write() else {
                return;
            };
            s.checked = Some(Instant::now());
            if s.stamp == now {
                return;
            }
        }
        match (self.read)(&self.path) {
            Ok(value) => {
                if let Ok(mut s) = self.state.write() {
                    s.value = value;
                    s.stamp = now;
                    s.generation += 1;
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "not reloaded; keeping the last good copy")
            }
        }
    }

    /// Reads the file again now, changed or not: for a change this process has just
    /// written, which the very next request must see.
    pub(crate) fn reload(&self) {
        if let Ok(mut s) = self.state.write() {
            s.checked = None;
            s.stamp = None;
        }
        self.refresh();
    }

    /// A number that changes whenever a changed file was read again.
    pub(crate) fn generation(&self) -> u64 {
        self.refresh();
        self.state.read().map(|s| s.generation).unwrap_or(0)
    }

    /// Looks at the current content.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.refresh();
        self.state.read().ok().map(|s| f(&s.value))
    }
}
