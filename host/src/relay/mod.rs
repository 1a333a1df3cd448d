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
//! Only this module talks to Redis. By task: `publisher` (the outbox, to Redis), `subscriber`
//! (pub/sub and streams, into the hub), `recovery` (resuming clients, the hub's `Backplane`),
//! `keys` (names, the script, wire forms), `sequencer` (per-scope order) and `ledger` (own frames
//! delivered early); this file holds the configuration, the shared state and the Broadcaster.

mod keys;
mod ledger;
mod publisher;
mod recovery;
mod sequencer;
mod subscriber;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use sequencer::{Cursor, Entry};

use crate::action::Scope;
use crate::broadcast::{Broadcaster, Frame, Reach};
use crate::hub::Hub;
use keys::{Channel, PUBLISH};
use ledger::Ledger;
use publisher::Envelope;
use subscriber::Command;

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
    cursors: Mutex<HashMap<Channel, Arc<Mutex<Cursor>>>>,
    /// Own frames delivered locally early, or come back while still in the outbox.
    ledger: Mutex<Ledger<Channel>>,
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
        let _ = relay.inner.commands.send(Command::Watch(Channel::Everyone, None));
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


}


impl Broadcaster for Relay {
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame) {
        self.enqueue(Channel::Scope(Scope::workspace(workspace_id)), &Reach::All, frame);
    }

    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame) {
        self.enqueue(Channel::Scope(Scope::user(user_id)), reach, frame);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        self.enqueue(Channel::Scope(scope.clone()), &Reach::All, frame);
    }

    fn broadcast(&self, frame: Frame) {
        self.enqueue(Channel::Everyone, &Reach::All, frame);
    }
}



/// A short random name (the last group of a fresh id).
fn short_id(fallback: &str) -> String {
    crate::event::new_id().rsplit('-').next().unwrap_or(fallback).to_string()
}

