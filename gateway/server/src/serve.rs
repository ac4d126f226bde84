//! `pier serve`: listeners, connections, background maintenance, graceful shutdown.

use http_body_util::BodyExt as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pier_core::{Mirror, MirrorConfig, Registry, Stores, UpstreamSpec};
use pier_http::{AppState, Metrics};
use pier_storage::IngestStore;
use pier_storage::fs::FsStore;
use pier_upstream::{Credentials, UpstreamClient, UpstreamConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::ServerError;
use pier_admin::{self as admin, AdminState, Plugins as _};
use pier_http::conn::{Gate, Limits};
use pier_http::ready::{CheckFn, Readiness};

/// How many tags and digests the pull log remembers (about 20 MB at most).
const PULL_LOG_MAX: usize = 100_000;
/// How often the pull log is written when it changed.
const PULL_LOG_FLUSH: Duration = Duration::from_secs(5);

/// Connection builders: protocol sniffing (h2c), HTTP/1.1 only, HTTP/2 only.
#[derive(Clone)]
struct Builders {
    sniff: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.h2_keepalive)
            .keep_alive_timeout(limits.h2_keepalive)
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(1024 * 1024 - 1)
            .max_concurrent_streams(limits.h2_max_concurrent_streams);
        Builders {
            sniff: b.clone(),
            h1: b.clone().http1_only(),
            h2: b.http2_only(),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// SIGHUP reloads every plugin.
async fn reload_on_sighup(plugins: Arc<crate::access::Plugins>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload plugins through the admin endpoint");
        return;
    };
    while hup.recv().await.is_some() {
        for line in plugins.reload_all().await {
            tracing::info!("SIGHUP: {line}");
        }
    }
}

/// The configured storage backend, with its roles for the registry and the mirror.
/// The storage roles, the mirror's ingest, and the storage's readiness check.
/// The storage `config` names, for offline work (`pier gc --config`): no shared state.
pub async fn open_stores(config: &Config) -> Result<Stores, ServerError> {
    Ok(open_storage(config, None).await?.0)
}

async fn open_storage(
    config: &Config,
    shared: Option<&pier_cluster::Shared>,
) -> Result<(Stores, Arc<dyn IngestStore>, CheckFn), ServerError> {
    match &config.storage {
        crate::config::StorageChoice::Fs => {
            let store = Arc::new(FsStore::new(&config.root)?);
            let root = config.root.clone();
            let check: CheckFn = Box::new(move || {
                let root = root.clone();
                Box::pin(async move {
                    match tokio::fs::metadata(&root).await {
                        Ok(m) if m.is_dir() => Ok(()),
                        Ok(_) => Err(format!("{} is not a directory", root.display())),
                        Err(e) => Err(format!("{}: {e}", root.display())),
                    }
                })
            });
            Ok((Stores::from_backend(store.clone()), store, check))
        }
        crate::config::StorageChoice::S3(c) => {
            let mut c = (**c).clone();
            // The local read cache lives under the root unless configured elsewhere.
            c.cache_dir
                .get_or_insert_with(|| config.root.join("s3-cache"));
            let mut store = pier_storage::s3::S3Store::connect(c.clone()).await?;
            if let Some(shared) = shared {
                store = store.with_session_locks(
                    Arc::new(pier_cluster::adapters::RedisSessionLocks {
                        shared: shared.clone(),
                        owner: pier_cluster::adapters::node_id(),
                    }),
                    Duration::from_secs(30),
                );
            }
            let store = Arc::new(store);
            store.check().await?;
            tracing::info!(bucket = %c.bucket, prefix = %c.prefix, cache_dir = ?c.cache_dir, "storage: S3");
            let probe = store.clone();
            let check: CheckFn = Box::new(move || {
                let store = probe.clone();
                Box::pin(async move { store.check().await.map_err(|e| crate::error::chain(&e)) })
            });
            Ok((Stores::from_backend(store.clone()), store, check))
        }
    }
}

pub async fn run(config: Config) -> Result<(), ServerError> {
    config.check_admin_exposure()?;
    pier_http::conn::raise_fd_limit();
    // The root holds Pier's own state (keys, plugin cache) whatever the blob backend.
    std::fs::create_dir_all(&config.root)?;
    let tls = config
        .tls
        .as_ref()
        .map(|t| pier_http::tls::server_config(&t.cert, &t.key))
        .transpose()?
        .map(TlsAcceptor::from);
    // Bound first: probes and clients get answers while plugins compile.
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    pier_http::starting::answer_while(
        &listener,
        &admin_listener,
        tls.clone(),
        crate::access::precompile(&config),
    )
    .await;
    let shared = match &config.redis {
        Some(r) => {
            let s = pier_cluster::Shared::connect(r.clone())
                .await
                .map_err(|e| ServerError::Config(format!("redis: {e}")))?;
            tracing::info!(
                "shared state in Redis: upload session locks, cross-node fill leases and cache invalidation on"
            );
            Some(s)
        }
        None => None,
    };
    let (stores, ingest, storage_check) = open_storage(&config, shared.as_ref()).await?;
    let mut readiness = Readiness::new().with_check("storage", storage_check);
    if let Some(s) = &shared {
        let s = s.clone();
        readiness = readiness.with_check(
            "redis",
            Box::new(move || {
                let s = s.clone();
                Box::pin(async move { s.ping().await.map_err(|e| crate::error::chain(&e)) })
            }),
        );
    }
    let mut registry = Registry::new(stores);
    if let Some(s) = &shared {
        registry = registry
            .with_change_sink(Arc::new(pier_cluster::adapters::RedisChanges {
                shared: s.clone(),
            }))
            // Online garbage collection fenced across the nodes.
            .with_gc_peers(Arc::new(pier_cluster::RedisGcPeers::new(s.clone())));
    }
    // Project quotas: limits set through the admin API, kept under the root, or in Redis
    // when scaled out (the same on every node).
    let limits: Arc<dyn pier_core::quota::QuotaLimits> = match &shared {
        Some(s) => Arc::new(pier_cluster::RedisQuotaLimits::new(s.clone())),
        None => Arc::new(pier_core::quota::FileQuotaLimits::new(
            config.root.join("pier").join("quotas.json"),
        )),
    };
    registry = registry.with_quotas(Arc::new(pier_core::quota::Quotas::new(limits)));
    let admissions = crate::access::admission(&config, shared.as_ref()).await?;
    let retention = crate::access::retention(&config, shared.as_ref()).await?;
    if !admissions.is_empty() {
        let policies = admissions
            .iter()
            .map(|(_, p)| p.clone() as Arc<dyn pier_auth::admission::Admission>)
            .collect();
        registry = registry.with_gate(Arc::new(pier_core::Gate::new(policies)));
    }
    let registry = Arc::new(registry);
    let changes_task = shared
        .clone()
        .map(|s| tokio::spawn(pier_cluster::adapters::follow_changes(s, registry.clone())));
    let (access, plugins) =
        crate::access::build(&config, shared.as_ref(), admissions, retention.clone()).await?;
    let sweep_task = access
        .as_ref()
        .map(|a| tokio::spawn(sweep_revocations(a.revocations.clone())));
    let events = crate::access::start_events(&config, registry.clone(), shared.as_ref()).await?;
    let plugin_changes_task = shared.clone().map(|s| {
        let announce = pier_cluster::adapters::plugin_announcer(s.clone());
        let mut recyclers: pier_cluster::adapters::Recyclers = Vec::new();
        for (entry, p) in &plugins.authorizers {
            p.announce_changes(announce.clone());
            let p = p.clone();
            recyclers.push((entry.name.clone(), Box::new(move || p.recycle())));
        }
        for (entry, p) in &plugins.admissions {
            let p = p.clone();
            recyclers.push((entry.name.clone(), Box::new(move || p.recycle())));
        }
        if let Some(e) = &events {
            for (name, p) in &e.replicators {
                p.announce_changes(announce.clone());
                let p = p.clone();
                recyclers.push((name.clone(), Box::new(move || p.recycle())));
            }
            for (name, p) in &e.notifiers {
                let p = p.clone();
                recyclers.push((name.clone(), Box::new(move || p.recycle())));
            }
        }
        tokio::spawn(pier_cluster::adapters::follow_plugin_changes(s, recyclers))
    });
    let observer = events
        .clone()
        .map(|e| e as Arc<dyn pier_core::FillObserver>);
    let shared_pulls = shared
        .clone()
        .map(|s| Arc::new(crate::cluster::RedisPulls { shared: s }));
    let upstream_timings = pier_upstream::UpstreamTimings::default();
    let budgets = pier_upstream::UpstreamBudgets::default();
    let (mirror, fleet) = mirror(
        &config,
        registry.clone(),
        ingest,
        shared,
        observer,
        (&upstream_timings, &budgets),
    )?;
    let metrics = Arc::new(Metrics::default());
    let series = Arc::new(pier_admin::metrics::registry(pier_admin::metrics::Parts {
        build: (env!("CARGO_PKG_VERSION"), env!("PIER_COMMIT")),
        metrics: &metrics,
        registry: &registry,
        upstreams: &upstream_timings,
        budgets: &budgets,
        mirror: mirror.as_ref(),
        access: access.as_ref(),
        authorizers: (plugins.authorizers.iter().map(|(_, a)| a.metrics().clone()))
            .chain(plugins.admissions.iter().map(|(_, a)| a.metrics().clone()))
            .collect(),
        events: events.as_ref(),
    }));
    let mut state = AppState::new(registry.clone(), mirror.clone(), metrics.clone());
    state.ready = Arc::new(readiness);
    state.body_pace = pier_http::body::BodyPace {
        idle: config.limits.body_idle_timeout,
        min_rate: config.limits.upload_min_rate,
    };
    if let Some(a) = &access {
        state = state.with_access(a.clone());
    }
    if let Some(e) = &events {
        state = state.with_events(e.clone());
    }
    let mut pulls = pier_admin::activity::PullLog::open(
        config.root.join("pier").join("activity").join("pulls.json"),
        PULL_LOG_MAX,
    );
    if let Some(s) = shared_pulls {
        pulls = pulls.with_shared(s);
    }
    let pulls = Arc::new(pulls);
    state = state.with_pulls(pulls.clone());
    let state = Arc::new(state);
    let fleet_task = match (&config.fleet, &fleet) {
        (Some(c), Some(f)) => {
            let peer_listener = bind(c.listen).await?;
            tracing::info!(listen = %peer_listener.local_addr()?, me = %f.me(), "fleet peer listener");
            let svc = Arc::new(pier_http::fleet::PeerService {
                state: state.clone(),
                fleet: f.clone(),
                key: c.key.clone(),
            });
            Some((
                tokio::spawn(pier_http::fleet::listen(
                    peer_listener,
                    svc,
                    config.limits.clone(),
                )),
                tokio::spawn(f.clone().run()),
            ))
        }
        _ => None,
    };
    let admin_state = Arc::new(AdminState {
        guard: pier_admin::guard::AdminGuard::new(&config.admin_hostnames),
        history: pier_admin::history::History::open(
            config.history_every,
            config.root.join("pier").join("history.jsonl"),
        ),
        accounts: config.auth.as_ref().map(|a| pier_admin::AccountFiles {
            users: a.users_file.clone(),
            robots: a.robots_file.clone(),
            lock: tokio::sync::Mutex::new(()),
        }),
        metrics,
        series,
        mirror,
        fleet: fleet.clone(),
        budgets: budgets.clone(),
        ready: state.ready.clone(),
        plugins: plugins.clone(),
        access,
        root: config.root.clone(),
        events,
        registry: registry.clone(),
        pulls: pulls.clone(),
        clustered: config.redis.is_some(),
        retention: retention
            .as_ref()
            .map(|(_, p)| p.clone() as Arc<dyn pier_auth::retention::RetentionPolicy>),
        registry_url: tls
            .is_none()
            .then(|| listener.local_addr().map(|a| format!("http://{a}")).ok())
            .flatten(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        root = %config.root.display(),
        tls = tls.is_some(),
        h2c = config.h2c,
        "pier serving"
    );

    let retention_task = retention.as_ref().and_then(|(e, _)| e.every).map(|every| {
        tokio::spawn(pier_admin::api::retention::schedule(
            admin_state.clone(),
            every,
        ))
    });
    let admin_task = tokio::spawn(admin_loop(
        admin_listener,
        admin_state.clone(),
        config.limits.clone(),
    ));
    let history_task = tokio::spawn(pier_admin::history::run(Arc::downgrade(&admin_state)));
    let evict_task = match (&admin_state.mirror, config.cache_max_size) {
        (Some(m), Some(max)) => Some(tokio::spawn(evict_loop(
            m.clone(),
            max,
            config.cache_evict_interval,
        ))),
        _ => None,
    };
    let expiry_task = tokio::spawn(expire_uploads(registry.clone(), config.upload_idle_timeout));
    let watch_task = tokio::spawn(plugins.clone().watch());
    let hup_task = tokio::spawn(reload_on_sighup(plugins.clone()));
    let pulls_task = tokio::spawn(pulls.clone().run(PULL_LOG_FLUSH));

    let limits = Arc::new(config.limits.clone());
    let builders = Builders::new(&limits);
    let gate = Gate::new(
        "registry",
        limits.max_connections,
        limits.max_connections_per_address,
        config.trusted_proxies.clone(),
    );
    let graceful = GracefulShutdown::new();
    // Tells connections still before HTTP (first bytes, TLS handshake) to give up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            (stream, peer) = pier_http::conn::accept(&listener, "registry") => {
                let Some(permit) = gate.admit(peer.ip()) else {
                    if tls.is_none() {
                        tokio::spawn(pier_http::conn::refuse_plain(stream));
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let watcher = graceful.watcher();
                let (state, builders, tls, h2c) = (state.clone(), builders.clone(), tls.clone(), config.h2c);
                let limits = limits.clone();
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let ended = connection(stream, peer, state, builders, tls, h2c, &limits, stop, watcher).await;
                    if let Err(e) = ended {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }

    admin_state.ready.stop();
    let _ = stop_tx.send(true);
    drop(listener);
    tracing::info!(timeout = ?config.shutdown_timeout, "no longer accepting; finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(config.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached; closing remaining connections");
        }
    }
    if let Some(e) = &admin_state.events {
        e.stop().await;
    }
    pulls_task.abort();
    pulls.persist().await;
    expiry_task.abort();
    watch_task.abort();
    if let Some(t) = changes_task {
        t.abort();
    }
    if let Some(t) = plugin_changes_task {
        t.abort();
    }
    hup_task.abort();
    if let Some(t) = sweep_task {
        t.abort();
    }
    admin_task.abort();
    if let Some(t) = retention_task {
        t.abort();
    }
    history_task.abort();
    if let Some((listen, run)) = fleet_task {
        listen.abort();
        run.abort();
    }
    if let Some(t) = evict_task {
        t.abort();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    builders: Builders,
    tls: Option<TlsAcceptor>,
    h2c: bool,
    limits: &Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let info = pier_http::ConnInfo {
        peer,
        tls: tls.is_some(),
    };
    // Every request counts as activity until its response body is sent or dropped.
    let activity = pier_http::conn::Activity::new();
    let tracker = activity.clone();
    let svc = service_fn(move |req| {
        let flight = tracker.begin();
        let state = state.clone();
        async move {
            let resp = pier_http::serve(state, info, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(move |body| {
                body.map_frame(move |frame| {
                    let _in_flight = &flight;
                    frame
                })
            }))
        }
    });
    // Before HTTP starts (first bytes, TLS handshake) a shutdown just closes the
    // connection; from then on in-flight requests finish first. The watcher, held for the
    // connection's life, is what the server's shutdown waits for.
    let _watcher = watcher;
    tokio::select! {
        r = pier_http::conn::first_bytes(&stream, limits) => r?,
        _ = stop.wait_for(|s| *s) => return Ok(()),
    }
    let stream = pier_http::conn::with_send_timeout(stream, limits);
    match tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
            let tls_stream = tokio::select! {
                r = handshake => r.map_err(|_| "TLS handshake timed out")??,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 { &builders.h2 } else { &builders.h1 };
            let conn = builder
                .serve_connection(TokioIo::new(tls_stream), svc)
                .into_owned();
            pier_http::conn::drive(conn, &activity, limits.idle_timeout, &mut stop).await
        }
        None => {
            let builder = if h2c { &builders.sniff } else { &builders.h1 };
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            pier_http::conn::drive(conn, &activity, limits.idle_timeout, &mut stop).await
        }
    }
}

/// The mirror (when upstreams are configured) and the fleet it asks (when `[fleet]` is).
type MirrorAndFleet = (Option<Arc<Mirror>>, Option<Arc<pier_core::fleet::Fleet>>);

/// The pull-through mirror, when upstreams are configured.
fn mirror(
    config: &Config,
    registry: Arc<Registry>,
    ingest: Arc<dyn IngestStore>,
    shared: Option<pier_cluster::Shared>,
    observer: Option<Arc<dyn pier_core::FillObserver>>,
    (timings, budgets): (
        &pier_upstream::UpstreamTimings,
        &pier_upstream::UpstreamBudgets,
    ),
) -> Result<MirrorAndFleet, ServerError> {
    if config.upstreams.is_empty() {
        return Ok((None, None));
    }
    let mut upstreams = Vec::new();
    for u in &config.upstreams {
        let client = UpstreamClient::new(UpstreamConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            credentials: u
                .credentials
                .clone()
                .map(|(username, password)| Credentials { username, password }),
            timeout: Duration::from_secs(30),
            retries: 3,
            allow_private: u.allow_private,
        })
        .map_err(|e| ServerError::Config(format!("upstream {}: {e}", u.url)))?
        .with_timings(timings.clone())
        .with_budget(budgets.add(&u.name, u.budget));
        tracing::info!(name = %u.name, url = %u.url, namespace = %u.namespace, tag_ttl = ?u.tag_ttl, "mirroring upstream");
        upstreams.push(UpstreamSpec {
            name: u.name.clone(),
            namespace: u.namespace.clone(),
            tag_ttl: u.tag_ttl,
            stale_while_revalidate: u.stale_while_revalidate,
            docker_hub: u.docker_hub,
            keep_deleted: u.keep_deleted,
            platforms: u.platforms.clone(),
            client: Arc::new(client),
        });
    }
    let fleet = config.fleet.as_ref().map(|f| {
        let names = config.upstreams.iter().map(|u| u.name.clone()).collect();
        let connector = Arc::new(pier_http::fleet::Connector::new(f, names));
        Arc::new(pier_core::fleet::Fleet::new(f.settings.clone(), connector))
    });
    let config = MirrorConfig {
        upstreams,
        default: config.default_upstream,
        local_namespaces: config.local_namespaces.clone(),
    };
    let mut mirror = Mirror::new(registry, ingest, config);
    if let Some(o) = observer {
        mirror = mirror.with_fill_observer(o);
    }
    if let Some(shared) = shared {
        mirror = mirror.with_leases(Arc::new(pier_cluster::adapters::RedisLeases {
            shared,
            owner: pier_cluster::adapters::node_id(),
        }));
    }
    if let Some(f) = &fleet {
        mirror = mirror.with_peers(f.clone());
    }
    Ok((Some(Arc::new(mirror)), fleet))
}

/// The admin listener: HTTP/1.1, operators only, so no cap per address (loopback would
/// share it with everything).
async fn admin_loop(listener: TcpListener, state: Arc<AdminState>, limits: Limits) {
    let max = limits.admin_max_connections;
    pier_http::conn::serve_http1(listener, "admin", max, limits, move |req| {
        admin::serve(state.clone(), req)
    })
    .await
}

/// Keeps the mirror cache within its size bound.
async fn evict_loop(mirror: Arc<Mirror>, max: u64, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match mirror.evict(max).await {
            Ok(r) if !r.evicted.is_empty() => tracing::info!(
                evicted = r.evicted.len(),
                bytes = r.evicted_bytes,
                cached_before = r.cached_bytes,
                bound = max,
                "evicted least recently used mirrored blobs"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
        }
    }
}

/// Forgets revocations of tokens that have expired (and compacts their file) once a
/// minute.
async fn sweep_revocations(revocations: Arc<dyn pier_auth::revoke::Revocations>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = revocations.sweep().await {
            tracing::warn!(error = %e, "sweeping expired token revocations failed");
        }
    }
}

/// Removes idle upload sessions, checking a few times per timeout period.
async fn expire_uploads(registry: Arc<Registry>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match registry.stores().uploads.expire(idle).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
        }
    }
}
