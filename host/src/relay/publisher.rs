//! The publisher: what this node broadcasts, on its way to Redis.
//!
//! Every broadcast is queued in the bounded outbox (and, while Redis is unreachable, delivered
//! locally at once); the publisher task sends the outbox in pipelined batches of the publish
//! script and settles each frame with the position Redis gave it. It must not read from Redis
//! (the subscriber does).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::keys::{Channel, WireFrame};
use super::{BATCH, Relay, short_id};
use crate::broadcast::{Frame, Reach};
use crate::hub::Position;

/// A frame waiting to go to Redis.
#[derive(Clone)]
pub(super) struct Envelope {
    pub(super) target: Channel,
    reach: Reach,
    frame: String,
    n: u64,
    /// When it was broadcast, in ms since the epoch (for the lag gauge on other nodes).
    at_ms: u64,
}

/// Where Redis put a frame of a batch.
struct Published {
    at: Position,
    /// Redis already had it (a retried batch): `at` is the scope's position, at or after it.
    duplicate: bool,
}

impl Relay {
    /// Queues a frame for Redis. While Redis is unreachable the frame is also delivered locally
    /// at once, so local clients are not held up.
    pub(super) fn enqueue(&self, target: Channel, reach: &Reach, frame: Frame) {
        let json = match serde_json::to_string(&frame) {
            Ok(json) => json,
            Err(e) => return self.error("encoding a frame", e),
        };
        // Under the outbox lock, so that local deliveries while Redis is away keep the order in
        // which frames were broadcast (see `deliver_pending_locally`), and so that sequence
        // numbers follow the outbox's order: `settle` and the script's high-water mark both
        // take a lower number as already published.
        let mut outbox = self.inner.outbox.lock();
        let n = self.inner.next_n.fetch_add(1, Relaxed);
        let envelope =
            Envelope { target, reach: reach.clone(), frame: json, n, at_ms: crate::event::now_ms() };
        if !self.inner.metrics.connected.load(Relaxed) {
            self.deliver_early(&envelope, &frame);
        }
        if outbox.len() >= self.inner.config.outbox_capacity
            && let Some(dropped) = outbox.pop_front()
        {
            self.inner.ledger.lock().dropped(dropped.n);
            self.inner.metrics.outbox_dropped_total.fetch_add(1, Relaxed);
        }
        outbox.push_back(envelope);
        drop(outbox);
        self.inner.outbox_ready.notify_one();
    }

    /// Delivers a frame to local rooms before Redis has it (numbered by the hub, in its own epoch),
    /// unless it already came back from Redis.
    pub(super) fn deliver_early(&self, envelope: &Envelope, frame: &Frame) {
        if !self.inner.ledger.lock().claim_early(envelope.n, &envelope.target) {
            return;
        }
        self.inner.metrics.degraded_local_total.fetch_add(1, Relaxed);
        match &envelope.target {
            Channel::Scope(scope) => self.inner.hub.fan_out(scope, &envelope.reach, frame, None),
            Channel::Everyone => self.inner.hub.fan_out_everyone(frame, None),
        }
    }

    /// Redis just became unreachable: delivers locally, in order, what is waiting in the outbox
    /// and has not been delivered yet; later broadcasts are delivered locally at once.
    pub(super) fn deliver_pending_locally(&self) {
        let outbox = self.inner.outbox.lock();
        if !self.inner.metrics.connected.swap(false, Relaxed) {
            return;
        }
        for envelope in outbox.iter() {
            if self.inner.ledger.lock().delivered(envelope.n) {
                continue;
            }
            match serde_json::from_str::<WireFrame>(&envelope.frame) {
                Ok(wire) => self.deliver_early(envelope, &wire.into_frame()),
                Err(e) => self.error("decoding a queued frame", e),
            }
        }
    }

