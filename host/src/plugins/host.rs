//! The host side of the contract: the `bindgen!`s, the store context, and the imports.
//!
//! This module owns the bindings generated from `wit/` (contract 0.2.0; `legacy` binds 0.1.0
//! beside it, and `lent` the event resource), `PluginState` (the data of every
//! `Store`: the WASI half from `wasi`, the memory limiter from `memory`, the plugin's config and
//! kv), and the implementations of the `log`, `config` and `kv` imports. Imports never trap: a
//! refusal (a kv limit) is the inner `Result` the guest sees. What a guest hands the host in one
//! crossing (an import's arguments, the value `handle` returns) is bounded by the store's
//! hostcall fuel before it is copied. It must not decide policy about calls; `plugin` does that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::Result as WasmResult;
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::{WasiCtxView, WasiView};

use super::clock::Ticks;
use super::lent::Lent;
use super::kv::{KvLimits, KvStore};
use super::manifest::Manifest;
use super::memory::{MemoryBudget, MemoryLimiter};
use super::text;
use super::trips::{Limit, LimitTrips};
use super::wasi::{self, Grants, MAX_LINE, WasiState};
use crate::event::Event;

/// The generated bindings. `Listener` here is the component's world, not `bus::Listener`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "listener",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: { "busbar:plugin/types.event": crate::plugins::lent::LentEvent },
    });
}

/// The bindings of the `policy` world, for its `policy-types` and the `authenticate` and
/// `authorize` exports; the interfaces it shares with `listener` are those above.
pub(crate) mod policy_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "busbar:plugin/types": crate::plugins::host::bindings::busbar::plugin::types,
            "busbar:plugin/log": crate::plugins::host::bindings::busbar::plugin::log,
            "busbar:plugin/config": crate::plugins::host::bindings::busbar::plugin::config,
            "busbar:plugin/kv": crate::plugins::host::bindings::busbar::plugin::kv,
        },
    });
}

use bindings::busbar::plugin::{config, kv, log, types};

/// The contract version plugins are built against today.
pub const CONTRACT: &str = "busbar:plugin@0.2.0";

/// The first contract version, which copied the whole event into the guest before each call:
/// components built against it still load (`legacy`).
pub(crate) const CONTRACT_0_1: &str = "busbar:plugin@0.1.0";

/// Every contract version this host loads, newest first.
pub const CONTRACTS: [&str; 2] = [CONTRACT, CONTRACT_0_1];

/// Host bytes one lifted `action` takes besides its strings: what hostcall fuel charges per
/// list element, so the fuel a call gets covers `max-actions` of them.
const ACTION_HOST_BYTES: usize = std::mem::size_of::<types::Action>();

/// What every instance of one plugin version shares.
pub(crate) struct PluginContext {
    pub name: Arc<str>,
    pub config: BTreeMap<String, String>,
    pub kv: Arc<KvStore>,
    pub kv_limits: KvLimits,
    pub env: Vec<(String, String)>,
    pub read_dirs: Vec<(String, std::path::PathBuf)>,
    pub log_bytes_per_call: usize,
    pub max_host_resources: usize,
    pub memory_bytes: usize,
    pub timeout: Duration,
    /// Most bytes the guest may hand the host in one crossing (wasmtime's hostcall fuel): the
    /// largest output or kv value it may return, plus the actions' own size.
    pub crossing_bytes: usize,
    pub budget: Arc<MemoryBudget>,
    pub ticks: Ticks,
    /// `timeout` in epoch ticks.
    pub deadline_ticks: u64,
    pub trips: Arc<LimitTrips>,
}

impl PluginContext {
    pub(super) fn new(manifest: &Manifest, kv: Arc<KvStore>, budget: Arc<MemoryBudget>, ticks: Ticks) -> PluginContext {
        let limits = &manifest.limits;
        PluginContext {
            name: Arc::from(manifest.name.as_str()),
            config: manifest.config.clone(),
            kv,
            kv_limits: KvLimits { max_bytes: limits.kv_max_bytes, value_max_bytes: limits.kv_value_max_bytes },
            env: manifest.capabilities.env.clone().into_iter().collect(),
            read_dirs: manifest.capabilities.read_dirs.clone().into_iter().collect(),
            log_bytes_per_call: limits.log_bytes_per_call,
            max_host_resources: limits.max_host_resources,
            memory_bytes: limits.memory_bytes,
            timeout: limits.timeout,
            crossing_bytes: limits.max_output_bytes.max(limits.kv_value_max_bytes)
                + limits.max_actions.max(limits.max_subscriptions) * ACTION_HOST_BYTES
                + MAX_LINE,
            budget,
            ticks,
            deadline_ticks: Ticks::in_duration(limits.timeout),
            trips: Arc::default(),
        }
    }
}

