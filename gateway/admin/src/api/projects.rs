//! Projects and their members, kept by the authorizer plugin (`pier:plugin/projects`):
//! list, create, make public or private, delete, add or change and remove members.
//! Project admins may read and change their own projects' members; creating and
//! deleting projects is for system administrators.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_auth::Action;
use pier_auth::projects::{Member, MemberKind, Project, ProjectError, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiFailure, Caller, audit, json_response, page_params, percent_encode};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

impl From<ProjectError> for ApiFailure {
    fn from(e: ProjectError) -> Self {
        match e {
            ProjectError::NotFound(m) => ApiFailure::NotFound(m),
            ProjectError::Conflict(m) => ApiFailure::Conflict(m),
            ProjectError::Invalid(m) => ApiFailure::BadRequest(m),
            ProjectError::Unavailable(m) => ApiFailure::Backend(m),
            e @ ProjectError::NotManaged => ApiFailure::NotManaged(e.to_string()),
        }
    }
}

fn store(
    state: &AdminState,
) -> Result<std::sync::Arc<dyn pier_auth::projects::ProjectStore>, ApiFailure> {
    state
        .plugins
        .projects()
        .ok_or_else(|| ApiFailure::from(ProjectError::NotManaged))
}

pub(crate) fn project_json(p: &Project) -> Value {
    let members: Vec<Value> = p
        .members
        .iter()
        .map(|m| json!({ "kind": m.kind.as_str(), "name": m.name, "role": m.role.as_str() }))
        .collect();
    json!({ "name": p.name, "public": p.public, "members": members })
}

/// `GET /api/v1/me`: who the credentials belong to and whether they may administer the
/// whole registry (the console shows its pages accordingly).
pub async fn me(state: &AdminState, caller: &Caller) -> Answer {
    let system_admin = match (&state.access, &caller.subject) {
        (Some(ac), Some(s)) => ac
            .allows_system(s, Action::Admin, &caller.client)
            .await
            .map_err(|e| ApiFailure::Backend(e.to_string()))?,
        _ => true,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": caller.actor, "systemAdmin": system_admin }),
    ))
}

/// `GET /api/v1/projects?n=&last=`: the projects the caller manages (all of them for a
/// system administrator), sorted, a page at a time.
pub async fn list(state: &AdminState, caller: &Caller, query: &[(String, String)]) -> Answer {
    let (n, last) = page_params(query)?;
    let all = store(state)?.list().await?;
    let mut visible = Vec::new();
    for p in all
        .iter()
        .filter(|p| last.as_deref().is_none_or(|l| p.name.as_str() > l))
    {
        if caller.may(state, Action::Manage, &p.name).await? {
            visible.push(p);
            if visible.len() > n {
                break;
            }
        }
    }
    let more = visible.len() > n;
    visible.truncate(n);
    let next = match (more, visible.last()) {
        (true, Some(l)) => Some(format!(
            "/api/v1/projects?n={n}&last={}",
            percent_encode(&l.name)
        )),
        _ => None,
    };
    let projects: Vec<Value> = visible.iter().map(|p| project_json(p)).collect();
    Ok(super::repos::paged(json!({ "projects": projects }), next))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    public: bool,
}

/// `POST /api/v1/projects` `{"name", "public"}`.
pub async fn create(state: &AdminState, caller: &Caller, body: Bytes) -> Answer {
    let p: NewProject = super::parse_json(&body)?;
    let r = store(state)?.create(&p.name, p.public).await;
    audit(caller, "project.create", &p.name, &r);
    Ok(json_response(StatusCode::CREATED, &project_json(&r?)))
}

/// `GET /api/v1/projects/{name}`.
pub async fn get(state: &AdminState, name: &str) -> Answer {
    let p = store(state)?.get(name).await?;
    Ok(json_response(StatusCode::OK, &project_json(&p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectChange {
    public: bool,
}

/// `PATCH /api/v1/projects/{name}` `{"public"}`.
pub async fn update(state: &AdminState, caller: &Caller, name: &str, body: Bytes) -> Answer {
    let c: ProjectChange = super::parse_json(&body)?;
    let r = store(state)?.set_public(name, c.public).await;
    audit(caller, "project.update", name, &r);
    Ok(json_response(StatusCode::OK, &project_json(&r?)))
}

/// `DELETE /api/v1/projects/{name}`: refused (409) while it has repositories.
pub async fn delete(state: &AdminState, caller: &Caller, name: &str) -> Answer {
    let repos = state.registry.catalog(None, None).await?;
    if let Some(r) = repos
        .items
        .iter()
        .find(|r| r.as_str() == name || r.as_str().starts_with(&format!("{name}/")))
    {
        return Err(ApiFailure::Conflict(format!(
            "project {name:?} still has repositories (e.g. {r}): delete them first"
        )));
    }
    let r = store(state)?.delete(name).await;
    audit(caller, "project.delete", name, &r);
    r?;
    Ok(super::no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRole {
    role: String,
}

/// Member names: 1 to 255 printable ASCII characters without spaces or `%` (user names
/// are at most 64 of them; groups are named by the identity source). `%` is refused as
/// in user names: it does not survive common HTTP clients in a path.
fn member_name(name: &str) -> Result<(), ApiFailure> {
    if name.is_empty()
        || name.len() > 255
        || !name.chars().all(|c| c.is_ascii_graphic() && c != '%')
    {
        return Err(ApiFailure::BadRequest(format!(
            "member name {name:?}: use 1 to 255 printable ASCII characters without spaces or '%'"
        )));
    }
    Ok(())
}

fn kind(s: &str) -> Result<MemberKind, ApiFailure> {
    MemberKind::parse(s)
        .ok_or_else(|| ApiFailure::BadRequest(format!("member kind {s:?}: expected user or group")))
}

/// `PUT /api/v1/projects/{name}/members/{kind}/{member}` `{"role"}`: adds the member
/// or changes its role.
pub async fn set_member(
    state: &AdminState,
    caller: &Caller,
    project: &str,
    member_kind: &str,
    member: &str,
    body: Bytes,
) -> Answer {
    let kind = kind(member_kind)?;
    member_name(member)?;
    let m: MemberRole = super::parse_json(&body)?;
    let role = Role::parse(&m.role).ok_or_else(|| {
        ApiFailure::BadRequest(format!(
            "role {:?}: expected project-admin, developer or guest",
            m.role
        ))
    })?;
    let member = Member {
        kind,
        name: member.to_owned(),
        role,
    };
    let r = store(state)?.set_member(project, &member).await;
    audit(
        caller,
        "project.member.set",
        &format!(
            "{project} {} {} {}",
            kind.as_str(),
            member.name,
            role.as_str()
        ),
        &r,
    );
    Ok(json_response(StatusCode::OK, &project_json(&r?)))
}

/// `DELETE /api/v1/projects/{name}/members/{kind}/{member}`.
pub async fn remove_member(
    state: &AdminState,
    caller: &Caller,
    project: &str,
    member_kind: &str,
    member: &str,
) -> Answer {
    let kind = kind(member_kind)?;
    let r = store(state)?.remove_member(project, kind, member).await;
    audit(
        caller,
        "project.member.remove",
        &format!("{project} {} {member}", kind.as_str()),
        &r,
    );
    Ok(json_response(StatusCode::OK, &project_json(&r?)))
}
