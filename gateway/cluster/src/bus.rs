//! The invalidation bus: Redis pub/sub under `{prefix}bus:{channel}`.
//!
//! Delivery is at most once. Redis pub/sub keeps nothing: a message published while a
//! subscriber is disconnected (Redis restart, failover, network loss) is **lost** for that
//! subscriber. The subscription reconnects and resubscribes by itself, and then yields
//! [`BusEvent::Gap`] so the subscriber can drop whatever it caches (the safe reaction to
//! missed invalidations). It does the same when the subscriber falls too far behind.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc;

use crate::{ClusterError, Shared};

/// Messages buffered per subscription before the subscriber counts as lagging.
const BUFFER: usize = 1024;
/// How often an idle subscription pings, to notice a half-open connection.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// A published message.
    Message(String),
    /// Messages may have been missed just before this point: invalidate everything.
    Gap(GapReason),
}

/// Why messages may have been missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The connection was lost and the subscription has just been renewed.
    Resubscribed,
    /// The subscriber did not keep up; messages were dropped.
    Lagged,
}

/// A live subscription: a stream of [`BusEvent`]s that never ends by itself (it keeps
/// resubscribing until dropped). Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<BusEvent>,
}

impl Stream for Subscription {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Shared {
    /// Publishes `message` on `channel` to every node subscribed right now.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.inner.keys.channel(channel)).arg(message);
        // A connection to a master that died (failover) only fails on first use; a
        // duplicate announcement is harmless, so one retry on a fresh connection.
        match self.query::<i64>("publish", &cmd).await {
            Err(e) if e.is_connection_dropped() => {
                self.query::<i64>("publish", &cmd).await.map(drop)
            }
            r => r.map(drop),
        }
    }

    /// Subscribes to `channel`. Returns once the first `SUBSCRIBE` is confirmed (bounded by
    /// `op_timeout`), so a message published after this returns is delivered.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, ClusterError> {
        let channel = self.inner.keys.channel(channel);
        let (sink, stream) = self.open_pubsub(&channel, 0).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(pump(self.clone(), channel, sink, stream, tx));
        Ok(Subscription { rx })
    }

    async fn open_pubsub(
        &self,
        channel: &str,
        attempt: usize,
    ) -> Result<(PubSubSink, PubSubStream), ClusterError> {
        let limit = self.inner.op_timeout;
        let backend = &self.inner.backend;
        // Cluster mode: try each seed node in turn (within the one timeout), so a dead
        // node costs a refused connection, not the subscription.
        let open = async {
            let mut last_err = None;
            for attempt in attempt..attempt + backend.pubsub_candidates() {
                let try_one = async {
                    let client = backend.pubsub_client(attempt).await?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(channel).await?;
                    Ok::<_, redis::RedisError>(pubsub.split())
                };
                match try_one.await {
                    Ok(pair) => return Ok(pair),
                    Err(e) => last_err = Some(e),
                }
            }
            Err(last_err.expect("at least one candidate"))
        };
        match tokio::time::timeout(limit, open).await {
            Err(_) => Err(ClusterError::timed_out("subscribe", limit)),
            Ok(Err(e)) => Err(ClusterError::from_redis("subscribe", e)),
            Ok(Ok(pair)) => Ok(pair),
        }
    }
}

/// Forwards messages until the subscriber goes away; reconnects when the connection dies.
async fn pump(
    shared: Shared,
    channel: String,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    tx: mpsc::Sender<BusEvent>,
) {
    let limit = shared.inner.op_timeout;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        // Forward until the connection is lost.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    heartbeat.reset();
                    let Ok(text) = msg.get_payload::<String>() else {
                        tracing::warn!(channel, "dropping a non-UTF-8 bus message");
                        continue;
                    };
                    match tx.try_send(BusEvent::Message(text)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(channel, "bus subscriber lagging; dropping messages");
                            if tx.send(BusEvent::Gap(GapReason::Lagged)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let ping = tokio::time::timeout(limit, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(
            channel,
            "bus subscription lost; resubscribing (messages meanwhile are lost)"
        );
        // Resubscribe with backoff, until it works or the subscriber goes away.
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0usize;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            attempt += 1;
            match shared.open_pubsub(&channel, attempt).await {
                Ok((s, st)) => {
                    (sink, stream) = (s, st);
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel, attempt, error = %e, "resubscribe failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!(channel, attempt, "bus subscription renewed");
        heartbeat.reset();
        if tx
            .send(BusEvent::Gap(GapReason::Resubscribed))
            .await
            .is_err()
        {
            return;
        }
    }
}
