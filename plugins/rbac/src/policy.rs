//! The RBAC rules as plain Rust: no WIT types, no host calls, so the unit tests below
//! run on the build machine (`cargo test -p pier-rbac --lib --target <host triple>`).
//! `lib.rs` converts the WIT records into these types and back.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a subject wants to do (mirrors `action` in `wit/types.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
    Search,
    Manage,
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Search => "search",
            Action::Manage => "manage",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A robot's grant on one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub project: String,
    pub actions: Vec<Action>,
}

/// Who is asking (mirrors `subject` in `wit/types.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Anonymous,
    User {
        name: String,
        groups: Vec<String>,
    },
    Robot {
        name: String,
        permissions: Vec<Permission>,
    },
}

/// One question: the project is `None` for system-wide actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subject: Subject,
    pub action: Action,
    pub project: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// A project role, lowest first (so `max` picks the highest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Guest,
    Developer,
    ProjectAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::ProjectAdmin => "project-admin",
        }
    }

    /// Harbor's role matrix, cut down to Pier's actions. `admin` is never a project
    /// action: only system administrators get it.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::ProjectAdmin => matches!(
                action,
                Action::Pull | Action::Push | Action::Delete | Action::Search | Action::Manage
            ),
            Role::Developer => matches!(action, Action::Pull | Action::Push | Action::Search),
            Role::Guest => matches!(action, Action::Pull | Action::Search),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plugin's `[plugins.config]` table. Unknown keys are refused so that a typo
/// (`system_admin = [...]`) is a loud error instead of a silently empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Users who may do everything, including `admin`.
    #[serde(default)]
    pub system_admins: Vec<String>,
    /// Whether projects not listed in `projects` are public.
    #[serde(default)]
    pub default_public: bool,
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Verify passwords with an LDAP simple bind (`authenticate`).
    #[serde(default)]
    pub ldap: Option<Ldap>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    /// Everyone, anonymous included, may pull and search.
    #[serde(default)]
    pub public: bool,
    /// User name -> role.
    #[serde(default)]
    pub members: BTreeMap<String, Role>,
    /// Group name -> role, for groups the identity source reports.
    #[serde(default)]
    pub groups: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ldap {
    /// The DN to bind as, with `{username}` where the login name goes, e.g.
    /// `uid={username},ou=people,dc=example,dc=org`.
    pub user_dn: String,
}

/// Placeholder in `ldap.user_dn`.
pub const USERNAME_PLACEHOLDER: &str = "{username}";

impl Config {
    /// Parses and validates the JSON document of the `config` capability.
    pub fn parse(json: &str) -> Result<Config, String> {
        let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if !doc.is_object() {
            return Err("expected a table (JSON object)".to_owned());
        }
        let cfg = Config::deserialize(doc).map_err(|e| e.to_string())?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &cfg.projects {
            validate_project_name(&p.name)?;
            if !seen.insert(p.name.as_str()) {
                return Err(format!("project {:?} is listed twice", p.name));
            }
        }
        if let Some(l) = &cfg.ldap
            && !l.user_dn.contains(USERNAME_PLACEHOLDER)
        {
            return Err(format!(
                "ldap.user_dn must contain {USERNAME_PLACEHOLDER}: {:?}",
                l.user_dn
            ));
        }
        Ok(cfg)
    }

