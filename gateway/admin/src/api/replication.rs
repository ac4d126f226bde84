//! Replication jobs (with their logs) and targets, webhook deliveries: list a page at a
//! time, inspect, retry, redeliver. Both need events on (a notifier or replicator plugin
//! configured); without, every call answers 409 saying so.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_events::{DeliveryFilter, DeliveryId, DeliveryKey, DeliveryStatus, PageRequest};
use pier_replicate::{JobId, JobLog, JobRecord, JobReport, JobState, ReplicateError};
use serde_json::{Value, json};

use super::repos::paged;
use super::{ApiFailure, Caller, json_response, page_params};
use crate::router::AdminState;
use pier_dispatch::EventsRuntime;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

/// Events and replication, or the 409 that says they are off.
pub(super) fn runtime(state: &AdminState) -> Result<&EventsRuntime, ApiFailure> {
    state.events.as_deref().ok_or_else(|| {
        ApiFailure::Conflict(
            "events and replication are not configured: add a notifier or replicator plugin \
             ([[plugins]] with hook = \"notifier\" or \"replicator\"; see [events] and \
             [replication])"
                .into(),
        )
    })
}

fn param<'q>(query: &'q [(String, String)], k: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

/// RFC 3339 of Unix milliseconds.
pub(crate) fn time_ms(ms: u64) -> String {
    pier_events::Timestamp::from_micros(ms.saturating_mul(1000)).to_rfc3339()
}

fn report_json(r: &JobReport) -> Value {
    json!({
        "started": time_ms(r.started_ms),
        "finished": time_ms(r.finished_ms),
        "digest": r.digest.as_ref().map(ToString::to_string),
        "bytes": r.bytes,
        "blobsCopied": r.blobs_copied,
        "blobsSkipped": r.blobs_skipped,
        "blobsMounted": r.blobs_mounted,
        "manifests": r.manifests,
        "manifestsSkipped": r.manifests_skipped,
        "resumes": r.resumes,
        "resumedBytesSaved": r.resumed_bytes_saved,
        "blobRetries": r.blob_retries,
        "error": r.error,
    })
}

/// A job as the API shows it (its log apart: `GET .../log`).
fn job_json(r: &JobRecord) -> Value {
    json!({
        "id": r.id.0,
        "rule": r.spec.rule,
        "source": r.spec.source,
        "destination": r.spec.destination,
        "sourceRepository": r.spec.src_repo,
        "destinationRepository": r.spec.dst_repo,
        "reference": r.spec.reference,
        "delete": r.spec.delete,
        "state": r.state.to_string(),
        "attempts": r.attempts,
        "updated": time_ms(r.updated_ms),
        "report": r.report.as_ref().map(report_json),
    })
}

/// A job id: a number from 0 to 2^63 - 1 (the document's `int64`).
fn job_id(s: &str) -> Result<JobId, ApiFailure> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(JobId(n as u64)),
        _ => Err(ApiFailure::BadRequest(format!(
            "job id {s:?}: expected a number from 0 to {}",
            i64::MAX
        ))),
    }
}

/// The job log or the delivery outbox failed.
fn failed(e: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::Backend(e.to_string())
}

/// `GET /api/v1/replication/jobs?n=&last=&status=`: newest first.
pub async fn jobs(state: &AdminState, query: &[(String, String)]) -> Answer {
    let (n, last) = page_params(query)?;
    let before = last.as_deref().map(job_id).transpose()?;
    let status = match param(query, "status") {
        None => None,
        Some("queued") => Some(JobState::Queued),
        Some("running") => Some(JobState::Running),
        Some("succeeded") => Some(JobState::Succeeded),
        Some("failed") => Some(JobState::Failed),
        Some(s) => {
            return Err(ApiFailure::BadRequest(format!(
                "status {s:?}: use queued, running, succeeded or failed"
            )));
        }
    };
    let rt = runtime(state)?;
    // Every job is in memory already (the log keeps them all).
    let all = rt
        .replication
        .log()
        .list(usize::MAX)
        .await
        .map_err(failed)?;
    let mut matching = all
        .iter()
        .filter(|r| before.is_none_or(|b| r.id < b))
        .filter(|r| status.is_none_or(|s| r.state == s));
    let page: Vec<&JobRecord> = matching.by_ref().take(n).collect();
    let next = match (page.last(), matching.next()) {
        (Some(l), Some(_)) => {
            let mut url = format!("/api/v1/replication/jobs?n={n}&last={}", l.id);
            if let Some(s) = status {
                url.push_str(&format!("&status={s}"));
            }
            Some(url)
        }
        _ => None,
    };
    let jobs: Vec<Value> = page.into_iter().map(job_json).collect();
    Ok(paged(json!({ "jobs": jobs }), next))
}

async fn record(rt: &EventsRuntime, id: &str) -> Result<JobRecord, ApiFailure> {
    let id = job_id(id)?;
    rt.replication
        .log()
        .get(id)
        .await
        .map_err(failed)?
        .ok_or_else(|| ApiFailure::NotFound(format!("replication job {id} not found")))
}

/// `GET /api/v1/replication/jobs/{id}`.
pub async fn job(state: &AdminState, id: &str) -> Answer {
    job_id(id)?;
    let r = record(runtime(state)?, id).await?;
    Ok(json_response(StatusCode::OK, &job_json(&r)))
}

