//! A loaded plugin version: its warm instances, its calls, its health.
//!
//! This module owns `Plugin`, which implements `bus::Listener` for one version of one
//! component. Each call takes a warm instance from the plugin's pool (or instantiates one from
//! the `InstancePre`), starts the deadline (epoch ticks for guest code, a clock for host calls),
//! reserves room in the process memory budget for what the call may return, calls `handle`, and
//! has `output` check what came back. An instance that trapped, timed out or ran out of memory
//! is dropped, never re-entered; the next call gets a fresh one. `health` decides quarantine:
//! calls during it return `Quarantined` without entering the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Engine, Store, Trap};

use super::decisions::{DecisionStats, RoleDecisions};
use super::health::Health;
use super::host::{PluginContext, PluginState, bindings};
use super::manifest::Manifest;
use super::memory::{Refusal, Reservation};
use super::error::LoadError;
use super::output;
use super::policy;
use super::roles::Role;
use super::text;
use super::trips::Limit;
use crate::action::Action;
use crate::bus::{Listener, ListenerError, Subscription};
use crate::event::{self, Event};

use bindings::busbar::plugin::types as wit;

mod decide;
mod exports;

pub(super) use exports::{Exports, ListenerIndices};
use exports::ListenerExports;

/// One instance, ready to be called.
struct Warm {
    store: Store<PluginState>,
    instance: Instance,
    /// The `listener` exports, when the component has them.
    listener: Option<ListenerExports>,
}

/// A loaded, linked and probed plugin version.
pub struct Plugin {
    manifest: Manifest,
    hash: String,
    subscriptions: Vec<Subscription>,
    loaded_at_ms: u64,
    engine: Engine,
    pre: InstancePre<PluginState>,
    exports: Exports,
    ctx: Arc<PluginContext>,
    idle: Mutex<Vec<Warm>>,
    max_idle: usize,
    health: Health,
    instantiations: AtomicU64,
    from_cache: bool,
    /// What the component says it was written in (its producers sections), if anything.
    language: Option<String>,
    decisions: DecisionStats,
}

/// Whether a plugin is being called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PluginStatus {
    Active,
    Quarantined { until_ms: u64, consecutive_failures: u32 },
}

/// What the runtime says about one plugin version.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub hash: String,
    pub loaded_at_ms: u64,
    pub order: Option<i64>,
    pub subscriptions: Vec<Subscription>,
    pub status: PluginStatus,
    pub instantiations: u64,
    pub idle_instances: usize,
    pub quarantines: u64,
    /// Quarantines the failure rate triggered, not a run of consecutive failures.
    pub rate_quarantines: u64,
    /// Whether the compiled component came from the on-disk cache.
    pub from_cache: bool,
    /// What the component says it was written in, when it says (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub kv_bytes: usize,
    pub kv_entries: usize,
    /// How often each limit tripped (only those that did).
    pub limit_trips: BTreeMap<&'static str, u64>,
    pub limits: super::manifest::Limits,
    /// The policy roles it serves, and what it decided in each.
    pub roles: BTreeSet<Role>,
    pub decisions: BTreeMap<Role, RoleDecisions>,
}

