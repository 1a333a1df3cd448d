//! The set of installed plugins, as operators see and change it.
//!
//! This module owns `Registry`: plugin name -> the running version, the previous one (for
//! rollback), and the last failed load. Installing compiles and probes the new component first
//! (off the bus) and only then registers it, or swaps it in place of the running version at the
//! same position, atomically: calls in flight finish on the old version, later events see the new
//! one. A bad component leaves the running version serving and is recorded as the plugin's last
//! failure. The HTTP API, the directory watcher and `busbar dev` all go through here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

use super::{KvStore, LoadError, Manifest, Plugin, PluginInfo, PluginStatus, Runtime};
use crate::bus::{Bus, BusError, ListenerInfo, Registration};
use crate::event;

/// A failed load, kept for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub error: String,
    pub at_ms: u64,
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Plugin>>,
    previous: Option<Arc<Plugin>>,
    failure: Option<Failure>,
}

/// The version a plugin would roll back to.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub hash: String,
    pub loaded_at_ms: u64,
}

/// Reload counters, for `/health/realtime` and `/metrics`.
#[derive(Debug, Default, Serialize)]
pub struct ReloadStats {
    pub installs_total: AtomicU64,
    pub replacements_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub rollbacks_total: AtomicU64,
    pub unchanged_total: AtomicU64,
}

/// What `GET /v1/plugins` shows for one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginView {
    pub name: String,
    /// `active`, `quarantined` or `failed` (never loaded successfully).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginInfo>,
    /// Position, subscriptions and call counters on the bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerInfo>,
    /// The last failed load, even while an older version keeps serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// The version `POST /v1/plugins/{name}/rollback` would restore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<VersionView>,
}

