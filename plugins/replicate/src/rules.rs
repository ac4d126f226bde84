//! Replication rules and what they ask for: no WIT types, so the unit tests run on the
//! host.

use pier_glob as glob;
use serde::{Deserialize, Serialize};

/// What happened (the WIT `event-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ManifestPushed,
    ManifestPulled,
    ManifestDeleted,
    MirrorFill,
    ReplicationJob,
}

/// The parts of the WIT `event` the rules look at.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    pub repository: String,
    pub project: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From this Pier to the target.
    #[default]
    Push,
    /// From the target into this Pier.
    Pull,
}

/// The WIT `replication-action`, as plain Rust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub direction: Direction,
    pub target: String,
    pub source_repository: String,
    pub destination_repository: String,
    pub tags: Vec<String>,
    pub digest: Option<String>,
    pub delete: bool,
}

/// Which repositories a rule takes: every repository of a project, or the ones
/// matching a name pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    Project(String),
    Repository(String),
}

/// When a rule runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Trigger {
    /// `"event"`: on each push (and delete, with `delete: true`) matching the rule.
    Named(Named),
    /// `{"every_secs": N}`: on the first tick N seconds or more after the last run.
    Every { every_secs: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Named {
    Event,
}

/// One rule, Harbor-like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; keys the rule's last run.
    pub name: String,
    pub source: Source,
    /// Tag patterns (`*`, `?`); unset: every tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A target name from Pier's configuration.
    pub target: String,
    /// The destination repository: a template where `{repository}` is the source
    /// repository, `{project}` its first segment and `{path}` the rest; default
    /// `{repository}`.
    #[serde(default = "same_name")]
    pub destination: String,
    pub trigger: Trigger,
    /// Propagate deletions (event-driven push rules only).
    #[serde(default)]
    pub delete: bool,
    #[serde(default)]
    pub direction: Direction,
}

fn same_name() -> String {
    "{repository}".to_owned()
}

/// The whole configuration: `{"rules": [...]}` (none: no rules until some are added
/// through Pier's admin API).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Config {
    /// Parses and checks the configuration: unknown keys, duplicate or empty names,
    /// empty targets, and rules that can not work (a pull rule driven by events, a
    /// pull rule with a pattern source) are errors.
    pub fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        for r in &config.rules {
            if !names.insert(r.name.as_str()) {
                return Err(format!("rule name {:?} is used twice", r.name));
            }
            r.validate()?;
        }
        Ok(config)
    }

    /// The actions one event calls for: pushes matching an event-driven push rule
    /// (source and tag filter), deletions for the rules with `delete: true`.
    pub fn on_event(&self, ev: &Event) -> Vec<Action> {
        let delete = match ev.kind {
            Kind::ManifestPushed => false,
            Kind::ManifestDeleted => true,
            _ => return Vec::new(),
        };
        self.rules
            .iter()
            .filter(|r| r.trigger == Trigger::Named(Named::Event) && r.direction == Direction::Push)
            .filter(|r| !delete || r.delete)
            .filter(|r| r.takes(&ev.repository, &ev.project))
            .filter_map(|r| {
                let (tags, digest) = match &ev.tag {
                    Some(t) if glob::any(&r.tags, t) => (vec![t.clone()], None),
                    Some(_) => return None,
                    // By digest only: no tag to filter, so only rules taking every tag.
                    None if r.every_tag() => (Vec::new(), Some(ev.digest.clone()?)),
                    None => return None,
                };
                Some(r.action(&ev.repository, tags, digest, delete))
            })
            .collect()
    }

    /// The scheduled rules due at `now` given each rule's last run (none: never ran,
    /// so due), with their actions for the `known` repositories (those of this Pier the
    /// plugin has seen in events) or, for pull rules, the named source repository.
    pub fn on_tick(
        &self,
        now: u64,
        last_run: impl Fn(&str) -> Option<u64>,
        known: &[String],
    ) -> (Vec<&Rule>, Vec<Action>) {
        let mut due = Vec::new();
        let mut actions = Vec::new();
        for r in &self.rules {
            let Trigger::Every { every_secs } = r.trigger else {
                continue;
            };
            if last_run(&r.name).is_some_and(|last| now < last.saturating_add(every_secs)) {
                continue;
            }
            due.push(r);
            let tags = if r.tags.is_empty() {
                vec!["*".to_owned()]
            } else {
                r.tags.clone()
            };
            match (&r.direction, &r.source) {
                (Direction::Pull, Source::Repository(repo)) => {
                    actions.push(r.action(repo, tags, None, false))
                }
                (Direction::Pull, Source::Project(_)) => {} // refused by `parse`
                (Direction::Push, _) => {
                    let mut repos: Vec<&String> = known
                        .iter()
                        .filter(|repo| r.takes(repo, project_of(repo)))
                        .collect();
                    // A source named in full is replicated even before it was seen.
                    if let Source::Repository(p) = &r.source
                        && !is_pattern(p)
                        && !repos.contains(&p)
                    {
                        repos.push(p);
                    }
                    for repo in repos {
                        actions.push(r.action(repo, tags.clone(), None, false));
                    }
                }
            }
        }
        (due, actions)
    }

    /// Whether any scheduled push rule takes `repository` (worth remembering).
    pub fn scheduled_source(&self, repository: &str) -> bool {
        self.rules.iter().any(|r| {
            matches!(r.trigger, Trigger::Every { .. })
                && r.direction == Direction::Push
                && r.takes(repository, project_of(repository))
        })
    }
}

