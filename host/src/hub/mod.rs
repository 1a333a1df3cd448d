//! The realtime hub: rooms of WebSocket connections, keyed by scope, and fan-out into them.
//!
//! This module owns `Hub`, which implements `Broadcaster`. A connection belongs to one workspace
//! and one user and is in both rooms from the start; it may also join task and chat rooms its
//! token grants. Each frame is encoded once per broadcast, with its scope and the scope's next
//! sequence number, and the same bytes are pushed into every recipient's bounded `Outbox`. A
//! connection whose outbox overflows is evicted (close 4008); removal is idempotent.
//!
//! Every frame carries its scope's `epoch` and its offset in it (`seq`). On a single node the hub
//! numbers frames itself, under an epoch chosen at start; with a `Backplane` (the Redis relay)
//! positions come from Redis and the backplane delivers frames here in order, and recovers what a
//! reconnecting client missed.
//!
//! This file holds the configuration, the `Hub` and its connections' lifecycle (register,
//! own rooms, disconnect, shutdown); `rooms` holds joining with history and leaving, `fanout`
//! the rooms' queues and their drainers, `subscribe` the subscribe checks, `protocol` the
//! frames, `session` one connection's loop.
//!
//! Invariants: fan-out never waits on a socket, and a publisher waits only for its frame to be
//! numbered and queued for the room (the room's lock covers numbering and queueing; one drainer
//! at a time pushes a room's queue, in order); frames of one scope reach each member in `seq`
//! order; the hub knows nothing of HTTP routing (that is `api`), of the bus (it only receives
//! frames) or of Redis (that is `relay`).

pub mod auth;
mod connect;
mod fanout;
mod metrics;
mod outbox;
pub mod protocol;
mod rooms;
mod sendq;
pub mod session;
mod subscribe;

pub use subscribe::SubscribeError;
use subscribe::TokenBucket;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

pub use auth::{AuthError, AuthorizeFuture, Claims, ClaimsAuthorizer, Grants, Identity, LookupError, ScopeAuthorizer, TokenRules, TokenVerifier};
pub use connect::{AuthenticateFuture, Authenticated, Authenticator, ConnectRequest, Refusal, RefusalKind, TokenOnly};
pub use metrics::{HubMetrics, HubSnapshot};
pub use outbox::{Close, Push};

use crate::action::{Scope, ScopeKind};
use outbox::Outbox;

/// Limits and timings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bytes waiting in one connection's outbox before it is evicted.
    pub max_queue_bytes: usize,
    /// Age of the oldest waiting frame before the connection is evicted.
    pub max_queue_age: Duration,
    /// Scopes one connection may be in, its own workspace and user included.
    pub max_scopes: usize,
    /// Subscribes per second a connection may make, sustained.
    pub subscribe_rate: f64,
    /// Subscribes a connection may make in a burst.
    pub subscribe_burst: f64,
    /// Time a connection has to send its `auth` frame.
    pub auth_timeout: Duration,
    /// Interval of server WebSocket pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub read_timeout: Duration,
    /// Longest wait for a `ScopeAuthorizer` answer.
    pub authorize_timeout: Duration,
    /// Largest inbound message; bigger ones close the connection with 1009.
    pub max_inbound_bytes: usize,
    /// Open connections of one user; another is refused with 4429.
    pub max_connections_per_user: usize,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            max_queue_bytes: 1 << 20,
            max_queue_age: Duration::from_secs(5),
            max_scopes: 64,
            subscribe_rate: 20.0,
            subscribe_burst: 40.0,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            read_timeout: Duration::from_secs(60),
            authorize_timeout: Duration::from_secs(2),
            max_inbound_bytes: 64 << 10,
            max_connections_per_user: 100,
        }
    }
}

/// A frame's place in its scope: the scope's epoch and the frame's offset in it. Offsets of one
/// epoch increase by one per frame; a new epoch means offsets started again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// The result of a subscribe: where the connection now is in the scope, and, when it asked to
/// resume from a position, whether everything it missed was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub position: Position,
    pub recovered: Option<bool>,
}

