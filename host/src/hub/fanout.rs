//! Fan-out, off the publisher's path: a room's queue of accepted frames and the drainer that
//! pushes them to the room's members.
//!
//! This module owns `RoomCell` (a room behind its lock, and the condition its drainer signals),
//! `Member` (a connection in a room, from which frame on, and whether it left), `Queue` (the
//! room's frames accepted but not yet pushed) and the `Hub`'s fan-out. `fan_out` numbers a
//! frame, encodes it once (and its `skip`, for members a user frame's `Reach` leaves out) and
//! appends it to the room's queue, all under the room's lock, in O(1); the caller that finds the
//! room not draining starts its drainer (on tokio's blocking pool, or itself without a runtime),
//! which takes everything queued, with the member list of that moment, and pushes each member
//! its frames in one go, outside the room's lock, until the queue is empty. One drainer per
//! room at a time keeps the room's order; a publish returns once its frame is queued. A small
//! room with nothing queued is pushed to at once, under the lock, which costs less than
//! handing it over. Frames for `everyone` are pushed at once, after every room's frames
//! accepted before them (so a frame to everyone follows what was published before it).
//!
//! It must not decide who is in a room (that is `rooms`) or touch sockets (that is `session`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Condvar, Mutex};

use super::metrics::HubMetrics;
use super::rooms::Room;
use super::{Close, Conn, Hub, Position, Push, protocol};
use crate::action::Scope;
use crate::broadcast::{Broadcaster, Frame, Reach};

/// Rooms this small, with nothing queued, are pushed to by the publisher itself.
const INLINE_MEMBERS: usize = 32;

/// A room behind its lock, with the condition its drainer signals after each batch.
pub(super) struct RoomCell {
    pub(super) room: Mutex<Room>,
    drained: Condvar,
}

impl RoomCell {
    pub(super) fn new(room: Room) -> Arc<RoomCell> {
        Arc::new(RoomCell { room: Mutex::new(room), drained: Condvar::new() })
    }
}

/// A connection in a room.
pub(super) struct Member {
    pub(super) conn: Arc<Conn>,
    /// The room's last ticket when it joined: the frames after it are its own; those before it
    /// were the room's past (in the position it was told, and in what it was replayed).
    from: u64,
    /// Set when it leaves, under its outbox's lock (`Outbox::revoke`): a drainer still holding
    /// the old member list pushes it nothing more.
    left: AtomicBool,
}

impl Member {
    pub(super) fn new(conn: Arc<Conn>, from: u64) -> Arc<Member> {
        Arc::new(Member { conn, from, left: AtomicBool::new(false) })
    }

    /// Revokes the member; `true` the first time.
    pub(super) fn leave(&self) -> bool {
        self.conn.outbox.revoke(&self.left)
    }

    pub(super) fn has_left(&self) -> bool {
        self.left.load(Relaxed)
    }
}

/// What a room accepted and has not pushed yet.
#[derive(Default)]
pub(super) struct Queue {
    items: Vec<Pending>,
    bytes: usize,
    /// Frames accepted in this room so far (the last one's ticket).
    ticket: u64,
    /// The ticket of the last frame pushed to every member.
    delivered: u64,
    /// Whether a drainer owns the room's queue. While it does, frames are queued, never pushed
    /// by their publisher.
    draining: bool,
}

impl Queue {
    pub(super) fn ticket(&self) -> u64 {
        self.ticket
    }
}

enum Pending {
    /// A room frame, with the `skip` that members its `Reach` leaves out get in its place.
    Frame { ticket: u64, bytes: Utf8Bytes, skip: Option<(Reach, Utf8Bytes)> },
    /// A frame for one member only (the `subscribe_ack` of a connection already in the room), in
    /// its place among the room's frames.
    Direct { conn: u64, bytes: Utf8Bytes },
}

impl Pending {
    fn len(&self) -> usize {
        match self {
            Pending::Frame { bytes, .. } | Pending::Direct { bytes, .. } => bytes.len(),
        }
    }
}

/// What one push of a batch did, counted once per batch.
#[derive(Default)]
struct Pushed {
    sent: u64,
    dropped: u64,
    slow: Vec<Arc<Conn>>,
}

impl Pushed {
    fn count(&self, metrics: &HubMetrics) {
        if self.sent > 0 {
            metrics.messages_sent.fetch_add(self.sent, Relaxed);
        }
        if self.dropped > 0 {
            metrics.messages_dropped.fetch_add(self.dropped, Relaxed);
        }
    }
}

