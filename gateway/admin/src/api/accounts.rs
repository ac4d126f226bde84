//! Robot accounts and local users (the `[auth]` files `pier robot` and `pier user`
//! edit): list, create, change, remove, rotate a robot's secret. System administrators
//! only. Changes are made one at a time and take effect for new logins within a second
//! (the gateway re-reads the files when they change).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_auth::robots::{self, LOGIN_PREFIX, RobotAccount};
use pier_auth::time::rfc3339;
use pier_auth::{Action, AuthError, ProjectPermission, users};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiFailure, Caller, audit, json_response};
use crate::router::{AccountFiles, AdminState};

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

impl From<AuthError> for ApiFailure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NotFound(m) => ApiFailure::NotFound(m),
            AuthError::Exists(m) => ApiFailure::Conflict(m),
            AuthError::Invalid(m) => ApiFailure::BadRequest(m),
            other => ApiFailure::Backend(other.to_string()),
        }
    }
}

fn files(state: &AdminState) -> Result<&AccountFiles, ApiFailure> {
    state.accounts.as_ref().ok_or_else(|| {
        ApiFailure::NotManaged("accounts need access control: configure [auth]".into())
    })
}

/// Runs a file change off the async runtime (bcrypt is slow on purpose), one at a time;
/// this node's logins see it from the next request on (other nodes within a second, when
/// their watchers look).
async fn change<T: Send + 'static>(
    state: &AdminState,
    files: &AccountFiles,
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    let _one_at_a_time = files.lock.lock().await;
    let r = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Unavailable(format!("account change failed: {e}")))?;
    if let Some(access) = &state.access {
        let authn = access.authn.clone();
        // Reading the files is blocking I/O, like the change itself.
        let _ = tokio::task::spawn_blocking(move || authn.reload_accounts()).await;
    }
    r
}

fn permission_json(p: &ProjectPermission) -> Value {
    let actions: Vec<&str> = p.actions.iter().map(|a| a.as_str()).collect();
    json!({ "project": p.project, "actions": actions })
}

