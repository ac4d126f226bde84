//! [`Events`]: publish into the journal, the dispatcher (journal → router → outbox) and
//! the delivery scheduler (outbox → HTTP, retries, pruning).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pier_upstream::Backoff;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::delivery::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryPage, DeliveryRequest, DeliveryStatus,
    PageRequest, Retention,
};
use crate::event::{Event, EventDraft, Timestamp};
use crate::sender::{Outcome, Sender, check_headers, check_url};
use crate::signing::EndpointSecret;
use crate::store::Stores;
use crate::{EventsError, disk};

/// Events routed per outbox commit.
const DISPATCH_BATCH: usize = 256;
/// Pending entries the scheduler looks at per pass (oldest first; when ordered, the
/// oldest of each URL).
const SCHEDULE_WINDOW: usize = 4096;
/// Longest the scheduler sleeps without a reason to wake.
const IDLE_WAKE: Duration = Duration::from_secs(30);
/// Pause before retrying a failed store operation.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// Why the router produced no deliveries for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    message: String,
}

impl RouteError {
    pub fn new(message: impl Into<String>) -> RouteError {
        RouteError {
            message: message.into(),
        }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RouteError {}

/// Decides the deliveries of an event (the server implements it with the notifier
/// plugin). An error, a panic or a timeout means "no deliveries" for that event.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    async fn route(&self, event: &Event) -> Result<Vec<DeliveryRequest>, RouteError>;
}

/// A router without a plugin: every event, as CloudEvents JSON
/// (`application/cloudevents+json`), to each of a fixed list of URLs.
#[derive(Debug, Clone)]
pub struct WebhookRouter {
    pub urls: Vec<String>,
}

#[async_trait]
impl Router for WebhookRouter {
    async fn route(&self, event: &Event) -> Result<Vec<DeliveryRequest>, RouteError> {
        let body = Bytes::from(event.to_json());
        Ok(self
            .urls
            .iter()
            .map(|url| DeliveryRequest {
                url: url.clone(),
                headers: vec![("content-type".into(), "application/cloudevents+json".into())],
                body: body.clone(),
                refused: None,
            })
            .collect())
    }
}

/// Settings of [`Events`].
#[derive(Clone)]
pub struct EventsConfig {
    /// The CloudEvents `source` of every event (e.g. the node's public URL).
    pub source: String,
    /// Signs requests to URLs without an entry in `endpoint_secrets` ([`crate::signing`]);
    /// `None`: those go unsigned. Every receiver holding it can forge requests to the
    /// others: prefer a secret per endpoint.
    pub signing_secret: Option<Vec<u8>>,
    /// A secret per endpoint: requests to a matching URL are signed with it.
    pub endpoint_secrets: Vec<EndpointSecret>,
    /// Attempts per delivery before it is `failed` (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt (jitter adds up to as much again); doubles
    /// after each next one...
    pub backoff_base: Duration,
    /// ...up to this, jitter included (a `Retry-After` in seconds is honoured up to this
    /// too).
    pub backoff_cap: Duration,
    /// Bound on one request, connecting included.
    pub request_timeout: Duration,
    /// Requests in flight at once, over all URLs.
    pub concurrency: usize,
    /// Deliveries to one URL are sent one at a time in event order: a later one waits
    /// while an earlier one is retried (until it is delivered or failed). When false,
    /// they go concurrently and may arrive out of order.
    pub ordered_per_url: bool,
    /// Bound on one `Router::route` call.
    pub router_timeout: Duration,
    pub retention: Retention,
    /// How often finished entries are pruned.
    pub prune_interval: Duration,
    /// Trust roots for https webhooks; `None` = the system's (rustls-native-certs).
    pub tls_roots: Option<rustls::RootCertStore>,
    /// When set, the dispatcher and the scheduler also look at the stores this often, not
    /// only when woken by this instance: for stores shared by several instances (events
    /// published or redelivered on another node). `None` (the default) for a store of
    /// its own.
    pub poll_interval: Option<Duration>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            source: "pier".into(),
            signing_secret: None,
            endpoint_secrets: Vec::new(),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            concurrency: 16,
            ordered_per_url: true,
            router_timeout: Duration::from_secs(2),
            retention: Retention::default(),
            prune_interval: Duration::from_secs(60),
            tls_roots: None,
            poll_interval: None,
        }
    }
}

