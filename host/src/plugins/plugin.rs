//! A loaded plugin version: its warm instances, its calls, its health.
//!
//! This module owns `Plugin`, which implements `bus::Listener` for one version of one
//! component. Each call takes a warm instance from the plugin's pool (or instantiates one from
//! the `InstancePre`), sets the epoch deadline, calls `handle`, and checks what came back against
//! the manifest's caps. An instance that trapped, timed out or ran out of memory is dropped, never
//! re-entered; the next call gets a fresh one. After `failures-to-quarantine` consecutive such
//! failures the plugin is quarantined for a cool-off that doubles on each repeat, and calls
//! during it return `Quarantined` without entering the guest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;
use wasmtime::{Engine, Store, Trap};

use super::host::{PluginContext, PluginState, bindings};
use super::manifest::Manifest;
use super::runtime::{EPOCH_TICK, LoadError};
use crate::action::{Action, FollowUp, Message, Scope, ScopeKind, Target};
use crate::bus::{Listener, ListenerError, Subscription};
use crate::event::{self, Event, Json};

use bindings::busbar::plugin::types as wit;

/// One instance, ready to be called.
struct Warm {
    store: Store<PluginState>,
    bindings: bindings::Listener,
}

/// A loaded, linked and probed plugin version.
pub struct Plugin {
    manifest: Manifest,
    hash: String,
    subscriptions: Vec<Subscription>,
    loaded_at_ms: u64,
    engine: Engine,
    pre: bindings::ListenerPre<PluginState>,
    ctx: Arc<PluginContext>,
    deadline_ticks: u64,
    idle: Mutex<Vec<Warm>>,
    max_idle: usize,
    health: Health,
    instantiations: AtomicU64,
    from_cache: bool,
}

/// Consecutive failures and quarantine state, updated without locks.
#[derive(Default)]
struct Health {
    consecutive_failures: AtomicU32,
    /// Milliseconds since the epoch until which the plugin is quarantined; 0 when it is not.
    quarantined_until_ms: AtomicU64,
    /// How many times it has been quarantined in a row (doubles the cool-off).
    quarantines: AtomicU32,
    total_quarantines: AtomicU64,
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
    /// Whether the compiled component came from the on-disk cache.
    pub from_cache: bool,
    pub kv_bytes: usize,
    pub limits: super::manifest::Limits,
}

impl Plugin {
    /// Probes the component (instantiation and `subscriptions()`) and keeps that instance warm.
    pub(super) fn new(
        engine: Engine,
        pre: bindings::ListenerPre<PluginState>,
        manifest: Manifest,
        hash: String,
        ctx: Arc<PluginContext>,
    ) -> Result<Plugin, LoadError> {
        let deadline_ticks = manifest.limits.timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1;
        let max_idle = std::thread::available_parallelism().map_or(4, |n| n.get()).max(4);
        let mut plugin = Plugin {
            hash,
            subscriptions: Vec::new(),
            loaded_at_ms: event::now_ms(),
            engine,
            pre,
            ctx,
            deadline_ticks,
            idle: Mutex::new(Vec::new()),
            max_idle,
            health: Health::default(),
            instantiations: AtomicU64::new(0),
            from_cache: false,
            manifest,
        };
        let mut warm = plugin.instantiate().map_err(|e| LoadError::Startup(e.to_string()))?;
        warm.store.data_mut().begin_call();
        warm.store.set_epoch_deadline(plugin.deadline_ticks);
        let declared = warm.bindings.call_subscriptions(&mut warm.store);
        warm.store.data_mut().end_call();
        let declared = declared.map_err(|e| LoadError::Startup(plugin.classify(e, &warm).to_string()))?;
        let patterns = plugin.manifest.subscriptions.clone().unwrap_or(declared);
        plugin.subscriptions =
            Subscription::parse_all(&patterns).map_err(|e| LoadError::Subscriptions(e.to_string()))?;
        plugin.idle.get_mut().push(warm);
        Ok(plugin)
    }