impl Plugin {
    /// Probes the component (instantiation and `subscriptions()`) and keeps that instance warm.
    pub(super) fn new(
        engine: Engine,
        pre: InstancePre<PluginState>,
        exports: Exports,
        manifest: Manifest,
        hash: String,
        ctx: Arc<PluginContext>,
    ) -> Result<Plugin, LoadError> {
        for &role in &manifest.policy.roles {
            if exports.of(role).is_none() {
                return Err(LoadError::RoleExport { role, export: role.export() });
            }
        }
        if exports.listener.is_none() && manifest.policy.roles.is_empty() {
            return Err(LoadError::MissingExport("handle"));
        }
        let max_idle = std::thread::available_parallelism().map_or(4, |n| n.get()).max(4);
        let mut plugin = Plugin {
            hash,
            subscriptions: Vec::new(),
            loaded_at_ms: event::now_ms(),
            engine,
            pre,
            exports,
            ctx,
            idle: Mutex::new(Vec::new()),
            max_idle,
            health: Health::default(),
            instantiations: AtomicU64::new(0),
            from_cache: false,
            language: None,
            decisions: DecisionStats::default(),
            manifest,
        };
        let mut warm = plugin.instantiate().map_err(|(e, _)| LoadError::Startup(e.to_string()))?;
        plugin.check_policy_types(&mut warm)?;
        let declared = match &warm.listener {
            Some(listener) => {
                warm.store.data_mut().begin_call();
                warm.store.set_epoch_deadline(plugin.ctx.deadline_ticks);
                let declared = listener.subscriptions(&mut warm.store);
                warm.store.data_mut().end_call();
                declared.map_err(|e| LoadError::Startup(plugin.classify(e, warm.store.data()).0.to_string()))?
            }
            // A policy plugin that is not a listener hears no events.
            None => Vec::new(),
        };
        let limit = plugin.manifest.limits.max_subscriptions;
        if plugin.manifest.subscriptions.is_none() && declared.len() > limit {
            return Err(LoadError::Subscriptions(format!(
                "declares {} patterns; `limits.max-subscriptions` is {limit}",
                declared.len()
            )));
        }
        let patterns = match &plugin.exports.listener {
            Some(_) => plugin.manifest.subscriptions.clone().unwrap_or(declared),
            None => Vec::new(),
        };
        // A component that decides policy may hear no events; a plain listener must hear some.
        let decides = plugin.exports.authenticate.is_some() || plugin.exports.authorize.is_some();
        if !(decides && patterns.is_empty()) {
            plugin.subscriptions = Subscription::parse_all(&patterns)
                .map_err(|e| LoadError::Subscriptions(text::sanitize(&e.to_string(), 1024)))?;
        }
        plugin.idle.get_mut().push(warm);
        Ok(plugin)
    }

    pub(super) fn set_from_cache(&mut self, from_cache: bool) {
        self.from_cache = from_cache;
    }

