//! Events, webhooks and replication, wired: the registry's operations become durable
//! events (`pier-events`); notifier plugins turn each into webhook deliveries, replicator
//! plugins into replication jobs, which this module runs (`pier-replicate`) and logs.
//!
//! Nothing here is on a push's critical path but the journal append: plugins run on the
//! dispatcher's task (a trap, hang or error costs that plugin's answer for that event,
//! logged), deliveries and jobs on their own tasks.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use pier_core::Registry;
use pier_events::{
    DeliveryRequest, Event, EventDraft, EventKind, Events, EventsConfig, RouteError, Router,
};
use pier_oci::{Reference, RepoName};
use pier_plugin_host::{
    PluginEvent, PluginNotifier, PluginReplicator, ReplicationAction, ReplicationDirection,
};
use pier_replicate::{
    CopyOptions, Destination, JobId, JobLog, JobRecord, JobSpec, JobState, JsonlJobLog, MountHints,
    RateLimiter, RemoteDestination, RemoteSource, ReplicateError, RetryPolicy, Source,
    UploadOptions,
};
use pier_upstream::{Credentials, UpstreamClient, UpstreamConfig};
use tokio::sync::mpsc;

pub mod config;
mod local;
mod settings;

pub use settings::{EventsSettings, ReplicationSettings, TargetSettings};

use crate::local::LocalRegistry;

/// Why events and replication could not start; printed for the operator.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Replication workers: jobs copied at the same time.
const WORKERS: usize = 2;

/// Everything this module started; `None` parts are not configured.
pub struct EventsRuntime {
    pub events: Arc<Events>,
    pub replication: Arc<Replication>,
    /// Whether pulls are recorded too.
    pub pulls: bool,
    pub notifiers: Vec<(String, Arc<PluginNotifier>)>,
    pub replicators: Vec<(String, Arc<PluginReplicator>)>,
    /// With `[redis]`: runs routing and delivery while this node holds the dispatcher
    /// lease (every node publishes). Stopped at shutdown, which hands the lease over at
    /// once; dropped (a crash), the lease expires.
    leader: tokio::sync::Mutex<Option<pier_cluster::EventsLeader>>,
}

impl EventsRuntime {
    /// Graceful shutdown: stops routing and delivery here and releases the dispatcher
    /// lease so another node takes over without waiting for it to expire.
    pub async fn stop(&self) {
        if let Some(l) = self.leader.lock().await.take() {
            l.stop().await;
        }
    }

    /// Adds the outbox and replication queue gauges and the notifier and replicator
    /// plugins' series to the binary's metrics registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.events.register_metrics(registry);
        self.replication.register_metrics(registry);
    }

    /// The metrics of the notifier and replicator plugins.
    pub fn plugin_metrics(&self) -> Vec<Arc<pier_plugin_host::PluginMetrics>> {
        let notifiers = self.notifiers.iter().map(|(_, p)| p.metrics().clone());
        let replicators = self.replicators.iter().map(|(_, p)| p.metrics().clone());
        notifiers.chain(replicators).collect()
    }

    /// Reloads the notifier and replicator plugins from their files; one line each.
    pub async fn reload_all(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, p) in &self.notifiers {
            out.push(reload_line(name, p.reload().await, p.digest()));
        }
        for (name, p) in &self.replicators {
            out.push(reload_line(name, p.reload().await, p.digest()));
        }
        out
    }
}

fn reload_line(
    name: &str,
    r: Result<bool, pier_plugin_host::PluginError>,
    digest: String,
) -> String {
    match r {
        Ok(true) => format!("{name}: reloaded, now {digest}"),
        Ok(false) => format!("{name}: unchanged ({digest})"),
        Err(e) => {
            tracing::error!(plugin = %name, error = %e, "plugin reload failed; the previous version keeps running");
            format!("{name}: reload failed, previous version kept: {e}")
        }
    }
}

/// What `start` wires: the loaded notifier and replicator plugins and the settings.
pub struct Setup {
    pub notifiers: Vec<(String, Arc<PluginNotifier>)>,
    pub replicators: Vec<(String, Arc<PluginReplicator>)>,
    pub events: EventsSettings,
    pub replication: ReplicationSettings,
    /// The registry listener's address: the CloudEvents `source` when none is set.
    pub listen: String,
}

