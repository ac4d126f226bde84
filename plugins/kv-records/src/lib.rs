//! Named JSON records kept in a plugin's `kv` (the host capability), so Pier's admin API
//! can change them and the changes survive restarts: the rbac plugin's projects and the
//! replicate plugin's rules. Plain Rust over a [`Kv`] role trait; each plugin passes its
//! `kv` import and keeps its own checks and messages on top.
//!
//! Layout (keys of the plugin's own namespace), for an index key `I` and a prefix `P`:
//! - `I`: a JSON array of the record names, sorted. Its presence means the store is in
//!   use; before the first change the configuration's records (the seeds) answer, and
//!   the first change copies them in. From then on the store is the truth.
//! - `P` + NAME: one record as JSON.
//!
//! A record is written before it enters the index and leaves the index after its key is
//! deleted, so a crash between the two leaves at worst an index entry without a record
//! (which the list skips and the next change repairs) or a record missing from the index
//! (which the next change of that name repairs).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a `kv` call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    /// The value is over the host's size limit.
    TooLarge,
    /// Anything else, as a message for the operator (a missing grant, an I/O error).
    Other(String),
}

/// The plugin's key-value store (the `kv` host capability).
pub trait Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFailure>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFailure>;
    fn delete(&self, key: &str) -> Result<(), KvFailure>;
}

/// Why a store call failed (what the WIT `*-error` variants carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    Conflict(String),
    Invalid(String),
    Unavailable(String),
}

/// A value the store keeps under its name.
pub trait Record: Serialize + DeserializeOwned + Clone {
    fn name(&self) -> &str;
    /// The message when the record is over `kv`'s size limit (`bytes` long as JSON).
    fn too_large(&self, bytes: usize) -> String;
}

/// Where and how a kind of record is kept.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The index key (`projects`, `rules`).
    pub index: &'static str,
    /// Put before a name to make its record's key (`project:`, `rule/`).
    pub prefix: &'static str,
    /// The record in messages (`project`, `rule`).
    pub noun: &'static str,
    /// Who speaks in `Unavailable` messages (`rbac: project store`).
    pub owner: &'static str,
}

/// The records of one [`Layout`] over `kv`, seeded from `seeds`.
pub struct Records<'a, K: Kv, R: Record> {
    kv: &'a K,
    seeds: &'a [R],
    layout: Layout,
}

impl<'a, K: Kv, R: Record> Records<'a, K, R> {
    pub fn new(kv: &'a K, seeds: &'a [R], layout: Layout) -> Self {
        Records { kv, seeds, layout }
    }