    pub(super) fn set_language(&mut self, language: Option<String>) {
        self.language = language;
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// What this version decided as authenticator and authorizer.
    pub fn decisions(&self) -> &DecisionStats {
        &self.decisions
    }

    /// The policy roles this version serves (its manifest's `[policy] roles`).
    pub fn roles(&self) -> &BTreeSet<Role> {
        &self.manifest.policy.roles
    }

    pub fn status(&self) -> PluginStatus {
        match self.health.quarantined_until_ms() {
            Some(until_ms) => {
                PluginStatus::Quarantined { until_ms, consecutive_failures: self.health.consecutive_failures() }
            }
            None => PluginStatus::Active,
        }
    }

    pub fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.manifest.name.clone(),
            hash: self.hash.clone(),
            loaded_at_ms: self.loaded_at_ms,
            order: self.manifest.order,
            subscriptions: self.subscriptions.clone(),
            status: self.status(),
            instantiations: self.instantiations.load(Relaxed),
            idle_instances: self.idle.lock().len(),
            quarantines: self.health.total_quarantines(),
            rate_quarantines: self.health.rate_quarantines(),
            from_cache: self.from_cache,
            language: self.language.clone(),
            kv_bytes: self.ctx.kv.bytes(),
            kv_entries: self.ctx.kv.len(),
            limit_trips: self.ctx.trips.snapshot(),
            limits: self.manifest.limits.clone(),
            roles: self.roles().clone(),
            decisions: self.decisions.snapshot(),
        }
    }

    /// A fresh instance from the `InstancePre`, under the same deadline, memory cap and
    /// budget as calls. A failure says whether the plugin is to blame for it.
    fn instantiate(&self) -> Result<Warm, (ListenerError, Blame)> {
        let mut state = PluginState::new(self.ctx.clone()).map_err(|e| (ListenerError::Trap(e), Blame::Plugin))?;
        state.begin_call();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.ctx.crossing_bytes);
        store.set_epoch_deadline(self.ctx.deadline_ticks);
        self.instantiations.fetch_add(1, Relaxed);
        let instantiated = self.pre.instantiate(&mut store).and_then(|instance| {
            let listener = self.exports.listener.as_ref().map(|l| l.load(&mut store, &instance)).transpose()?;
            Ok((instance, listener))
        });
        store.data_mut().end_call();
        match instantiated {
            Ok((instance, listener)) => Ok(Warm { store, instance, listener }),
            Err(e) => Err(self.classify(e, store.data())),
        }
    }

    /// Replaces one warm instance with a fresh one from the `InstancePre`, exactly as after a
    /// trap (the old one is dropped, a new one is instantiated and pooled).
    pub fn recycle_instance(&self) -> Result<(), ListenerError> {
        drop(self.idle.lock().pop());
        let fresh = self.instantiate().map_err(|(e, _)| e)?;
        self.release(fresh);
        Ok(())
    }

    /// Names a failed call or instantiation, counts the limit it hit, and says who is to blame.
    fn classify(&self, error: wasmtime::Error, state: &PluginState) -> (ListenerError, Blame) {
        let failure = classify(error, state, &self.ctx);
        let limit = match &failure {
            (ListenerError::OutOfMemory(_), Blame::Host) => Some(Limit::MemoryBudget),
            (ListenerError::OutOfMemory(_), Blame::Plugin) => Some(Limit::MemoryCap),
            (ListenerError::Timeout(_), _) if state.wasi.deadline().reached() => Some(Limit::HostCallDeadline),
            (ListenerError::Timeout(_), _) => Some(Limit::Deadline),
            (ListenerError::InvalidOutput(_), _) => Some(Limit::Output),
            _ => None,
        };
        if let Some(limit) = limit {
            self.ctx.trips.count(limit);
        }
        failure
    }

    fn record_failure(&self, blame: Blame) {
        if blame == Blame::Plugin {
            self.health.record_failure(self.name(), &self.manifest.limits);
        }
    }

    /// Whether a call may start: the plugin is not quarantined, and the process budget has room
    /// for what the call may hand back (its hostcall fuel, and as much again for the host values
    /// built from it). The caller holds the room until it has built what it needs.
    fn admit(&self) -> Result<Reservation, ListenerError> {
        self.health.check()?;
        self.ctx.budget.reserve(2 * self.ctx.crossing_bytes).ok_or_else(|| {
            self.ctx.trips.count(Limit::MemoryBudget);
            ListenerError::OutOfMemory(format!(
                "the process-wide plugin memory budget of {} bytes has no room for this call's output",
                self.ctx.budget.limit()
            ))
        })
    }

    /// Runs `run` on a warm instance under the call's deadline: the one path into the guest
    /// for events and policy decisions alike (after `admit`). A failure drops the instance and
    /// counts towards quarantine when the plugin is to blame.
    fn enter<R>(&self, run: impl FnOnce(&mut Warm) -> wasmtime::Result<R>) -> Result<R, ListenerError> {
        let taken = self.idle.lock().pop();
        let mut warm = match taken {
            Some(warm) => warm,
            None => self.instantiate().map_err(|(error, blame)| {
                self.record_failure(blame);
                error
            })?,
        };
        warm.store.data_mut().begin_call();
        warm.store.set_epoch_deadline(self.ctx.deadline_ticks);
        let result = run(&mut warm);
        warm.store.data_mut().end_call();
        match result {
            Ok(returned) => {
                self.release(warm);
                Ok(returned)
            }
            Err(error) => {
                let (failure, blame) = self.classify(error, warm.store.data());
                drop(warm); // a trapped instance is never entered again
                self.record_failure(blame);
                Err(failure)
            }
        }
    }

    fn call(&self, event: &Event) -> Result<Vec<Action>, ListenerError> {
        if self.exports.listener.is_none() {
            return Ok(Vec::new());
        }
        let _output_room = self.admit()?;
        let returned = self.enter(|warm| match &warm.listener {
            Some(listener) => listener.handle(&mut warm.store, event),
            None => Ok(Ok(Vec::new())),
        })?;
        match returned {
            Ok(actions) => match self.checked(actions, event) {
                Ok(actions) => {
                    self.health.record_success(self.name());
                    Ok(actions)
                }
                Err((e, limit)) => {
                    self.ctx.trips.count(limit);
                    self.record_failure(Blame::Plugin);
                    Err(e)
                }
            },
            // The guest is healthy and chose to fail: not a failure of the sandbox.
            Err(message) => {
                if message.len() > self.manifest.limits.max_error_bytes {
                    self.ctx.trips.count(Limit::ErrorText);
                }
                Err(output::error(&message, &self.manifest.limits))
            }
        }
    }

    /// What a call returned, as host actions within the caps and the output policy.
    fn checked(&self, actions: Vec<wit::Action>, event: &Event) -> Result<Vec<Action>, (ListenerError, Limit)> {
        let mut actions = output::actions(actions, &event.workspace_id, &self.manifest.limits).map_err(|e| (e, Limit::Output))?;
        policy::apply(&mut actions, event, self.name(), &self.manifest.capabilities.grants)
            .map_err(|problem| (ListenerError::PolicyDenied(problem), Limit::Policy))?;
        Ok(actions)
    }

    fn release(&self, warm: Warm) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(warm);
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.manifest.name).field("hash", &self.hash).finish_non_exhaustive()
    }
}

