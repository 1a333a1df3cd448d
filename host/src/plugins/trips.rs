//! Which limits a plugin version ran into, and how often: the counters behind
//! `busbar_plugin_limit_trips_total` and `limit_trips` in `GET /v1/plugins`.
//!
//! This module owns `Limit` (every per-plugin limit that can trip, by its metric name) and
//! `LimitTrips` (one lock-free counter per limit). Whoever enforces a limit counts it here; this
//! module decides nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A per-plugin limit, named as in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.timeout-ms`, reached in guest code.
    Deadline,
    /// `limits.timeout-ms`, reached while the guest waited in a host call (a sleep, a poll).
    HostCallDeadline,
    /// `limits.memory-mib`.
    MemoryCap,
    /// The process-wide `limits.plugin-memory-mib` of busbar.toml.
    MemoryBudget,
    /// What a call returned was refused: `limits.max-actions`, `limits.max-output-kib`,
    /// `limits.max-json-depth`, or more bytes in one crossing than those allow.
    Output,
    /// `limits.max-error-bytes`: an error text was cut.
    ErrorText,
    /// `limits.log-kib-per-call`: log output was dropped.
    LogBytes,
    /// `limits.kv-max-kib` or `limits.kv-value-max-kib`: a kv write was refused.
    Kv,
    /// `capabilities.grants`: the output policy refused a call's output.
    Policy,
}

impl Limit {
    pub const ALL: [Limit; 9] = [
        Limit::Deadline,
        Limit::HostCallDeadline,
        Limit::MemoryCap,
        Limit::MemoryBudget,
        Limit::Output,
        Limit::ErrorText,
        Limit::LogBytes,
        Limit::Kv,
        Limit::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline",
            Limit::HostCallDeadline => "host_call_deadline",
            Limit::MemoryCap => "memory_cap",
            Limit::MemoryBudget => "memory_budget",
            Limit::Output => "output",
            Limit::ErrorText => "error_text",
            Limit::LogBytes => "log_bytes",
            Limit::Kv => "kv",
            Limit::Policy => "policy",
        }
    }
}

/// One counter per `Limit`.
#[derive(Debug, Default)]
pub(super) struct LimitTrips {
    counts: [AtomicU64; Limit::ALL.len()],
}

impl LimitTrips {
    pub(super) fn count(&self, limit: Limit) {
        self.counts[limit as usize].fetch_add(1, Relaxed);
    }

    pub(super) fn get(&self, limit: Limit) -> u64 {
        self.counts[limit as usize].load(Relaxed)
    }

    /// Every limit that tripped at least once, by name.
    pub(super) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        Limit::ALL.iter().map(|l| (l.as_str(), self.get(*l))).filter(|(_, n)| *n > 0).collect()
    }
}
