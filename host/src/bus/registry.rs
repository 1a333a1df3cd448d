//! The registry of listeners: an immutable snapshot in dispatch order, with an index by type.
//!
//! This module owns `Entry` (a registered listener, its subscriptions and counters) and
//! `Registry` (every entry in dispatch order, plus the index that finds an event's listeners).
//! A snapshot is built whole on every change and swapped in by the bus, so publishes read it
//! without locks. Finding an event's listeners costs a hash lookup for the exact type and one per
//! distinct prefix length, never a walk over every listener's patterns: a plugin that declares
//! many patterns makes only its own registration dearer. It must not call listeners.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::Listener;
use super::Subscription;
use super::stats::ListenerStats;

pub(super) struct Entry {
    pub name: String,
    pub subscriptions: Vec<Subscription>,
    pub order: Option<i64>,
    pub seq: u64,
    pub listener: Arc<dyn Listener>,
    pub stats: Arc<ListenerStats>,
}

impl Entry {
    fn sort_key(&self) -> (i64, u64) {
        (self.order.unwrap_or(i64::MAX), self.seq)
    }
}

/// An immutable snapshot of the listeners, in dispatch order. Replaced whole on every change,
/// so publishes read it without locks and calls in flight finish on the snapshot they started.
#[derive(Default)]
pub(super) struct Registry {
    pub entries: Vec<Arc<Entry>>,
    pub next_seq: u64,
    index: Index,
}

/// Positions in `entries`, by what they subscribe to.
#[derive(Default)]
struct Index {
    exact: HashMap<String, Vec<usize>>,
    prefixes: HashMap<String, Vec<usize>>,
    /// Every length a prefix subscription has, ascending.
    prefix_lengths: Vec<usize>,
    catch_all: Vec<usize>,
}

impl Index {
    fn build(entries: &[Arc<Entry>]) -> Index {
        let mut index = Index::default();
        for (position, entry) in entries.iter().enumerate() {
            for subscription in &entry.subscriptions {
                let list = match subscription {
                    Subscription::Exact(t) => index.exact.entry(t.clone()).or_default(),
                    Subscription::Prefix(p) => index.prefixes.entry(p.clone()).or_default(),
                    Subscription::All => &mut index.catch_all,
                };
                if list.last() != Some(&position) {
                    list.push(position);
                }
            }
        }
        index.prefix_lengths = index.prefixes.keys().map(String::len).collect();
        index.prefix_lengths.sort_unstable();
        index.prefix_lengths.dedup();
        index
    }
}

impl Registry {
    /// A snapshot of `entries`, sorted into dispatch order and indexed.
    pub(super) fn with(&self, mut entries: Vec<Arc<Entry>>, next_seq: u64) -> Registry {
        entries.sort_by_key(|e| e.sort_key());
        let index = Index::build(&entries);
        Registry { entries, next_seq: next_seq.max(self.next_seq), index }
    }

    /// Listeners for `event_type`: specific ones (exact or prefix) first, then catch-alls, each
    /// in dispatch order, every listener once. Without prefix subscriptions or catch-alls (or
    /// with only those) this is a lookup and no allocation.
    pub(super) fn matching(&self, event_type: &str) -> impl Iterator<Item = &Arc<Entry>> {
        let index = &self.index;
        let exact: &[usize] = index.exact.get(event_type).map_or(&[], Vec::as_slice);
        let positions: Cow<'_, [usize]> = if index.prefix_lengths.is_empty() && index.catch_all.is_empty() {
            Cow::Borrowed(exact)
        } else if index.prefix_lengths.is_empty() && exact.is_empty() {
            Cow::Borrowed(&index.catch_all)
        } else {
            let mut specific = exact.to_vec();
            for &len in index.prefix_lengths.iter().take_while(|&&len| len <= event_type.len()) {
                if let Some(prefix) = event_type.get(..len)
                    && let Some(positions) = index.prefixes.get(prefix)
                {
                    specific.extend_from_slice(positions);
                }
            }
            specific.sort_unstable();
            specific.dedup();
            let specific_len = specific.len();
            for &p in &index.catch_all {
                if specific[..specific_len].binary_search(&p).is_err() {
                    specific.push(p);
                }
            }
            Cow::Owned(specific)
        };
        (0..positions.len()).map(move |i| &self.entries[positions[i]])
    }

    pub(super) fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ListenerError;

    fn entry(name: &str, patterns: &[&str], seq: u64) -> Arc<Entry> {
        let listener = |_: &crate::event::Event| -> Result<Vec<crate::action::Action>, ListenerError> { Ok(vec![]) };
        Arc::new(Entry {
            name: name.into(),
            subscriptions: Subscription::parse_all(patterns).unwrap(),
            order: None,
            seq,
            listener: Arc::new(listener),
            stats: Arc::default(),
        })
    }

    fn names(registry: &Registry, event_type: &str) -> Vec<String> {
        registry.matching(event_type).map(|e| e.name.clone()).collect()
    }

    #[test]
    fn specific_then_catch_all_each_once_in_order() {
        let entries = vec![
            entry("all", &["*"], 0),
            entry("task", &["task:*", "task:created", "*"], 1),
            entry("exact", &["task:created"], 2),
            entry("issue", &["issue:*"], 3),
            entry("t", &["t*"], 4),
        ];
        let registry = Registry::default().with(entries, 5);
        assert_eq!(names(&registry, "task:created"), ["task", "exact", "t", "all"]);
        assert_eq!(names(&registry, "issue:closed"), ["issue", "all", "task"]);
        assert_eq!(names(&registry, "x"), ["all", "task"]);
        assert_eq!(names(&registry, "t"), ["t", "all", "task"]);
    }
}
