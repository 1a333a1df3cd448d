//! Memory: the process-wide budget every plugin draws from, and the per-store limiter.
//!
//! This module owns `MemoryBudget` (one per `Runtime`: the bytes all guest memories, tables and
//! lifted outputs may hold together) and `MemoryLimiter` (one per `Store`: the plugin's own cap,
//! and what this store holds of the budget, given back when the store is dropped). A growth
//! past either is refused, and the refusal is remembered so that the call's outcome says which
//! limit it hit instead of "trap". It must not decide anything else about calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use wasmtime::{ResourceLimiter, Result as WasmResult};

/// Host bytes one table element is charged (a function reference and its bookkeeping).
const TABLE_ELEMENT_BYTES: usize = 16;

/// Largest table a guest may grow.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The bytes every plugin together may hold: guest linear memories, tables, and outputs being
/// lifted into the host. Lock-free; shared by every store of one runtime.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget { limit, used: AtomicUsize::new(0), refusals: AtomicU64::new(0) }
    }

    /// Half of what this machine (or the cgroup the process runs in) has.
    pub fn default_limit() -> usize {
        machine_memory().map_or(4 << 30, |bytes| bytes / 2)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// How many growths and outputs were refused because the budget was spent.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Relaxed)
    }

    /// Takes `bytes` from the budget, or nothing if that would go over it.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let taken = self.used.fetch_update(Relaxed, Relaxed, |used| {
            used.checked_add(bytes).filter(|after| *after <= self.limit)
        });
        if taken.is_err() {
            self.refusals.fetch_add(1, Relaxed);
        }
        taken.is_ok()
    }

    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
    }

    /// `bytes` taken from the budget until the returned guard is dropped.
    pub fn reserve(self: &Arc<MemoryBudget>, bytes: usize) -> Option<Reservation> {
        self.try_reserve(bytes).then(|| Reservation { budget: self.clone(), bytes })
    }
}

/// Bytes held of a `MemoryBudget`, given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Which limit refused a growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The plugin's own cap (`limits.memory-mib`).
    PluginCap { desired: usize },
    /// The process-wide budget (`limits.plugin-memory-mib` in busbar.toml).
    Budget { desired: usize },
}

/// One store's limiter: the plugin's cap and its share of the process budget.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    budget: Arc<MemoryBudget>,
    /// Bytes this store holds of the budget.
    held: usize,
    /// What refused a growth during the current call.
    pub refused: Option<Refusal>,
}

impl MemoryLimiter {
    pub(super) fn new(max_bytes: usize, budget: Arc<MemoryBudget>) -> MemoryLimiter {
        MemoryLimiter { max_bytes, budget, held: 0, refused: None }
    }

    fn charge(&mut self, bytes: usize) -> bool {
        if self.budget.try_reserve(bytes) {
            self.held += bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> WasmResult<bool> {
        if desired > self.max_bytes || maximum.is_some_and(|max| desired > max) {
            self.refused = Some(Refusal::PluginCap { desired });
            return Err(wasmtime::format_err!("memory cap of {} bytes refused growth to {desired} bytes", self.max_bytes));
        }
        if !self.charge(desired.saturating_sub(current)) {
            self.refused = Some(Refusal::Budget { desired });
            return Err(wasmtime::format_err!(
                "the process-wide plugin memory budget of {} bytes is spent",
                self.budget.limit()
            ));
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> WasmResult<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let bytes = desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES);
        if !self.charge(bytes) {
            self.refused = Some(Refusal::Budget { desired: bytes });
            return Err(wasmtime::format_err!(
                "the process-wide plugin memory budget of {} bytes is spent",
                self.budget.limit()
            ));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A wasip2 component instantiates several core instances (its own, WASI adapters).
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Physical memory, or the memory cgroup's limit when that is lower.
fn machine_memory() -> Option<usize> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let physical = (pages > 0 && page_size > 0).then(|| pages as usize * page_size as usize);
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter_map(|text| text.trim().parse::<usize>().ok())
        .min();
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_past_its_limit_and_counts_refusals() {
        let budget = Arc::new(MemoryBudget::new(100));
        let a = budget.reserve(60).expect("fits");
        assert!(budget.reserve(50).is_none());
        assert_eq!(budget.refusals(), 1);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(100).is_some());
    }

    #[test]
    fn a_dropped_limiter_gives_its_share_back() {
        let budget = Arc::new(MemoryBudget::new(1 << 20));
        let mut limiter = MemoryLimiter::new(1 << 20, budget.clone());
        assert!(limiter.memory_growing(0, 64 << 10, None).unwrap());
        assert!(limiter.memory_growing(64 << 10, 128 << 10, None).unwrap());
        assert_eq!(budget.used(), 128 << 10);
        let mut other = MemoryLimiter::new(1 << 20, budget.clone());
        assert!(other.memory_growing(0, 1 << 20, None).is_err());
        assert_eq!(other.refused, Some(Refusal::Budget { desired: 1 << 20 }));
        drop(limiter);
        assert_eq!(budget.used(), 0);
        assert!(other.memory_growing(0, 1 << 20, None).unwrap());
    }

    #[test]
    fn the_plugin_cap_comes_first() {
        let budget = Arc::new(MemoryBudget::new(usize::MAX));
        let mut limiter = MemoryLimiter::new(1 << 20, budget);
        assert!(limiter.memory_growing(0, 2 << 20, None).is_err());
        assert_eq!(limiter.refused, Some(Refusal::PluginCap { desired: 2 << 20 }));
    }
}
