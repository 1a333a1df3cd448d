//! The runtime's clock: how often the engine's epoch advances, and a count of the advances.
//!
//! Deadlines of guest code are epoch deadlines: the engine's epoch advances every `EPOCH_TICK`
//! and a store's call is interrupted when its deadline tick passes. Host calls cannot be
//! interrupted that way, so the deadline of a wait inside one is read from `Ticks`, the same
//! count kept where the host can read it (one relaxed load, no system clock on the call path).
//! This module owns both; the ticker thread in `runtime` advances them. It decides nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Granularity of deadlines: the engine's epoch advances once per tick.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks since the runtime started; shared by the ticker thread and every store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ticks(Arc<AtomicU64>);

impl Ticks {
    pub(super) fn now(&self) -> u64 {
        self.0.load(Relaxed)
    }

    pub(super) fn advance(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// Ticks in `duration`, rounded up, plus one for the tick already under way.
    pub(super) fn in_duration(duration: Duration) -> u64 {
        duration.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1
    }
}
