//! The event journal and the delivery outbox of `pier-events` in Redis, for scaled-out
//! nodes: every node publishes into the same journal, and the one node holding the
//! `events-dispatcher` lease ([`EventsLeader`]) routes and delivers. A node that goes
//! away loses nothing: its events and pending deliveries are in Redis, and another node
//! takes the lease over once it expires.
//!
//! Durability is Redis's: an acknowledged publish survives a Pier crash, but a Redis
//! crash only with persistence (`appendonly yes`, `appendfsync everysec` loses at most
//! about a second) and a failover only what reached the replica (asynchronous
//! replication; `WAIT` is not used). That is the operator's choice.
//!
//! Keys (all under `{prefix}{events}:`, one Redis Cluster slot, so the Lua scripts may
//! touch several; `M` is an entry's sort member: event id as 20 digits, index as 10
//! digits, then the delivery id, so lexicographic order is the delivery key order):
//!
//! | key         | type        | content                                                |
//! |-------------|-------------|--------------------------------------------------------|
//! | `seq`       | string      | the last journal id given                              |
//! | `journal`   | sorted set  | score = event id, member = `<id>:<event JSON>`         |
//! | `cursor`    | string      | the dispatcher's cursor (only moves forward)           |
//! | `entries`   | hash        | delivery id → delivery JSON                            |
//! | `all`       | sorted set  | every entry's `M` (score 0, lexicographic)             |
//! | `pending`   | sorted set  | pending entries' `M` (score 0)                         |
//! | `url:<sha1(url)>` | sorted set | pending entries' `M` of one URL (score 0)        |
//! | `urls`      | set         | `sha1(url)` of every URL with pending entries          |
//! | `sched`     | hash        | pending delivery id → `<next attempt µs> <url>`        |
//! | `delivered` | sorted set  | delivered entries' `M` (score 0)                       |
//! | `finished`  | hash        | delivered delivery id → finished µs                    |
//! | `failed`    | sorted set  | failed entries' `M`, score = finished µs               |
//!
//! No key expires: the journal is trimmed by `release`, the outbox by `prune`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pier_events::{
    Delivery, DeliveryFilter, DeliveryId, DeliveryKey, DeliveryPage, DeliveryStatus, Event, Events,
    EventsError, Journal, Outbox, PageRequest, PendingDelivery, Retention, Stores, Timestamp,
    Workers,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::lease::eval;
use crate::{ClusterError, Shared};

/// The lease the dispatching node holds.
pub const DISPATCHER_LEASE: &str = "events-dispatcher";
/// Default TTL of [`DISPATCHER_LEASE`].
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(10);

/// Length of the `<event id><index>` start of a sort member.
const KEY_LEN: usize = 30;
/// Members read per round trip when listing.
const LIST_CHUNK: usize = 256;

/// KEYS[1] journal; ARGV[1] key prefix, ARGV[2..] event JSONs. Gives the events the
/// next ids (never at or below the cursor) and stores them; returns the first id.
const APPEND: &str = r"
local p = ARGV[1]
local last = tonumber(redis.call('GET', p..'seq') or '0')
local cur = tonumber(redis.call('GET', p..'cursor') or '0')
if cur > last then last = cur end
for i = 2, #ARGV do
  local id = string.format('%d', last + i - 1)
  redis.call('ZADD', KEYS[1], id, id..':'..ARGV[i])
