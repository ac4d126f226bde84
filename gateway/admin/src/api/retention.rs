//! Tag retention: a retention plugin (world `retention`) plans what to delete in a
//! project from each repository's tags (digest, push and pull times, size) and untagged
//! manifests; Pier shows the plan (dry run) or carries it out.
//!
//! `POST /api/v1/retention/{project}?dry_run=` runs one (dry run by default), `GET
//! /api/v1/retention/{project}` shows the last one (kept in
//! `<root>/pier/retention/<project>.json`); with `[retention] every`, every project is
//! run on that schedule. A run deletes through the admission plugins (an immutable tag
//! stays, and the run says why), writes one audit line per deletion, deletes a manifest
//! that lost its last tag in the run (unless another manifest reaches it) and leaves the
//! bytes to garbage collection. A removal outside the project, or of a manifest that is
//! not untagged, is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use pier_auth::retention::{
    Removal, RepositoryInfo, RetentionPolicy, RetentionRequest, TagInfo, UntaggedManifest,
};
use pier_core::quota::project_of;
use pier_core::{CoreError, Registry};
use pier_oci::{Digest, Manifest, Reference, RepoName, Tag};
use serde_json::{Value, json};

use super::{ApiFailure, Caller, audit, json_response, project_name};
use crate::router::AdminState;

type Answer = Result<Response<Full<Bytes>>, ApiFailure>;

/// Unix milliseconds (the WIT's unit: push times of tags pushed in one second differ).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn last_path(root: &std::path::Path, project: &str) -> PathBuf {
    root.join("pier")
        .join("retention")
        .join(format!("{project}.json"))
}

fn policy(state: &AdminState) -> Result<&Arc<dyn RetentionPolicy>, ApiFailure> {
    // 409 as the events endpoints without their plugins: a state of this configuration.
    state.retention.as_ref().ok_or_else(|| {
        ApiFailure::Conflict("no retention plugin is configured (hook = \"retention\")".into())
    })
}

/// A manifest's size: its bytes, its config's and its layers'.
fn size_of(bytes: &[u8], media_type: &str) -> u64 {
    bytes.len() as u64
        + Manifest::parse(bytes, Some(media_type))
            .map_or(0, |m| m.blob_references().map(|d| d.size).sum::<u64>())
}

