//! This node's own frames on their way through Redis: which reached local rooms early (while Redis
//! was unreachable) and which came back from Redis while still in the outbox, so that no local
//! client gets one of its own frames twice, and so that what is remembered is forgotten again.
//!
//! This module owns `Ledger`, pure logic with no I/O. Frames are known by their `n`, the node's
//! sequence number, which grows in outbox order. Whoever claims a frame first delivers it: a local
//! delivery while Redis is away (`claim_early`) or its return from Redis (`came_back`). What is
//! remembered is bounded: a returned frame is forgotten when it leaves the outbox; an early one
//! when it comes back, when it is dropped from the outbox, or, once Redis has it at a known
//! position, as soon as its scope's cursor can no longer bring it back (no cursor, the cursor
//! is past it, or the cursor left its epoch).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::sequencer::Cursor;
use crate::hub::Position;

/// A frame delivered locally before Redis had it.
#[derive(Debug)]
struct Early<T> {
    target: T,
    /// Where Redis put it (or, for a retried frame, a position at or after it), once known.
    at: Option<Position>,
}

/// Own frames delivered locally, by `n`. `T` is the relay's target (a scope or everyone).
#[derive(Debug)]
pub(super) struct Ledger<T> {
    early: HashMap<u64, Early<T>>,
    /// Came back from Redis while still in the outbox (a batch whose reply was lost).
    returned: HashSet<u64>,
    /// Every `n` up to this one has left the outbox.
    settled_through: u64,
}

impl<T> Default for Ledger<T> {
    fn default() -> Ledger<T> {
        Ledger { early: HashMap::new(), returned: HashSet::new(), settled_through: 0 }
    }
}

impl<T: Clone + Eq + Hash> Ledger<T> {
    /// Claims a frame still in the outbox for local delivery now. False if it already came back
    /// from Redis (and so was delivered through its cursor).
    pub(super) fn claim_early(&mut self, n: u64, target: &T) -> bool {
        if self.returned.contains(&n) || self.early.contains_key(&n) {
            return false;
        }
        self.early.insert(n, Early { target: target.clone(), at: None });
        true
    }

    /// Whether the frame was delivered early and has not come back yet.
    pub(super) fn is_early(&self, n: u64) -> bool {
        self.early.contains_key(&n)
    }

    /// Whether the frame was delivered locally already, either way.
    pub(super) fn delivered(&self, n: u64) -> bool {
        self.early.contains_key(&n) || self.returned.contains(&n)
    }

    /// An own frame came back from Redis in order: true if it was delivered early (skip it).
    /// Otherwise it is delivered now, and remembered while it is still in the outbox.
    pub(super) fn came_back(&mut self, n: u64) -> bool {
        if self.early.remove(&n).is_some() {
            return true;
        }
        if n > self.settled_through {
            self.returned.insert(n);
        }
        false
    }

    /// Redis has the frame at `at` (for a retried frame: at or before `at`); `cursor` is its
    /// target's cursor, if watched (locked by the caller).
    pub(super) fn published(&mut self, n: u64, at: Position, cursor: Option<&Cursor>) {
        self.settle(n);
        if let Some(early) = self.early.get_mut(&n) {
            if passed(cursor, &at) {
                self.early.remove(&n);
            } else {
                early.at = Some(at);
            }
        }
    }

    /// The frame was dropped from a full outbox: it never reaches Redis.
    pub(super) fn dropped(&mut self, n: u64) {
        self.settle(n);
        self.early.remove(&n);
    }

    /// `target`'s cursor moved other than by delivering (it was removed, skipped a gap, or
    /// started a new epoch, leaving `left_epoch`): forgets early frames it can no longer bring
    /// back.
    pub(super) fn cursor_moved(&mut self, target: &T, cursor: Option<&Cursor>, left_epoch: Option<&str>) {
        self.early.retain(|_, early| {
            let Some(at) = &early.at else { return true };
            early.target != *target || !(passed(cursor, at) || left_epoch == Some(at.epoch.as_str()))
        });
    }

