//! Repositories, tags and manifests: list, inspect, delete.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use pier_auth::time::rfc3339;
use pier_core::{ManifestContent, Registry};
use pier_oci::{Descriptor, Digest, Manifest, Reference, RepoName, Tag};
use serde_json::{Value, json};

use super::{ApiFailure, Caller, json_response, page_params, percent_encode};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

fn repo_name(name: &str) -> Result<RepoName, ApiFailure> {
    name.parse()
        .map_err(|e: pier_oci::NameError| ApiFailure::BadRequest(e.to_string()))
}

/// A page's answer: `next` in the body and, when more follow, a `Link` header.
pub(crate) fn paged(mut body: Value, next: Option<String>) -> Response<Full<Bytes>> {
    body["next"] = next.clone().map(Value::String).unwrap_or(Value::Null);
    let mut r = json_response(StatusCode::OK, &body);
    if let Some(n) = next
        && let Ok(v) = HeaderValue::from_str(&format!("<{n}>; rel=\"next\""))
    {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

/// `GET /api/v1/repositories?q=&n=&last=`: names containing `q`, sorted, a page at a time.
pub async fn list(state: &AdminState, query: &[(String, String)]) -> Answer {
    let (n, last) = page_params(query)?;
    let q = query
        .iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let all = state.registry.catalog(None, last.as_deref()).await?;
    let mut matching = all.items.into_iter().filter(|r| r.as_str().contains(q));
    let items: Vec<RepoName> = matching.by_ref().take(n).collect();
    let next = match (items.last(), matching.next()) {
        (Some(l), Some(_)) => {
            let mut url = format!(
                "/api/v1/repositories?n={n}&last={}",
                percent_encode(l.as_str())
            );
            if !q.is_empty() {
                url.push_str(&format!("&q={}", percent_encode(q)));
            }
            Some(url)
        }
        _ => None,
    };
    let repositories: Vec<Value> = items
        .iter()
        .map(|r| json!({ "name": r.as_str() }))
        .collect();
    Ok(paged(json!({ "repositories": repositories }), next))
}

/// Platforms (`os/arch[/variant]`) of an index's children, from its descriptors.
fn platforms(m: &Manifest) -> Vec<String> {
    m.manifests
        .iter()
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            let os = p.get("os")?.as_str()?;
            let arch = p.get("architecture")?.as_str()?;
            Some(match p.get("variant").and_then(Value::as_str) {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            })
        })
        .collect()
}

/// A manifest's size: its own bytes plus, for an image, the sum of its layers.
fn total_size(content: &ManifestContent, m: Option<&Manifest>) -> u64 {
    content.bytes.len() as u64 + m.map_or(0, |m| m.layers.iter().map(|l| l.size).sum::<u64>())
}