/// What a run sees of `project`, and the untagged manifests of each repository.
async fn request(
    state: &AdminState,
    project: &str,
) -> Result<(RetentionRequest, BTreeMap<RepoName, BTreeSet<Digest>>), ApiFailure> {
    let registry = &state.registry;
    let repos: Vec<RepoName> = registry
        .catalog(None, None)
        .await?
        .items
        .into_iter()
        .filter(|r| project_of(r) == project)
        .collect();
    let mut out = Vec::new();
    let mut untagged_sets = BTreeMap::new();
    let mut stored_at: Option<BTreeMap<Digest, SystemTime>> = None;
    for repo in repos {
        let tags = match registry.tags(&repo, None, None).await {
            Ok(p) => p.items,
            Err(CoreError::NameUnknown(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut infos = Vec::new();
        let mut for_pulls = Vec::new();
        let mut roots = Vec::new();
        for t in &tags {
            let m = match registry
                .manifest_get(&repo, &Reference::Tag(t.clone()))
                .await
            {
                Ok(m) => m,
                Err(CoreError::ManifestUnknown(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let pushed = registry.tag_modified(&repo, t).await?;
            for_pulls.push((t.clone(), m.digest.clone(), pushed));
            roots.push(m.digest.clone());
            infos.push(TagInfo {
                tag: t.to_string(),
                digest: m.digest.to_string(),
                pushed: pushed.map(unix),
                pulled: None,
                size: size_of(&m.bytes, &m.media_type),
            });
        }
        for (info, at) in infos
            .iter_mut()
            .zip(state.pulls.last_pulls(&repo, &for_pulls).await)
        {
            // The pull log keeps seconds.
            info.pulled = at.map(|s| s.saturating_mul(1000));
        }
        let reached = pier_core::gc::reachable(registry, &repo, roots).await?;
        let linked = registry
            .stores()
            .manifests
            .manifests(&repo)
            .await
            .map_err(CoreError::from)?;
        let untagged: BTreeSet<Digest> = linked
            .into_iter()
            .filter(|d| !reached.contains(d))
            .collect();
        let mut untagged_infos = Vec::new();
        if !untagged.is_empty() && stored_at.is_none() {
            let listed = registry
                .stores()
                .blobs
                .list()
                .await
                .map_err(CoreError::from)?;
            stored_at = Some(listed.into_iter().map(|b| (b.digest, b.modified)).collect());
        }
        for d in &untagged {
            let (size, pushed) = match registry
                .manifest_get(&repo, &Reference::Digest(d.clone()))
                .await
            {
                Ok(m) => (
                    size_of(&m.bytes, &m.media_type),
                    stored_at.as_ref().and_then(|s| s.get(d)).copied().map(unix),
                ),
                Err(CoreError::ManifestUnknown(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            untagged_infos.push(UntaggedManifest {
                digest: d.to_string(),
                pushed,
                size,
            });
        }
        out.push(RepositoryInfo {
            repository: repo.to_string(),
            tags: infos,
            untagged: untagged_infos,
        });
        untagged_sets.insert(repo, untagged);
    }
    Ok((
        RetentionRequest {
            project: project.to_owned(),
            repositories: out,
            now: unix(SystemTime::now()),
        },
        untagged_sets,
    ))
}

/// One removal checked against the request: its repository in the project, its
/// reference a tag, or an untagged manifest of that repository.
fn checked(
    r: &Removal,
    project: &str,
    untagged: &BTreeMap<RepoName, BTreeSet<Digest>>,
) -> Result<(RepoName, Reference), String> {
    let repo: RepoName = r.repository.parse().map_err(|e| format!("{e}"))?;
    if project_of(&repo) != project {
        return Err(format!("{repo} is not in project {project}"));
    }
    match (&r.tag, &r.digest) {
        (Some(t), None) => Ok((
            repo,
            Reference::Tag(t.parse::<Tag>().map_err(|e| format!("{e}"))?),
        )),
        (None, Some(d)) => {
            let d: Digest = d.parse().map_err(|e| format!("{e}"))?;
            match untagged.get(&repo).is_some_and(|u| u.contains(&d)) {
                true => Ok((repo, Reference::Digest(d))),
                false => Err(format!("{d} is not an untagged manifest of {repo}")),
            }
        }
        _ => Err("a removal names a tag or a digest".into()),
    }
}

/// Plans (and unless `dry_run`, carries out) retention in `project`.
pub(crate) async fn run(
    state: &AdminState,
    caller: &Caller,
    project: &str,
    dry_run: bool,
) -> Result<Value, ApiFailure> {
    let policy = policy(state)?;
    let (req, untagged) = request(state, project).await?;
    let removals = policy.plan(&req).await.map_err(|e| {
        ApiFailure::Backend(format!("retention plugin {:?}: {}", e.plugin, e.message))
    })?;
    let registry: &Registry = &state.registry;
    let by = caller.core();
    let mut rows = Vec::new();
    let mut untagged_now: Vec<(RepoName, Digest)> = Vec::new();
    for r in &removals {
        let mut row = json!({"repository": r.repository, "tag": r.tag, "digest": r.digest, "reason": r.reason});
        match checked(r, project, &untagged) {
            Err(e) => row["result"] = json!(format!("refused: {e}")),
            Ok(_) if dry_run => row["result"] = json!("would delete"),
            Ok((repo, reference)) => {
                let digest = match &reference {
                    Reference::Tag(t) => registry.tag_digest(&repo, t).await.ok().flatten(),
                    Reference::Digest(_) => None,
                };
                let outcome = registry.manifest_delete_by(&repo, &reference, &by).await;
                audit(
                    caller,
                    "retention_delete",
                    &format!("{repo}:{reference} ({})", r.reason),
                    &outcome,
                );
                row["result"] = match &outcome {
                    Ok(()) => json!("deleted"),
                    Err(e) => json!(format!("kept: {e}")),
                };
                if let (Ok(()), Some(d)) = (&outcome, digest) {
                    untagged_now.push((repo, d));
                }
            }
        }
        rows.push(row);
    }
    // Manifests that lost their last tag in this run, unless another manifest reaches them.
    let mut manifests = Vec::new();
    let mut done = BTreeSet::new();
    for (repo, d) in untagged_now {
        if !done.insert((repo.clone(), d.clone())) {
            continue;
        }
        let mut roots = Vec::new();
        for t in registry
            .tags(&repo, None, None)
            .await
            .map(|p| p.items)
            .unwrap_or_default()
        {
            if let Ok(Some(x)) = registry.tag_digest(&repo, &t).await {
                roots.push(x);
            }
        }
        if pier_core::gc::reachable(registry, &repo, roots)
            .await?
            .contains(&d)
        {
            continue;
        }
        let outcome = registry
            .manifest_delete_by(&repo, &Reference::Digest(d.clone()), &by)
            .await;
        audit(
            caller,
            "retention_delete",
            &format!("{repo}@{d} (no tag left)"),
            &outcome,
        );
        manifests.push(json!({"repository": repo.as_str(), "digest": d.to_string(),
            "result": match &outcome { Ok(()) => "deleted".to_owned(), Err(e) => format!("kept: {e}") }}));
    }
    let report = json!({
        "project": project,
        "plugin": policy.name(),
        "dryRun": dry_run,
        "at": unix(SystemTime::now()),
        "removals": rows,
        "manifestsDeleted": manifests,
    });
    let path = last_path(&state.root, project);
    if let Some(dir) = path.parent() {
        let _ = tokio::fs::create_dir_all(dir).await;
    }
    if let Err(e) = tokio::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
    .await
    {
        tracing::warn!(path = %path.display(), error = %e, "could not keep the retention result");
    }
    Ok(report)
}

fn dry_run(query: &[(String, String)]) -> Result<bool, ApiFailure> {
    match query
        .iter()
        .find(|(k, _)| k == "dry_run")
        .map(|(_, v)| v.as_str())
    {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(ApiFailure::BadRequest(format!(
            "dry_run={v:?}: true or false"
        ))),
    }
}

/// `POST /api/v1/retention/{project}?dry_run=`.
pub(crate) async fn post(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    query: &[(String, String)],
) -> Answer {
    let project = project_name(name)?;
    let dry = dry_run(query)?;
    Ok(json_response(
        StatusCode::OK,
        &run(state, caller, &project, dry).await?,
    ))
}

/// `GET /api/v1/retention/{project}`: the last run.
pub(crate) async fn last(state: &AdminState, name: &str) -> Answer {
    let project = project_name(name)?;
    match last_report(state, &project).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &v)),
        None => Err(ApiFailure::NotFound(format!(
            "no retention run of project {project} yet"
        ))),
    }
}

/// The last run of `project` (a checked project name), if any.
pub(crate) async fn last_report(
    state: &AdminState,
    project: &str,
) -> Result<Option<Value>, ApiFailure> {
    match tokio::fs::read(last_path(&state.root, project)).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ApiFailure::Backend(format!("the last retention result: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiFailure::Backend(e.to_string())),
    }
}

/// Runs retention for every project every `every` (the first run after one period).
pub async fn schedule(state: Arc<AdminState>, every: Duration) {
    let caller = Caller {
        actor: "retention (scheduled)".into(),
        client: "pier".into(),
        subject: None,
        credentials: None,
    };
    loop {
        tokio::time::sleep(every).await;
        let projects: BTreeSet<String> = match state.registry.catalog(None, None).await {
            Ok(p) => p.items.iter().map(|r| project_of(r).to_owned()).collect(),
            Err(e) => {
                tracing::error!(error = %e, "scheduled retention: listing repositories failed");
                continue;
            }
        };
        for project in projects {
            match run(&state, &caller, &project, false).await {
                Ok(r) => tracing::info!(
                    project = %project,
                    removals = r["removals"].as_array().map_or(0, Vec::len),
                    "scheduled retention run"
                ),
                Err(e) => {
                    tracing::error!(project = %project, error = %e, "scheduled retention run failed")
                }
            }
        }
    }
}