impl fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsConfig")
            .field("source", &self.source)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint_secrets", &self.endpoint_secrets)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("request_timeout", &self.request_timeout)
            .field("concurrency", &self.concurrency)
            .field("ordered_per_url", &self.ordered_per_url)
            .field("router_timeout", &self.router_timeout)
            .field("retention", &self.retention)
            .field("prune_interval", &self.prune_interval)
            .field("tls_roots", &self.tls_roots.as_ref().map(|r| r.len()))
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

struct Inner {
    stores: Stores,
    router: Arc<dyn Router>,
    config: EventsConfig,
    sender: Sender,
    /// Wakes the dispatcher (an event was published).
    dispatch: Notify,
    /// Wakes the scheduler (entries were added or redelivered).
    schedule: Notify,
    /// Deliveries pending, as the scheduler last counted them.
    outbox_pending: prometheus_client::metrics::gauge::Gauge,
}

/// The events subsystem: publish events, and (in background tasks) route them and
/// deliver the webhooks. Dropping it stops the tasks abruptly (in-flight requests are
/// abandoned and sent again after the next start); [`Events::shutdown`] does the same
/// but waits for the tasks to end.
pub struct Events {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// The background part of an [`Events`] (dispatcher and delivery scheduler), from
/// [`Events::spawn_workers`]. Dropping it stops the tasks abruptly, like dropping an
/// [`Events`]; [`Workers::stop`] also waits for them to end.
pub struct Workers {
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Stops the tasks and waits for them to end.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// True once a task ended (it should not: only if it panicked).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().any(JoinHandle::is_finished)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Events {
    /// Starts the dispatcher and the delivery scheduler on the current tokio runtime.
    pub fn start(
        stores: Stores,
        router: Arc<dyn Router>,
        config: EventsConfig,
    ) -> Result<Events, EventsError> {
        let mut events = Events::publisher(stores, router, config)?;
        events.tasks = std::mem::take(&mut events.spawn_workers().tasks);
        Ok(events)
    }

    /// An instance without background tasks: it publishes, lists and redelivers, but
    /// routes and delivers nothing until [`Events::spawn_workers`]. For stores shared by
    /// several instances, where one at a time (the holder of a lease) runs the workers.
    pub fn publisher(
        stores: Stores,
        router: Arc<dyn Router>,
        mut config: EventsConfig,
    ) -> Result<Events, EventsError> {
        config.max_attempts = config.max_attempts.max(1);
        config.concurrency = config.concurrency.max(1);
        let sender = Sender::new(
            config.tls_roots.take(),
            config.signing_secret.as_deref(),
            &config.endpoint_secrets,
            config.request_timeout,
        )?;
        let inner = Arc::new(Inner {
            stores,
            router,
            config,
            sender,
            dispatch: Notify::new(),
            schedule: Notify::new(),
            outbox_pending: Default::default(),
        });
        Ok(Events {
            inner,
            tasks: Vec::new(),
        })
    }