    fn unavailable(&self, e: KvFailure) -> StoreError {
        let m = match e {
            KvFailure::TooLarge => "too large".to_owned(),
            KvFailure::Other(m) => m,
        };
        StoreError::Unavailable(format!("{}: {m}", self.layout.owner))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.layout.prefix)
    }

    fn not_found(&self, name: &str) -> StoreError {
        StoreError::NotFound(format!("no {} {name:?}", self.layout.noun))
    }

    fn index(&self) -> Result<Option<BTreeSet<String>>, StoreError> {
        match self
            .kv
            .get(self.layout.index)
            .map_err(|e| self.unavailable(e))?
        {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| self.unavailable(KvFailure::Other(format!("index unreadable: {e}")))),
        }
    }

    fn write_index(&self, names: &BTreeSet<String>) -> Result<(), StoreError> {
        let b = serde_json::to_vec(names)
            .map_err(|e| self.unavailable(KvFailure::Other(e.to_string())))?;
        self.kv
            .set(self.layout.index, &b)
            .map_err(|e| self.unavailable(e))
    }

    /// Whether the store (not the seeds) answers.
    pub fn in_use(&self) -> Result<bool, StoreError> {
        Ok(self
            .kv
            .get(self.layout.index)
            .map_err(|e| self.unavailable(e))?
            .is_some())
    }

    fn read(&self, name: &str) -> Result<Option<R>, StoreError> {
        let found = match self.kv.get(&self.key(name)) {
            // A key over kv's limit can never have been stored.
            Err(KvFailure::TooLarge) => None,
            r => r.map_err(|e| self.unavailable(e))?,
        };
        match found {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                self.unavailable(KvFailure::Other(format!(
                    "{} {name:?} unreadable: {e}",
                    self.layout.noun
                )))
            }),
        }
    }

    fn write(&self, r: &R) -> Result<(), StoreError> {
        let b =
            serde_json::to_vec(r).map_err(|e| self.unavailable(KvFailure::Other(e.to_string())))?;
        self.kv.set(&self.key(r.name()), &b).map_err(|e| match e {
            KvFailure::TooLarge => StoreError::Invalid(r.too_large(b.len())),
            e => self.unavailable(e),
        })
    }

    /// Copies the seeds in before the first change; the index.
    fn seed(&self) -> Result<BTreeSet<String>, StoreError> {
        if let Some(index) = self.index()? {
            return Ok(index);
        }
        let mut names = BTreeSet::new();
        for r in self.seeds {
            self.write(r)?;
            names.insert(r.name().to_owned());
        }
        self.write_index(&names)?;
        Ok(names)
    }

    /// Puts `name` in `index` and writes it when it was missing.
    fn enter(&self, mut index: BTreeSet<String>, name: &str) -> Result<(), StoreError> {
        if index.insert(name.to_owned()) {
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// One record; `in_use` says whether the store or the seeds answer (callers that
    /// look up often remember it).
    pub fn lookup(&self, name: &str, in_use: bool) -> Result<Option<R>, StoreError> {
        if in_use {
            self.read(name)
        } else {
            Ok(self.seeds.iter().find(|r| r.name() == name).cloned())
        }
    }

    /// One record, or [`StoreError::NotFound`].
    pub fn get(&self, name: &str) -> Result<R, StoreError> {
        self.lookup(name, self.in_use()?)?
            .ok_or_else(|| self.not_found(name))
    }

    /// Every record, sorted by name: the seeds until the first change, then the store's.
    pub fn list(&self) -> Result<Vec<R>, StoreError> {
        let Some(index) = self.index()? else {
            let mut seeds = self.seeds.to_vec();
            seeds.sort_by(|a, b| a.name().cmp(b.name()));
            return Ok(seeds);
        };
        let mut out = Vec::with_capacity(index.len());
        for name in &index {
            if let Some(r) = self.read(name)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Creates the record or replaces the one of the same name.
    pub fn put(&self, r: R) -> Result<R, StoreError> {
        let index = self.seed()?;
        self.write(&r)?;
        self.enter(index, r.name())?;
        Ok(r)
    }

    /// Creates the record; [`StoreError::Conflict`] when one of that name exists (which
    /// enters the index if a crash left it out).
    pub fn create(&self, r: R) -> Result<R, StoreError> {
        let index = self.seed()?;
        if self.read(r.name())?.is_some() {
            self.enter(index, r.name())?;
            return Err(StoreError::Conflict(format!(
                "{} {:?} exists",
                self.layout.noun,
                r.name()
            )));
        }
        self.write(&r)?;
        self.enter(index, r.name())?;
        Ok(r)
    }

    /// Reads a record for a change (seeding first), applies `change`, writes it back.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut R) -> Result<(), StoreError>,
    ) -> Result<R, StoreError> {
        let index = self.seed()?;
        let mut r = self.read(name)?.ok_or_else(|| self.not_found(name))?;
        change(&mut r)?;
        self.write(&r)?;
        self.enter(index, name)?;
        Ok(r)
    }

    /// Deletes the record; [`StoreError::NotFound`] when there was none (an index entry
    /// without a record is removed all the same).
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut index = self.seed()?;
        let existed = self.read(name)?.is_some();
        if existed {
            self.kv
                .delete(&self.key(name))
                .map_err(|e| self.unavailable(e))?;
        }
        if index.remove(name) {
            self.write_index(&index)?;
        }
        if existed {
            Ok(())
        } else {
            Err(self.not_found(name))
        }
    }
}

/// A map standing in for `kv` in unit tests, which can die after a number of calls.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Kv, KvFailure};

    #[derive(Default)]
    pub struct MapKv {
        pub map: RefCell<BTreeMap<String, Vec<u8>>>,
        /// Fail every call after this many (a store that dies mid-change).
        pub fail_after: RefCell<Option<usize>>,
        /// Refuse values longer than this as [`KvFailure::TooLarge`].
        pub max_value: Option<usize>,
        /// Refuse keys longer than this as [`KvFailure::TooLarge`] (as the host does).
        pub max_key: Option<usize>,
    }

    impl MapKv {
        fn check(&self, key: &str) -> Result<(), KvFailure> {
            self.tick()?;
            match self.max_key {
                Some(m) if key.len() > m => Err(KvFailure::TooLarge),
                _ => Ok(()),
            }
        }

        fn tick(&self) -> Result<(), KvFailure> {
            let mut f = self.fail_after.borrow_mut();
            match f.as_mut() {
                Some(0) => Err(KvFailure::Other("disk gone".into())),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    impl Kv for MapKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFailure> {
            self.check(key)?;
            Ok(self.map.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFailure> {
            self.check(key)?;
            if self.max_value.is_some_and(|m| value.len() > m) {
                return Err(KvFailure::TooLarge);
            }
            self.map.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), KvFailure> {
            self.check(key)?;
            self.map.borrow_mut().remove(key);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::testing::MapKv;
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        name: String,
        text: String,
    }

    impl Record for Note {
        fn name(&self) -> &str {
            &self.name
        }
        fn too_large(&self, bytes: usize) -> String {
            format!("note {:?} is {bytes} bytes", self.name)
        }
    }

    const LAYOUT: Layout = Layout {
        index: "notes",
        prefix: "note/",
        noun: "note",
        owner: "test: note store",
    };

    fn note(name: &str, text: &str) -> Note {
        Note {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn seeds_answer_until_the_first_change_copies_them_in() {
        let kv = MapKv::default();
        let seeds = [note("b", "seed"), note("a", "seed")];
        let store = Records::new(&kv, &seeds, LAYOUT);
        assert!(!store.in_use().unwrap());
        assert_eq!(
            store.list().unwrap(),
            [note("a", "seed"), note("b", "seed")]
        );
        assert_eq!(store.get("b").unwrap(), note("b", "seed"));
        assert!(kv.map.borrow().is_empty(), "reads write nothing");

        store.put(note("c", "new")).unwrap();
        assert!(store.in_use().unwrap());
        assert_eq!(kv.map.borrow()["notes"], br#"["a","b","c"]"#);
        assert_eq!(store.list().unwrap().len(), 3);
        // The seeds no longer answer: a record deleted stays deleted.
        store.delete("a").unwrap();
        assert_eq!(
            store.get("a"),
            Err(StoreError::NotFound("no note \"a\"".into()))
        );
        assert_eq!(
            store.delete("a"),
            Err(StoreError::NotFound("no note \"a\"".into()))
        );
    }

    #[test]
    fn create_refuses_a_name_in_use_and_update_changes_in_place() {
        let kv = MapKv::default();
        let store = Records::new(&kv, &[], LAYOUT);
        store.create(note("a", "1")).unwrap();
        assert_eq!(
            store.create(note("a", "2")),
            Err(StoreError::Conflict("note \"a\" exists".into()))
        );
        let changed = store
            .update("a", |n| {
                n.text.push('!');
                Ok(())
            })
            .unwrap();
        assert_eq!(changed, note("a", "1!"));
        assert_eq!(store.get("a").unwrap(), note("a", "1!"));
        assert!(matches!(
            store.update("zz", |_| Ok(())),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn a_store_that_dies_mid_change_is_repaired_by_the_next() {
        let kv = MapKv::default();
        let store = Records::new(&kv, &[], LAYOUT);
        // put: index read, record written, then the index write fails.
        *kv.fail_after.borrow_mut() = Some(3);
        assert!(matches!(
            store.put(note("a", "1")),
            Err(StoreError::Unavailable(m)) if m.starts_with("test: note store: ")
        ));
        *kv.fail_after.borrow_mut() = None;
        // The record is there but not listed; the next change of it lists it.
        assert!(store.list().unwrap().is_empty());
        assert!(kv.map.borrow().contains_key("note/a"));
        assert!(matches!(
            store.create(note("a", "2")),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.list().unwrap(), [note("a", "1")]);
        // An index entry whose record is gone is dropped by delete.
        kv.map.borrow_mut().remove("note/a");
        assert!(matches!(store.delete("a"), Err(StoreError::NotFound(_))));
        assert_eq!(kv.map.borrow()["notes"], b"[]");
    }

    #[test]
    fn a_name_too_long_for_a_key_is_not_found_not_a_failure() {
        let kv = MapKv {
            max_key: Some(16),
            ..MapKv::default()
        };
        let seeds = [note("a", "seed")];
        let store = Records::new(&kv, &seeds, LAYOUT);
        store.put(note("b", "1")).unwrap();
        let long = "x".repeat(40);
        assert_eq!(store.lookup(&long, true), Ok(None));
        assert!(matches!(store.get(&long), Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete(&long), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.update(&long, |_| Ok(())),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.put(note(&long, "2")),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn a_record_over_the_size_limit_is_invalid_in_its_own_words() {
        let kv = MapKv {
            max_value: Some(64),
            ..MapKv::default()
        };
        let store = Records::new(&kv, &[], LAYOUT);
        let big = note("a", &"x".repeat(100));
        let bytes = serde_json::to_vec(&big).unwrap().len();
        assert_eq!(
            store.put(big),
            Err(StoreError::Invalid(format!("note \"a\" is {bytes} bytes")))
        );
        assert!(store.list().unwrap().is_empty());
    }
}
