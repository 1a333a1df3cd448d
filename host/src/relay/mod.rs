//! The Redis relay: several busbar nodes sharing fan-out.
//!
//! This module owns `Relay`, which is the bus's Broadcaster when Redis is configured and the
//! hub's Backplane. Every broadcast goes into a bounded outbox; a publisher task runs one Lua
//! script per frame that, atomically in Redis, takes the scope's next offset (and creates its
//! epoch if needed), appends the frame to the scope's stream (exact length cap, TTL) and
//! publishes it on the scope's channel. Publishing is idempotent: every frame carries its origin
//! (this node's id and a run id) and the origin's sequence number `n`, and the script skips a
//! frame at or below the origin's high-water mark for the scope, so a batch retried after a lost
//! reply is never appended twice. Each node subscribes only to the channels of scopes that
//! have local members, orders what arrives per scope (`sequencer`), fills gaps from the streams,
//! and delivers into its hub with the frame's position. Clients resuming with `since` get what
//! they missed from the stream, then live frames, with no gap and no duplicate.
//!
//! Redis unavailable: local delivery goes on at once (under the node's own epoch, so clients know
//! positions changed), the outbox keeps the frames and retries; nothing on the publish path waits
//! for Redis. Redis back: the outbox drains, the subscriber resubscribes and catches up from its
//! cursors; the node's own frames that were delivered early are skipped when they come back
//! (`ledger`). No consumer groups: every node needs every entry of its scopes, so a group would only
//! add acknowledgement traffic and pending-entry memory.
//!
//! Only this module talks to Redis.

mod ledger;
mod sequencer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::AsyncCommands;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use sequencer::{Cursor, Entry};

use crate::action::{Scope, ScopeKind};
use crate::broadcast::{Broadcaster, Frame, Reach};
use crate::event::Json;
use crate::hub::{Backplane, BoxFuture, Conn, Hub, Joined, Position};
use ledger::Ledger;

/// Most frames sent to Redis in one pipeline.
const BATCH: usize = 256;

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// This node's name in relayed frames; random by default.
    pub node_id: String,
    /// Frames kept per scope, by kind (exact).
    pub history: HistoryLimits,
    /// How long an idle scope's history and position live.
    pub history_ttl: Duration,
    /// Frames waiting for Redis before the oldest are dropped.
    pub outbox_capacity: usize,
    /// Most frames replayed to one resuming client; more means `recovered: false`.
    pub replay_limit: usize,
    /// How long an out-of-order frame waits for the missing ones before they are read from the
    /// stream.
    pub gap_wait: Duration,
}

/// History length per scope kind.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub workspace: usize,
    pub user: usize,
    pub task: usize,
    pub chat: usize,
    pub everyone: usize,
}

impl Default for HistoryLimits {
    fn default() -> HistoryLimits {
        HistoryLimits { workspace: 1000, user: 200, task: 500, chat: 500, everyone: 200 }
    }
}

/// Checks a Redis URL (`redis://`, `rediss://` or `unix://`) without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
        return Err(format!("`{url}` is not a redis:// URL"));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| e.to_string())
}

impl RelayConfig {
    pub fn new(url: impl Into<String>) -> RelayConfig {
        RelayConfig {
            url: url.into(),
            node_id: crate::event::new_id().rsplit('-').next().unwrap_or("node").to_string(),
            history: HistoryLimits::default(),
            history_ttl: Duration::from_secs(3600),
            outbox_capacity: 100_000,
            replay_limit: 300,
            gap_wait: Duration::from_millis(50),
        }
    }
}

/// The Lua script run for every relayed frame: position, history, notification, in one step.
/// `seen` holds the highest `n` of this origin appended to the scope: a frame at or below it is a
/// retry of one already appended, and is skipped. Returns `{epoch, offset, duplicate}`; for a
/// duplicate, `offset` is the scope's current one (the frame's own is at or before it).
const PUBLISH: &str = r#"
local meta, stream, seen = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream, seen)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
if tonumber(redis.call('GET', seen) or '0') >= tonumber(ARGV[5]) then
  return {epoch, tonumber(redis.call('HGET', meta, 'offset')), 1}
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
redis.call('XADD', stream, 'MAXLEN', ARGV[2], offset .. '-0', 'o', ARGV[4], 'n', ARGV[5], 't', ARGV[9], 'x', ARGV[6], 'f', ARGV[7])
redis.call('SET', seen, ARGV[5], 'PX', ARGV[3])
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', stream, ARGV[3])
redis.call('PUBLISH', ARGV[8], epoch .. '\n' .. offset .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[9] .. '\n' .. ARGV[6] .. '\n' .. ARGV[7])
return {epoch, offset, 0}
"#;

