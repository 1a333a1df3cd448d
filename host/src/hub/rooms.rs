//! Rooms: who is in which scope's room, and where each member starts.
//!
//! This module owns the `Room` (its members, epoch, `seq` and queue) and the `Hub`'s room
//! operations other than fan-out: joining with history (resume), acknowledging a subscribe to a
//! room the connection is already in, and leaving. A member joins at the room's last accepted
//! frame (its position, and its ticket in the room's queue): the frames accepted before it, even
//! those a drainer has not pushed yet, are its past, replayed from history or not at all; those
//! after are its own. Leaving revokes the member, so no frame of the room follows what the
//! connection is sent after it. It must not parse client frames (the session does) nor push
//! room frames (that is `fanout`).

use std::sync::Arc;

use super::fanout::{Member, Queue, RoomCell};
use super::{Conn, Hub, Joined, Position, protocol};
use crate::action::Scope;
use crate::broadcast::{Frame, Reach};

/// One scope's room on this node: where its frames stand, who receives them, and what it
/// accepted and has not pushed yet. `members` is shared with a drainer at work (copied on
/// write), so a join or leave never waits for a fan-out.
pub(super) struct Room {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub members: Arc<Vec<Arc<Member>>>,
    /// Members that left and are still listed: they are revoked at once and taken off the list
    /// when they are half of it (one pass for many leaves, so a mass disconnect stays linear).
    pub departed: usize,
    pub queue: Queue,
}

impl Room {
    /// Whether no member is left.
    pub(super) fn is_empty(&self) -> bool {
        self.members.len() == self.departed
    }
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
                RoomCell::new(Room { epoch, seq, members: Arc::new(Vec::new()), departed: 0, queue: Queue::default() })
            });
            let mut room = room.room.lock();
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
            if !conn.gone.is_cancelled() && !scopes.iter().any(|(s, _)| s == scope) {
                let member = Member::new(conn.clone(), room.queue.ticket());
                Arc::make_mut(&mut room.members).push(member.clone());
                scopes.push((scope.clone(), member));
            }
            // A room opened for a connection that closed meanwhile would stay, empty, forever.
            if opened && room.is_empty() {
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

    /// A subscribe to a room `conn` is already in: its `subscribe_ack`, after the room's frames
    /// accepted so far (they are the connection's, and come before the position the ack gives).
    /// A position to resume from is honoured only when nothing was missed.
    pub(super) fn ack_member(&self, conn: &Conn, scope: &Scope, since: Option<&Position>) -> Joined {
        let cell = self.shard(scope).read().get(scope).cloned();
        let Some(cell) = cell else {
            let position = Position { epoch: self.local_epoch.to_string(), offset: 0 };
            let joined = Joined { recovered: since.map(|s| *s == position), position };
            let _ = conn.outbox.push(protocol::subscribe_ack(scope, &joined));
            return joined;
        };
        let mut room = cell.room.lock();
        let position = Position { epoch: room.epoch.to_string(), offset: room.seq };
        let joined = Joined { recovered: since.map(|s| *s == position), position };
        Hub::send_in_order(&mut room, conn, protocol::subscribe_ack(scope, &joined));
        joined
    }

    /// Takes `member` out of `scope`'s room (revoked at once, off the list later), and closes
    /// the room when it was the last.
    pub(super) fn leave_room(&self, scope: &Scope, member: &Member) {
        let mut shard = self.shard(scope).write();
        if let Some(cell) = shard.get(scope) {
            let empty = {
                let mut room = cell.room.lock();
                if member.leave() {
                    room.departed += 1;
                }
                if room.departed * 2 > room.members.len() {
                    Arc::make_mut(&mut room.members).retain(|m| !m.has_left());
                    room.departed = 0;
                }
                room.is_empty()
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