    /// Adds `pier_webhook_outbox_pending` to the binary's metrics registry: deliveries
    /// neither delivered nor failed yet, counted at each pass of the delivery scheduler
    /// (on the node running delivery when scaled out).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pier_webhook_outbox_pending",
            "Webhook deliveries neither delivered nor failed yet",
            self.inner.outbox_pending.clone(),
        );
    }

    /// Starts the dispatcher and the delivery scheduler for this instance's stores, until
    /// the returned [`Workers`] is stopped or dropped. At most one set of workers may run
    /// on a set of stores at a time (an [`Events::start`]ed instance has its own).
    pub fn spawn_workers(&self) -> Workers {
        Workers {
            tasks: vec![
                tokio::spawn(dispatch_loop(self.inner.clone())),
                tokio::spawn(schedule_loop(self.inner.clone())),
            ],
        }
    }

    /// [`disk::open`] then [`Events::start`].
    pub fn open_dir(
        dir: impl AsRef<Path>,
        router: Arc<dyn Router>,
        config: EventsConfig,
    ) -> Result<Events, EventsError> {
        Events::start(disk::open(dir)?, router, config)
    }

    /// Records an event durably (it survives a crash once this returns) and queues it
    /// for routing. Concurrent calls share one journal write and fsync.
    pub async fn publish(&self, draft: EventDraft) -> Result<Event, EventsError> {
        let event = Event::from_draft(draft, Timestamp::now(), self.inner.config.source.clone());
        let mut stored = self.inner.stores.journal.append(vec![event]).await?;
        self.inner.dispatch.notify_one();
        stored.pop().ok_or_else(|| EventsError::Backend {
            context: "journal append returned no event".into(),
            source: None,
        })
    }

    /// The delivery log, newest first.
    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<DeliveryPage, EventsError> {
        self.inner.stores.outbox.list(filter, page).await
    }

    pub async fn delivery(&self, id: &DeliveryId) -> Result<Option<Delivery>, EventsError> {
        self.inner.stores.outbox.get(id).await
    }

    /// Sends an entry again from attempt 1 (a failed or delivered one), or at once (a
    /// pending one waiting for its next attempt).
    pub async fn redeliver(&self, id: &DeliveryId) -> Result<Delivery, EventsError> {
        let outbox = &self.inner.stores.outbox;
        let mut d = outbox
            .get(id)
            .await?
            .ok_or_else(|| EventsError::NotFound(id.clone()))?;
        let now = Timestamp::now();
        if d.status != DeliveryStatus::Pending {
            d.status = DeliveryStatus::Pending;
            d.attempts = 0;
            d.finished = None;
        }
        d.next_attempt = now;
        outbox.update(&d).await?;
        info!(delivery = %d.id, event_id = d.event_id, url = %d.url, "redelivery requested");
        self.inner.schedule.notify_one();
        Ok(d)
    }

    /// Stops the background tasks and waits for them to end.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The wait after `attempts` failed attempts of one delivery.
fn delivery_backoff(config: &EventsConfig, attempts: u32) -> Duration {
    Backoff::new(config.backoff_base, config.backoff_cap).wait(attempts.saturating_sub(1))
}