/// Redis keys and channel of a scope (`everyone` is a scope too). The braces keep a scope's keys
/// in one cluster slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Scope(Scope),
    Everyone,
}

impl Target {
    /// `workspace:<id>`, `user:<id>`, `task:<workspace>:<id>`, `chat:<workspace>:<id>` or
    /// `everyone`, each id with `%`, `:`, `{` and `}` percent-escaped (so names parse back, and
    /// stay inside the braces of a cluster hash tag).
    fn name(&self) -> String {
        match self {
            Target::Scope(scope) => match scope.kind {
                ScopeKind::Task | ScopeKind::Chat => {
                    format!("{}:{}:{}", scope.kind, escape(&scope.workspace), escape(&scope.id))
                }
                ScopeKind::Workspace | ScopeKind::User => format!("{}:{}", scope.kind, escape(&scope.id)),
            },
            Target::Everyone => "everyone".to_string(),
        }
    }
    fn meta(&self) -> String {
        format!("busbar:{{{}}}:meta", self.name())
    }
    fn stream(&self) -> String {
        format!("busbar:{{{}}}:stream", self.name())
    }
    fn channel(&self) -> String {
        format!("busbar:{{{}}}", self.name())
    }
    /// The high-water mark of `origin`'s frames in this scope.
    fn seen(&self, origin: &str) -> String {
        format!("busbar:{{{}}}:seen:{origin}", self.name())
    }
    fn from_channel(channel: &str) -> Option<Target> {
        let name = channel.strip_prefix("busbar:{")?.strip_suffix('}')?;
        if name == "everyone" {
            return Some(Target::Everyone);
        }
        let (kind, rest) = name.split_once(':')?;
        let kind: ScopeKind = kind.parse().ok()?;
        let (workspace, id) = match kind {
            ScopeKind::Task | ScopeKind::Chat => rest.split_once(':')?,
            ScopeKind::Workspace | ScopeKind::User => ("", rest),
        };
        Some(Target::Scope(Scope::of(kind, unescape(workspace)?, unescape(id)?)))
    }
    fn history(&self, limits: &HistoryLimits) -> usize {
        match self {
            Target::Everyone => limits.everyone,
            Target::Scope(s) => match s.kind {
                ScopeKind::Workspace => limits.workspace,
                ScopeKind::User => limits.user,
                ScopeKind::Task => limits.task,
                ScopeKind::Chat => limits.chat,
            },
        }
        .max(1)
    }
}

/// A frame waiting to go to Redis.
#[derive(Clone)]
struct Envelope {
    target: Target,
    reach: Reach,
    frame: String,
    n: u64,
    /// When it was broadcast, in ms since the epoch (for the lag gauge on other nodes).
    at_ms: u64,
}

/// Relay counters, for `/health/realtime` and `/metrics`.
#[derive(Debug, Default, Serialize)]
pub struct RelayMetrics {
    pub connected: AtomicBool,
    pub published_total: AtomicU64,
    /// Frames of a retried batch that Redis already had (skipped, not appended again).
    pub duplicates_total: AtomicU64,
    pub publish_errors_total: AtomicU64,
    pub outbox_dropped_total: AtomicU64,
    pub received_total: AtomicU64,
    pub delivered_total: AtomicU64,
    pub gap_fills_total: AtomicU64,
    pub gap_unfilled_total: AtomicU64,
    pub degraded_local_total: AtomicU64,
    pub reconnects_total: AtomicU64,
    /// Milliseconds between a frame's publication and its arrival here, last seen.
    pub lag_ms: AtomicU64,
}

/// What `/health/realtime` shows of the relay.
#[derive(Debug, Serialize)]
pub struct RelaySnapshot<'a> {
    pub node_id: &'a str,
    pub outbox_depth: usize,
    pub watched_scopes: usize,
    /// Own frames remembered so that local clients do not get them twice (see `ledger`).
    pub own_frames_tracked: usize,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub metrics: &'a RelayMetrics,
}

