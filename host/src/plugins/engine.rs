//! The engine configuration: one function, used by the runtime and by the compile worker, so
//! what the worker compiles loads in the runtime.
//!
//! This module owns how every busbar `Engine` is set up (component model, epoch interruption,
//! optimisation, no backtraces, the pooling allocator's sizes). It must not create engines or
//! hold state.

use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

/// The engine configuration, the same for the runtime and the compile worker (so what the worker
/// compiles loads here).
pub(super) fn config(pool_slots: Option<u32>, perf_map: bool) -> Config {
    let mut config = Config::new();
    if perf_map {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // A trap is an outcome, not a debugging session: capturing and symbolizing a wasm backtrace
    // would make every contained panic several times dearer. The guest's own panic message
    // still reaches the log through its stderr.
    config.wasm_backtrace_max_frames(None);
    if let Some(slots) = pool_slots {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots);
        pool.total_core_instances(slots.saturating_mul(8));
        pool.total_memories(slots);
        pool.total_tables(slots.saturating_mul(4));
        pool.max_memory_size((super::manifest::MAX_MEMORY_MIB as usize) << 20);
        // JS and Python components have large function tables and instance state.
        pool.table_elements(200_000);
        pool.max_tables_per_module(4);
        pool.max_memories_per_module(2);
        pool.max_core_instance_size(16 << 20);
        pool.max_component_instance_size(16 << 20);
        // Keep the first pages of each memory resident between instantiations.
        pool.linear_memory_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