    pub(super) fn set_from_cache(&mut self, from_cache: bool) {
        self.from_cache = from_cache;
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

    pub fn status(&self) -> PluginStatus {
        let until_ms = self.health.quarantined_until_ms.load(Relaxed);
        if until_ms > event::now_ms() {
            PluginStatus::Quarantined {
                until_ms,
                consecutive_failures: self.health.consecutive_failures.load(Relaxed),
            }
        } else {
            PluginStatus::Active
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
            quarantines: self.health.total_quarantines.load(Relaxed),
            from_cache: self.from_cache,
            kv_bytes: self.ctx.kv.bytes(),
            limits: self.manifest.limits.clone(),
        }
    }

    /// A fresh instance from the `InstancePre`, under the same deadline and memory cap as calls.
    fn instantiate(&self) -> Result<Warm, ListenerError> {
        let state = PluginState::new(self.ctx.clone(), self.manifest.limits.memory_bytes)
            .map_err(ListenerError::Trap)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        self.instantiations.fetch_add(1, Relaxed);
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Warm { store, bindings }),
            Err(e) => {
                store.data_mut().end_call();
                let refused = store.data().limiter.refused;
                Err(classify(e, refused, &self.manifest))
            }
        }
    }

    /// Replaces one warm instance with a fresh one from the `InstancePre`, exactly as after a
    /// trap (the old one is dropped, a new one is instantiated and pooled).
    pub fn recycle_instance(&self) -> Result<(), ListenerError> {
        drop(self.idle.lock().pop());
        let fresh = self.instantiate()?;
        self.release(fresh);
        Ok(())
    }

    fn classify(&self, error: wasmtime::Error, warm: &Warm) -> ListenerError {
        classify(error, warm.store.data().limiter.refused, &self.manifest)
    }

    fn quarantine_check(&self) -> Result<(), ListenerError> {
        let until = self.health.quarantined_until_ms.load(Relaxed);
        if until != 0 && event::now_ms() < until {
            return Err(ListenerError::Quarantined(format!(
                "{} consecutive failures; retrying in {} ms",
                self.health.consecutive_failures.load(Relaxed),
                until.saturating_sub(event::now_ms())
            )));
        }
        Ok(())
    }

    fn record_success(&self) {
        if self.health.consecutive_failures.load(Relaxed) != 0 {
            self.health.consecutive_failures.store(0, Relaxed);
        }
        if self.health.quarantined_until_ms.load(Relaxed) != 0 {
            self.health.quarantined_until_ms.store(0, Relaxed);
            self.health.quarantines.store(0, Relaxed);
            tracing::info!(plugin = self.name(), "plugin recovered from quarantine");
        }
    }

    fn record_failure(&self) {
        let failures = self.health.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let limits = &self.manifest.limits;
        let probing = self.health.quarantined_until_ms.load(Relaxed) != 0;
        if failures >= limits.failures_to_quarantine || probing {
            let repeats = self.health.quarantines.fetch_add(1, Relaxed).min(5);
            let cool_off = limits.quarantine * (1u32 << repeats);
            self.health.quarantined_until_ms.store(event::now_ms() + cool_off.as_millis() as u64, Relaxed);
            self.health.total_quarantines.fetch_add(1, Relaxed);
            tracing::warn!(
                plugin = self.name(),
                consecutive_failures = failures,
                cool_off_ms = cool_off.as_millis() as u64,
                "plugin quarantined"
            );
        }
    }

    fn call(&self, event: &Event) -> Result<Vec<Action>, ListenerError> {
        self.quarantine_check()?;
        let taken = self.idle.lock().pop();
        let mut warm = match taken {
            Some(warm) => warm,
            None => self.instantiate().inspect_err(|_| self.record_failure())?,
        };
        let arg = wit::Event {
            id: &event.id,
            event_type: &event.event_type,
            workspace_id: &event.workspace_id,
            actor_type: &event.actor_type,
            actor_id: &event.actor_id,
            payload: event.payload.as_str(),
            task_id: event.task_id.as_deref(),
            chat_session_id: event.chat_session_id.as_deref(),
            published_at_ms: event.published_at_ms,
        };
        warm.store.data_mut().begin_call();
        warm.store.set_epoch_deadline(self.deadline_ticks);
        let result = warm.bindings.call_handle(&mut warm.store, arg);
        warm.store.data_mut().end_call();
        match result {
            Ok(returned) => {
                self.release(warm);
                match returned {
                    Ok(actions) => match self.convert(actions) {
                        Ok(actions) => {
                            self.record_success();
                            Ok(actions)
                        }
                        Err(e) => {
                            self.record_failure();
                            Err(e)
                        }
                    },
                    // The guest is healthy and chose to fail: not a failure of the sandbox.
                    Err(message) => Err(ListenerError::Failed(message)),
                }
            }
            Err(error) => {
                let failure = self.classify(error, &warm);
                drop(warm); // a trapped instance is never entered again
                self.record_failure();
                Err(failure)
            }
        }
    }

    fn release(&self, warm: Warm) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(warm);
        }
    }

    /// Checks the guest's actions against the caps and turns them into host actions.
    fn convert(&self, actions: Vec<wit::Action>) -> Result<Vec<Action>, ListenerError> {
        let limits = &self.manifest.limits;
        if actions.len() > limits.max_actions {
            return Err(ListenerError::InvalidOutput(format!(
                "{} actions returned, the limit is {}",
                actions.len(),
                limits.max_actions
            )));
        }
        let mut out = Vec::with_capacity(actions.len());
        let mut bytes = 0usize;
        for (i, action) in actions.into_iter().enumerate() {
            let action = convert_action(action).map_err(|e| ListenerError::InvalidOutput(format!("action {i}: {e}")))?;
            bytes += action.size();
            if bytes > limits.max_output_bytes {
                return Err(ListenerError::InvalidOutput(format!(
                    "more than {} bytes returned",
                    limits.max_output_bytes
                )));
            }
            out.push(action);
        }
        Ok(out)
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

fn convert_action(action: wit::Action) -> Result<Action, String> {
    let json = |payload: String| Json::parse(payload).map_err(|e| format!("payload is not valid JSON: {e}"));
    Ok(match action {
        wit::Action::Send(m) => {
            event::check_type(&m.event_type).map_err(|e| e.to_string())?;
            let target = match m.target {
                wit::Target::Workspace(id) => Target::Workspace { id },
                wit::Target::User(u) => Target::User { id: u.user_id, exclude_workspace: u.exclude_workspace },
                wit::Target::Scope(s) => Target::Scope { scope: Scope::new(scope_kind(s.kind), s.id) },
                wit::Target::Everyone => Target::Everyone,
            };
            Action::Send(Message { target, event_type: m.event_type, payload: json(m.payload)? })
        }
        wit::Action::Publish(f) => {
            event::check_type(&f.event_type).map_err(|e| e.to_string())?;
            Action::Publish(FollowUp {
                event_type: f.event_type,
                workspace_id: f.workspace_id,
                actor_type: f.actor_type,
                actor_id: f.actor_id,
                payload: json(f.payload)?,
                task_id: f.task_id,
                chat_session_id: f.chat_session_id,
            })
        }
    })
}

fn scope_kind(kind: wit::ScopeKind) -> ScopeKind {
    match kind {
        wit::ScopeKind::Workspace => ScopeKind::Workspace,
        wit::ScopeKind::User => ScopeKind::User,
        wit::ScopeKind::Task => ScopeKind::Task,
        wit::ScopeKind::Chat => ScopeKind::Chat,
    }
}

/// Names a failed call: the memory cap's refusal first (a guest that cannot allocate traps in
/// many ways), then the epoch interrupt, then any other trap.
fn classify(error: wasmtime::Error, refused: Option<usize>, manifest: &Manifest) -> ListenerError {
    tracing::debug!(plugin = %manifest.name, "guest failure: {error:?}");
    if let Some(desired) = refused {
        return ListenerError::OutOfMemory(format!(
            "tried to grow memory to {desired} bytes, the cap is {}",
            manifest.limits.memory_bytes
        ));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ListenerError::Timeout(manifest.limits.timeout),
        Some(trap) => ListenerError::Trap(trap.to_string().trim_start_matches("wasm trap: ").to_string()),
        None => ListenerError::Trap(root_cause(&error)),
    }
}

fn root_cause(error: &wasmtime::Error) -> String {
    error.chain().last().map_or_else(|| error.to_string(), ToString::to_string)
}

/// Plugins are called from many threads at once.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Plugin>();
};