impl Listener for Plugin {
    fn handle(&self, event: &Event) -> Result<Vec<Action>, ListenerError> {
        self.call(event)
    }
}

/// Whether a failure is the plugin's own doing (it counts towards quarantine) or the host's
/// (the process memory budget was spent, by whoever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    Plugin,
    Host,
}

/// Names a failure: a memory refusal first (a guest that cannot allocate traps in many ways),
/// then a deadline (reached in a host call or by the epoch interrupt), then too much data handed
/// to the host, then any other trap.
fn classify(error: wasmtime::Error, state: &PluginState, ctx: &PluginContext) -> (ListenerError, Blame) {
    tracing::debug!(plugin = %ctx.name, "guest failure: {error:?}");
    match state.limiter.refused {
        Some(Refusal::PluginCap { desired }) => {
            let message = format!("tried to grow memory to {desired} bytes, the cap is {}", ctx.memory_bytes);
            return (ListenerError::OutOfMemory(message), Blame::Plugin);
        }
        Some(Refusal::Budget { desired }) => {
            let message = format!(
                "the process-wide plugin memory budget of {} bytes is spent (growing to {desired} bytes)",
                ctx.budget.limit()
            );
            return (ListenerError::OutOfMemory(message), Blame::Host);
        }
        None => {}
    }
    if state.wasi.deadline().reached() {
        return (ListenerError::Timeout(ctx.timeout), Blame::Plugin);
    }
    let failure = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ListenerError::Timeout(ctx.timeout),
        Some(trap) => ListenerError::Trap(trap.to_string().trim_start_matches("wasm trap: ").to_string()),
        None => {
            let cause = root_cause(&error);
            if cause.contains("fuel allocated for hostcalls has been exhausted") {
                ListenerError::InvalidOutput(format!(
                    "handed the host more than {} bytes in one call (`limits.max-output-kib`, `limits.max-actions`)",
                    ctx.crossing_bytes
                ))
            } else {
                ListenerError::Trap(text::sanitize(&cause, 1024))
            }
        }
    };
    (failure, Blame::Plugin)
}

fn root_cause(error: &wasmtime::Error) -> String {
    error.chain().last().map_or_else(|| error.to_string(), ToString::to_string)
}

/// Plugins are called from many threads at once.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Plugin>();
};
