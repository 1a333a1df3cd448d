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
//! Invariants: fan-out never waits on a socket; frames of one scope are pushed in `seq` order
//! (the room's lock covers numbering and pushing); the hub knows nothing of HTTP routing (that
//! is `api`), of the bus (it only receives frames) or of Redis (that is `relay`).

pub mod auth;
mod metrics;
mod outbox;
pub mod protocol;
mod sendq;
pub mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

pub use auth::{AuthError, Claims, ClaimsAuthorizer, Grants, Identity, ScopeAuthorizer, TokenRules, TokenVerifier};
pub use metrics::{HubMetrics, HubSnapshot};
pub use outbox::{Close, Push};

use crate::action::{Scope, ScopeKind};
use crate::broadcast::{Broadcaster, Frame, Reach};
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

/// Why a subscribe or unsubscribe was refused. `code()` is what the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid payload")]
    InvalidPayload,
    #[error("forbidden")]
    Forbidden,
    #[error("unknown scope")]
    UnknownScope,
    #[error("authorization lookup failed")]
    LookupFailed,
    #[error("too many scopes")]
    TooManyScopes,
    #[error("too many subscribes")]
    RateLimited,
}

impl SubscribeError {
    pub fn code(self) -> &'static str {
        match self {
            SubscribeError::InvalidPayload => "invalid payload",
            SubscribeError::Forbidden => "forbidden",
            SubscribeError::UnknownScope => "unknown_scope",
            SubscribeError::LookupFailed => "lookup_failed",
            SubscribeError::TooManyScopes => "too_many_scopes",
            SubscribeError::RateLimited => "rate_limited",
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
    fn join<'a>(
        &'a self,
        hub: &'a Hub,
        conn: &'a Arc<Conn>,
        scope: &'a Scope,
        since: Option<&'a Position>,
        announce: bool,
    ) -> BoxFuture<'a, Joined>;
}

/// One WebSocket connection, as the hub sees it.
pub struct Conn {
    pub id: u64,
    pub identity: Identity,
    outbox: Outbox,
    scopes: Mutex<BTreeSet<Scope>>,
    bucket: Mutex<TokenBucket>,
    /// Cancelled when the connection is closed for any reason.
    pub gone: CancellationToken,
}

impl Conn {
    /// Queues a control frame (ack, pong, error) for this connection only.
    pub fn send_control(&self, frame: String) -> Push {
        self.outbox.push(Utf8Bytes::from(frame))
    }

