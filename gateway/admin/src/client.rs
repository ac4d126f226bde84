//! `pier replication ...` and `pier events ...`: the CLI side of the admin API, so
//! scripts and the API agree. HTTP or HTTPS to the admin listener (hyper-util's client),
//! through the proxies the environment names.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, PROXY_AUTHORIZATION};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pier_upstream::proxy::{Proxies, ProxyConnector};
use serde_json::Value;

use crate::AdminError;

/// Bound on connecting to the admin listener (or to a proxy).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct AdminTarget {
    /// The admin listener of the Pier to ask
    #[arg(long, env = "PIER_ADMIN", default_value = "http://127.0.0.1:5001")]
    admin: String,
    /// USER:PASSWORD of a system administrator (when access control is on)
    #[arg(long, env = "PIER_ADMIN_CREDS")]
    creds: Option<String>,
}

#[derive(Subcommand)]
pub enum ReplicationCommand {
    /// List replication jobs, newest first
    Jobs {
        #[command(flatten)]
        target: AdminTarget,
        /// How many
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the JSON as the API answers it
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed (or finished) job again
    Retry {
        #[command(flatten)]
        target: AdminTarget,
        id: u64,
    },
    /// A job's log: its attempts, what they copied, errors and retries
    Log {
        #[command(flatten)]
        target: AdminTarget,
        id: u64,
    },
    /// List the replication rules the replicator plugins keep
    Rules {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        json: bool,
    },
    /// Create a rule or replace the one of that name (effective for the next event or tick)
    SetRule {
        #[command(flatten)]
        target: AdminTarget,
        /// The rule's name
        name: String,
        #[command(flatten)]
        source: RuleSourceArgs,
        /// The replication target (a [[replication.targets]] name) to copy to or from
        #[arg(long = "to", value_name = "TARGET")]
        to: String,
        /// Only these tags (glob patterns); repeat for several. All tags when left out
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The repository at the other end; {repository} stands for the source's name
        #[arg(long)]
        destination: Option<String>,
        /// Run every SECS seconds instead of on each push
        #[arg(long, value_name = "SECS")]
        every: Option<u64>,
        /// Replicate deletions too
        #[arg(long)]
        delete: bool,
        /// Pull from the target instead of pushing to it (needs --every)
        #[arg(long)]
        pull: bool,
        /// The replicator plugin that keeps the rule (when several manage rules)
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Delete a rule
    DeleteRule {
        #[command(flatten)]
        target: AdminTarget,
        name: String,
        /// The replicator plugin that keeps the rule (when several have one of that name)
        #[arg(long)]
        plugin: Option<String>,
    },
}

/// What a rule replicates: a project's repositories or one repository.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RuleSourceArgs {
    /// Every repository of this project
    #[arg(long)]
    project: Option<String>,
    /// This repository only
    #[arg(long)]
    repository: Option<String>,
}

#[derive(Subcommand)]
pub enum ReposCommand {
    /// List repositories (names containing --filter), a page at a time
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Only names containing this
        #[arg(long)]
        filter: Option<String>,
        /// Page size (1-1000)
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// Start after this name (the previous page's `next`)
        #[arg(long)]
        last: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Tags of a repository with digest, size and platforms
    Tags {
        #[command(flatten)]
        target: AdminTarget,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete NAME:TAG (the tag only) or NAME@DIGEST (the manifest and its tags)
    Delete {
        #[command(flatten)]
        target: AdminTarget,
        reference: String,
    },
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// List webhook deliveries, newest first
    Deliveries {
        #[command(flatten)]
        target: AdminTarget,
        /// pending, delivered or failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again (same idempotency key)
    Redeliver {
        #[command(flatten)]
        target: AdminTarget,
        id: String,
    },
}

/// One request to the admin API; the JSON answer, or an error naming the status.
async fn call(target: &AdminTarget, method: &str, path: &str) -> Result<Value, AdminError> {
    call_with(target, method, path, None).await
}

/// [`call`] with a JSON body.
pub(crate) async fn call_with(
    target: &AdminTarget,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, AdminError> {
    let err = |m: String| AdminError::Failed(format!("{} {path}: {m}", target.admin));
    let base = target.admin.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(err("--admin must be an http:// or https:// URL".into()));
    }
    let uri: Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| err(format!("invalid URL: {e}")))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| err(e.to_string()))?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = Request::builder().method(method).uri(uri.clone());
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    if let Some(c) = &target.creds {
        let b = base64::engine::general_purpose::STANDARD.encode(c);
        let mut value = HeaderValue::try_from(format!("Basic {b}"))
            .map_err(|_| err("--creds cannot go in a header".into()))?;
        value.set_sensitive(true);
        req = req.header(AUTHORIZATION, value);
    }
    let client = http_client().map_err(err)?;
    if let Some(auth) = client.proxies.http_authorization(&uri) {
        req = req.header(PROXY_AUTHORIZATION, auth);
    }
    let req = req
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| err(e.to_string()))?;
    let response = client.http.request(req).await.map_err(|e| err(chain(&e)))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| err(chain(&e)))?
        .to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    if !(200..300).contains(&status) {
        let msg = value["error"].as_str().map(str::to_owned).unwrap_or(body);
        return Err(err(format!("HTTP {status}: {}", msg.trim())));
    }
    Ok(value)
}