fn robot_json(r: &RobotAccount) -> Value {
    json!({
        "name": r.name,
        "login": format!("{LOGIN_PREFIX}{}", r.name),
        "permissions": r.permissions.iter().map(permission_json).collect::<Vec<_>>(),
        "description": r.description,
        "expiresAt": r.expires_at.map(rfc3339),
        "expired": r.expired(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionBody {
    project: String,
    actions: Vec<String>,
}

/// Longest lifetime a robot may be given (100 years).
const MAX_EXPIRY_DAYS: u32 = 36_500;

/// Longest project name (as the RBAC plugin keeps them).
const MAX_PROJECT_NAME: usize = 128;

/// A project of a robot permission: one repository path component.
fn project_name(p: &str) -> Result<(), ApiFailure> {
    let one_component =
        p.len() <= MAX_PROJECT_NAME && !p.contains('/') && p.parse::<pier_oci::RepoName>().is_ok();
    if one_component {
        Ok(())
    } else {
        Err(ApiFailure::BadRequest(format!(
            "project {p:?} must be one repository path component of at most {MAX_PROJECT_NAME} bytes"
        )))
    }
}

fn permissions(ps: Vec<PermissionBody>) -> Result<Vec<ProjectPermission>, ApiFailure> {
    if ps.is_empty() {
        return Err(ApiFailure::BadRequest(
            "a robot needs at least one permission".into(),
        ));
    }
    ps.into_iter()
        .map(|p| {
            project_name(&p.project)?;
            let actions = p
                .actions
                .iter()
                .map(|a| match Action::parse(a) {
                    Some(act @ (Action::Pull | Action::Push | Action::Delete | Action::Search)) => {
                        Ok(act)
                    }
                    _ => Err(ApiFailure::BadRequest(format!(
                        "robot action {a:?}: expected pull, push, delete or search"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            robots::parse_permission(&format!(
                "{}:{}",
                p.project,
                actions
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .map_err(ApiFailure::from)
        })
        .collect()
}

/// `GET /api/v1/robots`.
pub async fn list_robots(state: &AdminState) -> Answer {
    let f = files(state)?;
    let rs = robots::list(&f.robots)?;
    let robots: Vec<Value> = rs.iter().map(robot_json).collect();
    Ok(json_response(StatusCode::OK, &json!({ "robots": robots })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewRobot {
    name: String,
    permissions: Vec<PermissionBody>,
    #[serde(default)]
    description: String,
    /// Lifetime in days; never expires when absent.
    expires_in_days: Option<u32>,
}

/// `POST /api/v1/robots`: creates a robot; the answer holds its secret (shown once).
pub async fn create_robot(state: &AdminState, caller: &Caller, body: Bytes) -> Answer {
    let f = files(state)?;
    let b: NewRobot = super::parse_json(&body)?;
    let perms = permissions(b.permissions)?;
    let expires = match b.expires_in_days {
        Some(d) if d == 0 || d > MAX_EXPIRY_DAYS => {
            return Err(ApiFailure::BadRequest(format!(
                "expiresInDays must be from 1 to {MAX_EXPIRY_DAYS}"
            )));
        }
        Some(d) => Some(Duration::from_secs(u64::from(d) * 86_400)),
        None => None,
    };
    let (path, name, description) = (f.robots.clone(), b.name.clone(), b.description.clone());
    let r = change(state, f, move || {
        robots::add(&path, &name, perms, expires, &description)
    })
    .await;
    audit(caller, "robot.create", &b.name, &r);
    let secret = r?;
    let created = robots::list(&f.robots)?
        .into_iter()
        .find(|r| r.name == b.name)
        .ok_or_else(|| ApiFailure::Backend(format!("robot {:?} vanished", b.name)))?;
    let mut body = robot_json(&created);
    body["secret"] = Value::String(secret);
    Ok(json_response(StatusCode::CREATED, &body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotChange {
    permissions: Vec<PermissionBody>,
    description: Option<String>,
}

/// `PATCH /api/v1/robots/{name}` `{"permissions", "description"}`.
pub async fn update_robot(state: &AdminState, caller: &Caller, name: &str, body: Bytes) -> Answer {
    let f = files(state)?;
    let b: RobotChange = super::parse_json(&body)?;
    let perms = permissions(b.permissions)?;
    let (path, n) = (f.robots.clone(), name.to_owned());
    let r = change(state, f, move || {
        robots::update(&path, &n, perms, b.description.as_deref())
    })
    .await;
    audit(caller, "robot.update", name, &r);
    Ok(json_response(StatusCode::OK, &robot_json(&r?)))
}

/// `DELETE /api/v1/robots/{name}`.
pub async fn delete_robot(state: &AdminState, caller: &Caller, name: &str) -> Answer {
    let f = files(state)?;
    let (path, n) = (f.robots.clone(), name.to_owned());
    let r = change(state, f, move || robots::delete(&path, &n)).await;
    audit(caller, "robot.delete", name, &r);
    r?;
    Ok(super::no_content())
}

/// `POST /api/v1/robots/{name}/secret`: a new secret (shown once); the old one stops
/// working.
pub async fn rotate_robot(state: &AdminState, caller: &Caller, name: &str) -> Answer {
    let f = files(state)?;
    let (path, n) = (f.robots.clone(), name.to_owned());
    let r = change(state, f, move || robots::rotate(&path, &n)).await;
    audit(caller, "robot.rotate", name, &r);
    let secret = r?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "name": name, "login": format!("{LOGIN_PREFIX}{name}"), "secret": secret }),
    ))
}

/// `GET /api/v1/users`.
pub async fn list_users(state: &AdminState) -> Answer {
    let f = files(state)?;
    let names = users::list(&f.users)?;
    let users: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
    Ok(json_response(StatusCode::OK, &json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
}

/// `POST /api/v1/users` `{"name", "password"}`.
pub async fn create_user(state: &AdminState, caller: &Caller, body: Bytes) -> Answer {
    let f = files(state)?;
    let b: NewUser = super::parse_json(&body)?;
    let printable = |c: char| c.is_ascii_graphic() || c == ' ';
    if b.password.is_empty() || b.password.len() > 72 || !b.password.chars().all(printable) {
        return Err(ApiFailure::BadRequest(
            "passwords set through the API are 1 to 72 printable ASCII characters".into(),
        ));
    }
    let (path, name) = (f.users.clone(), b.name.clone());
    let r = change(state, f, move || users::add(&path, &name, &b.password)).await;
    audit(caller, "user.create", &b.name, &r);
    r?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "name": b.name }),
    ))
}

/// `DELETE /api/v1/users/{name}`.
pub async fn delete_user(state: &AdminState, caller: &Caller, name: &str) -> Answer {
    let f = files(state)?;
    if caller.actor == name {
        return Err(ApiFailure::Conflict(
            "you cannot delete the account you are signed in with".into(),
        ));
    }
    let (path, n) = (f.users.clone(), name.to_owned());
    let r = change(state, f, move || users::delete(&path, &n)).await;
    audit(caller, "user.delete", name, &r);
    r?;
    Ok(super::no_content())
}
