//! The rules as Pier's admin API changes them, kept in the plugin's `kv`: seeded from
//! the configuration's `rules`, which answer until the first change copies them in.
//!
//! Keys (next to `repos` and `last-run/NAME`, which the guest keeps):
//! - `rules`: the index, a JSON array of rule names; absent until the first change.
//! - `rule/NAME`: one rule, as the configuration's JSON.
//!
//! A rule is written before it enters the index and leaves the index after its key is
//! deleted, so a crash between the two leaves at worst an index entry without a rule
//! (which the list skips and the next change repairs) or a rule missing from the index
//! (which the next `put` of that name repairs).

use std::collections::BTreeSet;

use crate::rules::{Config, Rule};

/// The plugin's key-value store (the `kv` host capability).
pub trait Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// Why a store call failed (mirrors `rule-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    Invalid(String),
    Unavailable(String),
}

const INDEX: &str = "rules";

fn rule_key(name: &str) -> String {
    format!("rule/{name}")
}

fn unavailable(e: String) -> StoreError {
    StoreError::Unavailable(format!("replicate: rule store: {e}"))
}

/// The store over `kv`, seeded from `config`.
pub struct Store<'a, K: Kv> {
    kv: &'a K,
    config: &'a Config,
}

impl<'a, K: Kv> Store<'a, K> {
    pub fn new(kv: &'a K, config: &'a Config) -> Self {
        Store { kv, config }
    }