/// The data inside each plugin `Store`.
pub(crate) struct PluginState {
    pub wasi: WasiState,
    pub limiter: MemoryLimiter,
    ctx: Arc<PluginContext>,
    /// Log bytes left in the current call, shared with the stdout/stderr pipes.
    log_budget: Arc<AtomicUsize>,
    /// The event a 0.2.0 `handle` call is lent.
    pub lent: Lent,
}

impl PluginState {
    /// A fresh state: WASI with nothing granted beyond the manifest's capabilities.
    pub(super) fn new(ctx: Arc<PluginContext>) -> Result<PluginState, String> {
        let log_budget = Arc::new(AtomicUsize::new(ctx.log_bytes_per_call));
        Ok(PluginState {
            wasi: WasiState::new(
                &Grants {
                    plugin: &ctx.name,
                    env: &ctx.env,
                    read_dirs: &ctx.read_dirs,
                    max_resources: ctx.max_host_resources,
                    ticks: &ctx.ticks,
                    trips: &ctx.trips,
                },
                log_budget.clone(),
            )?,
            limiter: MemoryLimiter::new(ctx.memory_bytes, ctx.budget.clone()),
            ctx,
            log_budget,
            lent: Lent::default(),
        })
    }

    /// Resets per-call budgets and starts the deadline, before a call or an instantiation.
    pub(super) fn begin_call(&mut self) {
        self.limiter.refused = None;
        self.log_budget.store(self.ctx.log_bytes_per_call, Ordering::Relaxed);
        self.wasi.start(self.ctx.ticks.now() + self.ctx.deadline_ticks);
    }

    /// Flushes any unterminated output line after a call.
    pub(super) fn end_call(&mut self) {
        self.wasi.finish();
    }
}

/// Runs `call` with `event` lent to the store's guest (the `event` resource's methods read it),
/// and takes it back when `call` returns or unwinds. `call` hands the guest `lent::borrowed()`.
pub(super) fn lend<R>(store: &mut Store<PluginState>, event: &Event, call: impl FnOnce(&mut Store<PluginState>) -> R) -> R {
    struct TakeBack<'s>(&'s mut Store<PluginState>);
    impl Drop for TakeBack<'_> {
        fn drop(&mut self) {
            self.0.data_mut().lent.clear();
        }
    }
    // SAFETY: `TakeBack` clears the slot before this function's borrow of `event` ends.
    unsafe { store.data_mut().lent.set(event) };
    let store = TakeBack(store);
    call(&mut *store.0)
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.view()
    }
}

/// Builds the linker every plugin is instantiated against: WASI p2 (blocking calls bounded by
/// the deadline) plus the busbar imports of every contract version.
pub(crate) fn linker(engine: &wasmtime::Engine) -> WasmResult<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker, |s: &mut PluginState| &mut s.wasi)?;
    log::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    config::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    kv::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    super::lent::add_to_linker(&mut linker, |s: &PluginState| &s.lent)?;
    policy_bindings::busbar::plugin::policy_types::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    Ok(linker)
}

impl policy_bindings::busbar::plugin::policy_types::Host for PluginState {}

impl log::Host for PluginState {
    /// One log record per line of `message`, escaped, within the per-call log budget.
    fn write(&mut self, level: types::Level, message: String) {
        let plugin = &*self.ctx.name;
        for line in message.split('\n').filter(|line| !line.is_empty()) {
            let granted = wasi::take_log_budget(&self.log_budget, line.len().min(MAX_LINE), &self.ctx.trips);
            if granted == 0 {
                return;
            }
            let line = text::sanitize(line, granted);
            match level {
                types::Level::Trace => tracing::trace!(plugin, "{line}"),
                types::Level::Debug => tracing::debug!(plugin, "{line}"),
                types::Level::Info => tracing::info!(plugin, "{line}"),
                types::Level::Warn => tracing::warn!(plugin, "{line}"),
                types::Level::Error => tracing::error!(plugin, "{line}"),
            }
        }
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }

    fn keys(&mut self) -> Vec<String> {
        self.ctx.config.keys().cloned().collect()
    }
}

/// The kv imports wait for the store no longer than what is left of the call's deadline.
impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.ctx.kv.get(&key, self.wasi.remaining())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let set = self.ctx.kv.set(&key, value, self.ctx.kv_limits, self.wasi.remaining());
        if set.is_err() {
            self.ctx.trips.count(Limit::Kv);
        }
        set
    }

    fn delete(&mut self, key: String) -> bool {
        self.ctx.kv.delete(&key, self.wasi.remaining())
    }
}
