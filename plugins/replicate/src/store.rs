//! The rules as Pier's admin API changes them, kept in the plugin's `kv` (through
//! `pier-kv-records`): seeded from the configuration's `rules`, which answer until the
//! first change copies them in.
//!
//! Keys (next to `repos` and `last-run/NAME`, which the guest keeps):
//! - `rules`: the index, a JSON array of rule names; absent until the first change.
//! - `rule/NAME`: one rule, as the configuration's JSON.
//!
//! How a crash between the two writes of a change is repaired: `pier-kv-records`.

pub use pier_kv_records::{Kv, KvFailure, StoreError};
use pier_kv_records::{Layout, Record, Records};

use crate::rules::{Config, Rule};

const LAYOUT: Layout = Layout {
    index: "rules",
    prefix: "rule/",
    noun: "rule",
    owner: "replicate: rule store",
};

impl Record for Rule {
    fn name(&self) -> &str {
        &self.name
    }
    fn too_large(&self, _bytes: usize) -> String {
        format!("rule {:?} is too large to store", self.name)
    }
}

/// The store over `kv`, seeded from `config`.
pub struct Store<'a, K: Kv> {
    records: Records<'a, K, Rule>,
}

impl<'a, K: Kv> Store<'a, K> {
    pub fn new(kv: &'a K, config: &'a Config) -> Self {
        Store {
            records: Records::new(kv, &config.rules, LAYOUT),
        }
    }

    /// Every rule, sorted by name: the seeds until the first change, then the store's.
    pub fn list(&self) -> Result<Vec<Rule>, StoreError> {
        self.records.list()
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
        self.records.put(rule)
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.records.delete(name)
    }
}

#[cfg(test)]
mod tests {
    use pier_kv_records::testing::MapKv;

    use super::*;
    use crate::rules::{Direction, Event, Kind, Named, Source, Trigger};

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
