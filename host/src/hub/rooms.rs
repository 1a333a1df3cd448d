//! Rooms: who is in which scope's room, and fan-out into them.
//!
//! This module owns the `Room` (its members, epoch and `seq`) and the `Hub`'s room operations:
//! joining with history (resume), leaving, and fan-out, which encodes a frame once and pushes the
//! shared bytes to each member's outbox under the room's lock, so a room's frames are numbered
//! and queued in one order; a member a user frame's `Reach` leaves out gets a `skip` with the same
//! position. Slow members are evicted after the room's lock is released. It must not parse
//! client frames (the session does).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

use super::{Close, Conn, Hub, Joined, Position, Push, protocol};
use crate::action::Scope;
use crate::broadcast::{Broadcaster, Frame, Reach};

/// One scope's room on this node: where its frames stand and who receives them.
pub(super) struct Room {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub members: Vec<Arc<Conn>>,
}

/// A resume's arithmetic: a connection that has seen up to `since` joins a room at `position`
/// with `history` (entries positioned by `at`). Returns the entries to replay, in order, and
/// whether that recovers: `None` without `since`; `Some(true)` only when the entries of
/// `since`'s epoch after it fill every offset up to `position`, none missing and none twice
/// (then exactly those are replayed); `Some(false)`, with nothing replayed, otherwise.
fn resume<'h, H>(since: Option<&Position>, position: &Position, history: &'h [H], at: impl Fn(&H) -> &Position) -> (Vec<&'h H>, Option<bool>) {
    let Some(since) = since else { return (Vec::new(), None) };
    if since.epoch != position.epoch || since.offset > position.offset {
        return (Vec::new(), Some(false));
    }
    let missed: Vec<&H> = history
        .iter()
        .filter(|h| at(h).epoch == since.epoch && at(h).offset > since.offset && at(h).offset <= position.offset)
        .collect();
    let complete = missed.len() as u64 == position.offset - since.offset
        && missed.iter().zip(since.offset + 1..).all(|(h, expected)| at(h).offset == expected);
    if complete { (missed, Some(true)) } else { (Vec::new(), Some(false)) }
}

impl Hub {
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
            let (missed, recovered) = resume(since, &position, &history, |(p, _, _)| p);
            if announce {
                let _ = conn.outbox.push(protocol::subscribe_ack(scope, &Joined { position: position.clone(), recovered }));
            }
            for (p, frame, reach) in missed {
                let bytes = if reach.includes(&conn.identity.workspace_id) {
                    protocol::event(frame, scope, &p.epoch, p.offset)
                } else {
                    protocol::skip(scope, &p.epoch, p.offset)
                };
                let _ = conn.outbox.push(bytes);
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

    pub(super) fn leave_room(&self, conn: &Conn, scope: &Scope) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    #[test]
    fn resume_replays_exactly_the_missed_offsets_or_nothing() {
        // (case, since, the room's position, history offsets in epoch "e" unless "x:N", replayed, recovered)
        type Case<'a> = (&'a str, Option<u64>, u64, &'a [&'a str], &'a [u64], Option<bool>);
        let cases: &[Case] = &[
            ("a plain subscribe", None, 5, &["4", "5"], &[], None),
            ("up to date", Some(5), 5, &["4", "5"], &[], Some(true)),
            ("up to date, room new", Some(0), 0, &[], &[], Some(true)),
            ("three missed, all there", Some(2), 5, &["3", "4", "5"], &[3, 4, 5], Some(true)),
            ("history out of order", Some(2), 4, &["4", "3"], &[], Some(false)),
            ("older and newer history ignored", Some(2), 4, &["1", "2", "3", "4", "5"], &[3, 4], Some(true)),
            ("a gap", Some(2), 5, &["3", "5"], &[], Some(false)),
            ("history too short", Some(0), 5, &["4", "5"], &[], Some(false)),
            ("an offset twice", Some(3), 5, &["4", "4", "5"], &[], Some(false)),
            ("since ahead of the room", Some(7), 5, &["4", "5"], &[], Some(false)),
            ("another epoch's entries do not count", Some(3), 5, &["x:4", "x:5"], &[], Some(false)),
            ("another epoch's entries are skipped", Some(3), 5, &["x:4", "4", "5"], &[4, 5], Some(true)),
        ];
        for &(case, since, room, history, replayed, recovered) in cases {
            let history: Vec<Position> = history
                .iter()
                .map(|h| match h.split_once(':') {
                    Some((epoch, n)) => at(epoch, n.parse().unwrap()),
                    None => at("e", h.parse().unwrap()),
                })
                .collect();
            let since = since.map(|offset| at("e", offset));
            let (missed, got) = resume(since.as_ref(), &at("e", room), &history, |p| p);
            let offsets: Vec<u64> = missed.iter().map(|p| p.offset).collect();
            assert_eq!((offsets.as_slice(), got), (replayed, recovered), "{case}");
        }
        // Since a position of another epoch: the room restarted its numbering; nothing recovers.
        let history = [at("e", 3)];
        let (missed, got) = resume(Some(&at("old", 2)), &at("e", 3), &history, |p| p);
        assert_eq!((missed.len(), got), (0, Some(false)));
    }
}
