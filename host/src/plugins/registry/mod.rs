//! The set of installed plugins, as operators see and change it.
//!
//! This module owns `Registry`: plugin name -> the running version, the previous one (for
//! rollback), and the last failed load. Installing compiles and probes the new component first
//! (off the bus) and only then registers it, or swaps it in place of the running version at the
//! same position, atomically: calls in flight finish on the old version, later events see the new
//! one. A bad component leaves the running version serving and is recorded as the plugin's last
//! failure; every recorded failure also counts in `ReloadStats::failures_total`. A new version
//! whose manifest renames the plugin is loaded before the old name is unregistered. The HTTP API,
//! the directory watcher and `busbar dev` all go through here.
//!
//! Versions come two ways. A plugin's *base* version is the one busbar loads by itself (built
//! in, or a file of the plugin directory, which then manages the name: `install`). A version
//! *deployed* through the API (`deploy`, `rollback`, `undeploy`) is written to the `Store`
//! before it runs, and `restore` brings every deployment back at start, over the base versions.
//! The directory wins: a deployment for a name it manages is refused (`Managed`), and a file that
//! appears for a deployed name replaces the deployment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;

use super::cache::content_hash;
use super::error::LoadError;
use super::manifest::Manifest;
use super::plugin::{Plugin, PluginInfo, PluginStatus};
use super::access::RoleHolders;
use super::runtime::Runtime;
use crate::bus::{Bus, BusError, ListenerInfo, Registration};
use crate::event;
use crate::store::{Store, StoreError};

/// A failed load, kept for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub error: String,
    pub at_ms: u64,
}

mod deploy;

use deploy::Stored;

#[derive(Default)]
struct Slot {
    current: Option<Arc<Plugin>>,
    previous: Option<Arc<Plugin>>,
    failure: Option<Failure>,
    /// What the store holds for a name deployed through the API; `None` for a base version.
    stored: Option<Stored>,
    /// A deployment this node failed to follow (not tried again until it changes).
    refused: Option<Stored>,
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
    /// With a shared store: what each live node runs, by node id: the version's hash, and the
    /// reason when a node could not load a newer version (it keeps serving the one shown).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, crate::store::NodeVersion>,
}