    /// A project of the configuration (the seeds of the project store).
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name == name)
    }

    fn is_system_admin(&self, name: &str) -> bool {
        self.system_admins.iter().any(|a| a == name)
    }

    /// A user's role in a project of the configuration.
    pub fn role(&self, project: &str, user: &str, groups: &[String]) -> Option<Role> {
        self.project(project)?.role(user, groups)
    }

    /// Decides one request with the projects of the configuration.
    pub fn decide(&self, req: &Request) -> Decision {
        let project = req.project.as_deref().and_then(|p| self.project(p));
        self.decide_in(req, project)
    }

    /// Decides one request; `found` is the request's project as the store knows it
    /// (`None`: no such project).
    pub fn decide_in(&self, req: &Request, found: Option<&Project>) -> Decision {
        let action = req.action;
        // Users named in system_admins may do everything, system-wide or not.
        if let Subject::User { name, .. } = &req.subject
            && self.is_system_admin(name)
        {
            return Decision::Allow;
        }
        let who = match &req.subject {
            Subject::Anonymous => "anonymous".to_owned(),
            Subject::User { name, .. } => name.clone(),
            Subject::Robot { name, .. } => format!("robot {name}"),
        };
        if action == Action::Admin {
            return deny(format!(
                "{who}: admin is reserved for system administrators"
            ));
        }
        let Some(project) = req.project.as_deref() else {
            return deny(format!(
                "{who}: system-wide {action} is reserved for system administrators"
            ));
        };
        let public = found.map_or(self.default_public, |p| p.public);
        // Public projects: pull and search for everyone (anonymous, users, robots).
        if public && matches!(action, Action::Pull | Action::Search) {
            return Decision::Allow;
        }
        match &req.subject {
            Subject::Anonymous if public => deny(format!(
                "anonymous access to project {project}: {action} not allowed"
            )),
            Subject::Anonymous => deny(format!("anonymous access to private project {project}")),
            Subject::User { name, groups } => match found.and_then(|p| p.role(name, groups)) {
                Some(role) if role.allows(action) => Decision::Allow,
                Some(role) => deny(format!(
                    "{name} is {role} in project {project}: {action} not allowed"
                )),
                None if public => deny(format!(
                    "{name} has no role in project {project}: {action} not allowed"
                )),
                None => deny(format!(
                    "{name} is not a member of private project {project}"
                )),
            },
            Subject::Robot { name, permissions } => {
                if action == Action::Manage {
                    return deny(format!("robot {name}: manage is never granted to robots"));
                }
                let granted = |a: Action| {
                    permissions
                        .iter()
                        .any(|p| p.project == project && p.actions.contains(&a))
                };
                // A robot that may pull a repository may also find it in the catalog.
                if granted(action) || (action == Action::Search && granted(Action::Pull)) {
                    Decision::Allow
                } else {
                    deny(format!(
                        "robot {name} has no {action} permission on project {project}"
                    ))
                }
            }
        }
    }
}

fn deny(reason: String) -> Decision {
    Decision::Deny(reason)
}

impl Project {
    /// A user's role: the highest of their own and their groups'.
    pub fn role(&self, user: &str, groups: &[String]) -> Option<Role> {
        let own = self.members.get(user).copied();
        let via_groups = groups
            .iter()
            .filter_map(|g| self.groups.get(g).copied())
            .max();
        own.max(via_groups)
    }
}

/// Longest project name (its store key must fit the `kv` key limit of 256 bytes).
pub const MAX_PROJECT_NAME: usize = 128;

/// A project name is one repository path component: lowercase letters and digits,
/// separated by single `.`, `_`, `__` or `-` runs, at most [`MAX_PROJECT_NAME`] bytes.
pub fn validate_project_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separators_ok = b
        .windows(2)
        .all(|w| alnum(w[0]) || alnum(w[1]) || w == b"__" || w == b"--")
        && !name.contains("___");
    let ok = !b.is_empty()
        && b.len() <= MAX_PROJECT_NAME
        && b.iter()
            .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && separators_ok;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "project name {name:?} must be one repository path component of at most {MAX_PROJECT_NAME} bytes: lowercase letters and digits separated by '.', '_' or '-'"
        ))
    }
}

/// Why the directory could not answer a bind (mirrors `ldap-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    Denied,
    Unavailable(String),
}

/// What `authenticate` answers (mirrors `result<identity, auth-error>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// The directory vouches for this user name.
    Verified(String),
    NotHandled,
    InvalidCredentials,
    Unavailable(String),
}

/// Characters that are special in a DN (RFC 4514) plus NUL: a login name containing
/// one is refused rather than escaped, so no name can rewrite the DN it is bound as.
const DN_SPECIAL: &[char] = &[',', '=', '+', '<', '>', '#', ';', '\\', '"', '\0'];

/// The DN to bind as, or `None` when the login name is not safe to put in a DN.
pub fn user_dn(template: &str, username: &str) -> Option<String> {
    let unsafe_name = username.is_empty()
        || username.contains(DN_SPECIAL)
        // leading and trailing spaces are significant in a DN and need escaping
        || username.starts_with(' ')
        || username.ends_with(' ');
    (!unsafe_name).then(|| template.replace(USERNAME_PLACEHOLDER, username))
}