/// Pushes `batch` to `members`, in order: each member gets the frames of the batch that are its
/// own in one push (one lock, one wake-up of its writer). A member whose outbox overflows is
/// listed in `slow`.
fn deliver(batch: &[Pending], members: &[Arc<Member>], pushed: &mut Pushed) {
    let now = Instant::now();
    let mut frames = Vec::with_capacity(batch.len());
    for member in members {
        for item in batch {
            match item {
                Pending::Frame { ticket, bytes, skip } if *ticket > member.from => {
                    let bytes = match skip {
                        Some((reach, skip)) if !reach.includes(&member.conn.identity.workspace_id) => skip,
                        _ => bytes,
                    };
                    frames.push(bytes.clone());
                }
                Pending::Direct { conn, bytes } if *conn == member.conn.id => frames.push(bytes.clone()),
                _ => {}
            }
        }
        if frames.is_empty() {
            continue;
        }
        let tried = frames.len();
        let (result, queued) = member.conn.outbox.push_all(&mut frames, &member.left, now);
        pushed.sent += queued as u64;
        if result == Push::Overflow {
            pushed.dropped += (tried - queued) as u64;
            pushed.slow.push(member.conn.clone());
        }
    }
}

/// A room's drainer: takes what the room queued, with its members of that moment, pushes it,
/// and again, until the queue is empty; then gives the room back to its publishers. It runs on a
/// thread of tokio's blocking pool (beside the workers that run the writers it wakes: as a task
/// on a worker, yielding every 64 or 1 024 members, it took twice the time and CPU to reach
/// 10 000 members, see BENCHMARKS.md), or on the publisher's own thread without a runtime.
/// Dropped before it is done (a runtime shutting down), it finishes on the spot, so no accepted
/// frame is lost.
struct Drainer {
    cell: Option<Arc<RoomCell>>,
    metrics: Arc<HubMetrics>,
    /// The batch being pushed, the members it goes to, and the next of them.
    batch: Vec<Pending>,
    members: Arc<Vec<Arc<Member>>>,
    next: usize,
    pushed: Pushed,
    _tracked: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
}

impl Drainer {
    fn new(cell: Arc<RoomCell>, metrics: Arc<HubMetrics>) -> Drainer {
        Drainer { cell: Some(cell), metrics, batch: Vec::new(), members: Arc::default(), next: 0, pushed: Pushed::default(), _tracked: None }
    }

    fn run(mut self) {
        while self.step() {}
    }

    /// Pushes the current batch to its members, taking the next batch first when this one is
    /// done. `false` once the queue is empty and the room given back.
    fn step(&mut self) -> bool {
        let Some(cell) = self.cell.clone() else { return false };
        if self.next >= self.members.len() {
            self.finish_batch(&cell);
            let mut room = cell.room.lock();
            if room.queue.items.is_empty() {
                room.queue.draining = false;
                cell.drained.notify_all();
                self.cell = None;
                return false;
            }
            self.batch = std::mem::take(&mut room.queue.items);
            self.members = room.members.clone();
            self.next = 0;
        }
        deliver(&self.batch, &self.members[self.next..], &mut self.pushed);
        self.next = self.members.len();
        true
    }

    /// Accounts for the batch just pushed, and closes the members it overflowed (their sessions
    /// see them closed and take them out of their rooms).
    fn finish_batch(&mut self, cell: &RoomCell) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.members = Arc::default();
        let last = batch.iter().rev().find_map(|p| match p {
            Pending::Frame { ticket, .. } => Some(*ticket),
            Pending::Direct { .. } => None,
        });
        {
            let mut room = cell.room.lock();
            room.queue.bytes -= batch.iter().map(Pending::len).sum::<usize>();
            if let Some(last) = last {
                room.queue.delivered = last;
            }
            cell.drained.notify_all();
        }
        let pushed = std::mem::take(&mut self.pushed);
        pushed.count(&self.metrics);
        for conn in pushed.slow {
            if conn.close(Close::SLOW, &self.metrics) {
                tracing::info!(conn = conn.id, user = %conn.identity.user_id, "evicted slow connection");
                self.metrics.evictions.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        while self.step() {}
    }
}

/// Waits for `cell`'s drainer (on a thread of its own) to signal. On a multi-threaded runtime's
/// worker (the relay delivers from tasks), the worker's other tasks move to another thread
/// meanwhile.
fn wait_for_drainer(cell: &RoomCell, room: &mut parking_lot::MutexGuard<'_, Room>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| cell.drained.wait(room));
        }
        _ => cell.drained.wait(room),
    }
}

