//! The project store: projects and members kept in the plugin's `kv`, so the admin API
//! can change them and the changes survive restarts. Plain Rust over a [`Kv`] role
//! trait, unit-tested on the host with a map; `lib.rs` passes the `kv` capability.
//!
//! Layout (keys of the plugin's own namespace):
//! - `projects`: a JSON array of the project names, sorted. Its presence means the
//!   store is in use; before the first change the configuration's `projects` (the
//!   seeds) answer, and the first change copies them in.
//! - `project:NAME`: one project as JSON (`name`, `public`, `members`, `groups`).
//!
//! Lookups read `project:NAME` directly; the list reads the index. A project is
//! written before it enters the index and leaves the index after its key is deleted,
//! so a crash between the two leaves at worst an index entry without a project (which
//! the list skips and the next change repairs) or a project missing from the list
//! (which `create` repairs).

use std::collections::BTreeSet;

use crate::policy::{Config, Project, Role, validate_project_name};

/// The plugin's key-value store (the `kv` host capability).
pub trait Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// Why a store call failed (mirrors `project-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    Conflict(String),
    Invalid(String),
    Unavailable(String),
}

/// Whether a member entry names a user or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    User,
    Group,
}

const INDEX: &str = "projects";
/// Longest member (user or group) name.
const MAX_MEMBER_NAME: usize = 255;

fn project_key(name: &str) -> String {
    format!("project:{name}")
}

fn unavailable(e: String) -> StoreError {
    StoreError::Unavailable(format!("rbac: project store: {e}"))
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

    /// Whether the store (not the seeds) answers.
    pub fn in_use(&self) -> Result<bool, StoreError> {
        Ok(self.kv.get(INDEX).map_err(unavailable)?.is_some())
    }

    fn read(&self, name: &str) -> Result<Option<Project>, StoreError> {
        match self.kv.get(&project_key(name)).map_err(unavailable)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| unavailable(format!("project {name:?} unreadable: {e}"))),
        }
    }

    fn write(&self, p: &Project) -> Result<(), StoreError> {
        let b = serde_json::to_vec(p).map_err(|e| unavailable(e.to_string()))?;
        self.kv.set(&project_key(&p.name), &b).map_err(|e| {
            if e.contains("too large") {
                StoreError::Invalid(format!(
                    "project {:?} has too many members to store ({} bytes)",
                    p.name,
                    b.len()
                ))
            } else {
                unavailable(e)
            }
        })
    }

    /// One project; `in_use` says whether the store or the seeds answer (callers that
    /// look up often remember it).
    pub fn lookup(&self, name: &str, in_use: bool) -> Result<Option<Project>, StoreError> {
        if in_use {
            self.read(name)
        } else {
            Ok(self.config.project(name).cloned())
        }
    }

    /// Copies the seeds in before the first change.
    fn seed(&self) -> Result<BTreeSet<String>, StoreError> {
        if let Some(index) = self.index()? {
            return Ok(index);
        }
        let mut names = BTreeSet::new();
        for p in &self.config.projects {
            self.write(p)?;
            names.insert(p.name.clone());
        }
        self.write_index(&names)?;
        Ok(names)
    }

    pub fn list(&self) -> Result<Vec<Project>, StoreError> {
        let Some(index) = self.index()? else {
            let mut seeds = self.config.projects.clone();
            seeds.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(seeds);
        };
        let mut out = Vec::with_capacity(index.len());
        for name in &index {
            if let Some(p) = self.read(name)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Project, StoreError> {
        self.lookup(name, self.in_use()?)?
            .ok_or_else(|| StoreError::NotFound(format!("no project {name:?}")))
    }

    pub fn create(&self, name: &str, public: bool) -> Result<Project, StoreError> {
        validate_project_name(name).map_err(StoreError::Invalid)?;
        let mut index = self.seed()?;
        if self.read(name)?.is_some() {
            if index.insert(name.to_owned()) {
                self.write_index(&index)?;
            }
            return Err(StoreError::Conflict(format!("project {name:?} exists")));
        }
        let p = Project {
            name: name.to_owned(),
            public,
            ..Project::default()
        };
        self.write(&p)?;
        index.insert(name.to_owned());
        self.write_index(&index)?;
        Ok(p)
    }

    /// Reads a project for a change (seeding first), applies `change`, writes it back.
    fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut Project) -> Result<(), StoreError>,
    ) -> Result<Project, StoreError> {
        let index = self.seed()?;
        let mut p = self
            .read(name)?
            .ok_or_else(|| StoreError::NotFound(format!("no project {name:?}")))?;
        change(&mut p)?;
        self.write(&p)?;
        if !index.contains(name) {
            let mut index = index;
            index.insert(name.to_owned());
            self.write_index(&index)?;
        }
        Ok(p)
    }

    pub fn set_public(&self, name: &str, public: bool) -> Result<Project, StoreError> {
        self.update(name, |p| {
            p.public = public;
            Ok(())
        })
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut index = self.seed()?;
        let existed = self.read(name)?.is_some();
        if existed {
            self.kv.delete(&project_key(name)).map_err(unavailable)?;
        }
        if index.remove(name) {
            self.write_index(&index)?;
        }
        if existed {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no project {name:?}")))
        }
    }

    pub fn set_member(
        &self,
        project: &str,
        kind: MemberKind,
        member: &str,
        role: Role,
    ) -> Result<Project, StoreError> {
        validate_member(member)?;
        self.update(project, |p| {
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
        self.update(project, |p| {
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
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::{Action, Decision, Request, Subject};

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
