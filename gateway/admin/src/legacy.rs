//! The unversioned admin endpoints of events and replication (`/replication/...`,
//! `/events/...`), kept for scripts written against them; `/api/v1` has the same and more.

use pier_dispatch::EventsRuntime;
use pier_replicate::{JobId, JobLog, ReplicateError};

/// The admin API of events and replication (JSON):
/// `GET /replication/jobs[?limit=N]`, `GET /replication/jobs/ID`,
/// `POST /replication/jobs/ID/retry`, `GET /events/deliveries[?status=S&limit=N]`,
/// `GET /events/deliveries/ID`, `POST /events/deliveries/ID/redeliver`.
/// `None` when the path is not one of these.
pub async fn admin(
    rt: Option<&EventsRuntime>,
    method: &http::Method,
    path: &str,
    query: &str,
) -> Option<(http::StatusCode, serde_json::Value)> {
    use http::StatusCode as S;
    use serde_json::json;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let known = matches!(parts.first(), Some(&"replication") | Some(&"events"));
    if !known {
        return None;
    }
    let Some(rt) = rt else {
        return Some((
            S::NOT_FOUND,
            json!({"error": "events and replication are off: configure a notifier or replicator plugin"}),
        ));
    };
    let params = pier_http::query::parse(query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = param("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize)
        .min(1000);
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    let err = |s: S, m: String| Some((s, json!({ "error": m })));
    match parts.as_slice() {
        ["replication", "jobs"] if get => match rt.replication.log().list(limit).await {
            // Without their logs (`GET /api/v1/replication/jobs/ID/log`): a listing stays small.
            Ok(jobs) => Some((
                S::OK,
                json!({ "jobs": jobs.into_iter().map(|mut j| {
                    j.log.clear();
                    j
                }).collect::<Vec<_>>() }),
            )),
            Err(e) => err(S::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        ["replication", "targets"] if get => Some((
            S::OK,
            json!({ "targets": rt.replication.targets().iter().map(|t| json!({
                "name": t.name, "url": t.url, "bandwidth": t.bandwidth,
                "authenticated": t.credentials.is_some(),
            })).collect::<Vec<_>>() }),
        )),
        ["replication", "jobs", id] | ["replication", "jobs", id, "retry"] => {
            let Ok(id) = id.parse::<u64>() else {
                return err(S::BAD_REQUEST, format!("job id {id:?} is not a number"));
            };
            let id = JobId(id);
            if parts.len() == 4 && post {
                return match rt.replication.retry(id).await {
                    Ok(r) => Some((S::ACCEPTED, json!(r))),
                    Err(e @ ReplicateError::JobNotFound(_)) => err(S::NOT_FOUND, e.to_string()),
                    Err(e @ ReplicateError::JobNotRetryable { .. }) => {
                        err(S::CONFLICT, e.to_string())
                    }
                    Err(e) => err(S::INTERNAL_SERVER_ERROR, e.to_string()),
                };
            }
            if parts.len() == 3 && get {
                return match rt.replication.log().get(id).await {
                    Ok(Some(r)) => Some((S::OK, json!(r))),
                    Ok(None) => err(S::NOT_FOUND, format!("job {id} not found")),
                    Err(e) => err(S::INTERNAL_SERVER_ERROR, e.to_string()),
                };
            }
            err(
                S::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            )
        }
        ["events", "deliveries"] if get => {
            let status = match param("status") {
                None => None,
                Some("pending") => Some(pier_events::DeliveryStatus::Pending),
                Some("delivered") => Some(pier_events::DeliveryStatus::Delivered),
                Some("failed") => Some(pier_events::DeliveryStatus::Failed),
                Some(s) => {
                    return err(
                        S::BAD_REQUEST,
                        format!("status {s:?}: use pending, delivered or failed"),
                    );
                }
            };
            let filter = pier_events::DeliveryFilter {
                status,
                event_id: param("event").and_then(|v| v.parse().ok()),
                url: None,
            };
            let page = pier_events::PageRequest {
                before: None,
                limit,
            };
            match rt.events.deliveries(&filter, &page).await {
                Ok(p) => Some((
                    S::OK,
                    json!({ "deliveries": p.items.iter().map(|d| d.log_json()).collect::<Vec<_>>() }),
                )),
                Err(e) => err(S::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        ["events", "deliveries", id] | ["events", "deliveries", id, "redeliver"] => {
            let id = match pier_events::DeliveryId::parse(id) {
                Ok(i) => i,
                Err(e) => return err(S::BAD_REQUEST, e.to_string()),
            };
            if parts.len() == 4 && post {
                return match rt.events.redeliver(&id).await {
                    Ok(d) => Some((S::ACCEPTED, d.log_json())),
                    Err(e) => err(S::NOT_FOUND, e.to_string()),
                };
            }
            if parts.len() == 3 && get {
                return match rt.events.delivery(&id).await {
                    Ok(Some(d)) => Some((S::OK, d.log_json())),
                    Ok(None) => err(S::NOT_FOUND, format!("delivery {path} not found")),
                    Err(e) => err(S::INTERNAL_SERVER_ERROR, e.to_string()),
                };
            }
            err(
                S::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            )
        }
        _ => err(S::NOT_FOUND, format!("no admin endpoint {method} {path}")),
    }
}
