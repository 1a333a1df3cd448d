//! Per-scope ordering on one node: entries arrive from Redis pub/sub (and from the stream, when a
//! gap is filled) and leave in offset order, each exactly once.
//!
//! This module owns `Cursor`, pure logic with no I/O, so that ordering can be tested on its own.
//! The relay holds one cursor per scope it watches, under a lock that also covers delivery into
//! the hub, so a scope's frames reach its room in offset order.

use std::collections::BTreeMap;

/// One relayed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub epoch: String,
    pub offset: u64,
    /// The node that published it.
    pub origin: String,
    /// The origin node's own sequence number for it.
    pub n: u64,
    /// For user scopes: which of the user's connections get it.
    pub reach: crate::broadcast::Reach,
    /// When the origin broadcast it, in ms since the epoch.
    pub at_ms: u64,
    /// The frame's JSON.
    pub frame: String,
}

/// Where one scope stands on this node.
#[derive(Debug, Default)]
pub struct Cursor {
    /// `None` until the scope's epoch is known.
    pub epoch: Option<String>,
    /// The last offset delivered.
    pub offset: u64,
    /// Entries that arrived ahead of a gap, by offset.
    pending: BTreeMap<u64, Entry>,
}

/// What `accept` decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Deliver these, in order.
    pub deliver: Vec<Entry>,
    /// Offsets `from..=to` are missing: fill them from the stream.
    pub gap: Option<(u64, u64)>,
    /// The epoch changed under this node (offsets started again): the epoch it left.
    pub left_epoch: Option<String>,
}

impl Cursor {
    /// A cursor at a known position.
    pub fn at(epoch: Option<String>, offset: u64) -> Cursor {
        Cursor { epoch, offset, pending: BTreeMap::new() }
    }

    /// Takes one entry; returns what can be delivered now, in order.
    pub fn accept(&mut self, entry: Entry) -> Accepted {
        let mut accepted = Accepted::default();
        if self.epoch.as_deref() != Some(entry.epoch.as_str()) {
            // A scope whose data Redis lost (or that expired) restarts in a new epoch.
            accepted.left_epoch = self.epoch.replace(entry.epoch.clone());
            self.offset = entry.offset.saturating_sub(1);
            self.pending.clear();
        }
        if entry.offset <= self.offset {
            return accepted; // a duplicate
        }
        if entry.offset > self.offset + 1 {
            accepted.gap = Some((self.offset + 1, entry.offset - 1));
            self.pending.insert(entry.offset, entry);
            return accepted;
        }
        self.offset = entry.offset;
        accepted.deliver.push(entry);
        self.drain(&mut accepted.deliver);
        accepted
    }

    /// Gives up on offsets up to `through` (trimmed from the stream, never to arrive), and
    /// returns what can be delivered after them.
    pub fn skip_to(&mut self, through: u64) -> Vec<Entry> {
        let mut deliver = Vec::new();
        if through > self.offset {
            self.offset = through;
        }
        self.pending.retain(|offset, _| *offset > through);
        self.drain(&mut deliver);
        deliver
    }

    /// The first offset still missing before a pending entry, if any.
    pub fn missing(&self) -> Option<(u64, u64)> {
        let (&first, _) = self.pending.iter().next()?;
        (first > self.offset + 1).then_some((self.offset + 1, first - 1))
    }

    fn drain(&mut self, deliver: &mut Vec<Entry>) {
        while let Some(entry) = self.pending.remove(&(self.offset + 1)) {
            self.offset = entry.offset;
            deliver.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: &str, offset: u64) -> Entry {
        Entry {
            epoch: epoch.into(),
            offset,
            origin: "n1".into(),
            n: offset,
            at_ms: 0,
            reach: crate::broadcast::Reach::All,
            frame: format!("{{\"o\":{offset}}}"),
        }
    }

    fn offsets(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn in_order_entries_are_delivered_at_once() {
        let mut c = Cursor::at(Some("e".into()), 4);
        assert_eq!(offsets(&c.accept(entry("e", 5)).deliver), [5]);
        assert_eq!(offsets(&c.accept(entry("e", 6)).deliver), [6]);
        assert_eq!(c.offset, 6);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut c = Cursor::at(Some("e".into()), 4);
        assert!(c.accept(entry("e", 3)).deliver.is_empty());
        assert!(c.accept(entry("e", 4)).deliver.is_empty());
    }

    #[test]
    fn a_gap_holds_later_entries_until_it_is_filled() {
        let mut c = Cursor::at(Some("e".into()), 4);
        let a = c.accept(entry("e", 7));
        assert!(a.deliver.is_empty());
        assert_eq!(a.gap, Some((5, 6)));
        assert!(c.accept(entry("e", 8)).deliver.is_empty());
        assert_eq!(c.missing(), Some((5, 6)));
        assert_eq!(offsets(&c.accept(entry("e", 5)).deliver), [5]);
        assert_eq!(offsets(&c.accept(entry("e", 6)).deliver), [6, 7, 8]);
        assert_eq!(c.missing(), None);
    }

    #[test]
    fn an_unfillable_gap_is_skipped() {
        let mut c = Cursor::at(Some("e".into()), 4);
        c.accept(entry("e", 9));
        assert_eq!(offsets(&c.skip_to(8)), [9]);
        assert_eq!(c.offset, 9);
    }

    #[test]
    fn a_new_epoch_restarts_the_offsets() {
        let mut c = Cursor::at(Some("old".into()), 40);
        let a = c.accept(entry("new", 1));
        assert_eq!(a.left_epoch.as_deref(), Some("old"));
        assert_eq!(offsets(&a.deliver), [1]);
        assert_eq!(c.epoch.as_deref(), Some("new"));
        // A first entry for an unknown epoch is taken as the start.
        let mut fresh = Cursor::at(None, 0);
        let a = fresh.accept(entry("e", 12));
        assert_eq!(a.left_epoch, None);
        assert_eq!(offsets(&a.deliver), [12]);
    }
}
