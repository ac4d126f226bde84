//! Harbor's retention rule shapes and the plan: no WIT types, so the unit tests run on
//! the host.
//!
//! In a repository at least one rule applies to (by `projects` and `repositories`), a
//! tag survives when some applying rule whose `tags` filter it matches retains it; every
//! other tag of that repository is removed. Untagged manifests are removed by
//! `untagged_older_than_days` rules only.

use std::collections::BTreeSet;

use pier_glob as glob;
use serde::Deserialize;

/// A day in milliseconds (times are Unix milliseconds).
const DAY: u64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub projects: Vec<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    /// The tags this rule looks at (`*`/`?` patterns); all when empty.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Retain the N most recently pushed.
    #[serde(default)]
    pub keep_last_pushed: Option<usize>,
    /// Retain the N most recently pulled (tags never pulled are not among them).
    #[serde(default)]
    pub keep_last_pulled: Option<usize>,
    /// Retain what was pushed within the last D days.
    #[serde(default)]
    pub keep_pushed_within_days: Option<u64>,
    /// Retain what was pulled within the last D days.
    #[serde(default)]
    pub keep_pulled_within_days: Option<u64>,
    /// Retain every tag the `tags` filter matches.
    #[serde(default)]
    pub keep_always: bool,
    /// Remove untagged manifests stored more than D days ago (this rule retains no tag).
    #[serde(default)]
    pub untagged_older_than_days: Option<u64>,
}

