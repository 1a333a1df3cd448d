//! The set of installed plugins, as operators see and change it.
//!
//! This module owns `Registry`: plugin name -> the running version, or why it failed to load.
//! Installing compiles and probes the new component first (off the bus) and only then registers
//! it, or swaps it in place of the running version at the same position; a bad component leaves
//! the running version serving and is recorded as the plugin's last failure. The HTTP API and
//! the directory loader both go through here.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::{LoadError, Manifest, Plugin, PluginInfo, PluginStatus, Runtime};
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
    failure: Option<Failure>,
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
}

/// The outcome of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Installed {
    Created,
    Replaced,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

pub struct Registry {
    runtime: Arc<Runtime>,
    bus: Arc<Bus>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>, bus: Arc<Bus>) -> Registry {
        Registry { runtime, bus, slots: Mutex::new(BTreeMap::new()) }
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
        let slot = slots.entry(name).or_default();
        let installed = if slot.current.is_some() {
            self.bus.replace(registration)?;
            Installed::Replaced
        } else {
            self.bus.register(registration)?;
            Installed::Created
        };
        slot.current = Some(plugin);
        slot.failure = None;
        Ok(installed)
    }

    /// Loads `bytes` as plugin `name` and activates it. Blocking: compiling can take seconds,
    /// so async callers run this on a blocking thread. Without a manifest, a running plugin's
    /// manifest is kept, else defaults apply.
    pub fn install(&self, name: &str, bytes: &[u8], manifest: Option<Manifest>) -> Result<Installed, InstallError> {
        let manifest = manifest.unwrap_or_else(|| {
            self.current(name).map(|p| p.manifest().clone()).unwrap_or_else(|| Manifest::named(name))
        });
        match self.runtime.load(bytes, manifest) {
            Ok(plugin) => Ok(self.activate(plugin)?),
            Err(error) => {
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
