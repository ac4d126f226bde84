//! Plugins and the mirror cache: read-only views of their counters.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_plugin_host::PluginMetrics;
use serde_json::{Map, Value, json};

use super::json_response;
use crate::admin::AdminState;

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
    for (entry, p) in &state.plugins.authorizers {
        out.push(plugin(&entry.name, "authorizer", p.digest(), p.metrics()));
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
            "cacheBytes": s.cache_bytes,
            "staleServes": s.stale_serves,
            "evictions": s.evictions,
            "fillFailures": s.fill_failures,
        }),
    )
}