    fn index(&self) -> Result<Option<BTreeSet<String>>, StoreError> {
        match self.kv.get(INDEX).map_err(unavailable)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| unavailable(format!("index unreadable: {e}"))),
        }
    }

    fn write_index(&self, names: &BTreeSet<String>) -> Result<(), StoreError> {
        let b = serde_json::to_vec(names).map_err(|e| unavailable(e.to_string()))?;
        self.kv.set(INDEX, &b).map_err(unavailable)
    }

    fn read(&self, name: &str) -> Result<Option<Rule>, StoreError> {
        match self.kv.get(&rule_key(name)).map_err(unavailable)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| unavailable(format!("rule {name:?} unreadable: {e}"))),
        }
    }

    fn write(&self, r: &Rule) -> Result<(), StoreError> {
        let b = serde_json::to_vec(r).map_err(|e| unavailable(e.to_string()))?;
        self.kv.set(&rule_key(&r.name), &b).map_err(|e| {
            if e.contains("too large") {
                StoreError::Invalid(format!("rule {:?} is too large to store", r.name))
            } else {
                unavailable(e)
            }
        })
    }

    /// Copies the seeds in before the first change.
    fn seed(&self) -> Result<BTreeSet<String>, StoreError> {
        if let Some(index) = self.index()? {
            return Ok(index);
        }
        let mut names = BTreeSet::new();
        for r in &self.config.rules {
            self.write(r)?;
            names.insert(r.name.clone());
        }
        self.write_index(&names)?;
        Ok(names)
    }

    /// Every rule, sorted by name: the seeds until the first change, then the store's.
    pub fn list(&self) -> Result<Vec<Rule>, StoreError> {
        let Some(index) = self.index()? else {
            let mut seeds = self.config.rules.clone();
            seeds.sort_by(|a, b| a.name.cmp(&b.name));
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

    /// The rules in force, as a [`Config`] for `on_event` and `on_tick`.
    pub fn active(&self) -> Result<Config, StoreError> {
        Ok(Config {
            rules: self.list()?,
        })
    }

    /// Creates the rule or replaces the one of the same name, after the checks the
    /// configuration's rules get.
    pub fn put(&self, rule: Rule) -> Result<Rule, StoreError> {
        rule.validate().map_err(StoreError::Invalid)?;
        let mut index = self.seed()?;
        self.write(&rule)?;
        if index.insert(rule.name.clone()) {
            self.write_index(&index)?;
        }
        Ok(rule)
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut index = self.seed()?;
        let existed = self.read(name)?.is_some();
        if existed {
            self.kv.delete(&rule_key(name)).map_err(unavailable)?;
        }
        if index.remove(name) {
            self.write_index(&index)?;
        }
        if existed {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no rule {name:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::rules::{Direction, Event, Kind, Named, Source, Trigger};

    #[derive(Default)]
    struct MapKv {
        map: RefCell<BTreeMap<String, Vec<u8>>>,
        /// Fail every call after this many (a store that dies mid-change).
        fail_after: RefCell<Option<usize>>,
    }

    impl MapKv {
        fn tick(&self) -> Result<(), String> {
            let mut f = self.fail_after.borrow_mut();
            match f.as_mut() {
                Some(0) => Err("disk gone".into()),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    impl Kv for MapKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.tick()?;
            Ok(self.map.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.tick()?;
            self.map.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.tick()?;
            self.map.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn seeds() -> Config {
        Config::parse(
            r#"{"rules": [
                {"name": "team-to-b", "source": {"project": "team"}, "target": "site-b",
                 "trigger": "event"},
                {"name": "nightly", "source": {"repository": "lib/*"}, "target": "site-c",
                 "trigger": {"every_secs": 300}}]}"#,
        )
        .unwrap()
    }

    fn rule(name: &str, project: &str) -> Rule {
        Rule {
            name: name.into(),
            source: Source::Project(project.into()),
            tags: vec![],
            target: "site-b".into(),
            destination: "{repository}".into(),
            trigger: Trigger::Named(Named::Event),
            delete: false,
            direction: Direction::Push,
        }
    }

    fn pushed(repo: &str) -> Event {
        Event {
            kind: Kind::ManifestPushed,
            repository: repo.into(),
            project: crate::rules::project_of(repo).into(),
            tag: Some("v1".into()),
            digest: None,
        }
    }

    fn names(s: &Store<'_, MapKv>) -> Vec<String> {
        s.list().unwrap().into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn seeds_answer_until_the_first_change_then_the_store_does() {
        let (kv, cfg) = (MapKv::default(), seeds());
        let s = Store::new(&kv, &cfg);
        assert_eq!(names(&s), ["nightly", "team-to-b"]);
        assert!(kv.map.borrow().is_empty(), "reading writes nothing");
        assert!(s.active().unwrap().on_event(&pushed("apps/x")).is_empty());

        s.put(rule("apps", "apps")).unwrap();
        assert_eq!(names(&s), ["apps", "nightly", "team-to-b"]);
        let a = s.active().unwrap().on_event(&pushed("apps/x"));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].target, "site-b");

        // a new store over the same kv (a restart) sees the same, seeds or not
        let empty = Config::default();
        assert_eq!(
            names(&Store::new(&kv, &empty)),
            ["apps", "nightly", "team-to-b"]
        );
    }

    #[test]
    fn put_replaces_and_delete_removes() {
        let (kv, cfg) = (MapKv::default(), seeds());
        let s = Store::new(&kv, &cfg);
        let mut r = rule("team-to-b", "other");
        r.tags = vec!["v*".into()];
        s.put(r.clone()).unwrap();
        assert_eq!(s.list().unwrap().iter().filter(|x| **x == r).count(), 1);
        assert_eq!(names(&s), ["nightly", "team-to-b"]);
        assert!(s.active().unwrap().on_event(&pushed("team/x")).is_empty());
        assert_eq!(s.active().unwrap().on_event(&pushed("other/x")).len(), 1);

        s.delete("nightly").unwrap();
        assert!(matches!(s.delete("nightly"), Err(StoreError::NotFound(_))));
        // a deleted seed stays deleted: the seeds are not read again
        assert_eq!(names(&s), ["team-to-b"]);
        s.delete("team-to-b").unwrap();
        assert!(names(&s).is_empty());
    }

    #[test]
    fn rules_are_checked_like_the_configuration() {
        let (kv, cfg) = (MapKv::default(), seeds());
        let s = Store::new(&kv, &cfg);
        let mut pull_on_event = rule("p", "team");
        pull_on_event.direction = Direction::Pull;
        let mut no_target = rule("t", "team");
        no_target.target.clear();
        let mut zero = rule("z", "team");
        zero.trigger = Trigger::Every { every_secs: 0 };
        let mut scheduled_delete = rule("d", "team");
        scheduled_delete.trigger = Trigger::Every { every_secs: 5 };
        scheduled_delete.delete = true;
        for bad in [
            rule("", "team"),
            rule("a\nb", "team"),
            rule(&"x".repeat(129), "team"),
            pull_on_event,
            no_target,
            zero,
            scheduled_delete,
        ] {
            assert!(
                matches!(s.put(bad.clone()), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(kv.map.borrow().is_empty(), "nothing written");
    }

    #[test]
    fn a_store_that_dies_mid_change_is_repaired_by_the_next() {
        let (kv, cfg) = (MapKv::default(), Config::default());
        let s = Store::new(&kv, &cfg);
        // seed (index read + index write), the rule write succeeds, the index write fails
        *kv.fail_after.borrow_mut() = Some(3);
        assert!(matches!(
            s.put(rule("apps", "apps")),
            Err(StoreError::Unavailable(_))
        ));
        *kv.fail_after.borrow_mut() = None;
        assert!(names(&s).is_empty(), "not listed yet");
        s.put(rule("apps", "apps")).unwrap();
        assert_eq!(names(&s), ["apps"]);
    }
}