/// The HTTP client of one command: hyper-util's, https with the system's trusted roots
/// (rustls-native-certs), through the proxies the environment names
/// ([`pier_upstream::proxy`]; a loopback admin listener is always reached directly).
struct AdminHttp {
    http: Client<HttpsConnector<ProxyConnector<HttpConnector>>, Full<Bytes>>,
    proxies: Arc<Proxies>,
}

fn http_client() -> Result<AdminHttp, String> {
    let proxies = Arc::new(Proxies::from_env().map_err(|e| format!("proxy settings: {e}"))?);
    proxies.log("admin client");
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = pier_upstream::tls_client_config(roots).map_err(|e| format!("TLS setup: {e}"))?;
    let tcp = ProxyConnector::new(
        pier_upstream::proxy::tcp_connector(CONNECT_TIMEOUT),
        proxies.clone(),
        CONNECT_TIMEOUT,
    );
    let connector = pier_upstream::proxy::https_connector(tls, tcp, true);
    let http = Client::builder(TokioExecutor::new()).build(connector);
    Ok(AdminHttp { http, proxies })
}

/// An error and its sources, joined by `: ` (each said once).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let m = e.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        source = e.source();
    }
    text
}

pub(crate) fn field(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn replication(c: ReplicationCommand) -> Result<(), AdminError> {
    match c {
        ReplicationCommand::Jobs {
            target,
            limit,
            json,
        } => {
            let n = limit.clamp(1, crate::api::MAX_PAGE);
            let v = call(&target, "GET", &format!("/api/v1/replication/jobs?n={n}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!("ID\tSTATE\tATTEMPTS\tSOURCE\tDESTINATION\tIMAGE\tBYTES\tERROR");
            for j in v["jobs"].as_array().into_iter().flatten() {
                let report = &j["report"];
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}:{} -> {}\t{}\t{}",
                    field(j, "id"),
                    field(j, "state"),
                    field(j, "attempts"),
                    field(j, "source"),
                    field(j, "destination"),
                    field(j, "sourceRepository"),
                    field(j, "reference"),
                    field(j, "destinationRepository"),
                    field(report, "bytes"),
                    field(report, "error"),
                );
            }
            Ok(())
        }
        ReplicationCommand::Retry { target, id } => {
            let v = call(
                &target,
                "POST",
                &format!("/api/v1/replication/jobs/{id}/retry"),
            )
            .await?;
            println!(
                "job {} queued again ({} attempts so far)",
                field(&v, "id"),
                field(&v, "attempts")
            );
            Ok(())
        }
        ReplicationCommand::Log { target, id } => {
            let v = call(
                &target,
                "GET",
                &format!("/api/v1/replication/jobs/{id}/log"),
            )
            .await?;
            for l in v["lines"].as_array().into_iter().flatten() {
                println!("{}\t{}", field(l, "time"), field(l, "message"));
            }
            Ok(())
        }
        ReplicationCommand::Rules { target, json } => {
            let v = call(&target, "GET", "/api/v1/replication/rules").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!("NAME\tPLUGIN\tSOURCE\tTAGS\tTARGET\tDESTINATION\tTRIGGER\tDIRECTION\tDELETE");
            for r in v["rules"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    field(r, "name"),
                    field(r, "plugin"),
                    rule_source(&r["source"]),
                    rule_tags(&r["tags"]),
                    field(r, "target"),
                    field(r, "destination"),
                    rule_trigger(&r["trigger"]),
                    field(r, "direction"),
                    field(r, "delete"),
                );
            }
            Ok(())
        }
        ReplicationCommand::SetRule {
            target,
            name,
            source,
            to,
            tags,
            destination,
            every,
            delete,
            pull,
            plugin,
        } => {
            let mut body = serde_json::json!({
                "source": match (source.project, source.repository) {
                    (Some(p), _) => serde_json::json!({ "project": p }),
                    (None, r) => serde_json::json!({ "repository": r.unwrap_or_default() }),
                },
                "tags": tags,
                "target": to,
                "trigger": match every {
                    Some(s) => serde_json::json!({ "everySecs": s }),
                    None => serde_json::json!("event"),
                },
                "delete": delete,
                "direction": if pull { "pull" } else { "push" },
            });
            if let Some(d) = destination {
                body["destination"] = d.into();
            }
            if let Some(p) = plugin {
                body["plugin"] = p.into();
            }
            let path = format!("/api/v1/replication/rules/{}", enc(&name));
            let v = call_with(&target, "PUT", &path, Some(&body)).await?;
            println!(
                "rule {} kept by {}: {} -> {} ({})",
                field(&v, "name"),
                field(&v, "plugin"),
                rule_source(&v["source"]),
                field(&v, "target"),
                rule_trigger(&v["trigger"]),
            );
            Ok(())
        }
        ReplicationCommand::DeleteRule {
            target,
            name,
            plugin,
        } => {
            let mut path = format!("/api/v1/replication/rules/{}", enc(&name));
            if let Some(p) = plugin {
                path.push_str(&format!("?plugin={}", enc(&p)));
            }
            call(&target, "DELETE", &path).await?;
            println!("rule {name} deleted");
            Ok(())
        }
    }
}