impl Inner {
    /// The entries for one event; none if the router fails, panics or times out.
    async fn route(&self, event: &Event, now: Timestamp) -> Vec<Delivery> {
        let router = self.router.clone();
        let routed = event.clone();
        // Its own task, so a panic is contained; aborted if this future is dropped.
        let mut task = AbortOnDrop(tokio::spawn(async move { router.route(&routed).await }));
        let requests = match tokio::time::timeout(self.config.router_timeout, &mut task.0).await {
            Ok(Ok(Ok(requests))) => requests,
            Ok(Ok(Err(e))) => {
                warn!(event_id = event.id, error = %e, "router failed: the event has no deliveries");
                return Vec::new();
            }
            Ok(Err(e)) => {
                error!(event_id = event.id, error = %e, "router panicked: the event has no deliveries");
                return Vec::new();
            }
            Err(_) => {
                warn!(event_id = event.id, timeout = ?self.config.router_timeout, "router timed out: the event has no deliveries");
                return Vec::new();
            }
        };
        requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let mut d = Delivery::new(event.id, index, request, now);
                if d.refused.is_none()
                    && let Err(e) = check_url(&d.url).map(drop).and_then(|()| {
                        check_headers(&d.headers).map_err(|e| format!("refused: {e}"))
                    })
                {
                    d.status = DeliveryStatus::Failed;
                    d.last_error = Some(e);
                    d.finished = Some(now);
                }
                if d.status == DeliveryStatus::Failed {
                    warn!(event_id = event.id, delivery = %d.id, url = %d.url,
                        error = d.last_error.as_deref().unwrap_or(""),
                        "undeliverable request from the router: recorded as failed, not sent");
                }
                d
            })
            .collect()
    }

    /// The wait after `attempts` failed attempts: exponential with jitter, at most the
    /// cap ([`Backoff`]; drawn per delivery, so receivers that failed together are not
    /// retried together).
    fn backoff(&self, attempts: u32) -> Duration {
        delivery_backoff(&self.config, attempts)
    }

    /// After a failed attempt: schedule the next one or give up.
    fn retry_or_fail(&self, d: &mut Delivery, now: Timestamp, retry_after: Option<Duration>) {
        if d.attempts >= self.config.max_attempts {
            d.status = DeliveryStatus::Failed;
            d.finished = Some(now);
            return;
        }
        let wait = self
            .backoff(d.attempts)
            .max(retry_after.unwrap_or_default().min(self.config.backoff_cap));
        d.next_attempt = now.saturating_add(wait);
    }

    /// One attempt of one entry, recorded in the outbox.
    async fn deliver(&self, id: DeliveryId) {
        let outbox = &self.stores.outbox;
        let mut d = match outbox.get(&id).await {
            Ok(Some(d)) if d.status == DeliveryStatus::Pending => d,
            Ok(_) => return,
            Err(e) => {
                warn!(delivery = %id, error = %e, "cannot read an outbox entry");
                return;
            }
        };
        let attempt = d.attempts + 1;
        let outcome = self.sender.send(&d, attempt).await;
        let now = Timestamp::now();
        d.attempts = attempt;
        d.last_attempt = Some(now);
        match outcome {
            Outcome::Answered { status, .. } if (200..300).contains(&status) => {
                d.status = DeliveryStatus::Delivered;
                d.last_status = Some(status);
                d.last_error = None;
                d.finished = Some(now);
                debug!(delivery = %d.id, event_id = d.event_id, url = %d.url, attempt, status, "delivered");
            }
            Outcome::Answered {
                status,
                retry_after,
            } => {
                d.last_status = Some(status);
                d.last_error = Some(format!("HTTP {status}"));
                self.retry_or_fail(&mut d, now, retry_after);
            }
            Outcome::Error(e) => {
                d.last_status = None;
                d.last_error = Some(e);
                self.retry_or_fail(&mut d, now, None);
            }
            Outcome::Invalid(e) => {
                d.last_status = None;
                d.last_error = Some(e);
                d.status = DeliveryStatus::Failed;
                d.finished = Some(now);
            }
        }
        match d.status {
            DeliveryStatus::Failed => {
                warn!(delivery = %d.id, event_id = d.event_id, url = %d.url, attempts = d.attempts, error = d.last_error.as_deref().unwrap_or(""), "delivery failed")
            }
            DeliveryStatus::Pending => {
                debug!(delivery = %d.id, url = %d.url, attempt, error = d.last_error.as_deref().unwrap_or(""), "delivery attempt failed; will retry")
            }
            DeliveryStatus::Delivered => {}
        }
        if let Err(e) = outbox.update(&d).await {
            warn!(delivery = %d.id, error = %e, "cannot record a delivery attempt (it may be repeated)");
        }
    }
}