    /// Frames remembered, early and returned.
    pub(super) fn len(&self) -> usize {
        self.early.len() + self.returned.len()
    }

    /// The frame left the outbox: it can no longer be delivered early.
    pub(super) fn settle(&mut self, n: u64) {
        self.settled_through = self.settled_through.max(n);
        self.returned.remove(&n);
    }
}

/// Whether a cursor can no longer deliver the frame at `at`: there is none (a new one starts at
/// the scope's current position, after it), or it is past `at` in the same epoch.
fn passed(cursor: Option<&Cursor>, at: &Position) -> bool {
    cursor.is_none_or(|c| c.epoch.as_deref() == Some(at.epoch.as_str()) && c.offset >= at.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    #[test]
    fn an_early_frame_is_skipped_once_when_it_comes_back() {
        let mut ledger = Ledger::default();
        assert!(ledger.claim_early(1, &"ws"));
        assert!(ledger.delivered(1));
        let cursor = Cursor::at(Some("e".into()), 3);
        ledger.published(1, at("e", 4), Some(&cursor));
        assert!(ledger.came_back(1), "delivered early: skip it");
        assert!(!ledger.came_back(1), "only once");
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_frame_that_came_back_first_is_not_delivered_early() {
        let mut ledger = Ledger::default();
        assert!(!ledger.came_back(5), "not delivered early: deliver it");
        assert!(!ledger.claim_early(5, &"ws"), "already delivered through Redis");
        assert!(ledger.delivered(5));
        ledger.published(5, at("e", 1), None);
        assert_eq!(ledger.len(), 0, "forgotten once out of the outbox");
        // Coming back after leaving the outbox: delivered, not remembered.
        assert!(!ledger.came_back(4));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn early_frames_of_unwatched_scopes_are_forgotten_when_redis_has_them() {
        let mut ledger = Ledger::default();
        for n in 1..=100 {
            ledger.claim_early(n, &"no-room");
        }
        for n in 1..=100 {
            ledger.published(n, at("e", n), None);
        }
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn early_frames_a_cursor_has_passed_are_forgotten() {
        let mut ledger = Ledger::default();
        ledger.claim_early(1, &"ws");
        ledger.claim_early(2, &"ws");
        ledger.claim_early(3, &"ws");
        let cursor = Cursor::at(Some("e".into()), 10);
        ledger.published(1, at("e", 9), Some(&cursor));
        assert_eq!(ledger.len(), 2, "the cursor is past 9: it cannot come back");
        ledger.published(2, at("e", 11), Some(&cursor));
        ledger.published(3, at("e", 12), Some(&cursor));
        assert_eq!(ledger.len(), 2, "11 and 12 will come back");
        // The cursor skips them (trimmed), then the room closes.
        let skipped = Cursor::at(Some("e".into()), 11);
        ledger.cursor_moved(&"ws", Some(&skipped), None);
        assert_eq!(ledger.len(), 1);
        ledger.cursor_moved(&"other", None, None);
        assert_eq!(ledger.len(), 1, "another scope's cursor changes nothing");
        ledger.cursor_moved(&"ws", None, None);
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_new_epoch_forgets_frames_of_the_old_one() {
        let mut ledger = Ledger::default();
        ledger.claim_early(1, &"ws");
        ledger.published(1, at("old", 5), Some(&Cursor::at(Some("old".into()), 2)));
        let moved = Cursor::at(Some("new".into()), 1);
        ledger.cursor_moved(&"ws", Some(&moved), Some("old"));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn frames_not_yet_in_redis_are_kept_until_dropped() {
        let mut ledger = Ledger::default();
        ledger.claim_early(1, &"ws");
        ledger.cursor_moved(&"ws", None, None);
        assert_eq!(ledger.len(), 1, "not in Redis yet: it may still come back");
        ledger.dropped(1);
        assert_eq!(ledger.len(), 0);
    }
}