/// `GET /api/v1/replication/jobs/{id}/log`: the job's last lines, oldest first.
pub async fn job_log(state: &AdminState, id: &str) -> Answer {
    job_id(id)?;
    let r = record(runtime(state)?, id).await?;
    let lines: Vec<Value> = r
        .log
        .iter()
        .map(|l| json!({ "time": time_ms(l.time_ms), "message": l.message }))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "id": r.id.0, "state": r.state.to_string(), "lines": lines }),
    ))
}

/// `POST /api/v1/replication/jobs/{id}/retry`: a failed or finished job queued again.
pub async fn retry(state: &AdminState, caller: &Caller, id: &str) -> Answer {
    let jid = job_id(id)?;
    let rt = runtime(state)?;
    let outcome = rt.replication.retry(jid).await;
    audit(
        caller,
        "retry_replication_job",
        &jid.to_string(),
        outcome.as_ref().err(),
    );
    match outcome {
        Ok(r) => Ok(json_response(StatusCode::ACCEPTED, &job_json(&r))),
        Err(e @ ReplicateError::JobNotFound(_)) => Err(ApiFailure::NotFound(e.to_string())),
        Err(e @ ReplicateError::JobNotRetryable { .. }) => Err(ApiFailure::Conflict(e.to_string())),
        Err(e) => Err(failed(e)),
    }
}

/// `GET /api/v1/replication/targets`.
pub fn targets(state: &AdminState) -> Answer {
    let rt = runtime(state)?;
    let targets: Vec<Value> = rt
        .replication
        .targets()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "url": t.url,
                "bandwidth": t.bandwidth,
                "authenticated": t.credentials.is_some(),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "targets": targets }),
    ))
}

/// A `last` cursor of the deliveries: `EVENT.INDEX` of the last one seen.
fn delivery_cursor(s: &str) -> Result<DeliveryKey, ApiFailure> {
    let bad = || {
        ApiFailure::BadRequest(format!(
            "last={s:?}: expected EVENT.INDEX, as a previous page's next link gives it"
        ))
    };
    let (e, i) = s.split_once('.').ok_or_else(bad)?;
    Ok(DeliveryKey {
        event_id: e.parse().map_err(|_| bad())?,
        index: i.parse().map_err(|_| bad())?,
    })
}

/// `GET /api/v1/events/deliveries?n=&last=&status=`: newest first.
pub async fn deliveries(state: &AdminState, query: &[(String, String)]) -> Answer {
    let (n, last) = page_params(query)?;
    let before = last.as_deref().map(delivery_cursor).transpose()?;
    let status = match param(query, "status") {
        None => None,
        Some("pending") => Some(DeliveryStatus::Pending),
        Some("delivered") => Some(DeliveryStatus::Delivered),
        Some("failed") => Some(DeliveryStatus::Failed),
        Some(s) => {
            return Err(ApiFailure::BadRequest(format!(
                "status {s:?}: use pending, delivered or failed"
            )));
        }
    };
    let rt = runtime(state)?;
    let filter = DeliveryFilter {
        status,
        ..DeliveryFilter::default()
    };
    let page = rt
        .events
        .deliveries(&filter, &PageRequest { before, limit: n })
        .await
        .map_err(failed)?;
    let next = page.next.map(|k| {
        let mut url = format!(
            "/api/v1/events/deliveries?n={n}&last={}.{}",
            k.event_id, k.index
        );
        if let Some(s) = param(query, "status") {
            url.push_str(&format!("&status={s}"));
        }
        url
    });
    let items: Vec<Value> = page.items.iter().map(|d| d.log_json()).collect();
    Ok(paged(json!({ "deliveries": items }), next))
}

fn delivery_id(s: &str) -> Result<DeliveryId, ApiFailure> {
    DeliveryId::parse(s).map_err(|e| ApiFailure::BadRequest(e.to_string()))
}

/// `GET /api/v1/events/deliveries/{id}`.
pub async fn delivery(state: &AdminState, id: &str) -> Answer {
    let did = delivery_id(id)?;
    let rt = runtime(state)?;
    match rt.events.delivery(&did).await.map_err(failed)? {
        Some(d) => Ok(json_response(StatusCode::OK, &d.log_json())),
        None => Err(ApiFailure::NotFound(format!("delivery {id} not found"))),
    }
}

/// `POST /api/v1/events/deliveries/{id}/redeliver`: sent again from attempt 1.
pub async fn redeliver(state: &AdminState, caller: &Caller, id: &str) -> Answer {
    let did = delivery_id(id)?;
    let rt = runtime(state)?;
    if rt.events.delivery(&did).await.map_err(failed)?.is_none() {
        return Err(ApiFailure::NotFound(format!("delivery {id} not found")));
    }
    let outcome = rt.events.redeliver(&did).await;
    audit(caller, "redeliver", id, outcome.as_ref().err());
    let d = outcome.map_err(failed)?;
    Ok(json_response(StatusCode::ACCEPTED, &d.log_json()))
}

/// One audit line per change attempted, with its outcome.
fn audit(caller: &Caller, action: &'static str, target: &str, error: Option<&impl ToString>) {
    let result = error.map_or_else(|| "ok".to_owned(), ToString::to_string);
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action,
        reference = %target,
        result = %result,
        "admin API change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_cursors() {
        let k = delivery_cursor("12.3").unwrap();
        assert_eq!((k.event_id, k.index), (12, 3));
        for bad in ["", "12", "a.1", "1.", ".1", "1.2.3"] {
            assert!(delivery_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time_ms(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(time_ms(1_500), "1970-01-01T00:00:01.500000Z");
    }
}