/// The outcome of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Installed {
    Created,
    Replaced,
    /// Same component and manifest as the running version: nothing was done.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("no plugin named `{0}`")]
    Unknown(String),
    #[error("plugin `{0}` has no previous version")]
    NoPrevious(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

pub struct Registry {
    runtime: Arc<Runtime>,
    bus: Arc<Bus>,
    slots: Mutex<BTreeMap<String, Slot>>,
    stats: ReloadStats,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>, bus: Arc<Bus>) -> Registry {
        Registry { runtime, bus, slots: Mutex::new(BTreeMap::new()), stats: ReloadStats::default() }
    }

    pub fn stats(&self) -> &ReloadStats {
        &self.stats
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Puts a loaded plugin on the bus: registered at its manifest's position, or swapped in
    /// for the running version of the same name (keeping that one's position).
    pub fn activate(&self, plugin: Plugin) -> Result<Installed, BusError> {
        let plugin = Arc::new(plugin);
        let name = plugin.name().to_string();
        let registration = Registration::new(name.clone(), plugin.subscriptions().to_vec(), plugin.clone())
            .with_order(plugin.manifest().order);
        let mut slots = self.slots.lock();
        let slot = slots.entry(name.clone()).or_default();
        let installed = if slot.current.is_some() {
            self.bus.replace(registration)?;
            slot.previous = slot.current.take();
            self.stats.replacements_total.fetch_add(1, Relaxed);
            Installed::Replaced
        } else {
            self.bus.register(registration)?;
            self.stats.installs_total.fetch_add(1, Relaxed);
            Installed::Created
        };
        tracing::info!(plugin = %name, hash = &plugin.hash()[..12], ?installed, "plugin activated");
        slot.current = Some(plugin);
        slot.failure = None;
        Ok(installed)
    }

    /// Swaps the running version and the previous one, at the same position.
    pub fn rollback(&self, name: &str) -> Result<Arc<Plugin>, RollbackError> {
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(name).ok_or_else(|| RollbackError::Unknown(name.to_string()))?;
        let previous = slot.previous.clone().ok_or_else(|| RollbackError::NoPrevious(name.to_string()))?;
        let registration = Registration::new(name.to_string(), previous.subscriptions().to_vec(), previous.clone())
            .with_order(previous.manifest().order);
        self.bus.replace(registration)?;
        slot.previous = slot.current.replace(previous.clone());
        self.stats.rollbacks_total.fetch_add(1, Relaxed);
        tracing::info!(plugin = %name, hash = &previous.hash()[..12], "plugin rolled back");
        Ok(previous)
    }

    /// Loads `bytes` as plugin `name` and activates it. Blocking: compiling can take seconds,
    /// so async callers run this on a blocking thread. Without a manifest, a running plugin's
    /// manifest is kept, else defaults apply.
    pub fn install(&self, name: &str, bytes: &[u8], manifest: Option<Manifest>) -> Result<Installed, InstallError> {
        let current = self.current(name);
        let manifest = manifest.unwrap_or_else(|| {
            current.as_ref().map(|p| p.manifest().clone()).unwrap_or_else(|| Manifest::named(name))
        });
        if let Some(running) = &current
            && running.hash() == super::content_hash(bytes)
            && *running.manifest() == manifest
        {
            // What was offered is what runs: any earlier failed attempt is moot.
            if let Some(slot) = self.slots.lock().get_mut(name) {
                slot.failure = None;
            }
            self.stats.unchanged_total.fetch_add(1, Relaxed);
            return Ok(Installed::Unchanged);
        }
        // A reload keeps the plugin's kv state unless its manifest asks for a fresh store.
        let fresh_kv = current.is_some() && manifest.reset_kv_on_reload;
        let kv = if fresh_kv { Arc::new(KvStore::default()) } else { self.runtime.kv().store(name) };
        match self.runtime.load_with_kv(bytes, manifest, kv.clone()) {
            Ok(plugin) => {
                let installed = self.activate(plugin)?;
                if fresh_kv {
                    self.runtime.kv().replace(name, kv);
                }
                Ok(installed)
            }
            Err(error) => {
                self.stats.failures_total.fetch_add(1, Relaxed);
                self.record_failure(name, &error.to_string());
                Err(error.into())
            }
        }
    }

    /// Records a failed load of `name`; a running version is left alone.
    pub fn record_failure(&self, name: &str, error: &str) {
        let failure = Failure { error: error.to_string(), at_ms: event::now_ms() };
        self.slots.lock().entry(name.to_string()).or_default().failure = Some(failure);
    }

    /// Unregisters and forgets a plugin; returns whether it existed.
    pub fn remove(&self, name: &str) -> bool {
        let existed = self.slots.lock().remove(name).is_some();
        self.bus.unregister(name);
        if existed {
            tracing::info!(plugin = %name, "plugin removed");
        }
        existed
    }

    pub fn current(&self, name: &str) -> Option<Arc<Plugin>> {
        self.slots.lock().get(name).and_then(|s| s.current.clone())
    }

    pub fn list(&self) -> Vec<PluginView> {
        let listeners: BTreeMap<String, ListenerInfo> =
            self.bus.listeners().into_iter().map(|l| (l.name.clone(), l)).collect();
        let slots = self.slots.lock();
        let mut views: Vec<PluginView> = slots
            .iter()
            .map(|(name, slot)| {
                let plugin = slot.current.as_ref().map(|p| p.info());
                let status = match &plugin {
                    None => "failed",
                    Some(info) if matches!(info.status, PluginStatus::Quarantined { .. }) => "quarantined",
                    Some(_) => "active",
                };
                PluginView {
                    name: name.clone(),
                    status,
                    plugin,
                    listener: listeners.get(name).cloned(),
                    last_failure: slot.failure.clone(),
                    previous: slot
                        .previous
                        .as_ref()
                        .map(|p| VersionView { hash: p.hash().to_string(), loaded_at_ms: p.info().loaded_at_ms }),
                }
            })
            .collect();
        views.sort_by_key(|v| (v.listener.as_ref().map_or(usize::MAX, |l| l.position), v.name.clone()));
        views
    }

    pub fn get(&self, name: &str) -> Option<PluginView> {
        self.list().into_iter().find(|v| v.name == name)
    }
}