/// Starts events and replication. With `shared` (`[redis]`), the journal and outbox are
/// in Redis and this node routes and delivers only while it holds the dispatcher lease;
/// else they are on disk.
pub async fn start(
    setup: Setup,
    registry: Arc<Registry>,
    shared: Option<&pier_cluster::Shared>,
) -> Result<Arc<EventsRuntime>, DispatchError> {
    let Setup {
        notifiers,
        replicators,
        events: s,
        replication: replication_settings,
        listen,
    } = setup;
    let replication = Arc::new(Replication::new(&replication_settings, registry)?);
    let router = Arc::new(PluginRouter {
        notifiers: notifiers.clone(),
        replicators: replicators.clone(),
        replication: replication.clone(),
    });
    let events_config = EventsConfig {
        source: s
            .source
            .clone()
            .unwrap_or_else(|| format!("pier://{listen}")),
        signing_secret: s.secret.clone().map(String::into_bytes),
        endpoint_secrets: s
            .endpoints
            .iter()
            .map(|(url, secret)| pier_events::EndpointSecret {
                url: url.clone(),
                secret: secret.clone().into_bytes(),
            })
            .collect(),
        max_attempts: s.attempts,
        backoff_base: s.backoff,
        backoff_cap: s.backoff_max,
        request_timeout: s.timeout,
        ..EventsConfig::default()
    };
    if s.secret.is_some() {
        tracing::warn!(
            endpoints_with_their_own_secret = s.endpoints.len(),
            "[events] secret signs every delivery to a URL without its own [[events.endpoints]] \
             secret: each receiver holding it can forge deliveries to the others; give each \
             endpoint its own"
        );
    }
    let starting =
        |e: pier_events::EventsError| DispatchError::Start(format!("starting event delivery: {e}"));
    let (events, leader, journal) = match shared {
        Some(shared) => {
            let events_config = EventsConfig {
                // Events published and redeliveries asked on other nodes.
                poll_interval: Some(Duration::from_secs(1)),
                ..events_config
            };
            let events = Arc::new(
                Events::publisher(shared.event_stores(), router, events_config)
                    .map_err(starting)?,
            );
            let leader = pier_cluster::EventsLeader::spawn(
                shared.clone(),
                Arc::downgrade(&events),
                pier_cluster::DEFAULT_LEADER_TTL,
            );
            (events, Some(leader), "redis".to_owned())
        }
        None => {
            let dir = s.dir.clone();
            let stores = tokio::task::spawn_blocking(move || pier_events::disk::open(dir))
                .await
                .map_err(|e| DispatchError::Start(format!("opening the event journal: {e}")))?
                .map_err(|e| {
                    DispatchError::Start(format!("event journal {}: {e}", s.dir.display()))
                })?;
            let events = Arc::new(Events::start(stores, router, events_config).map_err(starting)?);
            (events, None, s.dir.display().to_string())
        }
    };
    replication.start(Arc::downgrade(&events)).await?;
    let ticker = replication.clone();
    let ticking = replicators.clone();
    tokio::spawn(async move { ticker.tick_loop(ticking).await });
    tracing::info!(
        notifiers = notifiers.len(),
        replicators = replicators.len(),
        targets = replication_settings.targets.len(),
        journal = %journal,
        "events on"
    );
    Ok(Arc::new(EventsRuntime {
        events,
        replication,
        pulls: s.pulls,
        notifiers,
        replicators,
        leader: tokio::sync::Mutex::new(leader),
    }))
}

fn plugin_event(e: &Event) -> PluginEvent {
    let repository = e.repository.to_string();
    PluginEvent {
        id: e.id,
        kind: match e.kind {
            EventKind::ManifestPushed => pier_plugin_host::EventKind::ManifestPushed,
            EventKind::ManifestPulled => pier_plugin_host::EventKind::ManifestPulled,
            EventKind::ManifestDeleted => pier_plugin_host::EventKind::ManifestDeleted,
            EventKind::MirrorFill => pier_plugin_host::EventKind::MirrorFill,
            EventKind::ReplicationJob => pier_plugin_host::EventKind::ReplicationJob,
        },
        time: e.time.to_rfc3339(),
        project: PluginEvent::project_of(&repository),
        repository,
        tag: e.tag.as_ref().map(ToString::to_string),
        digest: e.digest.as_ref().map(ToString::to_string),
        media_type: e.media_type.clone(),
        size: e.size,
        actor: e.actor.clone(),
        cloudevent: e.to_json(),
    }
}