/// A boxed future, for the backplane's asynchronous calls.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What connects a node's hub to other nodes (the Redis relay). The hub tells it which scopes
/// have local members, and leaves joining with recovery to it.
pub trait Backplane: Send + Sync + 'static {
    /// A scope got its first local member.
    fn room_opened(&self, scope: &Scope);
    /// A scope lost its last local member.
    fn room_closed(&self, scope: &Scope);
    /// Joins `conn` to `scope`, replaying what it missed after `since` when it can (through
    /// `Hub::join_with_history`, passing `announce` on).
    fn join<'a>(&'a self, hub: &'a Hub, conn: &'a Arc<Conn>, scope: &'a Scope, since: Option<&'a Position>, announce: bool) -> BoxFuture<'a, Joined>;
}

/// One WebSocket connection, as the hub sees it.
pub struct Conn {
    pub id: u64,
    pub identity: Identity,
    outbox: Outbox,
    /// The rooms it is in, with its place in each (a short list: `max_scopes` at most).
    scopes: Mutex<Vec<(Scope, Arc<fanout::Member>)>>,
    bucket: Mutex<TokenBucket>,
    /// Cancelled when the connection is closed for any reason.
    pub gone: CancellationToken,
    /// Set by the first `Hub::disconnect`, which takes the connection out of the hub.
    forgotten: AtomicBool,
}

impl Conn {
    /// Queues a control frame (ack, pong, error) for this connection only.
    pub fn send_control(&self, frame: String) -> Push {
        self.outbox.push(Utf8Bytes::from(frame))
    }

    pub fn scopes(&self) -> Vec<Scope> {
        self.scopes.lock().iter().map(|(scope, _)| scope.clone()).collect()
    }

    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Closes the connection's outbox and cancels `gone` (its session then ends and calls
    /// `Hub::disconnect`, which takes it out of its rooms). Only the first close does anything,
    /// and says so by returning `true`.
    fn close(&self, close: Close, metrics: &HubMetrics) -> bool {
        let Some(dropped) = self.outbox.close(close) else { return false };
        self.gone.cancel();
        if dropped > 0 {
            metrics.messages_dropped.fetch_add(dropped as u64, Relaxed);
        }
        true
    }
}

const SHARDS: usize = 16;

/// One shard of the room map: scope -> room.
type Shard = RwLock<HashMap<Scope, Arc<fanout::RoomCell>>>;

/// The hub. Shared by the HTTP layer (connections) and the bus (frames, as a `Broadcaster`).
pub struct Hub {
    config: HubConfig,
    verifier: TokenVerifier,
    authorizer: Arc<dyn ScopeAuthorizer>,
    authenticator: Arc<dyn Authenticator>,
    rooms: Box<[Shard]>,
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    /// Open connections per user, for `max_connections_per_user`.
    per_user: Mutex<HashMap<String, usize>>,
    /// Epoch and offset of the `everyone` scope; its lock orders broadcasts to everyone.
    everyone: Mutex<(Arc<str>, u64)>,
    next_id: AtomicU64,
    metrics: Arc<HubMetrics>,
    hasher: std::collections::hash_map::RandomState,
    /// The epoch of frames numbered here (single node): a fresh one each start.
    local_epoch: Arc<str>,
    backplane: std::sync::OnceLock<Arc<dyn Backplane>>,
    /// Every connection's session task, so that shutdown can wait for their close frames.
    /// Closed by `shutdown`: connections registered after that are closed at once.
    sessions: tokio_util::task::TaskTracker,
    /// The rooms' drainers at work, so that shutdown can let them push what rooms accepted.
    drains: tokio_util::task::TaskTracker,
}

