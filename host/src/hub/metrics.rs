//! Counters of the realtime hub, for `/health/realtime` and `/metrics`.
//!
//! This module owns `HubMetrics` (atomics, plus small maps keyed by event type or scope kind)
//! and its serializable snapshot. Updating a counter never blocks fan-out for long: keyed maps
//! take a short lock, plain counters none.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

use crate::action::ScopeKind;

#[derive(Debug, Default)]
pub struct HubMetrics {
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub active_connections: AtomicI64,
    pub evictions: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub inbound_too_large: AtomicU64,
    pub frames_broadcast: AtomicU64,
    events_by_type: Mutex<BTreeMap<String, u64>>,
    subscribes: Mutex<BTreeMap<ScopeKind, u64>>,
    unsubscribes: Mutex<BTreeMap<ScopeKind, u64>>,
    denials: Mutex<BTreeMap<ScopeKind, u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    pub recovered: AtomicU64,
    pub not_recovered: AtomicU64,
}

/// A point-in-time copy, in the shape `/health/realtime` returns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HubSnapshot {
    pub connects_total: u64,
    pub disconnects_total: u64,
    pub active_connections: i64,
    pub slow_evictions_total: u64,
    pub messages_sent_total: u64,
    pub messages_dropped_total: u64,
    pub inbound_too_large_total: u64,
    pub frames_broadcast_total: u64,
    pub events_sent_by_type: BTreeMap<String, u64>,
    pub subscribes_total: BTreeMap<ScopeKind, u64>,
    pub unsubscribes_total: BTreeMap<ScopeKind, u64>,
    pub subscribe_denied_total: BTreeMap<ScopeKind, u64>,
    pub auth_failures_total: BTreeMap<&'static str, u64>,
    pub active_scope_rooms: BTreeMap<ScopeKind, u64>,
    /// Resubscribes with `since` that got every missed frame, and those that did not.
    pub recoveries_total: BTreeMap<&'static str, u64>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock().entry(key).or_insert(0) += 1;
}

impl HubMetrics {
    pub fn event(&self, event_type: &str) {
        let mut map = self.events_by_type.lock();
        match map.get_mut(event_type) {
            Some(n) => *n += 1,
            None => {
                // Bounded: a flood of distinct types cannot grow this map without limit.
                if map.len() < 1024 {
                    map.insert(event_type.to_string(), 1);
                } else {
                    *map.entry("(other)".to_string()).or_insert(0) += 1;
                }
            }
        }
    }

    pub fn subscribe(&self, kind: ScopeKind) {
        bump(&self.subscribes, kind);
    }

    pub fn unsubscribe(&self, kind: ScopeKind) {
        bump(&self.unsubscribes, kind);
    }

    pub fn denial(&self, kind: ScopeKind) {
        bump(&self.denials, kind);
    }

    pub fn recovery(&self, recovered: bool) {
        let counter = if recovered { &self.recovered } else { &self.not_recovered };
        counter.fetch_add(1, Relaxed);
    }

    pub fn auth_failure(&self, code: &'static str) {
        bump(&self.auth_failures, code);
    }

    pub fn snapshot(&self, rooms: BTreeMap<ScopeKind, u64>) -> HubSnapshot {
        HubSnapshot {
            connects_total: self.connects.load(Relaxed),
            disconnects_total: self.disconnects.load(Relaxed),
            active_connections: self.active_connections.load(Relaxed),
            slow_evictions_total: self.evictions.load(Relaxed),
            messages_sent_total: self.messages_sent.load(Relaxed),
            messages_dropped_total: self.messages_dropped.load(Relaxed),
            inbound_too_large_total: self.inbound_too_large.load(Relaxed),
            frames_broadcast_total: self.frames_broadcast.load(Relaxed),
            events_sent_by_type: self.events_by_type.lock().clone(),
            subscribes_total: self.subscribes.lock().clone(),
            unsubscribes_total: self.unsubscribes.lock().clone(),
            subscribe_denied_total: self.denials.lock().clone(),
            auth_failures_total: self.auth_failures.lock().clone(),
            active_scope_rooms: rooms,
            recoveries_total: BTreeMap::from([
                ("recovered", self.recovered.load(Relaxed)),
                ("not_recovered", self.not_recovered.load(Relaxed)),
            ]),
        }
    }
}