end
redis.call('SET', p..'seq', string.format('%d', last + #ARGV - 1))
return last + 1";

/// Shared by the scripts that write entries: keeps the indexes of one entry in step
/// with its status. ARGV[1] is the key prefix.
const INDEX_LIB: &str = r"
local p = ARGV[1]
local function unindex(id, m, url)
  local h = redis.sha1hex(url)
  local k = p..'url:'..h
  redis.call('ZREM', p..'pending', m)
  redis.call('ZREM', k, m)
  if redis.call('EXISTS', k) == 0 then redis.call('SREM', p..'urls', h) end
  redis.call('HDEL', p..'sched', id)
  redis.call('ZREM', p..'delivered', m)
  redis.call('ZREM', p..'failed', m)
  redis.call('HDEL', p..'finished', id)
end
local function index(id, m, url, status, fin, nxt)
  unindex(id, m, url)
  if status == 'pending' then
    local h = redis.sha1hex(url)
    redis.call('ZADD', p..'pending', 0, m)
    redis.call('ZADD', p..'url:'..h, 0, m)
    redis.call('SADD', p..'urls', h)
    redis.call('HSET', p..'sched', id, nxt..' '..url)
  elseif fin ~= '' then
    if status == 'delivered' then
      redis.call('ZADD', p..'delivered', 0, m)
      redis.call('HSET', p..'finished', id, fin)
    else
      redis.call('ZADD', p..'failed', fin, m)
    end
  end
end
";

/// KEYS[1] entries; ARGV[1] prefix, ARGV[2] through, then 7 per entry (id, member, url,
/// status, finished µs or '', next attempt µs, JSON). Adds the entries not present
/// and moves the cursor forward to `through`, atomically; returns how many were new.
const COMMIT: &str = r"
local added = 0
for i = 3, #ARGV, 7 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i+6]) == 1 then
    added = added + 1
    redis.call('ZADD', p..'all', 0, ARGV[i+1])
    index(ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5])
  end
end
local cur = redis.call('GET', p..'cursor')
if not cur or tonumber(ARGV[2]) > tonumber(cur) then
  redis.call('SET', p..'cursor', ARGV[2])
end
return added";

/// KEYS[1] entries; ARGV[1] prefix, then one entry as in [`COMMIT`]. Replaces it if
/// present; 1 if replaced.
const UPDATE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[8])
index(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1";

/// KEYS[1] pending; ARGV[1] prefix, ARGV[2] limit (> 0), ARGV[3] '1' for the oldest
/// of each URL (all of them, unsorted: the caller sorts and truncates). Returns
/// member, sched pairs.
const PENDING: &str = r"
local p = ARGV[1]
local ms
if ARGV[3] == '1' then
  ms = {}
  for _, h in ipairs(redis.call('SMEMBERS', p..'urls')) do
    local m = redis.call('ZRANGE', p..'url:'..h, 0, 0)[1]
    if m then ms[#ms + 1] = m end
  end
else
  ms = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
end
local out = {}
for _, m in ipairs(ms) do
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', p..'sched', string.sub(m, 31)) or ''
end
return out";

/// KEYS[1] entries; ARGV[1] prefix, ARGV[2] delivered cutoff µs, ARGV[3] failed cutoff
/// µs, ARGV[4] delivered max count. Drops delivered entries finished before their
/// cutoff or beyond the newest max count, failed ones finished before theirs.
const PRUNE: &str = r"
local p = ARGV[1]
local doomed = {}
local del = redis.call('ZRANGE', p..'delivered', 0, -1)
local kept = 0
local max = tonumber(ARGV[4])
local cut = tonumber(ARGV[2])
for i = #del, 1, -1 do
  local m = del[i]
  local f = tonumber(redis.call('HGET', p..'finished', string.sub(m, 31)) or '0')
  if f < cut or kept >= max then doomed[#doomed + 1] = m else kept = kept + 1 end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', p..'failed', '-inf', '('..ARGV[3])) do
  doomed[#doomed + 1] = m
end
for _, m in ipairs(doomed) do
  local id = string.sub(m, 31)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', p..'all', m)
  redis.call('ZREM', p..'delivered', m)
  redis.call('ZREM', p..'failed', m)
  redis.call('HDEL', p..'finished', id)
end
return #doomed";

impl Shared {
    /// The event journal and outbox in this Redis (see [`RedisJournal`]).
    pub fn event_stores(&self) -> Stores {
        Stores {
            journal: Arc::new(RedisJournal::new(self.clone())),
            outbox: Arc::new(RedisOutbox::new(self.clone())),
        }
    }
}

fn backend(e: ClusterError) -> EventsError {
    EventsError::Backend {
        context: "redis".into(),
        source: Some(Box::new(e)),
    }
}

fn corrupt(what: &str, reason: String) -> EventsError {
    EventsError::Backend {
        context: format!("redis: unreadable {what}: {reason}"),
        source: None,
    }
}

/// [`Journal`] in Redis: ids from a counter, events in a sorted set by id. An append is
/// one Lua script (ids given and events stored together), so a reader never sees id
/// `n + 1` before `n`.
#[derive(Debug, Clone)]
pub struct RedisJournal {
    shared: Shared,
    prefix: String,
}

impl RedisJournal {
    /// The journal under the connection's key prefix.
    pub fn new(shared: Shared) -> Self {
        let prefix = shared.inner.keys.events();
        Self { shared, prefix }
    }

    fn key(&self) -> String {
        format!("{}journal", self.prefix)
    }
}

#[async_trait]
impl Journal for RedisJournal {
    async fn append(&self, mut events: Vec<Event>) -> Result<Vec<Event>, EventsError> {
        if events.is_empty() {
            return Ok(events);
        }
        let mut cmd = eval(APPEND, &self.key());
        cmd.arg(&self.prefix);
        for e in &events {
            let json = serde_json::to_string(e)
                .map_err(|err| corrupt("event", format!("serializing: {err}")))?;
            cmd.arg(json);
        }
        let first: u64 = self
            .shared
            .query("events_append", &cmd)
            .await
            .map_err(backend)?;
        for (i, e) in events.iter_mut().enumerate() {
            e.id = first + i as u64;
        }
        Ok(events)
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, EventsError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.key())
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<String> = self
            .shared
            .query("events_read", &cmd)
            .await
            .map_err(backend)?;
        members
            .iter()
            .map(|m| {
                let (id, json) = m
                    .split_once(':')
                    .ok_or_else(|| corrupt("journal member", "no id".into()))?;
                let id: u64 = id
                    .parse()
                    .map_err(|e| corrupt("journal member", format!("id: {e}")))?;
                let mut event: Event = serde_json::from_str(json)
                    .map_err(|e| corrupt("journal member", e.to_string()))?;
                event.id = id;
                Ok(event)
            })
            .collect()
    }

    async fn release(&self, through: u64) -> Result<(), EventsError> {
        let mut cmd = redis::cmd("ZREMRANGEBYSCORE");
        cmd.arg(self.key()).arg("-inf").arg(through);
        let _: u64 = self
            .shared
            .query("events_release", &cmd)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// [`Outbox`] in Redis: entries as JSON in a hash, with sorted-set indexes (see the
/// module doc); every write is one Lua script, so the indexes never disagree.
#[derive(Debug, Clone)]
pub struct RedisOutbox {
    shared: Shared,
    prefix: String,
}

/// A delivery key as the start of a sort member.
fn key_str(k: DeliveryKey) -> String {
    format!("{:020}{:010}", k.event_id, k.index)
}

fn member(d: &Delivery) -> String {
    format!("{}{}", key_str(d.key()), d.id)
}

/// The key and id in a sort member.
fn parse_member(m: &str) -> Result<(DeliveryKey, DeliveryId), EventsError> {
    let bad = |r: &str| corrupt("outbox member", format!("{m:?}: {r}"));
    if m.len() <= KEY_LEN || !m.is_char_boundary(KEY_LEN) {
        return Err(bad("too short"));
    }
    let event_id = m[..20].parse().map_err(|_| bad("event id"))?;
    let index = m[20..KEY_LEN].parse().map_err(|_| bad("index"))?;
    let id = DeliveryId::parse(&m[KEY_LEN..]).map_err(|_| bad("delivery id"))?;
    Ok((DeliveryKey { event_id, index }, id))
}

fn status_str(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
    }
}

fn parse_entry(json: &str) -> Result<Delivery, EventsError> {
    serde_json::from_str(json).map_err(|e| corrupt("outbox entry", e.to_string()))
}

impl RedisOutbox {
    /// The outbox under the connection's key prefix.
    pub fn new(shared: Shared) -> Self {
        let prefix = shared.inner.keys.events();
        Self { shared, prefix }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The 7 script arguments of one entry.
    fn entry_args(cmd: &mut redis::Cmd, d: &Delivery) -> Result<(), EventsError> {
        let json = serde_json::to_string(d)
            .map_err(|e| corrupt("outbox entry", format!("serializing: {e}")))?;
        cmd.arg(d.id.as_str())
            .arg(member(d))
            .arg(&d.url)
            .arg(status_str(d.status))
            .arg(
                d.finished
                    .map(|f| f.as_micros().to_string())
                    .unwrap_or_default(),
            )
            .arg(d.next_attempt.as_micros())
            .arg(json);
        Ok(())
    }
}

#[async_trait]
impl Outbox for RedisOutbox {
    async fn cursor(&self) -> Result<u64, EventsError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key("cursor"));
        let c: Option<u64> = self
            .shared
            .query("events_cursor", &cmd)
            .await
            .map_err(backend)?;
        Ok(c.unwrap_or(0))
    }

    async fn commit_routed(
        &self,
        through: u64,
        entries: Vec<Delivery>,
    ) -> Result<usize, EventsError> {
        let script = format!("{INDEX_LIB}{COMMIT}");
        let mut cmd = eval(&script, &self.key("entries"));
        cmd.arg(&self.prefix).arg(through);
        for d in &entries {
            Self::entry_args(&mut cmd, d)?;
        }
        let added: usize = self
            .shared
            .query("events_commit", &cmd)
            .await
            .map_err(backend)?;
        Ok(added)
    }

    async fn update(&self, entry: &Delivery) -> Result<(), EventsError> {
        let script = format!("{INDEX_LIB}{UPDATE}");
        let mut cmd = eval(&script, &self.key("entries"));
        cmd.arg(&self.prefix);
        Self::entry_args(&mut cmd, entry)?;
        let _: i64 = self
            .shared
            .query("events_update", &cmd)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get(&self, id: &DeliveryId) -> Result<Option<Delivery>, EventsError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.key("entries")).arg(id.as_str());
        let json: Option<String> = self
            .shared
            .query("events_get", &cmd)
            .await
            .map_err(backend)?;
        json.as_deref().map(parse_entry).transpose()
    }

    async fn pending_count(&self) -> Result<u64, EventsError> {
        let mut cmd = redis::cmd("ZCARD");
        cmd.arg(self.key("pending"));
        self.shared
            .query("events_pending_count", &cmd)
            .await
            .map_err(backend)
    }

    async fn pending(
        &self,
        limit: usize,
        oldest_per_url: bool,
    ) -> Result<Vec<PendingDelivery>, EventsError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = eval(PENDING, &self.key("pending"));
        cmd.arg(&self.prefix)
            .arg(limit)
            .arg(if oldest_per_url { "1" } else { "0" });
        let flat: Vec<String> = self
            .shared
            .query("events_pending", &cmd)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let (key, id) = parse_member(&pair[0])?;
            // An entry whose schedule is missing was just made non-pending: skip it.
            let Some((next, url)) = pair[1].split_once(' ') else {
                continue;
            };
            let next: u64 = next
                .parse()
                .map_err(|e| corrupt("outbox schedule", format!("{next:?}: {e}")))?;
            out.push(PendingDelivery {
                key,
                id,
                url: url.to_owned(),
                next_attempt: Timestamp::from_micros(next),
            });
        }
        if oldest_per_url {
            out.sort_unstable_by_key(|p| p.key);
            out.truncate(limit);
        }
        Ok(out)
    }

    async fn list(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<DeliveryPage, EventsError> {
        // Exclusive upper bounds as member prefixes; the smaller one wins.
        let mut max: Option<String> = page.before.map(key_str);
        let min = match filter.event_id {
            Some(e) => {
                if let Some(next) = e.checked_add(1) {
                    let upper = format!("{next:020}");
                    if max.as_ref().is_none_or(|m| upper < *m) {
                        max = Some(upper);
                    }
                }
                format!("[{e:020}")
            }
            None => "-".to_owned(),
        };
        let want = page.limit.saturating_add(1);
        let mut items = Vec::new();
        'scan: loop {
            let mut cmd = redis::cmd("ZREVRANGEBYLEX");
            cmd.arg(self.key("all"))
                .arg(
                    max.as_ref()
                        .map_or_else(|| "+".to_owned(), |m| format!("({m}")),
                )
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(LIST_CHUNK);
            let members: Vec<String> = self
                .shared
                .query("events_list", &cmd)
                .await
                .map_err(backend)?;
            let Some(last) = members.last() else {
                break;
            };
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(self.key("entries"));
            for m in &members {
                hmget.arg(m.get(KEY_LEN..).unwrap_or_default());
            }
            let jsons: Vec<Option<String>> = self
                .shared
                .query("events_list", &hmget)
                .await
                .map_err(backend)?;
            for json in jsons.iter().flatten() {
                let d = parse_entry(json)?;
                if filter.matches(&d) {
                    items.push(d);
                    if items.len() >= want {
                        break 'scan;
                    }
                }
            }
            if members.len() < LIST_CHUNK {
                break;
            }
            max = Some(last.clone());
        }
        let next = if items.len() > page.limit {
            items.truncate(page.limit);
            items.last().map(Delivery::key)
        } else {
            None
        };
        Ok(DeliveryPage { items, next })
    }

    async fn prune(&self, retention: &Retention, now: Timestamp) -> Result<usize, EventsError> {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let now = now.as_micros();
        let mut cmd = eval(PRUNE, &self.key("entries"));
        cmd.arg(&self.prefix)
            .arg(now.saturating_sub(micros(retention.delivered_max_age)))
            .arg(now.saturating_sub(micros(retention.failed_max_age)))
            .arg(retention.delivered_max_count);
        let n: usize = self
            .shared
            .query("events_prune", &cmd)
            .await
            .map_err(backend)?;
        Ok(n)
    }
}

