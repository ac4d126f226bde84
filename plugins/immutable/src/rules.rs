//! The immutability rules and the decision: no WIT types, so the unit tests run on the
//! host.

use pier_glob as glob;
use serde::Deserialize;

/// One rule: tags matching `tags` in repositories matching `projects` and `repositories`
/// cannot be moved to another manifest or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in deny messages; `rule N` (1-based) when not set.
    #[serde(default)]
    pub name: Option<String>,
    /// Project patterns (the first path segment); all when empty.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Repository patterns (whole names, `team/*`); all when empty.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Tag patterns (`v*`, `release-?`); required.
    pub tags: Vec<String>,
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
            if r.tags.is_empty() {
                return Err(format!(
                    "rule {} ({}) has no `tags`: name the tags it keeps (\"*\" for all)",
                    i + 1,
                    r.name.as_deref().unwrap_or("unnamed")
                ));
            }
        }
        Ok(c)
    }

    /// The name of the first rule that keeps `tag` of `repository` immutable.
    pub fn rule_for(&self, project: &str, repository: &str, tag: &str) -> Option<String> {
        self.rules.iter().enumerate().find_map(|(i, r)| {
            (glob::any(&r.projects, project)
                && glob::any(&r.repositories, repository)
                && r.tags.iter().any(|p| glob::matches(p, tag)))
            .then(|| r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1)))
        })
    }
}

/// The stages of `wit/admission.wit` this plugin cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Push,
    Delete,
    Other,
}

/// What the plugin looks at in an admission request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub stage: Stage,
    pub project: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: &'a str,
    /// Where the tag points now (push and delete by tag).
    pub current_digest: Option<&'a str>,
    /// The tags on the manifest (delete by digest).
    pub tags: &'a [String],
}

/// `Err(reason)`: refused.
pub fn decide(c: &Config, r: &Request<'_>) -> Result<(), String> {
    let rule = |tag: &str| c.rule_for(r.project, r.repository, tag);
    match (r.stage, r.tag) {
        // A new tag, or the same manifest pushed again, is fine.
        (Stage::Push, Some(tag)) => match (r.current_digest, rule(tag)) {
            (Some(now), Some(name)) if now != r.digest => Err(format!(
                "tag {tag} of {} is immutable (rule {name:?}) and points at {now}: push under a new tag",
                r.repository
            )),
            _ => Ok(()),
        },
        (Stage::Delete, Some(tag)) => match rule(tag) {
            Some(name) => Err(format!(
                "tag {tag} of {} is immutable (rule {name:?}) and cannot be deleted",
                r.repository
            )),
            None => Ok(()),
        },
        (Stage::Delete, None) => {
            for tag in r.tags {
                if let Some(name) = rule(tag) {
                    return Err(format!(
                        "manifest {} carries the immutable tag {tag} (rule {name:?}) and cannot be deleted",
                        r.digest
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"{"rules":[
                {"name":"releases","projects":["team"],"tags":["v*"]},
                {"repositories":["ops/base"],"tags":["*"]}
            ]}"#,
        )
        .unwrap()
    }

    fn req<'a>(
        stage: Stage,
        repository: &'a str,
        tag: Option<&'a str>,
        current: Option<&'a str>,
        tags: &'a [String],
    ) -> Request<'a> {
        Request {
            stage,
            project: repository.split('/').next().unwrap(),
            repository,
            tag,
            digest: "sha256:new",
            current_digest: current,
            tags,
        }
    }

    #[test]
    fn an_immutable_tag_is_set_once_and_never_moved_or_deleted() {
        let c = config();
        let none: &[String] = &[];
        // First push and a push of the same manifest: fine.
        assert!(decide(&c, &req(Stage::Push, "team/app", Some("v1"), None, none)).is_ok());
        let same = Request {
            digest: "sha256:old",
            ..req(
                Stage::Push,
                "team/app",
                Some("v1"),
                Some("sha256:old"),
                none,
            )
        };
        assert!(decide(&c, &same).is_ok());
        // Moving it: refused, with the rule named.
        let e = decide(
            &c,
            &req(
                Stage::Push,
                "team/app",
                Some("v1"),
                Some("sha256:old"),
                none,
            ),
        )
        .unwrap_err();
        assert!(e.contains("\"releases\"") && e.contains("v1"), "{e}");
        // Deleting it, or the manifest under it: refused.
        assert!(decide(&c, &req(Stage::Delete, "team/app", Some("v1"), None, none)).is_err());
        let tags = vec!["latest".to_owned(), "v1".to_owned()];
        let e = decide(&c, &req(Stage::Delete, "team/app", None, None, &tags)).unwrap_err();
        assert!(e.contains("immutable tag v1"), "{e}");
        // Other tags, other projects, other stages: unaffected.
        for r in [
            req(
                Stage::Push,
                "team/app",
                Some("latest"),
                Some("sha256:old"),
                none,
            ),
            req(Stage::Delete, "team/app", Some("latest"), None, none),
            req(
                Stage::Push,
                "other/app",
                Some("v1"),
                Some("sha256:old"),
                none,
            ),
            req(
                Stage::Other,
                "team/app",
                Some("v1"),
                Some("sha256:old"),
                none,
            ),
        ] {
            assert!(decide(&c, &r).is_ok(), "{r:?}");
        }
        // The unnamed rule is named by its place.
        let e = decide(
            &c,
            &req(Stage::Delete, "ops/base", Some("anything"), None, none),
        )
        .unwrap_err();
        assert!(e.contains("\"rule 2\""), "{e}");
    }

    #[test]
    fn a_rule_without_tags_or_with_unknown_fields_is_refused() {
        assert!(Config::parse(r#"{"rules":[{"projects":["team"]}]}"#).is_err());
        assert!(Config::parse(r#"{"rules":[{"tags":[]}]}"#).is_err());
        assert!(Config::parse(r#"{"rules":[{"tags":["v*"],"tag":"x"}]}"#).is_err());
        assert_eq!(Config::parse("{}").unwrap().rules, vec![]);
    }
}
