//! Plugins and the mirror cache: read-only views of their counters.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_plugin_host::PluginMetrics;
use serde_json::{Map, Value, json};

use super::{ApiFailure, Caller, json_response};
use crate::router::AdminState;

fn plugin(name: &str, world: &str, digest: String, m: &PluginMetrics) -> Value {
    let errors: Map<String, Value> = m
        .errors_by_kind()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect();
    let traps = ["trap", "timeout", "out_of_memory"]
        .iter()
        .filter_map(|k| errors.get(*k).and_then(Value::as_u64))
        .sum::<u64>();
    json!({
        "name": name,
        "world": world,
        // The host keeps the hex of the component's SHA-256.
        "digest": if digest.contains(':') { digest } else { format!("sha256:{digest}") },
        "calls": m.calls(),
        "denials": m.denials(),
        "errors": errors,
        "traps": traps,
        "instancesCreated": m.instances_created(),
        "reloads": m.reloads(),
        "callSeconds": m.call_seconds(),
    })
}

/// `GET /api/v1/plugins`: every loaded plugin with its version and counters.
pub fn plugins(state: &AdminState) -> Response<Full<Bytes>> {
    let mut out = Vec::new();
    for (name, p) in state.plugins.authorizers() {
        out.push(plugin(&name, "authorizer", p.digest(), p.metrics()));
    }
    for (name, p) in state.plugins.admissions() {
        out.push(plugin(&name, "admission", p.digest(), p.metrics()));
    }
    if let Some((name, p)) = state.plugins.retention() {
        out.push(plugin(&name, "retention", p.digest(), p.metrics()));
    }
    if let Some(e) = &state.events {
        for (name, p) in &e.notifiers {
            out.push(plugin(name, "notifier", p.digest(), p.metrics()));
        }
        for (name, p) in &e.replicators {
            out.push(plugin(name, "replicator", p.digest(), p.metrics()));
        }
    }
    json_response(StatusCode::OK, &json!({ "plugins": out }))
}

/// `GET /api/v1/mirror`: the pull-through cache's counters since start.
pub fn mirror(state: &AdminState) -> Response<Full<Bytes>> {
    let s = state.mirror.as_ref().map(|m| m.stats()).unwrap_or_default();
    let lookups = s.blob_hits + s.blob_misses + s.blob_coalesced;
    // A coalesced request was served without a fetch of its own: it counts as a hit.
    let hit_ratio = if lookups == 0 {
        0.0
    } else {
        (s.blob_hits + s.blob_coalesced) as f64 / lookups as f64
    };
    json_response(
        StatusCode::OK,
        &json!({
            "enabled": state.mirror.is_some(),
            "blobHitRatio": hit_ratio,
            "blobHits": s.blob_hits,
            "blobMisses": s.blob_misses,
            "blobCoalesced": s.blob_coalesced,
            "manifestHits": s.manifest_hits,
            "manifestMisses": s.manifest_misses,
            "upstreamBytes": s.upstream_bytes,
            "peerBytes": s.peer_bytes,
            "peerAnswers": s.peer_answers,
            "cacheBytes": s.cache_bytes,
            "staleServes": s.stale_serves,
            "evictions": s.evictions,
            "fillFailures": s.fill_failures,
        }),
    )
}

/// `GET /api/v1/fleet`: the edge fleet's peers and their health, the bytes moved between
/// nodes, the upstream requests the fleet saved, and each upstream's budget.
pub fn fleet(state: &AdminState) -> Response<Full<Bytes>> {
    let s = state.mirror.as_ref().map(|m| m.stats()).unwrap_or_default();
    let budgets: Vec<_> = (state.budgets.all().iter())
        .map(|b| {
            let (limit, remaining) = b.upstream_view();
            json!({
                "upstream": b.name(),
                "maxConcurrentFetches": b.config().max_concurrent,
                "fetchesInFlight": b.in_flight(),
                "pausedForSeconds": b.paused_for().map(|d| d.as_secs_f64()),
                "pauses": b.pauses(),
                "rateLimitLimit": limit,
                "rateLimitRemaining": remaining,
            })
        })
        .collect();
    let fleet = state.fleet.as_ref().map(|f| f.status());
    json_response(
        StatusCode::OK,
        &json!({
            "enabled": fleet.is_some(),
            "me": fleet.as_ref().map(|f| &f.me),
            "discovery": fleet.as_ref().map(|f| &f.discovery),
            "peers": fleet.as_ref().map(|f| &f.peers),
            "servedToPeersRequests": fleet.as_ref().map_or(0, |f| f.served_requests),
            "servedToPeersBytes": fleet.as_ref().map_or(0, |f| f.served_bytes),
            "bytesFromPeers": s.peer_bytes,
            "upstreamRequestsSaved": s.peer_answers,
            "upstreamBytes": s.upstream_bytes,
            "budgets": budgets,
        }),
    )
}

/// `GET /api/v1/history?minutes=60`: the counters sampled every `history_every` over the
/// last `minutes` (1 to 1440), at most 360 samples, oldest first.
pub fn history(
    state: &AdminState,
    query: &[(String, String)],
) -> Result<Response<Full<Bytes>>, ApiFailure> {
    let minutes = match query.iter().find(|(k, _)| k == "minutes") {
        None => 60,
        Some((_, v)) => match v.parse::<u64>() {
            Ok(m) if (1..=1440).contains(&m) => m,
            _ => {
                return Err(ApiFailure::BadRequest(format!(
                    "minutes={v:?}: expected an integer from 1 to 1440"
                )));
            }
        },
    };
    let since = crate::history::now_ms().saturating_sub(minutes * 60_000);
    let samples: Vec<Value> = state
        .history
        .since(since)
        .iter()
        .map(|s| {
            json!({
                "time": pier_auth::time::rfc3339(s.at_ms / 1000),
                "timeMs": s.at_ms,
                "requests": s.requests,
                "bytesSent": s.bytes_sent,
                "blobLookups": s.blob_lookups,
                "blobHits": s.blob_hits,
                "upstreamBytes": s.upstream_bytes,
                "cacheBytes": s.cache_bytes,
                "pluginCalls": s.plugin_calls,
                "pluginSeconds": s.plugin_seconds,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "everySeconds": state.history.every.as_secs_f64(), "samples": samples }),
    ))
}

/// `POST /api/v1/plugins/reload`: every plugin read again (file and settings); 422 when
/// one failed to load (its previous version keeps running).
pub async fn reload(state: &AdminState, caller: &Caller) -> Response<Full<Bytes>> {
    let mut lines = state.plugins.reload_all().await;
    if let Some(e) = &state.events {
        lines.extend(e.reload_all().await);
    }
    let failed = lines.iter().any(|l| l.contains("reload failed"));
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action = "plugins.reload",
        result = if failed { "failed" } else { "ok" },
        "admin API change"
    );
    let status = if failed {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    json_response(status, &json!({ "results": lines }))
}