fn parse(content: &ManifestContent) -> Option<Manifest> {
    Manifest::parse(&content.bytes, Some(&content.media_type)).ok()
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signatures of `digest` in `repo` a policy can check: whether a cosign signature
/// (`sha256-<hex>.sig`) is there, and how many Sigstore bundles refer to it.
async fn signatures(
    state: &AdminState,
    repo: &RepoName,
    digest: &pier_oci::Digest,
    referrers: &[pier_oci::Descriptor],
) -> Value {
    let cosign = match format!("{}-{}.sig", digest.algorithm().as_str(), digest.hex()).parse() {
        Ok(tag) => state
            .registry
            .manifest_get(repo, &Reference::Tag(tag))
            .await
            .is_ok(),
        Err(_) => false,
    };
    let bundles = referrers
        .iter()
        .filter(|d| {
            d.artifact_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/vnd.dev.sigstore.bundle"))
        })
        .count();
    json!({ "cosign": cosign, "bundles": bundles })
}

/// What the admission policies say of pulling `tag` (`null`: none governs `repo`):
/// asked as the caller would pull it, answered from their decision cache when warm.
async fn admission(
    state: &AdminState,
    caller: &Caller,
    repo: &RepoName,
    tag: &pier_oci::Tag,
    content: &ManifestContent,
) -> Value {
    if !state.registry.admission_governs(repo) {
        return Value::Null;
    }
    match state
        .registry
        .admit_pull(repo, &Reference::Tag(tag.clone()), content, &caller.core())
        .await
    {
        Ok(()) => json!({ "state": "admitted" }),
        Err(pier_core::CoreError::Denied { policy, reason }) => {
            json!({ "state": "denied", "policy": policy, "reason": reason })
        }
        Err(e) => json!({ "state": "failed", "reason": e.to_string() }),
    }
}

/// `GET /api/v1/repositories/{name}/-/tags?n=&last=`: each tag with its digest, size,
/// platforms, referrers, push and pull times, signatures and what the admission
/// policies say of pulling it.
pub async fn tags(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    query: &[(String, String)],
) -> Answer {
    let repo = repo_name(name)?;
    let (n, last) = page_params(query)?;
    let page = state.registry.tags(&repo, Some(n), last.as_deref()).await?;
    let mut out = Vec::with_capacity(page.items.len());
    let mut pulls = Vec::with_capacity(page.items.len());
    for tag in &page.items {
        let content = match state
            .registry
            .manifest_get(&repo, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(c) => c,
            // Deleted between the listing and now.
            Err(pier_core::CoreError::ManifestUnknown(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let m = parse(&content);
        let refs = state
            .registry
            .referrers(&repo, &content.digest, None)
            .await?;
        let signatures = signatures(state, &repo, &content.digest, &refs).await;
        let admission = admission(state, caller, &repo, tag, &content).await;
        // Pushes as the storage dates the tag (every node sees them); pulls below.
        let pushed = state.registry.tag_modified(&repo, tag).await?;
        pulls.push((tag.clone(), content.digest.clone(), pushed));
        out.push(json!({
            "name": tag.as_str(),
            "digest": content.digest.to_string(),
            "mediaType": content.media_type,
            "size": total_size(&content, m.as_ref()),
            "platforms": m.as_ref().map(platforms).unwrap_or_default(),
            "referrers": refs.len(),
            "signatures": signatures,
            "admission": admission,
            "lastPush": pushed.map(|t| rfc3339(unix_secs(t))),
            "lastPull": null,
        }));
    }
    // Pulls as this node served them and, scaled out, as every node did (crate::activity):
    // one read of the shared record for the page.
    let pulled = state.pulls.last_pulls(&repo, &pulls).await;
    for (row, at) in out.iter_mut().zip(pulled) {
        row["lastPull"] = at.map(rfc3339).into();
    }
    let next = page.next_last.map(|l| {
        format!(
            "/api/v1/repositories/{}/-/tags?n={n}&last={}",
            repo.as_str(),
            percent_encode(&l)
        )
    });
    Ok(paged(
        json!({ "repository": repo.as_str(), "tags": out }),
        next,
    ))
}

fn reference(s: &str) -> Result<Reference, ApiFailure> {
    s.parse()
        .map_err(|e: pier_oci::NameError| ApiFailure::BadRequest(e.to_string()))
}

fn descriptors(ds: &[Descriptor]) -> Value {
    serde_json::to_value(ds).unwrap_or_else(|_| json!([]))
}

/// `GET /api/v1/repositories/{name}/-/manifests/{reference}`.
pub async fn manifest(state: &AdminState, name: &str, reference_str: &str) -> Answer {
    let repo = repo_name(name)?;
    let reference = reference(reference_str)?;
    let content = state.registry.manifest_get(&repo, &reference).await?;
    let m = parse(&content);
    let body: Value = serde_json::from_slice(&content.bytes).unwrap_or(Value::Null);
    let referrers = state
        .registry
        .referrers(&repo, &content.digest, None)
        .await?;
    let tags = tags_on(&state.registry, &repo, &content.digest).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "repository": repo.as_str(),
            "digest": content.digest.to_string(),
            "mediaType": content.media_type,
            "size": total_size(&content, m.as_ref()),
            "tags": tags,
            "manifest": body,
            "config": m.as_ref().and_then(|m| m.config.as_ref()).and_then(|c| serde_json::to_value(c).ok()),
            "layers": descriptors(m.as_ref().map(|m| m.layers.as_slice()).unwrap_or_default()),
            "manifests": descriptors(m.as_ref().map(|m| m.manifests.as_slice()).unwrap_or_default()),
            "platforms": m.as_ref().map(platforms).unwrap_or_default(),
            "subject": content.subject.as_ref().map(|d| d.to_string()),
            "referrers": descriptors(&referrers),
        }),
    ))
}