/// The dispatcher's view of the plugins: replicators queue jobs, notifiers name
/// deliveries. A plugin that fails is logged and skipped for this event.
struct PluginRouter {
    notifiers: Vec<(String, Arc<PluginNotifier>)>,
    replicators: Vec<(String, Arc<PluginReplicator>)>,
    replication: Arc<Replication>,
}

#[async_trait]
impl Router for PluginRouter {
    async fn route(&self, event: &Event) -> Result<Vec<DeliveryRequest>, RouteError> {
        let pe = plugin_event(event);
        // A job's own state changes are not replicated again (no loops).
        if event.kind != EventKind::ReplicationJob {
            for (name, r) in &self.replicators {
                match r.on_event(&pe).await {
                    Ok(actions) => {
                        self.replication
                            .enqueue(name, Some(event.id), actions)
                            .await
                    }
                    Err(f) => tracing::warn!(plugin = %name, event = event.id, error = %f,
                        "replicator failed on an event; no replication for it"),
                }
            }
        }
        let mut out = Vec::new();
        for (name, n) in &self.notifiers {
            match n.notify(&pe).await {
                Ok(ds) => out.extend(ds.into_iter().map(|d| DeliveryRequest {
                    url: d.url,
                    headers: d.headers,
                    body: Bytes::from(d.body),
                    refused: d.refused,
                })),
                Err(f) => tracing::warn!(plugin = %name, event = event.id, error = %f,
                    "notifier failed on an event; no webhook from it for this event"),
            }
        }
        Ok(out)
    }
}

/// A configured target: its client and bandwidth budget.
struct Target {
    settings: TargetSettings,
    client: Arc<UpstreamClient>,
    limiter: Arc<RateLimiter>,
    hints: Arc<MountHints>,
}