/// Longest rule name.
pub const MAX_NAME: usize = 128;

impl Rule {
    /// Checks one rule: a name of 1 to [`MAX_NAME`] bytes without control characters,
    /// a target and a destination, and a combination that can work (a pull rule driven
    /// by events, a pull rule with a pattern source, delete propagation on anything
    /// but an event-driven push rule are refused).
    pub fn validate(&self) -> Result<(), String> {
        let (r, n) = (self, &self.name);
        if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
            return Err(format!(
                "rule name {n:?} must be 1 to {MAX_NAME} bytes without control characters"
            ));
        }
        if r.target.is_empty() {
            return Err(format!("rule {n:?}: empty target"));
        }
        if r.destination.is_empty() {
            return Err(format!("rule {n:?}: empty destination"));
        }
        if r.trigger == (Trigger::Every { every_secs: 0 }) {
            return Err(format!("rule {n:?}: every_secs must be at least 1"));
        }
        if r.direction == Direction::Pull {
            // Events come from this Pier; a pull rule reads the target, which only a
            // schedule can poll, and only for repositories named in full.
            if r.trigger == Trigger::Named(Named::Event) {
                return Err(format!("rule {n:?}: a pull rule needs a schedule"));
            }
            if !matches!(&r.source, Source::Repository(p) if !is_pattern(p)) {
                return Err(format!(
                    "rule {n:?}: a pull rule needs a source repository without patterns"
                ));
            }
        }
        if r.delete && (r.direction == Direction::Pull || r.trigger != Trigger::Named(Named::Event))
        {
            return Err(format!(
                "rule {n:?}: delete propagation needs an event-driven push rule"
            ));
        }
        Ok(())
    }

    fn takes(&self, repository: &str, project: &str) -> bool {
        match &self.source {
            Source::Project(p) => glob::matches(p, project),
            Source::Repository(p) => glob::matches(p, repository),
        }
    }

    fn every_tag(&self) -> bool {
        self.tags.is_empty() || self.tags.iter().any(|t| t.chars().all(|c| c == '*'))
    }

    fn destination(&self, repository: &str) -> String {
        let (project, path) = repository.split_once('/').unwrap_or((repository, ""));
        self.destination
            .replace("{repository}", repository)
            .replace("{project}", project)
            .replace("{path}", path)
    }

    fn action(
        &self,
        repository: &str,
        tags: Vec<String>,
        digest: Option<String>,
        delete: bool,
    ) -> Action {
        Action {
            direction: self.direction,
            target: self.target.clone(),
            source_repository: repository.to_owned(),
            destination_repository: self.destination(repository),
            tags,
            digest,
            delete,
        }
    }
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// The project of a repository: its first path segment.
pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"rules": [
        {"name": "team-to-b", "source": {"project": "team"}, "tags": ["v*"],
         "target": "site-b", "trigger": "event", "delete": true},
        {"name": "apps-backup", "source": {"repository": "apps/*"},
         "target": "backup", "destination": "backup/{repository}", "trigger": "event"},
        {"name": "nightly", "source": {"repository": "lib/*"}, "tags": ["stable"],
         "target": "site-c", "destination": "{project}-mirror/{path}",
         "trigger": {"every_secs": 300}},
        {"name": "upstream", "source": {"repository": "vendor/base"}, "target": "site-b",
         "trigger": {"every_secs": 60}, "direction": "pull"}
    ]}"#;

    fn ev(kind: Kind, repo: &str, tag: Option<&str>) -> Event {
        Event {
            kind,
            repository: repo.into(),
            project: project_of(repo).into(),
            tag: tag.map(Into::into),
            digest: Some("sha256:abc".into()),
        }
    }

    #[test]
    fn pushes_follow_source_and_tag_filters() {
        let c = Config::parse(CONFIG).unwrap();
        let a = c.on_event(&ev(Kind::ManifestPushed, "team/app", Some("v1")));
        assert_eq!(
            a,
            [Action {
                direction: Direction::Push,
                target: "site-b".into(),
                source_repository: "team/app".into(),
                destination_repository: "team/app".into(),
                tags: vec!["v1".into()],
                digest: None,
                delete: false,
            }]
        );
        assert!(
            c.on_event(&ev(Kind::ManifestPushed, "team/app", Some("latest")))
                .is_empty()
        );
        // a tag filter never matches a push by digest
        assert!(
            c.on_event(&ev(Kind::ManifestPushed, "team/app", None))
                .is_empty()
        );
        // no tag filter: by digest too
        let a = c.on_event(&ev(Kind::ManifestPushed, "apps/web", None));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].destination_repository, "backup/apps/web");
        assert_eq!(a[0].digest.as_deref(), Some("sha256:abc"));
        assert!(a[0].tags.is_empty());
        // no rule, pulls, scheduled rules: nothing
        assert!(
            c.on_event(&ev(Kind::ManifestPushed, "other/x", Some("v1")))
                .is_empty()
        );
        assert!(
            c.on_event(&ev(Kind::ManifestPulled, "team/app", Some("v1")))
                .is_empty()
        );
        assert!(
            c.on_event(&ev(Kind::ManifestPushed, "lib/x", Some("stable")))
                .is_empty()
        );
    }

    #[test]
    fn deletes_only_with_delete_true() {
        let c = Config::parse(CONFIG).unwrap();
        let a = c.on_event(&ev(Kind::ManifestDeleted, "team/app", Some("v2")));
        assert_eq!(a.len(), 1);
        assert!(a[0].delete);
        assert_eq!(a[0].tags, ["v2"]);
        assert!(
            c.on_event(&ev(Kind::ManifestDeleted, "apps/web", Some("v2")))
                .is_empty()
        );
    }

    #[test]
    fn ticks_run_scheduled_rules_when_due() {
        let c = Config::parse(CONFIG).unwrap();
        let known = vec![
            "lib/a".to_owned(),
            "team/x".to_owned(),
            "lib/b/c".to_owned(),
        ];
        let (due, a) = c.on_tick(1000, |_| None, &known);
        let names: Vec<&str> = due.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["nightly", "upstream"]);
        let dests: Vec<(&str, &str)> = a
            .iter()
            .map(|a| {
                (
                    a.source_repository.as_str(),
                    a.destination_repository.as_str(),
                )
            })
            .collect();
        assert_eq!(
            dests,
            [
                ("lib/a", "lib-mirror/a"),
                ("lib/b/c", "lib-mirror/b/c"),
                ("vendor/base", "vendor/base")
            ]
        );
        assert_eq!(a[0].tags, ["stable"]);
        assert_eq!(a[2].direction, Direction::Pull);
        assert_eq!(a[2].tags, ["*"]);
        // 100 s later: `upstream` (60 s) is due again, `nightly` (300 s) is not
        let (due, _) = c.on_tick(1100, |_| Some(1000), &known);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].name, "upstream");
        let (due, _) = c.on_tick(1300, |_| Some(1000), &known);
        assert_eq!(due.len(), 2);
    }

    #[test]
    fn invalid_configs_are_errors() {
        assert!(Config::parse("{}").unwrap().rules.is_empty());
        for bad in [
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t"}]}"#,
            r#"{"rules": [{"name": "", "source": {"project": "p"}, "target": "t", "trigger": "event"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"tag": "p"}, "target": "t", "trigger": "event"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t", "trigger": "hourly"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "", "trigger": "event"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t", "trigger": {"every_secs": 0}}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t", "trigger": "event", "direction": "pull"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"repository": "p/*"}, "target": "t", "trigger": {"every_secs": 5}, "direction": "pull"}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t", "trigger": {"every_secs": 5}, "delete": true}]}"#,
            r#"{"rules": [{"name": "a", "source": {"project": "p"}, "target": "t", "trigger": "event"},
                          {"name": "a", "source": {"project": "q"}, "target": "t", "trigger": "event"}]}"#,
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }
}
