//! Per-listener counters and a latency histogram, updated on every call without locks.
//!
//! This module owns `ListenerStats`, its serializable `StatsSnapshot`, and `Latency`, the
//! power-of-two histogram of call times (policy decisions use it too). It must stay cheap
//! (a few relaxed atomic adds per call) because it sits on the event path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::outcome::{Outcome, OutcomeKind};

/// Buckets of the latency histogram: bucket `i` counts calls that took under `2^i` µs.
const BUCKETS: usize = 32;

/// Counters for one listener. Survive a plugin's replacement by a new version.
#[derive(Debug, Default)]
pub struct ListenerStats {
    calls: AtomicU64,
    /// Calls by outcome, indexed by `OutcomeKind`.
    outcomes: [AtomicU64; OutcomeKind::ALL.len()],
    /// Follow-ups this listener returned that were not dispatched (a publish limit).
    follow_ups_not_dispatched: AtomicU64,
    actions: AtomicU64,
    latency: Latency,
    /// The last call that did not succeed: taken only on failures, so the happy path stays
    /// lock-free.
    last_failure: parking_lot::Mutex<Option<LastFailure>>,
}

/// Call times in power-of-two microsecond buckets, added up without locks: the one histogram
/// of listener calls and policy decisions alike.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    total_us: AtomicU64,
}

impl Latency {
    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.total_us.fetch_add(us, Relaxed);
        self.buckets[bucket(us)].fetch_add(1, Relaxed);
    }

    /// Every recorded time added up.
    pub fn total_us(&self) -> u64 {
        self.total_us.load(Relaxed)
    }

    /// Calls per bucket, bucket `i` holding those under `2^i` µs.
    fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// `(upper bound in µs, calls)` for every non-empty bucket.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        non_empty(&self.counts())
    }
}

fn non_empty(counts: &[u64]) -> Vec<(u64, u64)> {
    counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (upper_bound(i), *n)).collect()
}

/// A failed call's outcome, message (as the report gives it: cut and escaped) and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFailure {
    pub outcome: &'static str,
    pub message: String,
    pub at_ms: u64,
}

/// A point-in-time copy of `ListenerStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub calls: u64,
    /// Calls by outcome (`ok`, `error`, `trap`, ...), every kind present.
    #[serde(flatten)]
    pub outcomes: BTreeMap<&'static str, u64>,
    pub follow_ups_not_dispatched: u64,
    pub actions: u64,
    pub latency: LatencySnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
}

/// Latency in microseconds; quantiles are bucket upper bounds (within a factor of two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LatencySnapshot {
    pub mean_us: u64,
    /// Every call's time added up.
    pub total_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_bucket_us: u64,
    /// `(upper bound in µs, calls)` for every non-empty bucket.
    pub buckets: Vec<(u64, u64)>,
}

impl ListenerStats {
    pub fn record(&self, outcome: &Outcome, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        if let Outcome::Ok { actions } = outcome {
            self.actions.fetch_add(*actions as u64, Relaxed);
        }
        self.outcomes[outcome.kind_of() as usize].fetch_add(1, Relaxed);
        if let Some(message) = outcome.message() {
            let failure = LastFailure { outcome: outcome.kind_of().as_str(), message: message.to_string(), at_ms: crate::event::now_ms() };
            *self.last_failure.lock() = Some(failure);
        }
        self.latency.record(took);
    }

    /// A follow-up this listener returned was not dispatched.
    pub fn record_follow_up_not_dispatched(&self) {
        self.follow_ups_not_dispatched.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let calls = self.calls.load(Relaxed);
        let counts = self.latency.counts();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return upper_bound(i);
                }
            }
            0
        };
        StatsSnapshot {
            calls,
            outcomes: OutcomeKind::ALL.iter().map(|k| (k.as_str(), self.outcomes[*k as usize].load(Relaxed))).collect(),
            follow_ups_not_dispatched: self.follow_ups_not_dispatched.load(Relaxed),
            actions: self.actions.load(Relaxed),
            last_failure: self.last_failure.lock().clone(),
            latency: LatencySnapshot {
                mean_us: self.latency.total_us().checked_div(calls).unwrap_or(0),
                total_us: self.latency.total_us(),
                p50_us: if total == 0 { 0 } else { quantile(0.50) },
                p99_us: if total == 0 { 0 } else { quantile(0.99) },
                max_bucket_us: counts.iter().rposition(|n| *n > 0).map_or(0, upper_bound),
                buckets: non_empty(&counts),
            },
        }
    }
}

fn bucket(us: u64) -> usize {
    // 0 µs -> bucket 0 (< 1 µs); 1 µs -> bucket 1 (< 2 µs); 2..3 -> 2 (< 4 µs) ...
    ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> u64 {
    1u64 << bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 3);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn snapshot_counts_outcomes_and_quantiles() {
        let stats = ListenerStats::default();
        for _ in 0..99 {
            stats.record(&Outcome::Ok { actions: 2 }, Duration::from_micros(3));
        }
        stats.record(&Outcome::Timeout { message: "t".into() }, Duration::from_millis(100));
        let s = stats.snapshot();
        assert_eq!((s.calls, s.outcomes["ok"], s.outcomes["timeout"], s.actions), (100, 99, 1, 198));
        assert_eq!(s.latency.p50_us, 4);
        assert_eq!(s.latency.p99_us, 4);
        assert_eq!(s.latency.max_bucket_us, 131072);
        assert_eq!(s.latency.mean_us, (99 * 3 + 100_000) / 100);
        let failure = s.last_failure.expect("the timeout");
        assert_eq!((failure.outcome, failure.message.as_str()), ("timeout", "t"));
    }
}