    pub fn scopes(&self) -> Vec<Scope> {
        self.scopes.lock().iter().cloned().collect()
    }

    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

struct TokenBucket {
    tokens: f64,
    at: Instant,
}

struct Room {
    epoch: Arc<str>,
    seq: u64,
    members: Vec<Arc<Conn>>,
}

const SHARDS: usize = 16;

/// One shard of the room map: scope -> room.
type Shard = RwLock<HashMap<Scope, Arc<Mutex<Room>>>>;

/// The hub. Shared by the HTTP layer (connections) and the bus (frames, as a `Broadcaster`).
pub struct Hub {
    config: HubConfig,
    verifier: TokenVerifier,
    authorizer: Arc<dyn ScopeAuthorizer>,
    rooms: Box<[Shard]>,
    conns: RwLock<HashMap<u64, Arc<Conn>>>,
    /// Open connections per user, for `max_connections_per_user`.
    per_user: Mutex<HashMap<String, usize>>,
    /// Epoch and offset of the `everyone` scope; its lock orders broadcasts to everyone.
    everyone: Mutex<(Arc<str>, u64)>,
    next_id: AtomicU64,
    metrics: HubMetrics,
    hasher: std::collections::hash_map::RandomState,
    /// The epoch of frames numbered here (single node): a fresh one each start.
    local_epoch: Arc<str>,
    backplane: std::sync::OnceLock<Arc<dyn Backplane>>,
    /// Every connection's session task, so that shutdown can wait for their close frames.
    /// Closed by `shutdown`: connections registered after that are closed at once.
    sessions: tokio_util::task::TaskTracker,
}

impl Hub {
    pub fn new(config: HubConfig, verifier: TokenVerifier, authorizer: Arc<dyn ScopeAuthorizer>) -> Hub {
        Hub {
            config,
            verifier,
            authorizer,
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            conns: RwLock::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            everyone: Mutex::new((Arc::from(""), 0)),
            next_id: AtomicU64::new(1),
            metrics: HubMetrics::default(),
            hasher: Default::default(),
            local_epoch: Arc::from(crate::event::new_id().rsplit('-').next().unwrap_or("local")),
            backplane: std::sync::OnceLock::new(),
            sessions: tokio_util::task::TaskTracker::new(),
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
            scopes: Mutex::new(BTreeSet::new()),
            bucket: Mutex::new(TokenBucket { tokens: self.config.subscribe_burst, at: Instant::now() }),
            gone: CancellationToken::new(),
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
    /// from any task: only the first call does anything, and says so by returning `true`. Frames
    /// still queued are dropped, except at shutdown (1001), when the writer sends them before the
    /// close.
    pub fn disconnect(&self, conn: &Arc<Conn>, close: Close) -> bool {
        let Some(dropped) = conn.outbox.close(close) else { return false };
        conn.gone.cancel();
        if dropped > 0 {
            self.metrics.messages_dropped.fetch_add(dropped as u64, Relaxed);
        }
        let scopes = std::mem::take(&mut *conn.scopes.lock());
        for scope in scopes {
            self.leave_room(conn, &scope);
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
        true
    }

    /// A connection's session, tracked so that shutdown can wait for it to end.
    pub fn track_session<F: Future<Output = ()>>(&self, session: F) -> impl Future<Output = ()> + use<F> {
        self.sessions.track_future(session)
    }

    /// Closes every connection with 1001 (going away) after the frames already queued for it,
    /// and any connection registered from now on; then waits (at most `limit`) for their
    /// sessions to end, so that the close frames are sent before the process exits.
    pub async fn shutdown(&self, limit: Duration) {
        self.sessions.close();
        let conns: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        for conn in conns {
            self.disconnect(&conn, Close::GOING_AWAY);
        }
        if tokio::time::timeout(limit, self.sessions.wait()).await.is_err() {
            tracing::warn!(sessions = self.sessions.len(), "connections still closing at the end of shutdown");
        }
    }

    /// Joins `conn` to `scope`'s room. Under the room's lock, first pushes `history` (frames it
    /// missed, in order, up to the room's current position) so that no live frame can come
    /// between them. `since` says what the connection has already seen: recovery succeeds when
    /// `history` fills the gap from `since` to the room's position exactly.
    ///
    /// A room created here starts at `start` (the scope's position elsewhere, from the
    /// backplane), else at offset 0 of this hub's epoch. A history frame whose `Reach` leaves
    /// this connection out is replayed as a `skip` frame, as it was live. With `announce`, the
    /// connection first gets a `subscribe_ack` saying where it stands and whether it recovered.
    pub fn join_with_history(
        &self,
        conn: &Arc<Conn>,
        scope: &Scope,
        since: Option<&Position>,
        start: Option<Position>,
        history: Vec<(Position, Frame, Reach)>,
        announce: bool,
    ) -> Joined {
        let mut scopes = conn.scopes.lock();
        let mut opened = false;
        let joined = {
            let mut shard = self.shard(scope).write();
            let room = shard.entry(scope.clone()).or_insert_with(|| {
                opened = true;
                let (epoch, seq) = match &start {
                    Some(p) => (Arc::from(p.epoch.as_str()), p.offset),
                    None => (self.local_epoch.clone(), 0),
                };
                Arc::new(Mutex::new(Room { epoch, seq, members: Vec::new() }))
            });
            let mut room = room.lock();
            let position = Position { epoch: room.epoch.to_string(), offset: room.seq };
            // What the connection missed: the history after `since`, up to where the room is.
            let missed: Vec<&(Position, Frame, Reach)> = match since {
                Some(since) if since.epoch == position.epoch && since.offset <= position.offset => history
                    .iter()
                    .filter(|(p, _, _)| p.epoch == since.epoch && p.offset > since.offset && p.offset <= position.offset)
                    .collect(),
                _ => Vec::new(),
            };
            // Recovered only with every offset in between, none missing.
            let recovered = since.map(|since| {
                since.epoch == position.epoch
                    && since.offset <= position.offset
                    && missed.len() as u64 == position.offset - since.offset
                    && missed.iter().zip(since.offset + 1..).all(|((p, _, _), expected)| p.offset == expected)
            });
            if announce {
                let _ = conn.outbox.push(protocol::subscribe_ack(scope, &Joined { position: position.clone(), recovered }));
            }
            if recovered == Some(true) {
                for (p, frame, reach) in missed {
                    let bytes = if reach.includes(&conn.identity.workspace_id) {
                        protocol::event(frame, scope, &p.epoch, p.offset)
                    } else {
                        protocol::skip(scope, &p.epoch, p.offset)
                    };
                    let _ = conn.outbox.push(bytes);
                }
            }
            // Checked under the scopes lock: `disconnect` cancels before it takes the scopes, so
            // a connection being closed can never be left behind in a room.
            if !conn.gone.is_cancelled() && scopes.insert(scope.clone()) {
                room.members.push(conn.clone());
            }
            // A room opened for a connection that closed meanwhile would stay, empty, forever.
            if opened && room.members.is_empty() {
                drop(room);
                shard.remove(scope);
                opened = false;
            }
            Joined { position, recovered }
        };
        drop(scopes);
        if let Some(result) = joined.recovered {
            self.metrics.recovery(result);
        }
        if opened && let Some(backplane) = self.backplane.get() {
            backplane.room_opened(scope);
        }
        joined
    }

    /// Whether `scope` has local members.
    pub fn has_room(&self, scope: &Scope) -> bool {
        self.shard(scope).read().contains_key(scope)
    }

    fn leave_room(&self, conn: &Conn, scope: &Scope) {
        let mut shard = self.shard(scope).write();
        if let Some(room) = shard.get(scope) {
            let empty = {
                let mut room = room.lock();
                room.members.retain(|m| m.id != conn.id);
                room.members.is_empty()
            };
            if empty {
                shard.remove(scope);
                drop(shard);
                if let Some(backplane) = self.backplane.get() {
                    backplane.room_closed(scope);
                }
            }
        }
    }

    /// Subscribes a connection to a scope, if it may: its own workspace and user always (an
    /// idempotent ack), task and chat scopes when the authorizer allows, within the caps. With
    /// `since`, what the connection missed after that position is replayed first, when possible.
    pub async fn subscribe(&self, conn: &Arc<Conn>, scope: Scope, since: Option<Position>) -> Result<Joined, SubscribeError> {
        let result = self.check_subscribe(conn, &scope).await;
        match result {
            Ok(()) => {
                self.metrics.subscribe(scope.kind);
                let member = conn.scopes.lock().contains(&scope);
                if !member {
                    // The ack goes out under the room's lock, before any replayed frame.
                    return Ok(self.join_scope(conn, &scope, since.as_ref(), true).await);
                }
                // Already in the room (its own workspace or user): a position to resume from
                // can only be honoured when nothing was missed.
                let mut joined = self.position(&scope);
                if let Some(since) = &since {
                    joined.recovered = Some(*since == joined.position);
                }
                let _ = conn.outbox.push(protocol::subscribe_ack(&scope, &joined));
                Ok(joined)
            }
            Err(e @ (SubscribeError::Forbidden | SubscribeError::LookupFailed)) => {
                self.metrics.denial(scope.kind);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The room's current position (nothing recovered).
    fn position(&self, scope: &Scope) -> Joined {
        let room = self.shard(scope).read().get(scope).cloned();
        let position = match room {
            Some(room) => {
                let room = room.lock();
                Position { epoch: room.epoch.to_string(), offset: room.seq }
            }
            None => Position { epoch: self.local_epoch.to_string(), offset: 0 },
        };
        Joined { position, recovered: None }
    }

    async fn check_subscribe(&self, conn: &Arc<Conn>, scope: &Scope) -> Result<(), SubscribeError> {
        if scope.id.is_empty() || scope.id.len() > crate::event::MAX_NAME_LEN {
            return Err(SubscribeError::InvalidPayload);
        }
        let who = &conn.identity;
        match scope.kind {
            ScopeKind::Workspace if scope.id == who.workspace_id => return Ok(()),
            ScopeKind::User if scope.id == who.user_id => return Ok(()),
            ScopeKind::Workspace | ScopeKind::User => return Err(SubscribeError::Forbidden),
            // A grant in one workspace never opens a room of another.
            ScopeKind::Task | ScopeKind::Chat if scope.workspace != who.workspace_id => {
                return Err(SubscribeError::Forbidden);
            }
            ScopeKind::Task | ScopeKind::Chat => {}
        }
        if conn.scopes.lock().contains(scope) {
            return Ok(());
        }
        self.take_token(conn)?;
        if conn.scopes.lock().len() >= self.config.max_scopes {
            return Err(SubscribeError::TooManyScopes);
        }
        match tokio::time::timeout(self.config.authorize_timeout, self.authorizer.authorize(who, scope)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(SubscribeError::Forbidden),
            Ok(Err(e)) => {
                tracing::warn!(scope = %scope, user = %who.user_id, "scope authorization failed: {e}");
                Err(SubscribeError::LookupFailed)
            }
            Err(_) => {
                tracing::warn!(scope = %scope, user = %who.user_id, "scope authorization timed out");
                Err(SubscribeError::LookupFailed)
            }
        }
    }

    fn take_token(&self, conn: &Conn) -> Result<(), SubscribeError> {
        let mut bucket = conn.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.config.subscribe_rate;
        bucket.tokens = (bucket.tokens + refill).min(self.config.subscribe_burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(SubscribeError::RateLimited);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Leaves a task or chat scope. Leaving one's own workspace or user room is acknowledged
    /// but does nothing: those rooms last as long as the connection.
    pub fn unsubscribe(&self, conn: &Arc<Conn>, scope: &Scope) -> Result<(), SubscribeError> {
        if scope.id.is_empty() {
            return Err(SubscribeError::InvalidPayload);
        }
        let own = match scope.kind {
            ScopeKind::Workspace => scope.id == conn.identity.workspace_id,
            ScopeKind::User => scope.id == conn.identity.user_id,
            ScopeKind::Task | ScopeKind::Chat => false,
        };
        if !own && conn.scopes.lock().remove(scope) {
            self.leave_room(conn, scope);
        }
        self.metrics.unsubscribe(scope.kind);
        Ok(())
    }

    /// Pushes one frame to every member of `scope` that `reach` includes, in that scope's order;
    /// the others get a `skip` frame with the same position, so no connection sees a gap in
    /// `seq` (`reach` only ever narrows user rooms). Numbered here, unless `at` gives the
    /// frame's position (from the backplane, which then delivers frames in order).
    pub fn fan_out(&self, scope: &Scope, reach: &Reach, frame: &Frame, at: Option<&Position>) {
        self.metrics.event(&frame.event_type);
        self.metrics.frames_broadcast.fetch_add(1, Relaxed);
        let room = self.shard(scope).read().get(scope).cloned();
        let Some(room) = room else { return };
        let mut slow = Vec::new();
        {
            let mut room = room.lock();
            match at {
                Some(position) => {
                    if *room.epoch != *position.epoch {
                        room.epoch = Arc::from(position.epoch.as_str());
                    }
                    room.seq = position.offset;
                }
                None => {
                    // Numbered here, in this hub's own epoch (after frames numbered elsewhere,
                    // the offsets start again, and the epoch says so).
                    if room.epoch != self.local_epoch {
                        room.epoch = self.local_epoch.clone();
                        room.seq = 0;
                    }
                    room.seq += 1;
                }
            }
            let bytes = protocol::event(frame, scope, &room.epoch, room.seq);
            let mut skip = None;
            for member in &room.members {
                if reach.includes(&member.identity.workspace_id) {
                    self.push(member, &bytes, &mut slow);
                } else {
                    let skip = skip.get_or_insert_with(|| protocol::skip(scope, &room.epoch, room.seq));
                    self.push(member, skip, &mut slow);
                }
            }
        }
        self.evict(slow);
    }

    /// Pushes a frame to every connection (the `everyone` scope). Numbered here unless `at`
    /// gives its position.
    pub fn fan_out_everyone(&self, frame: &Frame, at: Option<&Position>) {
        self.metrics.event(&frame.event_type);
        self.metrics.frames_broadcast.fetch_add(1, Relaxed);
        let conns: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
        let mut slow = Vec::new();
        {
            let mut everyone = self.everyone.lock();
            match at {
                Some(position) => *everyone = (Arc::from(position.epoch.as_str()), position.offset),
                None if everyone.0 != self.local_epoch => *everyone = (self.local_epoch.clone(), 1),
                None => everyone.1 += 1,
            }
            let bytes = protocol::event(frame, &protocol::Everyone, &everyone.0, everyone.1);
            for conn in &conns {
                self.push(conn, &bytes, &mut slow);
            }
        }
        self.evict(slow);
    }

    fn push(&self, conn: &Arc<Conn>, bytes: &Utf8Bytes, slow: &mut Vec<Arc<Conn>>) {
        match conn.outbox.push(bytes.clone()) {
            Push::Queued => {
                self.metrics.messages_sent.fetch_add(1, Relaxed);
            }
            Push::Overflow => {
                self.metrics.messages_dropped.fetch_add(1, Relaxed);
                slow.push(conn.clone());
            }
            Push::Closed => {}
        }
    }

    fn evict(&self, slow: Vec<Arc<Conn>>) {
        for conn in slow {
            self.evict_slow(&conn);
        }
    }

    /// Closes a connection that is not keeping up (4008): its outbox overflowed, or a write to
    /// it did not finish within the outbox's age bound.
    pub(crate) fn evict_slow(&self, conn: &Arc<Conn>) {
        if self.disconnect(conn, Close::SLOW) {
            tracing::info!(conn = conn.id, user = %conn.identity.user_id, "evicted slow connection");
            self.metrics.evictions.fetch_add(1, Relaxed);
        }
    }
}

/// A hub on its own is a Broadcaster: it numbers frames itself. (With a relay, the relay is the
/// Broadcaster and delivers into the hub.)
impl Broadcaster for Hub {
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame) {
        self.fan_out(&Scope::workspace(workspace_id), &Reach::All, &frame, None);
    }

    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame) {
        self.fan_out(&Scope::user(user_id), reach, &frame, None);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        self.fan_out(scope, &Reach::All, &frame, None);
    }

    fn broadcast(&self, frame: Frame) {
        self.fan_out_everyone(&frame, None);
    }
}