/// Verifies a login against the directory when the config has `ldap`; `bind` performs
/// the simple bind (the `ldap` host capability in the plugin).
pub fn authenticate(
    cfg: &Config,
    username: &str,
    password: &str,
    bind: impl FnOnce(&str, &str) -> Result<bool, BindError>,
) -> Authn {
    let Some(ldap) = &cfg.ldap else {
        return Authn::NotHandled;
    };
    // Robot accounts are Pier's own: don't ask the directory about them.
    if username.starts_with("robot$") {
        return Authn::NotHandled;
    }
    let Some(dn) = user_dn(&ldap.user_dn, username) else {
        return Authn::InvalidCredentials;
    };
    match bind(&dn, password) {
        Ok(true) => Authn::Verified(username.to_owned()),
        // Refused by the directory, or no directory granted: Pier's local users still
        // get their chance.
        Ok(false) | Err(BindError::Denied) => Authn::NotHandled,
        Err(BindError::Unavailable(m)) => Authn::Unavailable(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "system_admins": ["admin"],
        "default_public": false,
        "projects": [
            {"name": "team", "public": false,
             "members": {"alice": "project-admin", "bob": "developer", "carol": "guest"},
             "groups": {"devs": "developer"}},
            {"name": "library", "public": true}
        ],
        "ldap": {"user_dn": "uid={username},ou=people,dc=pier,dc=test"}
    }"#;

    const ALL: [Action; 6] = [
        Action::Pull,
        Action::Push,
        Action::Delete,
        Action::Search,
        Action::Manage,
        Action::Admin,
    ];

    fn cfg() -> Config {
        Config::parse(EXAMPLE).unwrap()
    }

    fn user(name: &str, groups: &[&str]) -> Subject {
        Subject::User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn robot(perms: &[(&str, &[Action])]) -> Subject {
        Subject::Robot {
            name: "ci".into(),
            permissions: perms
                .iter()
                .map(|(p, a)| Permission {
                    project: p.to_string(),
                    actions: a.to_vec(),
                })
                .collect(),
        }
    }

    fn decide(c: &Config, s: &Subject, action: Action, project: Option<&str>) -> Decision {
        c.decide(&Request {
            subject: s.clone(),
            action,
            project: project.map(str::to_owned),
        })
    }

    /// The actions `s` may do in `project`, in the order of `ALL`.
    fn allowed(c: &Config, s: &Subject, project: Option<&str>) -> Vec<Action> {
        ALL.into_iter()
            .filter(|a| decide(c, s, *a, project) == Decision::Allow)
            .collect()
    }

    use Action::*;

    #[test]
    fn parses_the_documented_example() {
        let c = cfg();
        assert_eq!(c.system_admins, ["admin"]);
        assert_eq!(c.projects.len(), 2);
        assert_eq!(c.projects[0].members["alice"], Role::ProjectAdmin);
        assert_eq!(c.projects[0].groups["devs"], Role::Developer);
        assert!(c.projects[1].public);
        assert!(c.projects[1].members.is_empty());
        assert_eq!(
            c.ldap.unwrap().user_dn,
            "uid={username},ou=people,dc=pier,dc=test"
        );
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
    }

    #[test]
    fn refuses_malformed_configs() {
        for (json, needle) in [
            ("[]", "expected a table"),
            (
                "{\"system_admin\": [\"x\"]}",
                "unknown field `system_admin`",
            ),
            (
                "{\"projects\": [{\"name\": \"a\", \"members\": {\"x\": \"owner\"}}]}",
                "unknown variant `owner`",
            ),
            (
                "{\"projects\": [{\"name\": \"a\"}, {\"name\": \"a\"}]}",
                "listed twice",
            ),
            (
                "{\"projects\": [{\"name\": \"a/b\"}]}",
                "must be one repository path component",
            ),
            (
                "{\"projects\": [{\"public\": true}]}",
                "missing field `name`",
            ),
            (
                "{\"ldap\": {\"user_dn\": \"uid=x,dc=test\"}}",
                "must contain {username}",
            ),
            ("{\"default_public\": \"yes\"}", "invalid type"),
            ("not json", "expected"),
        ] {
            let e = Config::parse(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn system_admins_may_do_everything() {
        let c = cfg();
        let admin = user("admin", &[]);
        for p in [Some("team"), Some("library"), Some("unknown"), None] {
            assert_eq!(allowed(&c, &admin, p), ALL, "{p:?}");
        }
    }

    #[test]
    fn role_matrix() {
        let c = cfg();
        let t = Some("team");
        assert_eq!(
            allowed(&c, &user("alice", &[]), t),
            [Pull, Push, Delete, Search, Manage]
        );
        assert_eq!(allowed(&c, &user("bob", &[]), t), [Pull, Push, Search]);
        assert_eq!(allowed(&c, &user("carol", &[]), t), [Pull, Search]);
        assert_eq!(allowed(&c, &user("dave", &[]), t), []);
        // public project: pull and search for users without a role
        for who in ["alice", "bob", "carol", "dave"] {
            assert_eq!(
                allowed(&c, &user(who, &[]), Some("library")),
                [Pull, Search],
                "{who}"
            );
        }
    }

    #[test]
    fn the_highest_of_own_and_group_roles_counts() {
        let c = cfg();
        let t = Some("team");
        assert_eq!(
            allowed(&c, &user("erin", &["devs"]), t),
            [Pull, Push, Search]
        );
        assert_eq!(
            allowed(&c, &user("erin", &["ops", "devs"]), t),
            [Pull, Push, Search]
        );
        // carol is a guest herself but a developer through her group
        assert_eq!(
            allowed(&c, &user("carol", &["devs"]), t),
            [Pull, Push, Search]
        );
        // alice's own role beats the group's
        assert_eq!(
            allowed(&c, &user("alice", &["devs"]), t),
            [Pull, Push, Delete, Search, Manage]
        );
        assert_eq!(allowed(&c, &user("erin", &["ops"]), t), []);
        assert_eq!(
            c.role("team", "carol", &["devs".into()]),
            Some(Role::Developer)
        );
        assert_eq!(c.role("library", "carol", &[]), None);
    }

    #[test]
    fn anonymous_gets_pull_and_search_on_public_projects_only() {
        let c = cfg();
        let a = Subject::Anonymous;
        assert_eq!(allowed(&c, &a, Some("library")), [Pull, Search]);
        assert_eq!(allowed(&c, &a, Some("team")), []);
        assert_eq!(allowed(&c, &a, Some("unknown")), []);
        assert_eq!(allowed(&c, &a, None), []);
        assert_eq!(
            decide(&c, &a, Pull, Some("team")),
            Decision::Deny("anonymous access to private project team".into())
        );
        assert_eq!(
            decide(&c, &a, Push, Some("library")),
            Decision::Deny("anonymous access to project library: push not allowed".into())
        );
    }

    #[test]
    fn unknown_projects_follow_default_public() {
        let mut c = cfg();
        assert_eq!(allowed(&c, &user("dave", &[]), Some("other")), []);
        assert_eq!(
            decide(&c, &user("dave", &[]), Pull, Some("other")),
            Decision::Deny("dave is not a member of private project other".into())
        );
        c.default_public = true;
        assert_eq!(
            allowed(&c, &Subject::Anonymous, Some("other")),
            [Pull, Search]
        );
        assert_eq!(
            allowed(&c, &user("dave", &[]), Some("other")),
            [Pull, Search]
        );
        // listed private projects stay private
        assert_eq!(allowed(&c, &Subject::Anonymous, Some("team")), []);
    }

    #[test]
    fn robots_get_exactly_their_permissions() {
        let c = cfg();
        let r = robot(&[("team", &[Pull])]);
        assert_eq!(allowed(&c, &r, Some("team")), [Pull, Search]);
        // library is public: pull and search for everyone, robots included
        assert_eq!(allowed(&c, &r, Some("library")), [Pull, Search]);
        assert_eq!(allowed(&c, &r, Some("other")), []);
        assert_eq!(allowed(&c, &r, None), []);
        let all = robot(&[("team", &ALL), ("other", &[Push])]);
        // never manage or admin, whatever the robot was created with
        assert_eq!(
            allowed(&c, &all, Some("team")),
            [Pull, Push, Delete, Search]
        );
        assert_eq!(allowed(&c, &all, Some("other")), [Push]);
        assert_eq!(
            decide(&c, &r, Push, Some("team")),
            Decision::Deny("robot ci has no push permission on project team".into())
        );
        assert_eq!(
            decide(&c, &all, Manage, Some("team")),
            Decision::Deny("robot ci: manage is never granted to robots".into())
        );
        // a robot named like a system admin is still a robot
        let named_admin = Subject::Robot {
            name: "admin".into(),
            permissions: vec![],
        };
        assert_eq!(allowed(&c, &named_admin, Some("team")), []);
    }

    #[test]
    fn only_system_admins_act_system_wide_or_get_admin() {
        let c = cfg();
        assert_eq!(allowed(&c, &user("alice", &[]), None), []);
        assert_eq!(
            decide(&c, &user("alice", &[]), Admin, Some("team")),
            Decision::Deny("alice: admin is reserved for system administrators".into())
        );
        assert_eq!(
            decide(&c, &user("alice", &[]), Pull, None),
            Decision::Deny("alice: system-wide pull is reserved for system administrators".into())
        );
    }

    #[test]
    fn deny_reasons_are_specific() {
        let c = cfg();
        let cases = [
            (
                user("bob", &[]),
                Delete,
                "team",
                "bob is developer in project team: delete not allowed",
            ),
            (
                user("carol", &[]),
                Push,
                "team",
                "carol is guest in project team: push not allowed",
            ),
            (
                user("alice", &[]),
                Admin,
                "team",
                "alice: admin is reserved for system administrators",
            ),
            (
                user("dave", &[]),
                Push,
                "library",
                "dave has no role in project library: push not allowed",
            ),
            (
                user("dave", &[]),
                Pull,
                "team",
                "dave is not a member of private project team",
            ),
        ];
        for (s, a, p, want) in cases {
            assert_eq!(decide(&c, &s, a, Some(p)), Decision::Deny(want.into()));
        }
    }

    #[test]
    fn user_dn_refuses_dn_syntax() {
        let t = "uid={username},ou=people,dc=pier,dc=test";
        assert_eq!(
            user_dn(t, "alice").unwrap(),
            "uid=alice,ou=people,dc=pier,dc=test"
        );
        assert_eq!(
            user_dn(t, "a.b-c_d@x").unwrap(),
            "uid=a.b-c_d@x,ou=people,dc=pier,dc=test"
        );
        for bad in [
            "",
            "a,ou=admins",
            "a=b",
            "a+b",
            "a<b",
            "a>b",
            "#a",
            "a;b",
            "a\\2c",
            "a\"b",
            "a\0b",
            " a",
            "a ",
        ] {
            assert_eq!(user_dn(t, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn authenticate_maps_bind_results() {
        let c = cfg();
        let bound = |want_dn: &'static str, r: Result<bool, BindError>| {
            move |dn: &str, pw: &str| {
                assert_eq!(dn, want_dn);
                assert_eq!(pw, "pw");
                r
            }
        };
        let dn = "uid=alice,ou=people,dc=pier,dc=test";
        assert_eq!(
            authenticate(&c, "alice", "pw", bound(dn, Ok(true))),
            Authn::Verified("alice".into())
        );
        assert_eq!(
            authenticate(&c, "alice", "pw", bound(dn, Ok(false))),
            Authn::NotHandled
        );
        assert_eq!(
            authenticate(&c, "alice", "pw", bound(dn, Err(BindError::Denied))),
            Authn::NotHandled
        );
        assert_eq!(
            authenticate(
                &c,
                "alice",
                "pw",
                bound(dn, Err(BindError::Unavailable("down".into())))
            ),
            Authn::Unavailable("down".into())
        );
        let never = |_: &str, _: &str| -> Result<bool, BindError> { panic!("must not bind") };
        assert_eq!(
            authenticate(&c, "a,dc=x", "pw", never),
            Authn::InvalidCredentials
        );
        assert_eq!(authenticate(&c, "robot$ci", "pw", never), Authn::NotHandled);
        assert_eq!(
            authenticate(&Config::default(), "alice", "pw", never),
            Authn::NotHandled
        );
    }
}