impl Rule {
    fn criteria(&self) -> usize {
        [
            self.keep_last_pushed.is_some(),
            self.keep_last_pulled.is_some(),
            self.keep_pushed_within_days.is_some(),
            self.keep_pulled_within_days.is_some(),
            self.keep_always,
            self.untagged_older_than_days.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    fn applies(&self, project: &str, repository: &str) -> bool {
        glob::any(&self.projects, project) && glob::any(&self.repositories, repository)
    }

    /// What it keeps, in the words of a removal's reason.
    fn describe(&self, name: &str) -> String {
        let what = if let Some(n) = self.keep_last_pushed {
            format!("the {n} most recently pushed")
        } else if let Some(n) = self.keep_last_pulled {
            format!("the {n} most recently pulled")
        } else if let Some(d) = self.keep_pushed_within_days {
            format!("pushed within {d} days")
        } else if let Some(d) = self.keep_pulled_within_days {
            format!("pulled within {d} days")
        } else if self.keep_always {
            "always".to_owned()
        } else {
            "no tag".to_owned()
        };
        match self.tags.is_empty() {
            true => format!("{name}: {what}"),
            false => format!("{name}: {what} of {}", self.tags.join(", ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for (i, r) in c.rules.iter().enumerate() {
            if r.criteria() != 1 {
                return Err(format!(
                    "rule {} ({}): give exactly one of keep_last_pushed, keep_last_pulled, \
                     keep_pushed_within_days, keep_pulled_within_days, keep_always, \
                     untagged_older_than_days",
                    i + 1,
                    r.name.as_deref().unwrap_or("unnamed")
                ));
            }
        }
        Ok(c)
    }

    fn name(&self, i: usize) -> String {
        self.rules[i]
            .name
            .clone()
            .unwrap_or_else(|| format!("rule {}", i + 1))
    }
}

#[derive(Debug, Clone)]
pub struct Tag {
    pub tag: String,
    pub pushed: Option<u64>,
    pub pulled: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Untagged {
    pub digest: String,
    pub pushed: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub repository: String,
    pub tags: Vec<Tag>,
    pub untagged: Vec<Untagged>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub reason: String,
}

/// The N most recent by `at` (none: never, not counted).
fn most_recent<'a>(
    tags: &[&'a Tag],
    n: usize,
    at: impl Fn(&Tag) -> Option<u64>,
) -> BTreeSet<&'a str> {
    let mut dated: Vec<(&u64, &str)> = Vec::new();
    let times: Vec<Option<u64>> = tags.iter().map(|t| at(t)).collect();
    for (t, time) in tags.iter().zip(&times) {
        if let Some(x) = time {
            dated.push((x, t.tag.as_str()));
        }
    }
    // Newest first; ties by name, so a plan is the same every time.
    dated.sort_by(|a, b| b.0.cmp(a.0).then(a.1.cmp(b.1)));
    dated.into_iter().take(n).map(|(_, t)| t).collect()
}

/// What to remove in one project.
pub fn plan(c: &Config, project: &str, repos: &[Repository], now: u64) -> Vec<Removal> {
    let mut out = Vec::new();
    for repo in repos {
        let applying: Vec<usize> = (0..c.rules.len())
            .filter(|&i| c.rules[i].applies(project, &repo.repository))
            .collect();
        let tag_rules: Vec<usize> = applying
            .iter()
            .copied()
            .filter(|&i| c.rules[i].untagged_older_than_days.is_none())
            .collect();
        if !tag_rules.is_empty() {
            let mut retained: BTreeSet<&str> = BTreeSet::new();
            for &i in &tag_rules {
                let r = &c.rules[i];
                let scope: Vec<&Tag> = repo
                    .tags
                    .iter()
                    .filter(|t| glob::any(&r.tags, &t.tag))
                    .collect();
                let within = |at: Option<u64>, days: u64| {
                    at.is_some_and(|a| now.saturating_sub(a) <= days * DAY)
                };
                if let Some(n) = r.keep_last_pushed {
                    retained.extend(most_recent(&scope, n, |t| t.pushed));
                } else if let Some(n) = r.keep_last_pulled {
                    retained.extend(most_recent(&scope, n, |t| t.pulled));
                } else if let Some(d) = r.keep_pushed_within_days {
                    retained.extend(
                        scope
                            .iter()
                            .filter(|t| within(t.pushed, d))
                            .map(|t| t.tag.as_str()),
                    );
                } else if let Some(d) = r.keep_pulled_within_days {
                    retained.extend(
                        scope
                            .iter()
                            .filter(|t| within(t.pulled, d))
                            .map(|t| t.tag.as_str()),
                    );
                } else if r.keep_always {
                    retained.extend(scope.iter().map(|t| t.tag.as_str()));
                }
            }
            let rules: Vec<String> = tag_rules
                .iter()
                .map(|&i| c.rules[i].describe(&c.name(i)))
                .collect();
            for t in &repo.tags {
                if !retained.contains(t.tag.as_str()) {
                    out.push(Removal {
                        repository: repo.repository.clone(),
                        tag: Some(t.tag.clone()),
                        digest: None,
                        reason: format!("retained by no rule ({})", rules.join("; ")),
                    });
                }
            }
        }
        for &i in &applying {
            let Some(days) = c.rules[i].untagged_older_than_days else {
                continue;
            };
            for u in &repo.untagged {
                if u.pushed.is_some_and(|p| now.saturating_sub(p) > days * DAY) {
                    out.push(Removal {
                        repository: repo.repository.clone(),
                        tag: None,
                        digest: Some(u.digest.clone()),
                        reason: format!("{}: untagged for more than {days} days", c.name(i)),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(
        tags: &[(&str, Option<u64>, Option<u64>)],
        untagged: &[(&str, Option<u64>)],
    ) -> Repository {
        Repository {
            repository: "team/app".into(),
            tags: tags
                .iter()
                .map(|(t, pushed, pulled)| Tag {
                    tag: (*t).into(),
                    pushed: *pushed,
                    pulled: *pulled,
                })
                .collect(),
            untagged: untagged
                .iter()
                .map(|(d, p)| Untagged {
                    digest: (*d).into(),
                    pushed: *p,
                })
                .collect(),
        }
    }

    fn removed_tags(r: &[Removal]) -> Vec<&str> {
        r.iter().filter_map(|r| r.tag.as_deref()).collect()
    }

    #[test]
    fn a_tag_survives_when_some_rule_retains_it() {
        let c = Config::parse(
            r#"{"rules":[
              {"name":"recent","projects":["team"],"keep_last_pushed":2},
              {"name":"releases","projects":["team"],"tags":["v*"],"keep_always":true},
              {"name":"used","projects":["team"],"keep_last_pulled":1}
            ]}"#,
        )
        .unwrap();
        let r = repo(
            &[
                ("a", Some(1), None),
                ("b", Some(2), Some(50)),
                ("c", Some(3), Some(10)),
                ("v1", Some(0), None),
                ("d", Some(4), None),
                ("e", Some(5), None),
            ],
            &[],
        );
        let p = plan(&c, "team", &[r], 100);
        // e, d: two newest; v1: release; b: most recently pulled. a and c go.
        assert_eq!(removed_tags(&p), vec!["a", "c"]);
        assert!(
            p[0].reason.contains("recent: the 2 most recently pushed"),
            "{}",
            p[0].reason
        );
        // Another project: no rule applies, nothing goes.
        assert!(plan(&c, "other", &[repo(&[("a", Some(1), None)], &[])], 100).is_empty());
    }

    #[test]
    fn ages_count_from_now_and_untagged_manifests_go_after_their_days() {
        let c = Config::parse(
            r#"{"rules":[
              {"keep_pushed_within_days":1},
              {"untagged_older_than_days":7}
            ]}"#,
        )
        .unwrap();
        let now = 100 * DAY;
        let r = repo(
            &[
                ("new", Some(now - 3_600_000), None),
                ("old", Some(now - 2 * DAY), None),
                ("undated", None, None),
            ],
            &[
                ("sha256:old", Some(now - 8 * DAY)),
                ("sha256:new", Some(now - DAY)),
                ("sha256:undated", None),
            ],
        );
        let p = plan(&c, "team", &[r], now);
        assert_eq!(removed_tags(&p), vec!["old", "undated"]);
        let digests: Vec<&str> = p.iter().filter_map(|r| r.digest.as_deref()).collect();
        assert_eq!(digests, vec!["sha256:old"]);
    }

    #[test]
    fn a_rule_needs_exactly_one_criterion() {
        assert!(Config::parse(r#"{"rules":[{"projects":["team"]}]}"#).is_err());
        assert!(Config::parse(r#"{"rules":[{"keep_always":true,"keep_last_pushed":1}]}"#).is_err());
        assert!(Config::parse(r#"{"rules":[{"keep_last":1}]}"#).is_err());
    }
}
