//! Project quotas: `GET /api/v1/quotas` lists the projects with a limit and what they
//! use; `GET /api/v1/quotas/{project}` shows one project (any project, limit or not);
//! `PUT /api/v1/quotas/{project}` with `{"limit": BYTES}` sets its limit, `{"limit":
//! null}` removes it. Usage counts each blob and manifest once per project (see
//! `pier_core::quota`).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_core::Registry;
use serde_json::{Value, json};

use super::{ApiFailure, Caller, audit, json_response, parse_json, project_name};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

fn quotas(registry: &Registry) -> Result<&std::sync::Arc<pier_core::quota::Quotas>, ApiFailure> {
    registry
        .quotas()
        .ok_or_else(|| ApiFailure::NotManaged("quotas are not configured".into()))
}

async fn entry(
    registry: &Registry,
    project: &str,
    limit: Option<u64>,
) -> Result<Value, ApiFailure> {
    let usage = registry.project_usage(project).await?;
    Ok(json!({
        "project": project,
        "limit": limit,
        "used": usage.bytes(),
        "items": usage.items(),
    }))
}

/// `GET /api/v1/quotas`.
pub async fn list(state: &AdminState) -> Answer {
    let q = quotas(&state.registry)?;
    let mut out = Vec::new();
    for (project, limit) in q.limits().limits().await? {
        out.push(entry(&state.registry, &project, Some(limit)).await?);
    }
    Ok(json_response(StatusCode::OK, &json!({ "quotas": out })))
}

/// `GET /api/v1/quotas/{project}`.
pub async fn get(state: &AdminState, name: &str) -> Answer {
    let project = project_name(name)?;
    let q = quotas(&state.registry)?;
    let limit = q.limits().limits().await?.get(&project).copied();
    Ok(json_response(
        StatusCode::OK,
        &entry(&state.registry, &project, limit).await?,
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuota {
    /// Bytes; `null` removes the limit.
    limit: Option<u64>,
}

/// `PUT /api/v1/quotas/{project}`.
pub async fn set(state: &AdminState, caller: &Caller, name: &str, body: Bytes) -> Answer {
    let project = project_name(name)?;
    let q = quotas(&state.registry)?;
    // `limit` must be there: `null` removes a limit, a missing key is a mistake.
    let fields: serde_json::Map<String, Value> = parse_json(&body)?;
    if !fields.contains_key("limit") {
        return Err(ApiFailure::BadRequest(
            "the body needs \"limit\": bytes, or null to remove the limit".into(),
        ));
    }
    let SetQuota { limit } = parse_json(&body)?;
    let outcome = q.limits().set(&project, limit).await;
    let target = match limit {
        Some(l) => format!("{project} limit={l}"),
        None => format!("{project} limit=none"),
    };
    audit(caller, "set_quota", &target, &outcome);
    outcome?;
    q.forget(&project);
    Ok(json_response(
        StatusCode::OK,
        &entry(&state.registry, &project, limit).await?,
    ))
}