/// `project:NAME` or `repository:NAME`, as the API's `source` object says.
fn rule_source(v: &Value) -> String {
    match (v["project"].as_str(), v["repository"].as_str()) {
        (Some(p), _) => format!("project:{p}"),
        (None, Some(r)) => format!("repository:{r}"),
        _ => "-".into(),
    }
}

/// The tag patterns joined by commas, `*` when the rule takes every tag.
fn rule_tags(v: &Value) -> String {
    let tags: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if tags.is_empty() {
        "*".into()
    } else {
        tags.join(",")
    }
}

/// `event` or `every Ns`.
fn rule_trigger(v: &Value) -> String {
    match v["everySecs"].as_u64() {
        Some(s) => format!("every {s}s"),
        None => v.as_str().unwrap_or("-").to_owned(),
    }
}

pub async fn events(c: EventsCommand) -> Result<(), AdminError> {
    match c {
        EventsCommand::Deliveries {
            target,
            status,
            limit,
            json,
        } => {
            let n = limit.clamp(1, crate::api::MAX_PAGE);
            let mut path = format!("/api/v1/events/deliveries?n={n}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let v = call(&target, "GET", &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!("ID\tEVENT\tSTATUS\tATTEMPTS\tURL\tLAST");
            for d in v["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    field(d, "id"),
                    field(d, "eventId"),
                    field(d, "status"),
                    field(d, "attempts"),
                    field(d, "url"),
                    field(d, "lastError"),
                );
            }
            Ok(())
        }
        EventsCommand::Redeliver { target, id } => {
            let v = call(
                &target,
                "POST",
                &format!("/api/v1/events/deliveries/{}/redeliver", enc(&id)),
            )
            .await?;
            println!("delivery {} queued again", field(&v, "id"));
            Ok(())
        }
    }
}