/// Runs the workers of an [`Events`] (built with [`Events::publisher`] on
/// [`Shared::event_stores`]) only while this node holds [`DISPATCHER_LEASE`], so one
/// node at a time routes and delivers while every node publishes.
///
/// The lease is tried every `ttl / 4` and renewed as often by its holder; the workers
/// stop when a renewal says the lease is someone else's, or when renewals have failed
/// for `ttl / 2` (Redis unreachable: before the lease can expire and another node take
/// over). A take-over resends what was in flight, with the same idempotency keys.
///
/// Dropping it stops the workers at once and leaves the lease to expire (like a crash);
/// [`EventsLeader::stop`] releases it for another node to take at once. It also ends
/// when the [`Events`] is dropped.
pub struct EventsLeader {
    task: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
    leading: Arc<AtomicBool>,
    owner: String,
}

impl EventsLeader {
    /// Starts competing for the lease on the current tokio runtime, with a unique owner
    /// id (the `HOSTNAME`, the pid and the time).
    pub fn spawn(shared: Shared, events: Weak<Events>, ttl: Duration) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let owner = format!("{host}/{}/{nanos:x}", std::process::id());
        let stop = Arc::new(Notify::new());
        let leading = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(lead(
            shared,
            events,
            owner.clone(),
            ttl.max(Duration::from_millis(100)),
            stop.clone(),
            leading.clone(),
        ));
        Self {
            task: Some(task),
            stop,
            leading,
            owner,
        }
    }

    /// Whether this node's workers run now.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// This node's id as the lease owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops the workers (if running), then releases the lease.
    pub async fn stop(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EventsLeader {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn lead(
    shared: Shared,
    events: Weak<Events>,
    owner: String,
    ttl: Duration,
    stop: Arc<Notify>,
    leading: Arc<AtomicBool>,
) {
    let tick = ttl / 4;
    // The workers and when the lease was last known to be ours.
    let mut held: Option<(Workers, Instant)> = None;
    loop {
        let Some(ev) = events.upgrade() else {
            debug!("events dropped: no more dispatching from this node");
            break;
        };
        let asked = Instant::now();
        let lost = match held.as_mut() {
            None => {
                match shared.try_lease(DISPATCHER_LEASE, &owner, ttl).await {
                    Ok(true) => {
                        info!(owner = %owner, "events dispatcher lease taken: routing and delivering on this node");
                        held = Some((ev.spawn_workers(), asked));
                        leading.store(true, Ordering::Release);
                    }
                    Ok(false) => {}
                    Err(e) => debug!(error = %e, "cannot try the events dispatcher lease"),
                }
                false
            }
            Some((workers, renewed)) => {
                match shared.renew_lease(DISPATCHER_LEASE, &owner, ttl).await {
                    Ok(true) => {
                        *renewed = asked;
                        if workers.is_finished() {
                            warn!("events workers ended unexpectedly: restarted");
                            *workers = ev.spawn_workers();
                        }
                        false
                    }
                    Ok(false) => {
                        warn!(owner = %owner, "events dispatcher lease lost: workers stopped");
                        true
                    }
                    Err(e) if renewed.elapsed() >= ttl / 2 => {
                        warn!(error = %e, "cannot renew the events dispatcher lease: workers stopped");
                        true
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot renew the events dispatcher lease; retrying");
                        false
                    }
                }
            }
        };
        if lost {
            leading.store(false, Ordering::Release);
            if let Some((w, _)) = held.take() {
                w.stop().await;
            }
        }
        drop(ev);
        tokio::select! {
            _ = stop.notified() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    if let Some((w, _)) = held.take() {
        w.stop().await;
        leading.store(false, Ordering::Release);
        if let Err(e) = shared.release_lease(DISPATCHER_LEASE, &owner).await {
            debug!(error = %e, "cannot release the events dispatcher lease (it will expire)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_by_key_and_parse_back() {
        let id = DeliveryId::derive(7, 2, "http://a/");
        let k = DeliveryKey {
            event_id: 7,
            index: 2,
        };
        let m = format!("{}{id}", key_str(k));
        assert_eq!(parse_member(&m).unwrap(), (k, id));
        let later = key_str(DeliveryKey {
            event_id: 10,
            index: 0,
        });
        assert!(m < later);
        assert!(
            key_str(k)
                < key_str(DeliveryKey {
                    event_id: 7,
                    index: 10
                })
        );
        assert!(parse_member("short").is_err());
    }
}