/// The tags pointing at `digest`, among the repository's first [`super::MAX_PAGE`] tags
/// (a detail view must not read a whole huge repository).
async fn tags_on(
    registry: &Registry,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Vec<String>, ApiFailure> {
    let page = registry.tags(repo, Some(super::MAX_PAGE), None).await?;
    let mut out = Vec::new();
    for t in &page.items {
        if registry.tag_digest(repo, t).await?.as_ref() == Some(digest) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// `DELETE /api/v1/repositories/{name}/-/tags/{tag}`: removes the tag, not the manifest.
pub async fn delete_tag(state: &AdminState, caller: &Caller, name: &str, tag: &str) -> Answer {
    let repo = repo_name(name)?;
    let tag: Tag = tag
        .parse()
        .map_err(|e: pier_oci::NameError| ApiFailure::BadRequest(e.to_string()))?;
    let outcome = state
        .registry
        .manifest_delete_by(&repo, &Reference::Tag(tag.clone()), &caller.core())
        .await;
    audit(caller, "delete_tag", &repo, tag.as_str(), &outcome);
    outcome?;
    record_deleted(state, caller, &repo, Some(tag.clone()), None).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "repository": repo.as_str(), "deleted": tag.as_str(), "kind": "tag" }),
    ))
}

/// `DELETE /api/v1/repositories/{name}/-/manifests/{digest}`: the manifest and its tags.
pub async fn delete_manifest(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    digest: &str,
) -> Answer {
    let repo = repo_name(name)?;
    let digest: Digest = digest.parse().map_err(|e: pier_oci::DigestError| {
        ApiFailure::BadRequest(format!("a manifest is deleted by digest: {e}"))
    })?;
    let outcome = state
        .registry
        .manifest_delete_by(&repo, &Reference::Digest(digest.clone()), &caller.core())
        .await;
    audit(
        caller,
        "delete_manifest",
        &repo,
        &digest.to_string(),
        &outcome,
    );
    outcome?;
    record_deleted(state, caller, &repo, None, Some(digest.clone())).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "repository": repo.as_str(), "deleted": digest.to_string(), "kind": "manifest" }),
    ))
}

/// A delete made here is an event like one made through the registry API (webhooks,
/// deletion propagation).
async fn record_deleted(
    state: &AdminState,
    caller: &Caller,
    repo: &RepoName,
    tag: Option<Tag>,
    digest: Option<Digest>,
) -> Result<(), ApiFailure> {
    use pier_http::events::{EventSink, ManifestAction, ManifestEvent};
    let Some(events) = &state.events else {
        return Ok(());
    };
    events
        .record(ManifestEvent {
            action: ManifestAction::Deleted,
            repository: repo.clone(),
            tag,
            digest,
            media_type: None,
            size: None,
            actor: Some(caller.actor.clone()),
        })
        .await
        .map_err(ApiFailure::Unavailable)
}

/// One audit line per change attempted, with its outcome.
fn audit(
    caller: &Caller,
    action: &'static str,
    repo: &RepoName,
    target: &str,
    outcome: &pier_core::Result<()>,
) {
    let result = match outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action,
        repository = %repo,
        reference = %target,
        result = %result,
        "admin API change"
    );
}
