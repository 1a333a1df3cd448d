//! A plugin version's health: its recent failures, and the quarantine they lead to.
//!
//! This module owns `Health`, updated lock-free after every call. A plugin is quarantined when
//! `failures-to-quarantine` calls in a row failed, or when at least `failure-rate-percent` of
//! its last `failure-window` calls failed (a plugin that times out four calls in five never
//! fails many in a row, but burns its deadline on most events). A quarantine lasts
//! `quarantine-secs`, doubling on each repeat; the first call after it is a probe whose success
//! clears everything and whose failure quarantines again. Only sandbox failures count (trap,
//! timeout, out of memory, invalid output), never an error the plugin chose to return. It must
//! not call the guest.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::manifest::Limits;
use crate::bus::ListenerError;
use crate::event;

/// Failures and quarantine state of one plugin version.
#[derive(Default)]
pub(super) struct Health {
    consecutive_failures: AtomicU32,
    /// The last 64 calls, newest in bit 0: 1 for a failure.
    history: AtomicU64,
    /// Calls recorded in `history` since it was last cleared (saturates at 64).
    recorded: AtomicU32,
    /// Milliseconds since the epoch until which the plugin is quarantined; 0 when it is not.
    quarantined_until_ms: AtomicU64,
    /// How many times it has been quarantined in a row (doubles the cool-off).
    quarantines: AtomicU32,
    total_quarantines: AtomicU64,
    /// Quarantines that the failure rate triggered (not a run of consecutive failures).
    rate_quarantines: AtomicU64,
}

/// Why a plugin was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Consecutive,
    Rate,
    FailedProbe,
}

impl Health {
    /// `Quarantined` while the cool-off lasts; afterwards the call goes ahead as a probe.
    pub(super) fn check(&self) -> Result<(), ListenerError> {
        let until = self.quarantined_until_ms.load(Relaxed);
        let now = event::now_ms();
        if until != 0 && now < until {
            return Err(ListenerError::Quarantined(format!(
                "{} of the last calls failed; retrying in {} ms",
                self.recent_failures(64),
                until - now
            )));
        }
        Ok(())
    }

    /// Milliseconds since the epoch until which the plugin is quarantined, if it is.
    pub(super) fn quarantined_until_ms(&self) -> Option<u64> {
        let until = self.quarantined_until_ms.load(Relaxed);
        (until > event::now_ms()).then_some(until)
    }

    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub(super) fn total_quarantines(&self) -> u64 {
        self.total_quarantines.load(Relaxed)
    }

    pub(super) fn rate_quarantines(&self) -> u64 {
        self.rate_quarantines.load(Relaxed)
    }

    pub(super) fn record_success(&self, plugin: &str) {
        if self.quarantined_until_ms.load(Relaxed) != 0 {
            self.quarantined_until_ms.store(0, Relaxed);
            self.quarantines.store(0, Relaxed);
            self.history.store(0, Relaxed);
            self.recorded.store(0, Relaxed);
            tracing::info!(plugin, "plugin recovered from quarantine");
        } else {
            self.push(false);
        }
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    pub(super) fn record_failure(&self, plugin: &str, limits: &Limits) {
        let in_a_row = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        self.push(true);
        let window = limits.failure_window.min(64);
        let in_window = self.recent_failures(window);
        let trigger = if self.quarantined_until_ms.load(Relaxed) != 0 {
            Some(Trigger::FailedProbe)
        } else if in_a_row >= limits.failures_to_quarantine {
            Some(Trigger::Consecutive)
        } else if self.recorded.load(Relaxed) >= window
            && u64::from(in_window) * 100 >= u64::from(limits.failure_rate_percent) * u64::from(window)
        {
            Some(Trigger::Rate)
        } else {
            None
        };
        let Some(trigger) = trigger else { return };
        let repeats = self.quarantines.fetch_add(1, Relaxed).min(5);
        let cool_off = limits.quarantine * (1u32 << repeats);
        self.quarantined_until_ms.store(event::now_ms() + cool_off.as_millis() as u64, Relaxed);
        self.total_quarantines.fetch_add(1, Relaxed);
        if trigger == Trigger::Rate {
            self.rate_quarantines.fetch_add(1, Relaxed);
        }
        tracing::warn!(
            plugin,
            consecutive_failures = in_a_row,
            failures_in_window = in_window,
            window,
            trigger = ?trigger,
            cool_off_ms = cool_off.as_millis() as u64,
            "plugin quarantined"
        );
    }

    fn push(&self, failed: bool) {
        let _ = self.history.fetch_update(Relaxed, Relaxed, |h| Some((h << 1) | u64::from(failed)));
        let _ = self.recorded.fetch_update(Relaxed, Relaxed, |n| Some((n + 1).min(64)));
    }

    /// Failures among the last `window` calls.
    fn recent_failures(&self, window: u32) -> u32 {
        let mask = if window >= 64 { u64::MAX } else { (1u64 << window) - 1 };
        (self.history.load(Relaxed) & mask).count_ones()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits { failures_to_quarantine: 5, failure_window: 10, failure_rate_percent: 50, quarantine: Duration::from_secs(30), ..Limits::default() }
    }

    #[test]
    fn four_failures_in_five_quarantine_by_rate() {
        let health = Health::default();
        let limits = limits();
        for call in 0..10 {
            if call % 5 == 4 {
                health.record_success("p");
            } else {
                health.record_failure("p", &limits);
            }
            assert!(health.check().is_ok(), "call {call}: never 5 in a row, and the window is not full");
        }
        health.record_failure("p", &limits);
        assert!(health.check().is_err(), "8 of the last 10 failed");
        assert_eq!(health.rate_quarantines(), 1);
    }

    #[test]
    fn occasional_failures_do_not_quarantine() {
        let health = Health::default();
        let limits = limits();
        for call in 0..100 {
            if call % 3 == 0 {
                health.record_failure("p", &limits);
            } else {
                health.record_success("p");
            }
        }
        assert!(health.check().is_ok());
        assert_eq!(health.total_quarantines(), 0);
    }

    #[test]
    fn a_run_of_failures_quarantines_before_the_window_fills() {
        let health = Health::default();
        let limits = limits();
        for _ in 0..5 {
            health.record_failure("p", &limits);
        }
        assert!(health.check().is_err());
        assert_eq!(health.rate_quarantines(), 0);
    }
}