/// `pier gc --admin URL`: a collection run by a running Pier (through its admin API).
pub async fn gc(
    admin: String,
    creds: Option<String>,
    dry_run: bool,
    untagged: bool,
    grace: std::time::Duration,
) -> Result<(), AdminError> {
    let target = AdminTarget { admin, creds };
    let grace = if grace.subsec_millis() == 0 {
        format!("{}s", grace.as_secs())
    } else {
        format!("{}ms", grace.as_millis())
    };
    let v = call(
        &target,
        "POST",
        &format!("/api/v1/gc?dry_run={dry_run}&untagged={untagged}&grace={grace}"),
    )
    .await?;
    println!(
        "gc: {} {} manifests and {} blobs ({} bytes); {} blobs referenced; {} unreferenced blobs kept by the {grace} grace period; {} kept as pushed meanwhile",
        if dry_run { "would remove" } else { "removed" },
        field(&v, "manifestsRemoved"),
        field(&v, "blobsRemoved"),
        field(&v, "bytesFreed"),
        field(&v, "blobsMarked"),
        field(&v, "blobsKeptByGrace"),
        field(&v, "keptInUse"),
    );
    Ok(())
}

/// Percent-encodes a query value or a path segment (unreserved characters kept).
pub(crate) fn enc(s: &str) -> String {
    crate::api::percent_encode(s)
}

pub async fn repos(c: ReposCommand) -> Result<(), AdminError> {
    match c {
        ReposCommand::List {
            target,
            filter,
            n,
            last,
            json,
        } => {
            let mut path = format!("/api/v1/repositories?n={n}");
            if let Some(q) = filter {
                path.push_str(&format!("&q={}", enc(&q)));
            }
            if let Some(l) = last {
                path.push_str(&format!("&last={}", enc(&l)));
            }
            let v = call(&target, "GET", &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            let names: Vec<String> = v["repositories"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| field(r, "name"))
                .collect();
            for n in &names {
                println!("{n}");
            }
            if let (Some(_), Some(last)) = (v["next"].as_str(), names.last()) {
                eprintln!("more: --last {last}");
            }
            Ok(())
        }
        ReposCommand::Tags { target, name, json } => {
            let v = call(
                &target,
                "GET",
                &format!("/api/v1/repositories/{name}/-/tags"),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!("TAG\tDIGEST\tSIZE\tPLATFORMS");
            for t in v["tags"].as_array().into_iter().flatten() {
                let platforms: Vec<&str> = t["platforms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}",
                    field(t, "name"),
                    field(t, "digest"),
                    field(t, "size"),
                    if platforms.is_empty() {
                        "-".to_owned()
                    } else {
                        platforms.join(",")
                    }
                );
            }
            Ok(())
        }
        ReposCommand::Delete { target, reference } => {
            let path = if let Some((name, digest)) = reference.split_once('@') {
                format!("/api/v1/repositories/{name}/-/manifests/{}", enc(digest))
            } else if let Some((name, tag)) = reference.rsplit_once(':') {
                format!("/api/v1/repositories/{name}/-/tags/{tag}")
            } else {
                return Err(AdminError::Failed(format!(
                    "{reference:?}: name NAME:TAG or NAME@DIGEST"
                )));
            };
            let v = call(&target, "DELETE", &path).await?;
            println!(
                "deleted {} {} from {}",
                field(&v, "kind"),
                field(&v, "deleted"),
                field(&v, "repository")
            );
            Ok(())
        }
    }
}
