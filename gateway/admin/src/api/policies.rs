//! `GET /api/v1/policies/{project}`: what governs a project, in one answer (the
//! console's project page): the admission plugins whose `repositories` patterns can
//! match its repositories, its quota (limit and use), and the retention plugin with the
//! project's last run. Open to the project's admins, like its quota.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::{ApiFailure, json_response, project_name, retention};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

/// Whether a repository of `project` can match one of `patterns` (none: every
/// repository): a pattern without wildcards names one repository, whose project is its
/// first segment; with wildcards, its literal start (up to the first) agrees with
/// `project/`.
fn may_govern(patterns: &[String], project: &str) -> bool {
    let scope = format!("{project}/");
    patterns.is_empty()
        || patterns.iter().any(|p| match p.find(['*', '?']) {
            None => p.split('/').next() == Some(project),
            Some(at) => scope.starts_with(&p[..at]) || p[..at].starts_with(&scope),
        })
}

/// `GET /api/v1/policies/{project}`.
pub async fn get(state: &AdminState, name: &str) -> Answer {
    let project = project_name(name)?;
    let admission: Vec<Value> = state
        .plugins
        .admissions()
        .into_iter()
        .filter_map(|(name, p)| {
            let patterns = p.repositories();
            may_govern(&patterns, &project)
                .then(|| json!({ "name": name, "repositories": patterns, "digest": p.digest() }))
        })
        .collect();
    let quota = match state.registry.quotas() {
        Some(q) => {
            let limit = q.limits().limits().await?.get(&project).copied();
            let usage = state.registry.project_usage(&project).await?;
            json!({ "limit": limit, "used": usage.bytes(), "items": usage.items() })
        }
        None => Value::Null,
    };
    let retention = match state.plugins.retention() {
        Some((plugin, _)) => json!({
            "plugin": plugin,
            "lastRun": retention::last_report(state, &project).await?,
        }),
        None => Value::Null,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "project": project,
            "admission": admission,
            "quota": quota,
            "retention": retention,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::may_govern;

    #[test]
    fn patterns_that_can_reach_a_project() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(may_govern(&[], "team"));
        assert!(may_govern(&p(&["*"]), "team"));
        assert!(may_govern(&p(&["team/*"]), "team"));
        assert!(may_govern(&p(&["team/app"]), "team"));
        assert!(may_govern(&p(&["te*"]), "team"));
        assert!(may_govern(&p(&["other/*", "team/?pp"]), "team"));
        assert!(!may_govern(&p(&["other/*"]), "team"));
        assert!(!may_govern(&p(&["teams/*"]), "team"));
        assert!(!may_govern(&p(&["team"]), "teamwork"));
        assert!(may_govern(&p(&["team"]), "team"));
        assert!(may_govern(&p(&["team*"]), "teamwork"));
    }
}