enum Command {
    Watch(Target, Option<oneshot::Sender<()>>),
    Unwatch(Target),
}

struct Inner {
    hub: Arc<Hub>,
    config: RelayConfig,
    /// Stops the relay's tasks; cancelled by `flush_and_stop`, once the server has no more to
    /// publish.
    stop: CancellationToken,
    /// This run's name in relayed frames: the node id and a run id, so that a restarted node's
    /// sequence numbers never meet its previous run's.
    origin: String,
    client: redis::Client,
    script: redis::Script,
    outbox: Mutex<VecDeque<Envelope>>,
    outbox_ready: Notify,
    /// Per watched scope: its cursor. The cursor's lock also covers delivery into the hub.
    cursors: Mutex<HashMap<Target, Arc<Mutex<Cursor>>>>,
    /// Own frames delivered locally early, or come back while still in the outbox.
    ledger: Mutex<Ledger<Target>>,
    next_n: AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
    metrics: RelayMetrics,
    last_error: Mutex<Option<String>>,
    data: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// The relay. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl Relay {
    /// Starts the relay's tasks on the current tokio runtime. Redis need not be up yet. They run
    /// until `flush_and_stop`.
    pub fn start(config: RelayConfig, hub: Arc<Hub>) -> Result<Relay, redis::RedisError> {
        let shutdown = CancellationToken::new();
        let client = redis::Client::open(config.url.as_str())?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let origin = format!("{}~{}", config.node_id, short_id("run"));
        let relay = Relay {
            inner: Arc::new(Inner {
                hub: hub.clone(),
                config,
                stop: shutdown.clone(),
                origin,
                client,
                script: redis::Script::new(PUBLISH),
                outbox: Mutex::new(VecDeque::new()),
                outbox_ready: Notify::new(),
                cursors: Mutex::new(HashMap::new()),
                ledger: Mutex::new(Ledger::default()),
                next_n: AtomicU64::new(1),
                commands,
                metrics: RelayMetrics::default(),
                last_error: Mutex::new(None),
                data: tokio::sync::Mutex::new(None),
            }),
        };
        hub.set_backplane(Arc::new(relay.clone()));
        tokio::spawn(relay.clone().publisher(shutdown.clone()));
        tokio::spawn(relay.clone().subscriber(command_rx, shutdown));
        // Broadcasts to everyone are always watched.
        let _ = relay.inner.commands.send(Command::Watch(Target::Everyone, None));
        Ok(relay)
    }

    pub fn metrics(&self) -> &RelayMetrics {
        &self.inner.metrics
    }

    /// At shutdown, after the last publishes have queued their frames: waits (at most `limit`)
    /// until every frame waiting for Redis is published, so that other nodes get them, then
    /// stops the relay's tasks.
    pub async fn flush_and_stop(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.inner.outbox.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.inner.outbox.lock().len();
        if left > 0 {
            tracing::warn!(node = %self.inner.config.node_id, frames = left, "relay stopped with frames not yet in Redis");
        }
        self.inner.stop.cancel();
    }

