//! Garbage collection while the registry serves: `POST /api/v1/gc` runs one,
//! `GET /api/v1/gc` shows whether one runs and the last one's result, which is kept
//! under the storage root (`pier/gc/last.json`) so it survives restarts.
//!
//! Safety: the collection and this process's pushes coordinate through the registry's
//! `GcFence` (see `pier_core::gc`): a push that references content the collection
//! would remove either keeps it or fails cleanly and uploads again. Nodes sharing
//! storage (`[redis]`) are fenced from each other through Redis
//! (`pier_cluster::RedisGcPeers`); without that coordination the API refuses (409). One
//! collection at a time, on any node (409 while one runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_core::gc::{GcOptions, collect};
use serde_json::{Value, json};

use super::replication::time_ms;
use super::{ApiFailure, Caller, json_response};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

/// Blobs modified more recently than this are kept unless `grace` says otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Where the last result is kept.
pub fn last_path(root: &Path) -> PathBuf {
    root.join("pier").join("gc").join("last.json")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn flag(query: &[(String, String)], k: &str, default: bool) -> Result<bool, ApiFailure> {
    match query
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
    {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(ApiFailure::BadRequest(format!(
            "{k}={v:?}: expected true or false"
        ))),
    }
}

/// `grace`: `N[ms|s|m|h|d]`, at most 9 digits (no overflow).
fn grace(query: &[(String, String)]) -> Result<Duration, ApiFailure> {
    let Some(v) = query.iter().find(|(k, _)| k == "grace").map(|(_, v)| v) else {
        return Ok(DEFAULT_GRACE);
    };
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return Err(ApiFailure::BadRequest(format!(
            "grace={v:?}: expected a duration like 0s, 30m or 1h"
        )));
    }
    pier_storage::parse_duration(v).map_err(ApiFailure::BadRequest)
}

/// `GET /api/v1/gc`: `{running, last}`.
pub async fn status(state: &AdminState) -> Answer {
    let last = match tokio::fs::read(last_path(&state.root)).await {
        Ok(b) => serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => {
            return Err(ApiFailure::Backend(format!(
                "reading the last gc result: {e}"
            )));
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "running": state.registry.gc_fence().running(), "last": last }),
    ))
}

/// `POST /api/v1/gc?dry_run=&untagged=&grace=`: runs a collection and answers its result.
/// It runs on its own task: a client that goes away does not stop it halfway.
pub async fn run(state: &AdminState, caller: &Caller, query: &[(String, String)]) -> Answer {
    let opts = GcOptions {
        dry_run: flag(query, "dry_run", false)?,
        untagged: flag(query, "untagged", false)?,
        grace: grace(query)?,
    };
    if state.clustered && !state.registry.gc_fence().shared() {
        return Err(ApiFailure::Conflict(
            "garbage collection through the API is refused when nodes share storage ([redis]): \
             pushes on other nodes are not fenced from it; stop pushes and run `pier gc` instead"
                .into(),
        ));
    }
    if state.registry.gc_fence().running() {
        return Err(ApiFailure::Conflict(
            "a garbage collection is already running".into(),
        ));
    }
    let registry = state.registry.clone();
    let path = last_path(&state.root);
    let actor = caller.actor.clone();
    let task_opts = opts.clone();
    let task = tokio::spawn(async move {
        let opts = task_opts;
        let started = now_ms();
        let outcome = collect(
            &registry,
            &opts,
            |line| tracing::info!(target: "gc", "{line}"),
        )
        .await;
        if let Ok(None) = &outcome {
            return None;
        };
        let mut result = json!({
            "started": time_ms(started),
            "finished": time_ms(now_ms()),
            "dryRun": opts.dry_run,
            "untagged": opts.untagged,
            "graceSeconds": opts.grace.as_secs(),
            "actor": actor,
            "manifestsRemoved": 0,
            "blobsRemoved": 0,
            "bytesFreed": 0,
            "blobsMarked": 0,
            "blobsKeptByGrace": 0,
            "keptInUse": 0,
            "error": null,
        });
        match &outcome {
            Ok(Some(r)) => {
                result["manifestsRemoved"] = r.manifests_removed.len().into();
                result["blobsRemoved"] = r.blobs_removed.len().into();
                result["bytesFreed"] = r.bytes_freed().into();
                result["blobsMarked"] = r.blobs_marked.into();
                result["blobsKeptByGrace"] = r.blobs_kept_by_grace.into();
                result["keptInUse"] = r.kept_in_use.into();
            }
            Err(e) => result["error"] = super::chain(e).into(),
            Ok(None) => {}
        }
        if let Err(e) = save(&path, &result).await {
            tracing::error!(error = %e, path = %path.display(), "keeping the gc result failed");
        }
        Some(result)
    });
    let result = task
        .await
        .map_err(|e| ApiFailure::Backend(format!("the collection stopped: {e}")))?;
    // This node's collection runs, or (scaled out) another node's.
    let Some(result) = result else {
        return Err(ApiFailure::Conflict(
            "a garbage collection is already running".into(),
        ));
    };
    let outcome = result["error"].as_str().unwrap_or("ok").to_owned();
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action = if opts.dry_run { "gc_dry_run" } else { "gc" },
        untagged = opts.untagged,
        grace_secs = opts.grace.as_secs(),
        blobs_removed = result["blobsRemoved"].as_u64().unwrap_or(0),
        bytes_freed = result["bytesFreed"].as_u64().unwrap_or(0),
        result = %outcome,
        "admin API change"
    );
    if outcome != "ok" {
        return Err(ApiFailure::Backend(format!(
            "garbage collection failed: {outcome}"
        )));
    }
    Ok(json_response(StatusCode::OK, &result))
}

/// Writes `value` at `path` atomically (temp file, fsync, rename).
async fn save(path: &Path, value: &Value) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let q = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(flag(&q("dry_run", "true"), "dry_run", false).unwrap());
        assert!(!flag(&[], "dry_run", false).unwrap());
        assert!(flag(&q("dry_run", "yes"), "dry_run", false).is_err());
        assert_eq!(grace(&[]).unwrap(), DEFAULT_GRACE);
        assert_eq!(grace(&q("grace", "0s")).unwrap(), Duration::ZERO);
        assert_eq!(grace(&q("grace", "2m")).unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "1 fortnight", "101y", "9999999999h", "-1s"] {
            assert!(grace(&q("grace", bad)).is_err(), "{bad}");
        }
    }
}