/// Journal → router → outbox, in id order, in batches.
async fn dispatch_loop(inner: Arc<Inner>) {
    let Stores { journal, outbox } = inner.stores.clone();
    let mut cursor = loop {
        match outbox.cursor().await {
            Ok(c) => break c,
            Err(e) => {
                error!(error = %e, "cannot read the outbox cursor");
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    };
    loop {
        let events = match journal.read_after(cursor, DISPATCH_BATCH).await {
            Ok(events) => events,
            Err(e) => {
                error!(error = %e, "cannot read the journal");
                tokio::time::sleep(STORE_RETRY).await;
                continue;
            }
        };
        let Some(through) = events.last().map(|e| e.id) else {
            // `notify_one` keeps a permit when nobody waits, so no wakeup is lost.
            match inner.config.poll_interval {
                Some(poll) => {
                    tokio::select! {
                        _ = inner.dispatch.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                None => inner.dispatch.notified().await,
            }
            continue;
        };
        let now = Timestamp::now();
        let mut entries = Vec::new();
        for event in &events {
            entries.extend(inner.route(event, now).await);
        }
        loop {
            match outbox.commit_routed(through, entries.clone()).await {
                Ok(added) => {
                    debug!(through, added, "events routed");
                    break;
                }
                Err(e) => {
                    error!(through, error = %e, "cannot store deliveries; retrying");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
        cursor = through;
        if let Err(e) = journal.release(through).await {
            warn!(through, error = %e, "cannot release journal events");
        }
        inner.schedule.notify_one();
    }
}

/// Outbox → HTTP: starts due entries within the concurrency bound and, when ordered,
/// only the oldest pending entry of each URL.
async fn schedule_loop(inner: Arc<Inner>) {
    let outbox = inner.stores.outbox.clone();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, DeliveryId> = HashMap::new();
    let mut next_prune = Instant::now() + inner.config.prune_interval;
    loop {
        while let Some(done) = running.try_join_next_with_id() {
            finished(&mut in_flight, done);
        }
        let now = Timestamp::now();
        let ordered = inner.config.ordered_per_url;
        match outbox.pending_count().await {
            Ok(n) => {
                inner.outbox_pending.set(n as i64);
            }
            Err(e) => warn!(error = %e, "cannot count pending deliveries"),
        }
        let pending = match outbox.pending(SCHEDULE_WINDOW, ordered).await {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "cannot read pending deliveries");
                Vec::new()
            }
        };
        let busy: HashSet<&DeliveryId> = in_flight.values().collect();
        let mut heads: HashSet<&str> = HashSet::new();
        let mut to_start = Vec::new();
        let mut wake_at: Option<Timestamp> = None;
        for p in &pending {
            if ordered && !heads.insert(p.url.as_str()) {
                continue;
            }
            if busy.contains(&p.id) {
                continue;
            }
            if p.next_attempt > now {
                wake_at = Some(wake_at.map_or(p.next_attempt, |w| w.min(p.next_attempt)));
                continue;
            }
            if running.len() + to_start.len() >= inner.config.concurrency {
                break;
            }
            to_start.push(p.id.clone());
        }
        drop(busy);
        for id in to_start {
            let task_inner = inner.clone();
            let task_id = id.clone();
            let handle = running.spawn(async move { task_inner.deliver(task_id).await });
            in_flight.insert(handle.id(), id);
        }

        if Instant::now() >= next_prune {
            match outbox
                .prune(&inner.config.retention, Timestamp::now())
                .await
            {
                Ok(0) => {}
                Ok(n) => debug!(pruned = n, "delivery log pruned"),
                Err(e) => warn!(error = %e, "cannot prune the delivery log"),
            }
            next_prune = Instant::now() + inner.config.prune_interval;
        }

        let mut sleep_for = wake_at.map_or(IDLE_WAKE, |w| now.until(w)).min(IDLE_WAKE);
        sleep_for = sleep_for.min(next_prune.saturating_duration_since(Instant::now()));
        if let Some(poll) = inner.config.poll_interval {
            sleep_for = sleep_for.min(poll);
        }
        tokio::select! {
            _ = inner.schedule.notified() => {}
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                finished(&mut in_flight, done);
            }
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn finished(
    in_flight: &mut HashMap<tokio::task::Id, DeliveryId>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let task = match done {
        Ok((task, ())) => task,
        Err(e) => {
            if e.is_panic() {
                error!(error = %e, "a delivery task panicked");
            }
            e.id()
        }
    };
    in_flight.remove(&task);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_backoff_grows_with_jitter_under_the_cap() {
        let config = EventsConfig {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            ..EventsConfig::default()
        };
        let ms = Duration::from_millis;
        // backon computes in f32 seconds: a microsecond of slack.
        let slack = Duration::from_micros(1);
        for _ in 0..100 {
            for (attempts, floor) in (1..=7).zip([100, 200, 400, 800, 1000, 1000, 1000]) {
                let wait = delivery_backoff(&config, attempts);
                assert!(wait + slack >= ms(floor), "{attempts}: {wait:?}");
                assert!(
                    wait <= (ms(floor) * 2).min(ms(1000)),
                    "{attempts}: {wait:?}"
                );
            }
            assert!(delivery_backoff(&config, u32::MAX) <= ms(1000));
        }
        let a: Vec<Duration> = (1..=4).map(|n| delivery_backoff(&config, n)).collect();
        let b: Vec<Duration> = (1..=4).map(|n| delivery_backoff(&config, n)).collect();
        assert_ne!(a, b, "no jitter");
    }
}