    pub fn snapshot(&self) -> RelaySnapshot<'_> {
        RelaySnapshot {
            node_id: &self.inner.config.node_id,
            outbox_depth: self.inner.outbox.lock().len(),
            watched_scopes: self.inner.cursors.lock().len(),
            own_frames_tracked: self.inner.ledger.lock().len(),
            last_error: self.inner.last_error.lock().clone(),
            metrics: &self.inner.metrics,
        }
    }

    fn error(&self, context: &str, error: impl std::fmt::Display) {
        let message = format!("{context}: {error}");
        tracing::warn!(node = %self.inner.config.node_id, "relay: {message}");
        *self.inner.last_error.lock() = Some(message);
    }

    /// Queues a frame for Redis. While Redis is unreachable the frame is also delivered locally
    /// at once, so local clients are not held up.
    fn enqueue(&self, target: Target, reach: &Reach, frame: Frame) {
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
    fn deliver_early(&self, envelope: &Envelope, frame: &Frame) {
        if !self.inner.ledger.lock().claim_early(envelope.n, &envelope.target) {
            return;
        }
        self.inner.metrics.degraded_local_total.fetch_add(1, Relaxed);
        match &envelope.target {
            Target::Scope(scope) => self.inner.hub.fan_out(scope, &envelope.reach, frame, None),
            Target::Everyone => self.inner.hub.fan_out_everyone(frame, None),
        }
    }

    /// Redis just became unreachable: delivers locally, in order, what is waiting in the outbox
    /// and has not been delivered yet; later broadcasts are delivered locally at once.
    fn deliver_pending_locally(&self) {
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
    async fn data(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
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

    async fn forget_data(&self) {
        *self.inner.data.lock().await = None;
    }

    /// Drains the outbox into Redis, in order, in pipelined batches; retries with backoff.
    async fn publisher(self, shutdown: CancellationToken) {
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

    /// Keeps a pub/sub connection subscribed to the watched scopes, and feeds what arrives to
    /// their cursors. After a reconnect, catches up from the streams.
    async fn subscriber(self, mut commands: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut watched: HashSet<Target> = HashSet::new();
        let mut waiting: Vec<(Target, oneshot::Sender<()>)> = Vec::new();
        let mut first = true;
        loop {
            let pubsub = tokio::select! {
                result = tokio::time::timeout(Duration::from_secs(2), self.inner.client.get_async_pubsub()) => result,
                _ = shutdown.cancelled() => return,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(Ok(pubsub)) => pubsub.split(),
                failure => {
                    let message = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    self.error("subscribing", message);
                    // Keep taking watch commands while disconnected; they apply on reconnect.
                    let wait = tokio::time::sleep(Duration::from_millis(250));
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            _ = shutdown.cancelled() => return,
                            command = commands.recv() => match command {
                                Some(Command::Watch(target, ack)) => {
                                    watched.insert(target.clone());
                                    if let Some(ack) = ack {
                                        waiting.push((target, ack));
                                    }
                                }
                                Some(Command::Unwatch(target)) => {
                                    self.unwatch(&mut watched, &target);
                                }
                                None => return,
                            },
                        }
                    }
                    continue;
                }
            };
            if !first {
                self.inner.metrics.reconnects_total.fetch_add(1, Relaxed);
            }
            first = false;
            let channels: Vec<String> = watched.iter().map(Target::channel).collect();
            if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
                continue;
            }
            // Anything published while this node was not listening is in the streams.
            for target in watched.iter().cloned().collect::<Vec<_>>() {
                self.catch_up(&target).await;
            }
            for (_, ack) in waiting.drain(..) {
                let _ = ack.send(());
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    command = commands.recv() => match command {
                        Some(Command::Watch(target, ack)) => {
                            if watched.insert(target.clone()) {
                                if sink.subscribe(target.channel()).await.is_err() {
                                    if let Some(ack) = ack { waiting.push((target, ack)); }
                                    break;
                                }
                                self.init_cursor(&target).await;
                            }
                            if let Some(ack) = ack {
                                let _ = ack.send(());
                            }
                        }
                        Some(Command::Unwatch(target)) => {
                            if self.unwatch(&mut watched, &target) && sink.unsubscribe(target.channel()).await.is_err() {
                                break;
                            }
                        }
                        None => return,
                    },
                    message = stream.next() => match message {
                        Some(message) => self.receive(message.get_channel_name(), message.get_payload_bytes()),
                        None => break,
                    },
                }
            }
            self.error("subscription", "connection lost; reconnecting");
        }
    }
}

impl Relay {
    /// A room closed: stops following its target (unless the room opened again meanwhile) and
    /// drops its cursor, connected or not, so that a later watch starts from where Redis is
    /// rather than from a stale position (perhaps of an epoch Redis lost meanwhile). True if
    /// the target was followed: unsubscribe from its channel.
    fn unwatch(&self, watched: &mut HashSet<Target>, target: &Target) -> bool {
        let reopened = match target {
            Target::Scope(scope) => self.inner.hub.has_room(scope),
            Target::Everyone => true,
        };
        if reopened || !watched.remove(target) {
            return false;
        }
        self.inner.cursors.lock().remove(target);
        self.inner.ledger.lock().cursor_moved(target, None, None);
        true
    }

