//! `POST /api/v1/mirror/preheat`: pulls images through this Pier's registry listener
//! (as `pier warm` does) so the mirror cache holds them before the first client asks.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use super::{ApiFailure, Caller, json_response, parse_json};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

/// Images one call may name.
const MAX_IMAGES: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preheat {
    images: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
}

/// `os/arch[/variant]`, lowercase letters and digits.
fn platform_ok(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (2..=3).contains(&parts.len())
        && parts.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn validate(p: &Preheat) -> Result<(), ApiFailure> {
    if p.images.is_empty() || p.images.len() > MAX_IMAGES {
        return Err(ApiFailure::BadRequest(format!(
            "name 1 to {MAX_IMAGES} images (NAME[:TAG] or NAME@DIGEST)"
        )));
    }
    for i in &p.images {
        crate::warm::parse_image(i).map_err(|e| ApiFailure::BadRequest(e.to_string()))?;
    }
    if let Some(bad) = p.platforms.iter().find(|p| !platform_ok(p)) {
        return Err(ApiFailure::BadRequest(format!(
            "platform {bad:?}: expected os/arch[/variant], e.g. linux/amd64"
        )));
    }
    Ok(())
}

/// Runs the warm-up and answers what it pulled, with its progress lines.
pub async fn preheat(state: &AdminState, caller: &Caller, body: Bytes) -> Answer {
    let req: Preheat = parse_json(&body)?;
    validate(&req)?;
    if state.mirror.is_none() {
        return Err(ApiFailure::Conflict(
            "no mirror is configured ([[upstreams]]): there is no cache to preheat".into(),
        ));
    }
    let Some(url) = state.registry_url.clone() else {
        return Err(ApiFailure::Conflict(
            "the registry listener uses TLS; run `pier warm --server https://...` instead".into(),
        ));
    };
    let mut lines = Vec::new();
    let outcome = crate::warm::pull(
        url,
        req.platforms.clone(),
        req.images.clone(),
        caller.credentials.clone(),
        &mut |line| lines.push(line),
    )
    .await;
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action = "preheat",
        reference = %req.images.join(","),
        result = %outcome.as_ref().map_or_else(ToString::to_string, |_| "ok".to_owned()),
        "admin API change"
    );
    match outcome {
        Ok(pulled) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "images": req.images,
                "platforms": req.platforms,
                "blobs": pulled.blobs,
                "bytes": pulled.bytes,
                "lines": lines,
            }),
        )),
        Err(e) => Err(ApiFailure::Upstream(format!(
            "preheating failed after {} lines: {}",
            lines.len(),
            super::chain(&e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok: Preheat = serde_json::from_str(
            r#"{"images":["library/alpine:3.19"],"platforms":["linux/amd64"]}"#,
        )
        .unwrap();
        assert!(validate(&ok).is_ok());
        assert!(serde_json::from_str::<Preheat>(r#"{"images":[],"x":1}"#).is_err());
        for bad in [
            r#"{"images":[]}"#,
            r#"{"images":["Bad/Name"]}"#,
            r#"{"images":["a/b"],"platforms":["linux"]}"#,
            r#"{"images":["a/b"],"platforms":["linux/amd64/v8/x"]}"#,
        ] {
            let p: Preheat = serde_json::from_str(bad).unwrap();
            assert!(validate(&p).is_err(), "{bad}");
        }
    }
}
