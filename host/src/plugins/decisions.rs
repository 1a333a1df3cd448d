//! Counters and latency of one plugin version's policy decisions, updated without locks.
//!
//! This module owns `DecisionStats` (per role: decisions by outcome, and the bus's `Latency`
//! histogram of the calls that reached the plugin) and its serializable snapshot, which `/v1/plugins` and
//! `/metrics` show. It must stay a few relaxed atomic adds per decision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::roles::Role;
use crate::bus::Latency;

/// What became of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    /// The authenticator identified the connection.
    Identified,
    /// The authenticator asked for the `auth` frame.
    NeedAuthFrame,
    /// The authenticator refused the connection.
    Refused,
    Allow,
    Deny,
    /// The authorizer could not decide (its own error).
    Undecided,
    /// The plugin trapped, timed out, ran out of memory, was quarantined or answered nonsense.
    Failed,
    /// A cached allow or deny answered without calling the plugin.
    CachedAllow,
    CachedDeny,
}

named_variants!(DecisionOutcome {
    Identified = "identified",
    NeedAuthFrame = "need_auth_frame",
    Refused = "refused",
    Allow = "allow",
    Deny = "deny",
    Undecided = "undecided",
    Failed = "failed",
    CachedAllow = "cached_allow",
    CachedDeny = "cached_deny",
});

#[derive(Debug, Default)]
struct RoleStats {
    outcomes: [AtomicU64; DecisionOutcome::ALL.len()],
    latency: Latency,
}

/// One plugin version's decisions, per role.
#[derive(Debug, Default)]
pub struct DecisionStats {
    roles: [RoleStats; 2],
}

/// A point-in-time copy of one role's decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoleDecisions {
    /// Decisions by outcome (only those that happened).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Calls that reached the plugin, and their latency: `(upper bound in µs, calls)` for every
    /// non-empty bucket.
    pub calls: u64,
    pub total_us: u64,
    pub latency_buckets: Vec<(u64, u64)>,
}

impl DecisionStats {
    /// Counts a decision; `took` is the plugin call's time (none for a cached answer).
    pub fn record(&self, role: Role, outcome: DecisionOutcome, took: Option<Duration>) {
        let stats = &self.roles[role as usize];
        stats.outcomes[outcome as usize].fetch_add(1, Relaxed);
        if let Some(took) = took {
            stats.latency.record(took);
        }
    }

    /// The roles that decided anything, with their counts.
    pub fn snapshot(&self) -> BTreeMap<Role, RoleDecisions> {
        let mut out = BTreeMap::new();
        for role in Role::ALL {
            let stats = &self.roles[role as usize];
            let outcomes: BTreeMap<&'static str, u64> = DecisionOutcome::ALL
                .iter()
                .map(|o| (o.as_str(), stats.outcomes[*o as usize].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if outcomes.is_empty() {
                continue;
            }
            let latency_buckets = stats.latency.buckets();
            let calls = latency_buckets.iter().map(|(_, n)| n).sum();
            out.insert(role, RoleDecisions { outcomes, calls, total_us: stats.latency.total_us(), latency_buckets });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_per_role_with_the_latency_of_calls_only() {
        let stats = DecisionStats::default();
        stats.record(Role::Authorizer, DecisionOutcome::Allow, Some(Duration::from_micros(3)));
        stats.record(Role::Authorizer, DecisionOutcome::CachedAllow, None);
        stats.record(Role::Authorizer, DecisionOutcome::Failed, Some(Duration::from_micros(100)));
        let snapshot = stats.snapshot();
        assert!(!snapshot.contains_key(&Role::Authenticator));
        let authorizer = &snapshot[&Role::Authorizer];
        assert_eq!(authorizer.outcomes, BTreeMap::from([("allow", 1), ("cached_allow", 1), ("failed", 1)]));
        assert_eq!(authorizer.calls, 2);
        assert_eq!(authorizer.total_us, 103);
        // 3 µs is under 4 µs; 100 µs under 128 µs.
        assert_eq!(authorizer.latency_buckets, vec![(4, 1), (128, 1)]);
    }
}
