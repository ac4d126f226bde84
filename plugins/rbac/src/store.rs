//! The project store: projects and members kept in the plugin's `kv` (through
//! `pier-kv-records`), so the admin API can change them and the changes survive
//! restarts; `lib.rs` passes the `kv` capability.
//!
//! Layout (keys of the plugin's own namespace):
//! - `projects`: a JSON array of the project names, sorted. Its presence means the
//!   store is in use; before the first change the configuration's `projects` (the
//!   seeds) answer, and the first change copies them in.
//! - `project:NAME`: one project as JSON (`name`, `public`, `members`, `groups`).
//!
//! Lookups read `project:NAME` directly; the list reads the index. How a crash between
//! the two writes of a change is repaired: `pier-kv-records`.

pub use pier_kv_records::{Kv, KvFailure, StoreError};
use pier_kv_records::{Layout, Record, Records};

use crate::policy::{Config, Project, Role, validate_project_name};

/// Whether a member entry names a user or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    User,
    Group,
}

/// Longest member (user or group) name.
const MAX_MEMBER_NAME: usize = 255;

const LAYOUT: Layout = Layout {
    index: "projects",
    prefix: "project:",
    noun: "project",
    owner: "rbac: project store",
};

impl Record for Project {
    fn name(&self) -> &str {
        &self.name
    }
    fn too_large(&self, bytes: usize) -> String {
        format!(
            "project {:?} has too many members to store ({bytes} bytes)",
            self.name
        )
    }
}

/// The store over `kv`, seeded from `config`.
pub struct Store<'a, K: Kv> {
    records: Records<'a, K, Project>,
}

impl<'a, K: Kv> Store<'a, K> {
    pub fn new(kv: &'a K, config: &'a Config) -> Self {
        Store {
            records: Records::new(kv, &config.projects, LAYOUT),
        }
    }

    /// Whether the store (not the seeds) answers.
    pub fn in_use(&self) -> Result<bool, StoreError> {
        self.records.in_use()
    }

    /// One project; `in_use` says whether the store or the seeds answer (callers that
    /// look up often remember it).
    pub fn lookup(&self, name: &str, in_use: bool) -> Result<Option<Project>, StoreError> {
        self.records.lookup(name, in_use)
    }

    pub fn list(&self) -> Result<Vec<Project>, StoreError> {
        self.records.list()
    }

    pub fn get(&self, name: &str) -> Result<Project, StoreError> {
        self.records.get(name)
    }

    pub fn create(&self, name: &str, public: bool) -> Result<Project, StoreError> {
        validate_project_name(name).map_err(StoreError::Invalid)?;
        self.records.create(Project {
            name: name.to_owned(),
            public,
            ..Project::default()
        })
    }

    pub fn set_public(&self, name: &str, public: bool) -> Result<Project, StoreError> {
        self.records.update(name, |p| {
            p.public = public;
            Ok(())
        })
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.records.delete(name)
    }

    pub fn set_member(
        &self,
        project: &str,
        kind: MemberKind,
        member: &str,
        role: Role,
    ) -> Result<Project, StoreError> {
        validate_member(member)?;
        self.records.update(project, |p| {
            let table = match kind {
                MemberKind::User => &mut p.members,
                MemberKind::Group => &mut p.groups,
            };
            table.insert(member.to_owned(), role);
            Ok(())
        })
    }

    pub fn remove_member(
        &self,
        project: &str,
        kind: MemberKind,
        member: &str,
    ) -> Result<Project, StoreError> {
        self.records.update(project, |p| {
            let (table, what) = match kind {
                MemberKind::User => (&mut p.members, "user"),
                MemberKind::Group => (&mut p.groups, "group"),
            };
            match table.remove(member) {
                Some(_) => Ok(()),
                None => Err(StoreError::NotFound(format!(
                    "{what} {member:?} is not a member of project {project:?}"
                ))),
            }
        })
    }
}