/// What happens to a removed plugin's kv store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOnRemove {
    /// Deleted with the plugin: the default.
    Delete,
    /// Kept for the next plugin installed under the same name (the operator asked for it).
    Keep,
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
    /// The plugin directory manages this name: change its files instead.
    #[error("plugin `{0}` is managed by the plugin directory: change or remove its file there")]
    Managed(String),
    /// The deployment could not be stored; nothing changed.
    #[error("cannot store the deployment: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("no plugin named `{0}`")]
    Unknown(String),
    #[error("plugin `{0}` has no previous version")]
    NoPrevious(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot store the rollback: {0}")]
    Store(#[from] StoreError),
}

/// A version loaded and probed but not yet on the bus.
struct Loaded {
    plugin: Plugin,
    /// Its manifest asks for an empty kv store on reload (`reset-kv-on-reload`).
    reset_kv: bool,
}

/// The bus registration of `plugin` under `name`, at its manifest's position.
fn registration(name: &str, plugin: &Arc<Plugin>) -> Registration {
    Registration::new(name.to_string(), plugin.subscriptions().to_vec(), plugin.clone()).with_order(plugin.manifest().order)
}

pub struct Registry {
    runtime: Arc<Runtime>,
    bus: Arc<Bus>,
    store: Arc<dyn Store>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Taken by `deploy`, `rollback` and `undeploy` (after compiling), so that what the store
    /// holds and what runs change in the same order.
    deploying: Mutex<()>,
    /// Base versions come from the plugin directory, which then manages their names.
    files: bool,
    /// This node's id, when it shares the store with others and reports what it runs.
    node: Option<String>,
    stats: ReloadStats,
    /// Which running plugin holds each policy role; rewritten whenever what runs changes.
    roles: Arc<RoleHolders>,
}

impl Registry {
    /// A registry whose base versions are built in; deployments are kept in the runtime's store.
    pub fn new(runtime: Arc<Runtime>, bus: Arc<Bus>) -> Registry {
        let store = runtime.store().clone();
        let (slots, deploying) = (Mutex::new(BTreeMap::new()), Mutex::new(()));
        Registry { runtime, bus, store, slots, deploying, files: false, node: None, stats: ReloadStats::default(), roles: Arc::default() }
    }

    /// A registry that keeps `roles` current (the hub's access adapters read the same holders).
    pub fn holding_roles(mut self, roles: Arc<RoleHolders>) -> Registry {
        self.roles = roles;
        self
    }

    /// Which running plugin holds each policy role.
    pub fn roles(&self) -> &Arc<RoleHolders> {
        &self.roles
    }

    /// Tells the role holders what runs now (after any change to the slots).
    fn roles_changed(&self, slots: &BTreeMap<String, Slot>) {
        self.roles.update(slots.values().filter_map(|slot| slot.current.as_ref()));
    }

    /// A registry that reports to a shared store, as node `id`, which version of each plugin it
    /// runs (see `list_cluster`).
    pub fn reporting_as(mut self, id: &str) -> Registry {
        self.node = Some(id.to_string());
        self
    }

    /// A registry whose base versions come from a plugin directory, which manages their names.
    pub fn managing_files(mut self) -> Registry {
        self.files = true;
        self
    }

    pub fn stats(&self) -> &ReloadStats {
        &self.stats
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Puts a loaded plugin on the bus: registered at its manifest's position, or swapped in
    /// for the running version of the same name (keeping that one's position).
    /// Refused when it claims a policy role another plugin holds.
    pub fn activate(&self, plugin: Plugin) -> Result<Installed, InstallError> {
        self.activate_in(&mut self.slots.lock(), Arc::new(plugin))
    }

    /// `activate` with the slots already locked.
    fn activate_in(&self, slots: &mut BTreeMap<String, Slot>, plugin: Arc<Plugin>) -> Result<Installed, InstallError> {
        if let Some((role, holder)) = self.roles.conflict(&plugin) {
            return Err(LoadError::RoleTaken { role, holder }.into());
        }
        let name = plugin.name().to_string();
        let slot = slots.entry(name.clone()).or_default();
        let installed = if slot.current.is_some() {
            self.bus.replace(registration(&name, &plugin))?;
            slot.previous = slot.current.take();
            self.stats.replacements_total.fetch_add(1, Relaxed);
            Installed::Replaced
        } else {
            self.bus.register(registration(&name, &plugin))?;
            self.stats.installs_total.fetch_add(1, Relaxed);
            Installed::Created
        };
        tracing::info!(plugin = %name, hash = &plugin.hash()[..12], ?installed, "plugin activated");
        slot.current = Some(plugin);
        slot.failure = None;
        self.roles_changed(slots);
        Ok(installed)
    }

    /// Takes plugin `old` off the bus and activates `plugin` (named differently) in its place,
    /// under one lock. If the bus refuses `plugin`, `old` is registered again and keeps serving.
    fn activate_renamed(&self, old: &str, plugin: Plugin) -> Result<Installed, InstallError> {
        let mut slots = self.slots.lock();
        let old_slot = slots.remove(old);
        self.bus.unregister(old);
        let error = match self.activate_in(&mut slots, Arc::new(plugin)) {
            Ok(installed) => return Ok(installed),
            Err(error) => error,
        };
        if let Some(slot) = old_slot {
            if let Some(running) = &slot.current
                && let Err(e) = self.bus.register(registration(old, running))
            {
                tracing::error!(plugin = %old, "cannot register the running version again: {e}");
            }
            slots.insert(old.to_string(), slot);
        }
        self.roles_changed(&slots);
        Err(error)
    }

    /// Swaps the running version and the previous one, at the same position. For a deployed
    /// plugin the swap is stored first.
    pub fn rollback(&self, name: &str) -> Result<Arc<Plugin>, RollbackError> {
        let _deploying = self.deploying.lock();
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(name).ok_or_else(|| RollbackError::Unknown(name.to_string()))?;
        let previous = slot.previous.clone().ok_or_else(|| RollbackError::NoPrevious(name.to_string()))?;
        let swapped = slot.stored.as_ref().map(|s| Stored { current: s.previous.clone(), previous: s.current.clone() });
        if let Some(swapped) = &swapped {
            self.store.save(&swapped.record(name), &[])?;
        }
        if let Err(e) = self.bus.replace(registration(name, &previous)) {
            if let Some(stored) = &slot.stored {
                self.keep_stored(stored.record(name));
            }
            return Err(e.into());
        }
        slot.previous = slot.current.replace(previous.clone());
        if swapped.is_some() {
            slot.stored = swapped;
        }
        self.roles_changed(&slots);
        self.stats.rollbacks_total.fetch_add(1, Relaxed);
        tracing::info!(plugin = %name, hash = &previous.hash()[..12], "plugin rolled back");
        drop(slots);
        self.report();
        Ok(previous)
    }

    /// Loads `bytes` as plugin `name` and activates it. Blocking: compiling can take seconds,
    /// so async callers run this on a blocking thread. Without a manifest, a running plugin's
    /// manifest is kept, else defaults apply. A failure (load or bus) is recorded and counted.
    pub fn install(&self, name: &str, bytes: &[u8], manifest: Option<Manifest>) -> Result<Installed, InstallError> {
        let loaded = match self.prepare(name, bytes, manifest, true) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Ok(Installed::Unchanged),
            Err(error) => {
                self.record_failure(name, &error.to_string());
                return Err(error.into());
            }
        };
        // Emptied just before the new version takes over: the old one may write meanwhile.
        if loaded.reset_kv {
            self.runtime.kv().remove(name);
        }
        match self.activate(loaded.plugin) {
            Ok(installed) => {
                if self.files {
                    self.forget_deployment(name);
                }
                Ok(installed)
            }
            Err(error) => {
                self.record_failure(name, &error.to_string());
                Err(error)
            }
        }
    }

    /// Installs a new version of plugin `old` whose manifest renames it. The new version is
    /// loaded and probed first; only then is `old` unregistered and the new name activated, so a
    /// version that fails to load leaves `old` serving, with the failure recorded on `old`. The
    /// new name starts with its own kv store.
    pub fn install_renamed(&self, old: &str, bytes: &[u8], manifest: Manifest) -> Result<Installed, InstallError> {
        let name = manifest.name.clone();
        let refused = |error: &dyn std::fmt::Display| {
            self.record_failure(old, &format!("new version named `{name}`: {error}"));
        };
        let loaded = match self.prepare(&name, bytes, Some(manifest), true) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => {
                // The new name already runs exactly this version: only the old name goes.
                self.remove(old, KvOnRemove::Delete);
                return Ok(Installed::Unchanged);
            }
            Err(error) => {
                refused(&error);
                return Err(error.into());
            }
        };
        match self.activate_renamed(old, loaded.plugin) {
            Ok(installed) => {
                self.runtime.kv().remove(old);
                tracing::info!(plugin = %name, previous_name = %old, "plugin renamed");
                Ok(installed)
            }
            Err(error) => {
                refused(&error);
                Err(error)
            }
        }
    }

    /// Loads and probes a version of `name`, off the bus. `None` when it is the running version
    /// already (same component, same manifest): that clears any earlier failure.
    /// `reset_allowed`: a restart brings versions back and must not empty a store that
    /// `reset-kv-on-reload` emptied already.
    fn prepare(&self, name: &str, bytes: &[u8], manifest: Option<Manifest>, reset_allowed: bool) -> Result<Option<Loaded>, LoadError> {
        let current = self.current(name);
        let manifest = manifest.unwrap_or_else(|| {
            current.as_ref().map(|p| p.manifest().clone()).unwrap_or_else(|| Manifest::named(name))
        });
        if let Some(running) = &current
            && running.hash() == content_hash(bytes)
            && *running.manifest() == manifest
        {
            self.record_unchanged(name);
            return Ok(None);
        }
        // A reload keeps the plugin's kv state unless its manifest asks for a fresh store.
        let reset_kv = reset_allowed && current.is_some() && manifest.reset_kv_on_reload;
        let plugin = self.runtime.load_with_kv(bytes, manifest, self.runtime.kv().store(name))?;
        // Refused before anything is stored: a second plugin never takes a role over.
        if let Some((role, holder)) = self.roles.conflict(&plugin) {
            return Err(LoadError::RoleTaken { role, holder });
        }
        Ok(Some(Loaded { plugin, reset_kv }))
    }

    /// What was offered is what runs: any earlier failed attempt is moot.
    fn record_unchanged(&self, name: &str) {
        if let Some(slot) = self.slots.lock().get_mut(name) {
            slot.failure = None;
        }
        self.stats.unchanged_total.fetch_add(1, Relaxed);
    }

    /// Records a failed load of `name` (watcher, start-up or upload): it becomes the plugin's
    /// `last_failure` and counts in `failures_total` (`result="failed"` in `/metrics`). A
    /// running version is left alone.
    pub fn record_failure(&self, name: &str, error: &str) {
        let failure = Failure { error: error.to_string(), at_ms: event::now_ms() };
        self.slots.lock().entry(name.to_string()).or_default().failure = Some(failure);
        self.stats.failures_total.fetch_add(1, Relaxed);
    }

    /// Unregisters and forgets a plugin, and deletes its kv store unless `state` says to keep
    /// it (so a different plugin installed later under the same name never reads it). Returns
    /// whether it existed.
    pub fn remove(&self, name: &str, state: KvOnRemove) -> bool {
        let existed = {
            let mut slots = self.slots.lock();
            let existed = slots.remove(name).is_some();
            self.roles_changed(&slots);
            existed
        };
        self.bus.unregister(name);
        if state == KvOnRemove::Delete {
            self.runtime.kv().remove(name);
        }
        if existed {
            tracing::info!(plugin = %name, kv = ?state, "plugin removed");
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
                    nodes: BTreeMap::new(),
                }
            })
            .collect();
        views.sort_by_key(|v| (v.listener.as_ref().map_or(usize::MAX, |l| l.position), v.name.clone()));
        views
    }

    /// `list`, with the version every live node runs (read from the shared store).
    pub fn list_cluster(&self) -> Vec<PluginView> {
        let mut views = self.list();
        match self.store.node_versions() {
            Ok(nodes) => {
                for view in &mut views {
                    view.nodes = nodes.iter().filter_map(|(node, versions)| Some((node.clone(), versions.get(&view.name)?.clone()))).collect();
                }
            }
            Err(e) => tracing::warn!("cannot read what the other nodes run: {e}"),
        }
        views
    }

    /// Reports to the shared store which version of each plugin this node runs (for 30 s; the
    /// store listener reports again every 10 s).
    pub(super) fn report(&self) {
        let Some(node) = &self.node else { return };
        let versions = self
            .slots
            .lock()
            .iter()
            .map(|(name, slot)| {
                let hash = slot.current.as_ref().map(|p| p.hash().to_string());
                (name.clone(), crate::store::NodeVersion { hash, failure: slot.failure.as_ref().map(|f| f.error.clone()) })
            })
            .collect();
        if let Err(e) = self.store.report_versions(node, &versions, std::time::Duration::from_secs(30)) {
            tracing::warn!("cannot report the versions this node runs: {e}");
        }
    }

    pub fn get(&self, name: &str) -> Option<PluginView> {
        self.list().into_iter().find(|v| v.name == name)
    }
}