    /// The data connection, (re)connecting when needed.
    pub(super) async fn data(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut slot = self.inner.data.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = self.inner.client.get_multiplexed_async_connection_with_config(&config).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    pub(super) async fn forget_data(&self) {
        *self.inner.data.lock().await = None;
    }

    /// Drains the outbox into Redis, in order, in pipelined batches; retries with backoff.
    pub(super) async fn publisher(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        // Know at once whether Redis is there, rather than after the first probe interval.
        if let Ok(mut conn) = self.data().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            self.inner.metrics.connected.store(true, Relaxed);
        }
        loop {
            if self.inner.outbox.lock().is_empty() {
                tokio::select! {
                    _ = self.inner.outbox_ready.notified() => {}
                    _ = shutdown.cancelled() => return,
                    // Probe now and then, so that `connected` recovers without traffic.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let alive = match self.data().await {
                            Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
                            Err(_) => false,
                        };
                        if alive {
                            self.inner.metrics.connected.store(true, Relaxed);
                        } else {
                            self.forget_data().await;
                            self.deliver_pending_locally();
                        }
                        continue;
                    }
                }
            }
            let batch: Vec<Envelope> = self.inner.outbox.lock().iter().take(BATCH).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            match self.publish_batch(&batch).await {
                Ok(published) => {
                    self.settle(&batch, published);
                    self.inner.metrics.connected.store(true, Relaxed);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    self.inner.metrics.publish_errors_total.fetch_add(1, Relaxed);
                    self.deliver_pending_locally();
                    self.error("publishing", e);
                    self.forget_data().await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A batch is in Redis: takes what is left of it out of the outbox (a full outbox may have
    /// dropped its oldest frames meanwhile), counts it, and tells the ledger where each frame is.
    fn settle(&self, batch: &[Envelope], published: Vec<Published>) {
        let Some(last) = batch.last().map(|e| e.n) else { return };
        let mut outbox = self.inner.outbox.lock();
        while outbox.front().is_some_and(|e| e.n <= last) {
            outbox.pop_front();
        }
        drop(outbox);
        let duplicates = published.iter().filter(|p| p.duplicate).count() as u64;
        self.inner.metrics.duplicates_total.fetch_add(duplicates, Relaxed);
        self.inner.metrics.published_total.fetch_add(published.len() as u64 - duplicates, Relaxed);
        for (envelope, published) in batch.iter().zip(published) {
            self.settle_frame(envelope, published.at);
        }
    }

    /// One frame of a batch is in Redis at `at` (or, if it was a duplicate, at or before it).
    fn settle_frame(&self, envelope: &Envelope, at: Position) {
        {
            let mut ledger = self.inner.ledger.lock();
            if !ledger.is_early(envelope.n) {
                return ledger.settle(envelope.n);
            }
        }
        // Delivered early: whether it can still come back depends on its cursor.
        let cursor = self.cursor(&envelope.target);
        let cursor = cursor.as_ref().map(|c| c.lock());
        self.inner.ledger.lock().published(envelope.n, at, cursor.as_deref());
    }

    /// Runs the script for every frame of `batch`, in one pipeline.
    async fn publish_batch(&self, batch: &[Envelope]) -> redis::RedisResult<Vec<Published>> {
        let mut conn = self.data().await?;
        let pipe = self.pipeline(batch);
        let replies = match pipe.query_async::<Vec<(String, u64, u8)>>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The script cache is empty (a fresh Redis): load it, then retry once.
                self.inner.script.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async::<Vec<(String, u64, u8)>>(&mut conn).await?
            }
            replies => replies?,
        };
        Ok(replies
            .into_iter()
            .map(|(epoch, offset, duplicate)| Published { at: Position { epoch, offset }, duplicate: duplicate != 0 })
            .collect())
    }

    fn pipeline(&self, batch: &[Envelope]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let epoch = short_id("epoch");
        let ttl = self.inner.config.history_ttl.as_millis() as u64;
        for envelope in batch {
            let target = &envelope.target;
            pipe.cmd("EVALSHA")
                .arg(self.inner.script.get_hash())
                .arg(3)
                .arg(target.meta())
                .arg(target.stream())
                .arg(target.seen(&self.inner.origin))
                .arg(&epoch)
                .arg(target.history(&self.inner.config.history))
                .arg(ttl)
                .arg(&self.inner.origin)
                .arg(envelope.n)
                .arg(envelope.reach.encode())
                .arg(&envelope.frame)
                .arg(target.channel())
                .arg(envelope.at_ms);
        }
        pipe
    }
}