impl Hub {
    pub fn new(config: HubConfig, verifier: TokenVerifier, authorizer: Arc<dyn ScopeAuthorizer>) -> Hub {
        Hub {
            config,
            verifier,
            authorizer,
            authenticator: Arc::new(TokenOnly),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            conns: RwLock::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            everyone: Mutex::new((Arc::from(""), 0)),
            next_id: AtomicU64::new(1),
            metrics: Arc::default(),
            hasher: Default::default(),
            local_epoch: Arc::from(crate::event::new_id().rsplit('-').next().unwrap_or("local")),
            backplane: std::sync::OnceLock::new(),
            sessions: tokio_util::task::TaskTracker::new(),
            drains: tokio_util::task::TaskTracker::new(),
        }
    }

    /// A hub whose connections are identified by `authenticator` whenever it decides (see
    /// `Authenticator`), and by busbar's own token check otherwise.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Hub {
        self.authenticator = authenticator;
        self
    }

    /// Asks the authenticator who a connection is, within the auth timeout (past it, the
    /// connection is refused as `Unavailable`). `None` when busbar's own token check applies.
    pub async fn authenticate(&self, request: &ConnectRequest) -> Option<Result<Authenticated, Refusal>> {
        let answer = self.authenticator.authenticate(request)?;
        Some(match tokio::time::timeout(self.config.auth_timeout, answer).await {
            Ok(answer) => answer,
            Err(_) => Err(Refusal::new(RefusalKind::Unavailable, "the authenticator did not answer in time")),
        })
    }

    /// Asks the authenticator who the connection that upgraded with `request` is, now that it
    /// sent an `auth` frame with `payload` (its first, or a refresh). Only an identity lets it
    /// on: asking for the frame again, or no authenticator deciding any more, refuses it.
    pub async fn authenticate_frame(&self, request: &ConnectRequest, payload: &serde_json::Value) -> Result<Identity, Refusal> {
        let with_frame = ConnectRequest { auth_frame: Some(payload.to_string()), ..request.clone() };
        match self.authenticate(&with_frame).await {
            Some(Ok(Authenticated::Identified(identity))) => Ok(identity),
            Some(Ok(Authenticated::NeedAuthFrame)) => Err(Refusal::new(RefusalKind::Unavailable, "the authenticator asked for an auth frame again")),
            Some(Err(refusal)) => Err(refusal),
            None => Err(Refusal::new(RefusalKind::Unavailable, "no authenticator is running")),
        }
    }

    /// Connects this hub to other nodes. Set once, before connections arrive.
    pub fn set_backplane(&self, backplane: Arc<dyn Backplane>) {
        let _ = self.backplane.set(backplane);
    }

    /// The epoch of frames this hub numbers itself.
    pub fn local_epoch(&self) -> &str {
        &self.local_epoch
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    pub fn snapshot(&self) -> HubSnapshot {
        let mut rooms = BTreeMap::new();
        for shard in self.rooms.iter() {
            for scope in shard.read().keys() {
                *rooms.entry(scope.kind).or_insert(0) += 1;
            }
        }
        self.metrics.snapshot(rooms)
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.conns.read().len()
    }

    fn shard(&self, scope: &Scope) -> &Shard {
        &self.rooms[self.hasher.hash_one(scope) as usize % SHARDS]
    }

    /// Registers an authenticated connection (in no room yet: see `join_own_rooms`).
    /// Registers an authenticated connection, or refuses it when its user has
    /// `max_connections_per_user` open already.
    pub fn register(&self, identity: Identity) -> Result<Arc<Conn>, Close> {
        {
            let mut per_user = self.per_user.lock();
            let open = per_user.entry(identity.user_id.clone()).or_insert(0);
            if *open >= self.config.max_connections_per_user {
                drop(per_user);
                self.metrics.auth_failure("too_many_connections");
                return Err(Close::TOO_MANY_CONNECTIONS);
            }
            *open += 1;
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Relaxed),
            outbox: Outbox::new(self.config.max_queue_bytes, self.config.max_queue_age),
            scopes: Mutex::new(Vec::new()),
            bucket: Mutex::new(TokenBucket::full(self.config.subscribe_burst)),
            gone: CancellationToken::new(),
            forgotten: AtomicBool::new(false),
            identity,
        });
        self.conns.write().insert(conn.id, conn.clone());
        self.metrics.connects.fetch_add(1, Relaxed);
        self.metrics.active_connections.fetch_add(1, Relaxed);
        // Either `shutdown` saw this connection in `conns`, or this sees the tracker closed
        // (`shutdown` closes it before it reads `conns`).
        if self.sessions.is_closed() {
            self.disconnect(&conn, Close::GOING_AWAY);
        }
        Ok(conn)
    }

    /// Puts a connection in its workspace and user rooms. A room given a position in `since` is
    /// resumed from it: a `subscribe_ack` (with `recovered`) and the missed frames come first.
    pub async fn join_own_rooms(&self, conn: &Arc<Conn>, since: &HashMap<ScopeKind, Position>) {
        for scope in [
            Scope::workspace(conn.identity.workspace_id.clone()),
            Scope::user(conn.identity.user_id.clone()),
        ] {
            let resume = since.get(&scope.kind);
            self.join_scope(conn, &scope, resume, resume.is_some()).await;
        }
    }

    /// Joins through the backplane when there is one, else locally.
    async fn join_scope(&self, conn: &Arc<Conn>, scope: &Scope, since: Option<&Position>, announce: bool) -> Joined {
        match self.backplane.get() {
            Some(backplane) => backplane.join(self, conn, scope, since, announce).await,
            None => self.join_with_history(conn, scope, since, None, Vec::new(), announce),
        }
    }

    /// Closes a connection and removes it from every room. Safe to call any number of times,
    /// from any task: only the first close counts, and says so by returning `true`; only the
    /// first call removes (a connection a drainer closed is removed by its session's call).
    /// Frames still queued are dropped, except at shutdown (1001), when the writer sends them
    /// before the close.
    pub fn disconnect(&self, conn: &Arc<Conn>, close: Close) -> bool {
        let closed = conn.close(close, &self.metrics);
        if conn.forgotten.swap(true, Relaxed) {
            return closed;
        }
        let scopes = std::mem::take(&mut *conn.scopes.lock());
        for (scope, member) in scopes {
            self.leave_room(&scope, &member);
        }
        if self.conns.write().remove(&conn.id).is_some() {
            self.metrics.disconnects.fetch_add(1, Relaxed);
            self.metrics.active_connections.fetch_sub(1, Relaxed);
        }
        let mut per_user = self.per_user.lock();
        if let Some(open) = per_user.get_mut(&conn.identity.user_id) {
            *open -= 1;
            if *open == 0 {
                per_user.remove(&conn.identity.user_id);
            }
        }
        closed
    }

    /// A connection's session, tracked so that shutdown can wait for it to end.
    pub fn track_session<F: Future<Output = ()>>(&self, session: F) -> impl Future<Output = ()> + use<F> {
        self.sessions.track_future(session)
    }

    /// Closes every connection with 1001 (going away) after the frames already queued for it
    /// (rooms' drainers first push what the rooms accepted), and any connection registered from
    /// now on; then waits (at most `limit` in all) for their sessions to end, so that the close
    /// frames are sent before the process exits.
    pub async fn shutdown(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        self.sessions.close();
        self.drains.close();
        if tokio::time::timeout_at(deadline, self.drains.wait()).await.is_err() {
            tracing::warn!(drains = self.drains.len(), "rooms still pushing frames at shutdown");
        }
        let conns: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        for conn in conns {
            self.disconnect(&conn, Close::GOING_AWAY);
        }
        if tokio::time::timeout_at(deadline, self.sessions.wait()).await.is_err() {
            tracing::warn!(sessions = self.sessions.len(), "connections still closing at the end of shutdown");
        }
    }
}
