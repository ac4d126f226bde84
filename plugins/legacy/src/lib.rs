//! Tests only: a `managed-authorizer` built against `pier:plugin@0.1.0` (`wit/v0.1.0`),
//! as a plugin compiled before 0.2.0 would be. It allows pulls and project management
//! (so the admin API lists its projects) and denies the rest with
//! the reason `legacy 0.1.0: ACTION on REPO for WHO`, logs each call through `log`, and
//! its `projects` export keeps one project, `legacy`, in the plugin's `kv`.
#![deny(rust_2018_idioms)]

#[cfg(target_arch = "wasm32")]
#[allow(clippy::too_many_arguments)] // in the generated bindings
mod guest {
    wit_bindgen::generate!({
        path: "../../wit/v0.1.0",
        world: "managed-authorizer",
    });

    use exports::pier::plugin::projects::{
        Guest as Projects, Member, MemberKind, Project, ProjectError,
    };
    use pier::plugin::types::{Action, Subject};
    use pier::plugin::{kv, log};

    struct Legacy;

    impl Guest for Legacy {
        fn authorize(r: AccessRequest) -> Decision {
            log::write(
                log::Level::Info,
                &format!("legacy 0.1.0 asked {:?}", r.action),
            );
            if matches!(r.action, Action::Pull | Action::Search | Action::Manage) {
                return Decision::Allow;
            }
            let who = match &r.subject {
                Subject::Anonymous => "anonymous".to_owned(),
                Subject::User(p) => p.name.clone(),
                Subject::Robot(b) => format!("robot${}", b.name),
            };
            Decision::Deny(format!(
                "legacy 0.1.0: {:?} on {} for {who}",
                r.action,
                r.repository.as_deref().unwrap_or("-")
            ))
        }

        fn authenticate(_: Credentials) -> Result<Identity, AuthError> {
            Err(AuthError::NotHandled)
        }
    }

    fn public() -> bool {
        matches!(kv::get("legacy.public"), Ok(Some(v)) if v == b"1")
    }

    fn legacy() -> Project {
        Project {
            name: "legacy".into(),
            public: public(),
            members: vec![],
        }
    }

    fn only_legacy(name: &str) -> Result<(), ProjectError> {
        if name == "legacy" {
            Ok(())
        } else {
            Err(ProjectError::NotFound(format!("no project {name}")))
        }
    }

    impl Projects for Legacy {
        fn list_projects() -> Result<Vec<Project>, ProjectError> {
            Ok(vec![legacy()])
        }

        fn get_project(name: String) -> Result<Project, ProjectError> {
            only_legacy(&name)?;
            Ok(legacy())
        }

        fn create_project(name: String, _public: bool) -> Result<Project, ProjectError> {
            Err(ProjectError::Invalid(format!(
                "legacy keeps one project, not {name}"
            )))
        }

        fn set_public(name: String, public: bool) -> Result<Project, ProjectError> {
            only_legacy(&name)?;
            kv::set("legacy.public", if public { b"1" } else { b"0" })
                .map_err(|e| ProjectError::Unavailable(format!("{e:?}")))?;
            Ok(legacy())
        }

        fn delete_project(name: String) -> Result<(), ProjectError> {
            Err(ProjectError::Invalid(format!("legacy keeps {name}")))
        }

        fn set_member(project: String, _member: Member) -> Result<Project, ProjectError> {
            Err(ProjectError::Invalid(format!(
                "legacy has no members in {project}"
            )))
        }

        fn remove_member(
            project: String,
            _kind: MemberKind,
            _name: String,
        ) -> Result<Project, ProjectError> {
            Err(ProjectError::Invalid(format!(
                "legacy has no members in {project}"
            )))
        }
    }

    export!(Legacy);
}