impl Hub {
    /// Accepts one frame for every member of `scope` that `reach` includes, in that scope's
    /// order; the others get a `skip` frame with the same position, so no connection sees a gap
    /// in `seq` (`reach` only ever narrows user rooms). Numbered here, unless `at` gives the
    /// frame's position (from the backplane, which then delivers frames in order). Returns once
    /// the frame is queued for the room; a room whose queue holds a quarter of `max_queue_bytes`
    /// or more (so that one batch never fills a member's outbox on its own)
    /// holds its publishers until its drainer has taken some.
    pub fn fan_out(&self, scope: &Scope, reach: &Reach, frame: &Frame, at: Option<&Position>) {
        self.metrics.event(&frame.event_type);
        self.metrics.frames_broadcast.fetch_add(1, Relaxed);
        let cell = self.shard(scope).read().get(scope).cloned();
        let Some(cell) = cell else { return };
        let mut room = cell.room.lock();
        while room.queue.draining && room.queue.bytes >= self.config.max_queue_bytes / 4 {
            wait_for_drainer(&cell, &mut room);
        }
        match at {
            Some(position) => {
                if *room.epoch != *position.epoch {
                    room.epoch = Arc::from(position.epoch.as_str());
                }
                room.seq = position.offset;
            }
            None => {
                // Numbered here, in this hub's own epoch (after frames numbered elsewhere, the
                // offsets start again, and the epoch says so).
                if room.epoch != self.local_epoch {
                    room.epoch = self.local_epoch.clone();
                    room.seq = 0;
                }
                room.seq += 1;
            }
        }
        let bytes = protocol::event(frame, scope, &room.epoch, room.seq);
        let skip = (*reach != Reach::All).then(|| (reach.clone(), protocol::skip(scope, &room.epoch, room.seq)));
        room.queue.ticket += 1;
        let item = Pending::Frame { ticket: room.queue.ticket, bytes, skip };
        if !room.queue.draining && room.members.len() <= INLINE_MEMBERS {
            let mut pushed = Pushed::default();
            deliver(std::slice::from_ref(&item), &room.members, &mut pushed);
            room.queue.delivered = room.queue.ticket;
            drop(room);
            pushed.count(&self.metrics);
            for conn in &pushed.slow {
                self.evict_slow(conn);
            }
            return;
        }
        room.queue.bytes += item.len();
        room.queue.items.push(item);
        if !room.queue.draining {
            room.queue.draining = true;
            drop(room);
            self.start_drainer(cell);
        }
    }

    /// Sends `bytes` to `conn`, a member of the locked `room`, after the room's frames accepted
    /// so far: at once when none is waiting, else through the room's queue.
    pub(super) fn send_in_order(room: &mut Room, conn: &Conn, bytes: Utf8Bytes) {
        if room.queue.draining {
            room.queue.bytes += bytes.len();
            room.queue.items.push(Pending::Direct { conn: conn.id, bytes });
        } else {
            let _ = conn.outbox.push(bytes);
        }
    }

    fn start_drainer(&self, cell: Arc<RoomCell>) {
        let mut drainer = Drainer::new(cell, self.metrics.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drainer._tracked = Some(self.drains.token());
                runtime.spawn_blocking(move || drainer.run());
            }
            // No runtime (a library caller on a plain thread): this thread drains.
            Err(_) => drainer.run(),
        }
    }

    /// Waits until every room has pushed the frames it had accepted when this was called.
    fn settle_rooms(&self) {
        let mut busy = Vec::new();
        for shard in self.rooms.iter() {
            for cell in shard.read().values() {
                let room = cell.room.lock();
                if room.queue.draining {
                    busy.push((cell.clone(), room.queue.ticket));
                }
            }
        }
        for (cell, ticket) in busy {
            let mut room = cell.room.lock();
            while room.queue.draining && room.queue.delivered < ticket {
                wait_for_drainer(&cell, &mut room);
            }
        }
    }

    /// Pushes a frame to every connection (the `everyone` scope), after the frames rooms had
    /// accepted before it. Numbered here unless `at` gives its position.
    pub fn fan_out_everyone(&self, frame: &Frame, at: Option<&Position>) {
        self.metrics.event(&frame.event_type);
        self.metrics.frames_broadcast.fetch_add(1, Relaxed);
        let mut pushed = Pushed::default();
        {
            let mut everyone = self.everyone.lock();
            self.settle_rooms();
            match at {
                Some(position) => *everyone = (Arc::from(position.epoch.as_str()), position.offset),
                None if everyone.0 != self.local_epoch => *everyone = (self.local_epoch.clone(), 1),
                None => everyone.1 += 1,
            }
            let bytes = protocol::event(frame, &protocol::Everyone, &everyone.0, everyone.1);
            let conns: Vec<Arc<Conn>> = self.conns.read().values().cloned().collect();
            for conn in conns {
                match conn.outbox.push(bytes.clone()) {
                    Push::Queued => pushed.sent += 1,
                    Push::Overflow => {
                        pushed.dropped += 1;
                        pushed.slow.push(conn);
                    }
                    Push::Closed => {}
                }
            }
        }
        pushed.count(&self.metrics);
        for conn in &pushed.slow {
            self.evict_slow(conn);
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

#[cfg(test)]
mod tests;