fn validate_member(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > MAX_MEMBER_NAME || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "member name {name:?} must be 1 to {MAX_MEMBER_NAME} bytes without control characters"
        )));
    }
    if name.starts_with("robot$") {
        return Err(StoreError::Invalid(
            "robots are not members: give a robot its permissions when creating it".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pier_kv_records::testing::MapKv;

    use super::*;
    use crate::policy::{Action, Decision, Request, Subject};

    fn seeds() -> Config {
        Config::parse(
            r#"{"system_admins": ["admin"], "projects": [
                {"name": "team", "members": {"alice": "project-admin"}},
                {"name": "library", "public": true}]}"#,
        )
        .unwrap()
    }

    fn push_by(store: &Store<'_, MapKv>, cfg: &Config, user: &str, project: &str) -> Decision {
        let req = Request {
            subject: Subject::User {
                name: user.into(),
                groups: vec![],
            },
            action: Action::Push,
            project: Some(project.into()),
        };
        let found = store.lookup(project, store.in_use().unwrap()).unwrap();
        cfg.decide_in(&req, found.as_ref())
    }

    #[test]
    fn seeds_answer_until_the_first_change_then_the_store_does() {
        let (kv, cfg) = (MapKv::default(), seeds());
        let s = Store::new(&kv, &cfg);
        assert!(!s.in_use().unwrap());
        let names: Vec<_> = s.list().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["library", "team"]);
        assert!(kv.map.borrow().is_empty(), "reading writes nothing");

        assert!(matches!(
            push_by(&s, &cfg, "bob", "team"),
            Decision::Deny(_)
        ));
        s.set_member("team", MemberKind::User, "bob", Role::Developer)
            .unwrap();
        assert!(s.in_use().unwrap());
        assert_eq!(push_by(&s, &cfg, "bob", "team"), Decision::Allow);
        // the seeds were copied in: alice keeps her role, library stays public
        assert_eq!(push_by(&s, &cfg, "alice", "team"), Decision::Allow);
        assert!(s.get("library").unwrap().public);

        // a new store over the same kv (a restart) sees the same
        let s2 = Store::new(&kv, &cfg);
        assert_eq!(
            s2.get("team").unwrap().members.get("bob"),
            Some(&Role::Developer)
        );
    }

    #[test]
    fn create_change_and_delete_projects() {
        let (kv, cfg) = (MapKv::default(), seeds());
        let s = Store::new(&kv, &cfg);
        let p = s.create("apps", false).unwrap();
        assert_eq!((p.name.as_str(), p.public), ("apps", false));
        assert!(matches!(
            s.create("apps", true),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.create("Apps", true),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(s.create("a/b", true), Err(StoreError::Invalid(_))));
        assert!(s.set_public("apps", true).unwrap().public);
        s.set_member("apps", MemberKind::Group, "devs", Role::Guest)
            .unwrap();
        let p = s
            .set_member("apps", MemberKind::Group, "devs", Role::Developer)
            .unwrap();
        assert_eq!(p.groups.get("devs"), Some(&Role::Developer));
        assert!(matches!(
            s.remove_member("apps", MemberKind::User, "devs"),
            Err(StoreError::NotFound(_))
        ));
        assert!(
            s.remove_member("apps", MemberKind::Group, "devs")
                .unwrap()
                .groups
                .is_empty()
        );
        let names: Vec<_> = s.list().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["apps", "library", "team"]);
        s.delete("team").unwrap();
        assert!(matches!(s.get("team"), Err(StoreError::NotFound(_))));
        assert!(matches!(s.delete("team"), Err(StoreError::NotFound(_))));
        // a deleted seed stays deleted: the seeds are not read again
        assert!(matches!(
            push_by(&s, &cfg, "alice", "team"),
            Decision::Deny(_)
        ));
        assert!(matches!(
            s.set_member("nope", MemberKind::User, "x", Role::Guest),
            Err(StoreError::NotFound(_))
        ));
        for bad in ["", "robot$ci", "a\nb"] {
            assert!(
                matches!(
                    s.set_member("apps", MemberKind::User, bad, Role::Guest),
                    Err(StoreError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_store_that_dies_mid_change_is_repaired_by_the_next() {
        let (kv, cfg) = (MapKv::default(), Config::default());
        let s = Store::new(&kv, &cfg);
        // seed (index read + index write), read, then the project write succeeds and
        // the index write fails
        *kv.fail_after.borrow_mut() = Some(4);
        assert!(matches!(
            s.create("apps", false),
            Err(StoreError::Unavailable(_))
        ));
        *kv.fail_after.borrow_mut() = None;
        assert!(s.list().unwrap().is_empty(), "not listed yet");
        // the project works (lookups read its key) and a retry lists it
        assert_eq!(s.get("apps").unwrap().name, "apps");
        assert!(matches!(
            s.create("apps", false),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn project_names_follow_repository_components() {
        for ok in ["team", "a", "a.b", "a_b", "a__b", "a-b", "a--b", "x9"] {
            assert!(validate_project_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a._b", "a___b", "a/b", "a b", ".a"] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
        }
    }
}