    /// The cursor of a watched target.
    fn cursor(&self, target: &Target) -> Option<Arc<Mutex<Cursor>>> {
        self.inner.cursors.lock().get(target).cloned()
    }

    /// Reads the target's position from Redis and starts its cursor there (once subscribed, so
    /// that nothing published after it is missed).
    async fn init_cursor(&self, target: &Target) {
        let position = self.read_position(target).await;
        let mut cursors = self.inner.cursors.lock();
        cursors.entry(target.clone()).or_insert_with(|| {
            let (epoch, offset) = position.map_or((None, 0), |p| (Some(p.epoch), p.offset));
            Arc::new(Mutex::new(Cursor::at(epoch, offset)))
        });
    }

    async fn read_position(&self, target: &Target) -> Option<Position> {
        for _ in 0..2 {
            let mut conn = self.data().await.ok()?;
            let reply: redis::RedisResult<(Option<String>, Option<u64>)> =
                redis::cmd("HMGET").arg(target.meta()).arg("epoch").arg("offset").query_async(&mut conn).await;
            match reply {
                Ok((epoch, offset)) => return Some(Position { epoch: epoch?, offset: offset.unwrap_or(0) }),
                // A connection broken by a Redis restart: reconnect once.
                Err(_) => self.forget_data().await,
            }
        }
        None
    }

    /// Reads `target`'s stream after `after` (at most `limit` entries), reconnecting once if the
    /// connection broke.
    async fn read_stream(&self, target: &Target, after: u64, limit: usize) -> redis::RedisResult<Vec<Entry>> {
        match self.try_read_stream(target, after, limit).await {
            Ok(entries) => Ok(entries),
            Err(_) => {
                self.forget_data().await;
                self.try_read_stream(target, after, limit).await
            }
        }
    }