/// Replication jobs: queued from plugins' actions or by hand, run by workers with
/// retries, recorded in the job log.
pub struct Replication {
    settings: ReplicationSettings,
    local: Arc<LocalRegistry>,
    targets: HashMap<String, Target>,
    log: Arc<JsonlJobLog>,
    /// Jobs to run, with the attempts already made since they were last queued by hand
    /// (or by a restart).
    queue: OnceLock<mpsc::UnboundedSender<(JobId, u32)>>,
    events: OnceLock<Weak<Events>>,
    /// Jobs in the queue or running (`pier_replication_queue_jobs`).
    queued: prometheus_client::metrics::gauge::Gauge,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Replication {
    fn new(
        settings: &ReplicationSettings,
        registry: Arc<Registry>,
    ) -> Result<Replication, DispatchError> {
        let mut targets = HashMap::new();
        for t in &settings.targets {
            let client = UpstreamClient::new(UpstreamConfig {
                name: t.name.clone(),
                url: t.url.clone(),
                credentials: t
                    .credentials
                    .clone()
                    .map(|(username, password)| Credentials { username, password }),
                timeout: t.timeout,
                retries: 2,
                allow_private: t.allow_private,
            })
            .map_err(|e| DispatchError::Start(format!("replication target {}: {e}", t.name)))?;
            targets.insert(
                t.name.clone(),
                Target {
                    settings: t.clone(),
                    client: Arc::new(client),
                    limiter: Arc::new(RateLimiter::new(t.bandwidth)),
                    hints: Arc::new(MountHints::default()),
                },
            );
        }
        if let Some(dir) = settings.job_log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = JsonlJobLog::open(&settings.job_log).map_err(|e| {
            DispatchError::Start(format!(
                "replication job log {}: {e}",
                settings.job_log.display()
            ))
        })?;
        Ok(Replication {
            settings: settings.clone(),
            local: Arc::new(LocalRegistry { registry }),
            targets,
            log: Arc::new(log),
            queue: OnceLock::new(),
            events: OnceLock::new(),
            queued: Default::default(),
        })
    }

    /// Starts the workers and queues again the jobs a previous run left unfinished.
    async fn start(self: &Arc<Self>, events: Weak<Events>) -> Result<(), DispatchError> {
        let _ = self.events.set(events);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.queue.set(tx);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WORKERS {
            let me = self.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((id, tries)) = next else { break };
                    me.run(id, tries).await;
                    me.queued.dec();
                }
            });
        }
        let unfinished = self
            .log
            .list(usize::MAX)
            .await
            .map_err(|e| DispatchError::Start(format!("replication job log: {e}")))?;
        for r in unfinished.into_iter().rev() {
            if matches!(
                r.state,
                pier_replicate::JobState::Queued | pier_replicate::JobState::Running
            ) {
                tracing::info!(job = %r.id, "replication job left unfinished by the last run: queued again");
                self.submit(r.id);
            }
        }
        Ok(())
    }

    fn submit(&self, id: JobId) {
        self.submit_after(id, 0);
    }

    fn submit_after(&self, id: JobId, tries: u32) {
        if let Some(q) = self.queue.get() {
            // Counted before a worker can take it (and count it out).
            self.queued.inc();
            if q.send((id, tries)).is_err() {
                self.queued.dec();
            }
        }
    }

    /// Adds `pier_replication_queue_jobs` to the binary's metrics registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pier_replication_queue_jobs",
            "Replication jobs queued or running on this node (a job waiting out a retry's \
             backoff is not counted)",
            self.queued.clone(),
        );
    }

    pub fn log(&self) -> &Arc<JsonlJobLog> {
        &self.log
    }

    /// Queues a failed (or finished) job again.
    pub async fn retry(&self, id: JobId) -> Result<JobRecord, ReplicateError> {
        let r = self.log.requeue(id).await?;
        self.submit(r.id);
        Ok(r)
    }

    /// Turns a plugin's actions into queued jobs (one per tag or digest). `event`: the id
    /// of the event they answer (a tick has none); the jobs of an event routed twice
    /// (after a crash) are made once.
    async fn enqueue(&self, plugin: &str, event: Option<u64>, actions: Vec<ReplicationAction>) {
        for (i, a) in actions.into_iter().enumerate() {
            let key = event.map(|e| format!("{e}:{plugin}:{i}"));
            if let Err(e) = self.enqueue_one(plugin, key, &a).await {
                tracing::warn!(plugin, target = %a.target, repository = %a.source_repository,
                    error = %e, "replication action refused");
            }
        }
    }

    async fn enqueue_one(
        &self,
        plugin: &str,
        key: Option<String>,
        a: &ReplicationAction,
    ) -> Result<(), String> {
        let target = self
            .targets
            .get(&a.target)
            .ok_or_else(|| format!("no [replication.targets.{}] configured", a.target))?;
        let src_repo: RepoName = a
            .source_repository
            .parse()
            .map_err(|e| format!("source repository: {e}"))?;
        let _: RepoName = a
            .destination_repository
            .parse()
            .map_err(|e| format!("destination repository: {e}"))?;
        let references: Vec<String> = if let Some(d) = &a.digest {
            vec![d.clone()]
        } else if a.delete {
            // What was deleted can't be listed: the action names it.
            if a.tags.is_empty() || a.tags.iter().any(|t| t.contains(['*', '?'])) {
                return Err("a delete action must name its tags or digest exactly".into());
            }
            a.tags.clone()
        } else {
            let source: &dyn Source = match a.direction {
                ReplicationDirection::Push => self.local.as_ref(),
                ReplicationDirection::Pull => &RemoteSource::new(target.client.clone()),
            };
            let tags = source
                .tags(&src_repo)
                .await
                .map_err(|e| format!("listing tags: {e}"))?;
            tags.into_iter()
                .map(|t| t.to_string())
                .filter(|t| pier_glob::any(&a.tags, t))
                .collect()
        };
        let (source, destination) = match a.direction {
            ReplicationDirection::Push => ("local".to_owned(), a.target.clone()),
            ReplicationDirection::Pull => (a.target.clone(), "local".to_owned()),
        };
        for reference in references {
            let (r, new) = self
                .log
                .create_once(JobSpec {
                    rule: plugin.to_owned(),
                    source: source.clone(),
                    destination: destination.clone(),
                    src_repo: a.source_repository.clone(),
                    dst_repo: a.destination_repository.clone(),
                    key: key.as_ref().map(|k| format!("{k}:{reference}")),
                    reference,
                    delete: a.delete,
                })
                .await
                .map_err(|e| e.to_string())?;
            if !new {
                tracing::info!(job = %r.id, "replication action seen before (event routed again): no new job");
                continue;
            }
            tracing::info!(job = %r.id, source = %r.spec.source, destination = %r.spec.destination,
                repository = %r.spec.src_repo, reference = %r.spec.reference, "replication job queued");
            self.submit(r.id);
        }
        Ok(())
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.settings.attempts,
            base: self.settings.backoff,
            cap: self.settings.backoff_max,
        }
    }

    /// One attempt at job `id` (`tries` attempts made before it since it was queued).
    /// A retryable failure puts the job back in the queue after the backoff: the worker
    /// is free meanwhile, so a target that is down holds back none of the other jobs.
    async fn run(self: &Arc<Self>, id: JobId, tries: u32) {
        let mut record = match self.log.get(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "reading the replication job log failed");
                return;
            }
        };
        record.state = JobState::Running;
        record.attempts += 1;
        record.updated_ms = now_ms();
        record.note(format!(
            "attempt {} started: {} {}:{} -> {} {}{}",
            record.attempts,
            record.spec.source,
            record.spec.src_repo,
            record.spec.reference,
            record.spec.destination,
            record.spec.dst_repo,
            if record.spec.delete { " (delete)" } else { "" }
        ));
        if let Err(e) = self.log.update(&record).await {
            tracing::error!(job = %id, error = %e, "replication job log failed");
            return;
        }
        let spec = record.spec.clone();
        let outcome = match self.endpoints(&spec).and_then(|e| Ok((e, spec.parse()?))) {
            Ok(((source, dest, hints), (src_repo, dst_repo, reference))) => {
                let opts = CopyOptions {
                    concurrency: self.settings.concurrency,
                    hints,
                    ..CopyOptions::default()
                };
                if spec.delete {
                    delete(dest.as_ref(), &dst_repo, &reference).await
                } else {
                    pier_replicate::copy_image(
                        source.as_ref(),
                        dest.as_ref(),
                        &src_repo,
                        &dst_repo,
                        &reference,
                        &opts,
                    )
                    .await
                }
            }
            Err(e) => Err(pier_replicate::CopyFailed {
                report: pier_replicate::JobReport::default(),
                error: ReplicateError::InvalidJob(e.to_string()),
            }),
        };
        let tries = tries + 1;
        let policy = self.policy();
        let retry_in = match outcome {
            Ok(report) => {
                record.state = JobState::Succeeded;
                record.note(format!("succeeded: {}", report_line(&report)));
                record.report = Some(report);
                None
            }
            Err(failed) => {
                let retry = failed.error.is_retryable() && policy.allows(tries);
                record.state = if retry {
                    JobState::Queued
                } else {
                    JobState::Failed
                };
                record.note(format!(
                    "attempt {} failed: {}; {}",
                    record.attempts,
                    failed.error,
                    report_line(&failed.report)
                ));
                record.report = Some(failed.report);
                if !retry {
                    record.note("failed for good: retry it by hand once the cause is fixed");
                }
                if retry {
                    let wait = policy.backoff(tries);
                    record.note(format!("will retry in {} ms", wait.as_millis()));
                    tracing::warn!(job = %id, attempt = record.attempts, wait_ms = wait.as_millis() as u64,
                        error = %failed.error, "replication job failed; will retry");
                    Some(wait)
                } else {
                    None
                }
            }
        };
        record.updated_ms = now_ms();
        if let Err(e) = self.log.update(&record).await {
            tracing::error!(job = %id, error = %e, "replication job log failed");
            return;
        }
        if let Some(wait) = retry_in {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                me.submit_after(id, tries);
            });
            return;
        }
        tracing::info!(job = %record.id, state = %record.state, attempts = record.attempts,
            bytes = record.report.as_ref().map(|x| x.bytes).unwrap_or(0),
            error = record.report.as_ref().and_then(|x| x.error.clone()).unwrap_or_default(),
            "replication job finished");
        self.announce(&record).await;
    }

    /// The job's source and destination.
    #[allow(clippy::type_complexity)]
    fn endpoints(
        &self,
        spec: &JobSpec,
    ) -> Result<
        (
            Arc<dyn Source>,
            Arc<dyn Destination>,
            Option<Arc<MountHints>>,
        ),
        ReplicateError,
    > {
        let target = |name: &str| {
            self.targets.get(name).ok_or_else(|| {
                ReplicateError::InvalidJob(format!("no replication target named {name:?}"))
            })
        };
        if spec.source == "local" {
            let t = target(&spec.destination)?;
            let dest = RemoteDestination::new(
                t.client.clone(),
                UploadOptions {
                    chunk_size: self.settings.chunk_size,
                    retry: RetryPolicy {
                        max_attempts: 5,
                        base: Duration::from_millis(200),
                        cap: Duration::from_secs(5),
                    },
                },
                t.limiter.clone(),
            );
            Ok((self.local.clone(), Arc::new(dest), Some(t.hints.clone())))
        } else {
            let t = target(&spec.source)?;
            Ok((
                Arc::new(RemoteSource::new(t.client.clone())),
                self.local.clone(),
                None,
            ))
        }
    }

    /// A replication-job event for the finished job.
    async fn announce(&self, r: &JobRecord) {
        let Some(events) = self.events.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some(draft) = job_event(r) else {
            return;
        };
        if let Err(e) = events.publish(draft).await {
            tracing::warn!(job = %r.id, error = %e, "recording the replication job's event failed");
        }
    }

    /// Calls every replicator's `on-tick` every `tick`.
    async fn tick_loop(self: Arc<Self>, replicators: Vec<(String, Arc<PluginReplicator>)>) {
        if replicators.is_empty() {
            return;
        }
        let mut every = tokio::time::interval(self.settings.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = now_secs();
            for (name, r) in &replicators {
                match r.on_tick(now).await {
                    Ok(actions) => self.enqueue(name, None, actions).await,
                    Err(f) => {
                        tracing::warn!(plugin = %name, error = %f, "replicator failed on a tick")
                    }
                }
            }
        }
    }

    /// The configured targets, for the admin API.
    pub fn targets(&self) -> Vec<&TargetSettings> {
        let mut v: Vec<_> = self.targets.values().map(|t| &t.settings).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The event of a finished job. It belongs to the job's SOURCE repository (and so to its
/// project): the rule that made the job selected it there, whereas the destination is
/// whatever the rule's template made of it, possibly in another project whose webhooks
/// must not learn of the source's repositories. `None` when the name is invalid.
fn job_event(r: &JobRecord) -> Option<EventDraft> {
    let repo = r.spec.src_repo.parse::<RepoName>().ok()?;
    let mut draft = EventDraft::new(EventKind::ReplicationJob, repo).detail(serde_json::json!({
        "job": r.id.0,
        "state": r.state.to_string(),
        "attempts": r.attempts,
        "source": r.spec.source,
        "destination": r.spec.destination,
        "sourceRepository": r.spec.src_repo,
        "destinationRepository": r.spec.dst_repo,
        "reference": r.spec.reference,
        "report": r.report,
    }));
    if let Ok(Reference::Tag(t)) = r.spec.reference.parse::<Reference>() {
        draft = draft.tag(t);
    }
    Some(draft)
}

/// A job log line of what an attempt did.
fn report_line(r: &pier_replicate::JobReport) -> String {
    let mut line = format!(
        "{} blobs copied, {} mounted, {} skipped (already there); {} manifests written, {} skipped; {} bytes sent",
        r.blobs_copied, r.blobs_mounted, r.blobs_skipped, r.manifests, r.manifests_skipped, r.bytes
    );
    if r.resumes > 0 {
        line.push_str(&format!(
            "; {} uploads resumed at the registry's offset ({} bytes not sent again)",
            r.resumes, r.resumed_bytes_saved
        ));
    }
    if r.blob_retries > 0 {
        line.push_str(&format!("; {} blob transfers retried", r.blob_retries));
    }
    line
}

async fn delete(
    dest: &dyn Destination,
    repo: &RepoName,
    reference: &Reference,
) -> Result<pier_replicate::JobReport, pier_replicate::CopyFailed> {
    let mut report = pier_replicate::JobReport {
        started_ms: now_ms(),
        ..Default::default()
    };
    let result = dest.delete_manifest(repo, reference).await;
    report.finished_ms = now_ms();
    match result {
        Ok(()) => Ok(report),
        Err(error) => {
            report.error = Some(error.to_string());
            Err(pier_replicate::CopyFailed { report, error })
        }
    }
}

#[async_trait]
impl pier_http::events::EventSink for EventsRuntime {
    async fn record(&self, e: pier_http::events::ManifestEvent) -> Result<(), String> {
        use pier_http::events::ManifestAction as A;
        let kind = match e.action {
            A::Pushed => EventKind::ManifestPushed,
            A::Pulled => EventKind::ManifestPulled,
            A::Deleted => EventKind::ManifestDeleted,
        };
        let mut d = EventDraft::new(kind, e.repository);
        if let Some(t) = e.tag {
            d = d.tag(t);
        }
        if let Some(x) = e.digest {
            d = d.digest(x);
        }
        if let Some(m) = e.media_type {
            d = d.media_type(m);
        }
        if let Some(s) = e.size {
            d = d.size(s);
        }
        if let Some(a) = e.actor {
            d = d.actor(a);
        }
        self.events
            .publish(d)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn wants_pulls(&self) -> bool {
        self.pulls
    }
}

impl pier_core::FillObserver for EventsRuntime {
    fn manifest_filled(
        &self,
        repository: &RepoName,
        tag: Option<&pier_oci::Tag>,
        digest: &pier_oci::Digest,
        media_type: &str,
        size: u64,
    ) {
        let mut d = EventDraft::new(EventKind::MirrorFill, repository.clone())
            .digest(digest.clone())
            .media_type(media_type)
            .size(size);
        if let Some(t) = tag {
            d = d.tag(t.clone());
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = events.publish(d).await {
                tracing::warn!(error = %e, "recording a mirror-fill event failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    /// A job's event is filed under its source repository's project, never under the
    /// destination's (a rule `destination = "library/{repository}"` must not tell
    /// `library`'s webhooks about `secretproj`).
    #[test]
    fn a_job_event_belongs_to_the_source_project() {
        use pier_replicate::{JobId, JobRecord, JobSpec, JobState};
        let spec = JobSpec {
            rule: "replicate".into(),
            source: "local".into(),
            destination: "site-b".into(),
            src_repo: "secretproj/hidden-app".into(),
            dst_repo: "library/secretproj/hidden-app".into(),
            reference: "v1".into(),
            key: None,
            delete: false,
        };
        let record = JobRecord {
            id: JobId(7),
            spec,
            state: JobState::Succeeded,
            attempts: 1,
            updated_ms: 0,
            report: None,
            log: Vec::new(),
        };
        let draft = super::job_event(&record).unwrap();
        assert_eq!(draft.repository.as_str(), "secretproj/hidden-app");
        assert_eq!(draft.tag.as_ref().map(|t| t.as_str()), Some("v1"));
        let detail = draft.detail.unwrap();
        assert_eq!(detail["sourceRepository"], "secretproj/hidden-app");
        assert_eq!(
            detail["destinationRepository"],
            "library/secretproj/hidden-app"
        );
        assert_eq!(detail["state"], "succeeded");
        let event = pier_events::Event::from_draft(
            super::job_event(&record).unwrap(),
            pier_events::Timestamp::from_micros(0),
            "pier".into(),
        );
        assert_eq!(super::plugin_event(&event).project, "secretproj");
    }

    /// The tag filter of replication actions (the plugins' matcher, run here in CI).
    #[test]
    fn tag_patterns() {
        let m = pier_glob::matches;
        assert!(m("*", "v1"));
        assert!(m("v*", "v1.2"));
        assert!(!m("v*", "latest"));
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v10"));
        assert!(m("latest", "latest"));
        assert!(pier_glob::any(&[], "anything"), "no patterns: every tag");
    }
}