    async fn try_read_stream(&self, target: &Target, after: u64, limit: usize) -> redis::RedisResult<Vec<Entry>> {
        let mut conn = self.data().await?;
        let epoch: Option<String> = conn.hget(target.meta(), "epoch").await?;
        let Some(epoch) = epoch else { return Ok(Vec::new()) };
        let raw: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(target.stream())
            .arg(format!("{}-0", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, fields)| {
                let offset = id.split_once('-')?.0.parse().ok()?;
                let text = |k: &str| fields.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
                let reach = Reach::decode(&text("x").unwrap_or_default());
                Some(Entry {
                    epoch: epoch.clone(),
                    offset,
                    origin: text("o").unwrap_or_default(),
                    n: text("n").and_then(|n| n.parse().ok()).unwrap_or(0),
                    at_ms: text("t").and_then(|t| t.parse().ok()).unwrap_or(0),
                    reach,
                    frame: text("f")?,
                })
            })
            .collect())
    }

    /// A message from pub/sub: `epoch\noffset\norigin\nn\nat_ms\nreach\nframe`.
    fn receive(&self, channel: &str, payload: &[u8]) {
        let Some(target) = Target::from_channel(channel) else { return };
        let Some(entry) = parse_message(payload) else {
            self.error("receiving", format!("malformed message on {channel}"));
            return;
        };
        self.inner.metrics.received_total.fetch_add(1, Relaxed);
        self.accept(&target, vec![entry]);
    }

    /// Feeds entries to the target's cursor and delivers what is in order. A gap is filled from
    /// the stream after `gap_wait`, unless the missing entries arrive first.
    fn accept(&self, target: &Target, entries: Vec<Entry>) {
        let Some(cursor) = self.cursor(target) else { return };
        let mut cursor = cursor.lock();
        let mut gap = None;
        for entry in entries {
            let accepted = cursor.accept(entry);
            if let Some(left) = &accepted.left_epoch {
                self.inner.ledger.lock().cursor_moved(target, Some(&cursor), Some(left));
            }
            gap = gap.or(accepted.gap);
            self.deliver(target, accepted.deliver);
        }
        drop(cursor);
        if gap.is_some() {
            let relay = self.clone();
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(relay.inner.config.gap_wait).await;
                relay.fill_gap(&target).await;
            });
        }
    }

    /// Delivers in-order entries into the hub. Called with the target's cursor locked.
    fn deliver(&self, target: &Target, entries: Vec<Entry>) {
        for entry in entries {
            if entry.origin == self.inner.origin && self.inner.ledger.lock().came_back(entry.n) {
                continue; // delivered locally while Redis was unreachable
            }
            let frame: Frame = match serde_json::from_str::<WireFrame>(&entry.frame) {
                Ok(wire) => wire.into_frame(),
                Err(e) => {
                    self.error("decoding a relayed frame", e);
                    continue;
                }
            };
            let at_ms = entry.at_ms;
            let position = Position { epoch: entry.epoch, offset: entry.offset };
            match target {
                Target::Scope(scope) => self.inner.hub.fan_out(scope, &entry.reach, &frame, Some(&position)),
                Target::Everyone => self.inner.hub.fan_out_everyone(&frame, Some(&position)),
            }
            self.inner.metrics.delivered_total.fetch_add(1, Relaxed);
            if at_ms > 0 {
                self.inner.metrics.lag_ms.store(crate::event::now_ms().saturating_sub(at_ms), Relaxed);
            }
        }
    }

    async fn fill_gap(&self, target: &Target) {
        let Some(cursor) = self.cursor(target) else { return };
        let missing = cursor.lock().missing();
        let Some((from, to)) = missing else { return };
        match self.read_stream(target, from - 1, (to - from + 1) as usize).await {
            Ok(entries) => {
                let found: Vec<Entry> = entries.into_iter().filter(|e| e.offset <= to).collect();
                self.inner.metrics.gap_fills_total.fetch_add(found.len() as u64, Relaxed);
                let complete = found.len() as u64 == to - from + 1;
                self.accept(target, found);
                if !complete {
                    // Trimmed from the stream: those frames are gone; move on.
                    let mut cursor = cursor.lock();
                    if let Some((from, to)) = cursor.missing() {
                        self.inner.metrics.gap_unfilled_total.fetch_add(to - from + 1, Relaxed);
                        let ready = cursor.skip_to(to);
                        self.inner.ledger.lock().cursor_moved(target, Some(&cursor), None);
                        self.deliver(target, ready);
                    }
                }
            }
            Err(e) => self.error("filling a gap", e),
        }
    }

    /// After (re)subscribing: delivers what the stream holds beyond the cursor.
    async fn catch_up(&self, target: &Target) {
        if self.cursor(target).is_none() {
            self.init_cursor(target).await;
            return;
        }
        let Some(cursor) = self.cursor(target) else { return };
        let (epoch, after) = {
            let cursor = cursor.lock();
            (cursor.epoch.clone(), cursor.offset)
        };
        let current = self.read_position(target).await;
        let after = match (&epoch, &current) {
            (Some(mine), Some(theirs)) if *mine != theirs.epoch => 0, // a new epoch: from its start
            _ => after,
        };
        match self.read_stream(target, after, self.inner.config.replay_limit.max(1000)).await {
            Ok(entries) => {
                self.inner.metrics.gap_fills_total.fetch_add(entries.len() as u64, Relaxed);
                self.accept(target, entries);
            }
            Err(e) => self.error("catching up", e),
        }
    }

    /// Waits until the target is subscribed and its cursor known.
    async fn watch(&self, target: &Target) -> bool {
        if self.cursor(target).is_some() {
            return true;
        }
        let (ack, done) = oneshot::channel();
        if self.inner.commands.send(Command::Watch(target.clone(), Some(ack))).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(Duration::from_secs(2), done).await, Ok(Ok(()))) && self.cursor(target).is_some()
    }

    /// Joins with recovery: reads what `conn` missed from the stream, then, with the scope's
    /// cursor locked (so no live frame can pass), pushes the missed frames and joins the room.
    async fn join_recovering(
        &self,
        hub: &Hub,
        conn: &Arc<Conn>,
        scope: &Scope,
        since: Option<&Position>,
        announce: bool,
    ) -> Joined {
        let target = Target::Scope(scope.clone());
        if !self.watch(&target).await {
            // Redis unreachable: join without recovery.
            return hub.join_with_history(conn, scope, since, None, Vec::new(), announce);
        }
        let Some(cursor) = self.cursor(&target) else {
            return hub.join_with_history(conn, scope, since, None, Vec::new(), announce);
        };
        for _ in 0..3 {
            let history = match since {
                Some(since) => match self.read_stream(&target, since.offset, self.inner.config.replay_limit + 1).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.error("reading history", e);
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            let cursor = cursor.lock();
            // A scope Redis has not numbered yet has no epoch: its rooms start at ("", 0), and a
            // client resuming from ("", 0) resumes from the start of whatever epoch began since.
            let start = Some(Position { epoch: cursor.epoch.clone().unwrap_or_default(), offset: cursor.offset });
            let resumed = since.map(|s| match (&cursor.epoch, s.epoch.is_empty() && s.offset == 0) {
                (Some(epoch), true) => Position { epoch: epoch.clone(), offset: 0 },
                _ => s.clone(),
            });
            let since = resumed.as_ref();
            let behind = history.last().map_or(0, |e| e.offset) < cursor.offset
                && since.is_some_and(|s| s.offset < cursor.offset)
                && history.len() <= self.inner.config.replay_limit;
            if behind && since.is_some_and(|s| Some(&s.epoch) == cursor.epoch.as_ref()) {
                continue; // the room moved on while we read: read again
            }
            let frames = history
                .into_iter()
                .filter(|e| e.offset <= cursor.offset && Some(&e.epoch) == cursor.epoch.as_ref())
                .take(self.inner.config.replay_limit)
                .filter_map(|e| {
                    let frame = serde_json::from_str::<WireFrame>(&e.frame).ok()?.into_frame();
                    Some((Position { epoch: e.epoch, offset: e.offset }, frame, e.reach))
                })
                .collect();
            return hub.join_with_history(conn, scope, since, start, frames, announce);
        }
        hub.join_with_history(conn, scope, since, None, Vec::new(), announce)
    }
}

impl Broadcaster for Relay {
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame) {
        self.enqueue(Target::Scope(Scope::workspace(workspace_id)), &Reach::All, frame);
    }

    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame) {
        self.enqueue(Target::Scope(Scope::user(user_id)), reach, frame);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        self.enqueue(Target::Scope(scope.clone()), &Reach::All, frame);
    }

    fn broadcast(&self, frame: Frame) {
        self.enqueue(Target::Everyone, &Reach::All, frame);
    }
}

impl Backplane for Relay {
    fn room_opened(&self, scope: &Scope) {
        let _ = self.inner.commands.send(Command::Watch(Target::Scope(scope.clone()), None));
    }

    fn room_closed(&self, scope: &Scope) {
        let _ = self.inner.commands.send(Command::Unwatch(Target::Scope(scope.clone())));
    }

    fn join<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a Arc<Conn>,
        scope: &'a Scope,
        since: Option<&'a Position>,
        announce: bool,
    ) -> BoxFuture<'a, Joined> {
        Box::pin(self.join_recovering(hub, conn, scope, since, announce))
    }
}

/// Where Redis put a frame of a batch.
struct Published {
    at: Position,
    /// Redis already had it (a retried batch): `at` is the scope's position, at or after it.
    duplicate: bool,
}

/// A short random name (the last group of a fresh id).
fn short_id(fallback: &str) -> String {
    crate::event::new_id().rsplit('-').next().unwrap_or(fallback).to_string()
}

/// A frame as relayed: the same fields as `broadcast::Frame`.
#[derive(serde::Deserialize)]
struct WireFrame {
    #[serde(rename = "type")]
    event_type: String,
    payload: Json,
    actor_id: String,
    actor_type: String,
    event_id: String,
    #[serde(default)]
    workspace_id: String,
}

impl WireFrame {
    fn into_frame(self) -> Frame {
        Frame {
            event_type: self.event_type,
            payload: self.payload,
            actor_id: self.actor_id,
            actor_type: self.actor_type,
            event_id: self.event_id,
            workspace_id: self.workspace_id,
        }
    }
}

fn parse_message(payload: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(7, '\n');
    let epoch = parts.next()?.to_string();
    let offset = parts.next()?.parse().ok()?;
    let origin = parts.next()?.to_string();
    let n = parts.next()?.parse().ok()?;
    let at_ms = parts.next()?.parse().ok()?;
    let reach = Reach::decode(parts.next()?);
    let frame = parts.next()?.to_string();
    Some(Entry { epoch, offset, origin, n, at_ms, reach, frame })
}

/// Percent-escapes the characters that delimit a scope's name in keys and channels.
fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            other => out.push(other),
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "3A" => ':',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}
