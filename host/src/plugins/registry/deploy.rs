//! Versions deployed through the API: how the registry writes them to the `Store` before it
//! changes what runs (`deploy`, `undeploy`; `rollback` lives with the registry), brings them
//! back at start (`restore`), and follows the changes other nodes make (`sync`).
//!
//! It must not load base versions (built in, or the plugin directory's files: `install`), and
//! never writes the store from `restore` or `sync`.

use std::sync::Arc;

use super::{InstallError, Installed, KvOnRemove, Registry, registration};
use crate::plugins::manifest::Manifest;
use crate::plugins::plugin::Plugin;
use crate::store::{Deployment, StoreError, Version};

/// The stored versions of a deployed plugin's running and previous version (`None`: the base
/// version).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) current: Option<Version>,
    pub(super) previous: Option<Version>,
}

impl Stored {
    pub(super) fn record(&self, name: &str) -> Deployment {
        Deployment { name: name.to_string(), current: self.current.clone(), previous: self.previous.clone() }
    }
}

impl Registry {
    /// A base version now runs where a deployment did: the directory took the name over.
    pub(super) fn forget_deployment(&self, name: &str) {
        let had = self.slots.lock().get_mut(name).and_then(|slot| slot.stored.take()).is_some();
        if had {
            tracing::warn!(plugin = %name, "a file of the plugin directory replaces the plugin deployed through the API");
            if let Err(e) = self.store.forget(name) {
                tracing::error!(plugin = %name, "cannot forget the deployment: {e}");
            }
        }
    }

    /// Puts back a record the store held before a change that then failed on the bus.
    pub(super) fn keep_stored(&self, record: Deployment) {
        if let Err(e) = self.store.save(&record, &[]) {
            tracing::error!(plugin = %record.name, "cannot restore the stored deployment: {e}");
        }
    }

    /// Deploys `bytes` as plugin `name` through the API: loaded and probed, then stored (with
    /// the version it replaces as the previous one), then activated. Refused for a name the
    /// plugin directory manages. A failure is recorded and counted; nothing else changes.
    pub fn deploy(&self, name: &str, bytes: &[u8], manifest: Option<Manifest>) -> Result<Installed, InstallError> {
        let refused = |error: InstallError| {
            self.record_failure(name, &error.to_string());
            Err(error)
        };
        if self.is_managed(name) {
            return refused(InstallError::Managed(name.to_string()));
        }
        let loaded = match self.prepare(name, bytes, manifest, true) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Ok(Installed::Unchanged),
            Err(error) => return refused(error.into()),
        };
        let _deploying = self.deploying.lock();
        let (running, before) = {
            let slots = self.slots.lock();
            let slot = slots.get(name);
            (slot.is_some_and(|s| s.current.is_some()), slot.and_then(|s| s.stored.clone()))
        };
        let version = Version { hash: loaded.plugin.hash().to_string(), manifest: loaded.plugin.manifest().to_toml() };
        let after = Stored { current: Some(version), previous: if running { before.clone().unwrap_or_default().current } else { None } };
        if let Err(e) = self.store.save(&after.record(name), &[bytes]) {
            return refused(e.into());
        }
        if loaded.reset_kv {
            self.runtime.kv().remove(name);
        }
        let mut slots = self.slots.lock();
        match self.activate_in(&mut slots, Arc::new(loaded.plugin)) {
            Ok(installed) => {
                if let Some(slot) = slots.get_mut(name) {
                    slot.stored = Some(after);
                }
                drop(slots);
                self.report();
                Ok(installed)
            }
            Err(error) => {
                drop(slots);
                match before {
                    Some(before) => self.keep_stored(before.record(name)),
                    None => self.forget_quietly(name),
                }
                refused(error)
            }
        }
    }

    /// Removes plugin `name` through the API, and stores that it is gone (so a built-in plugin
    /// stays removed after a restart). Refused for a name the plugin directory manages.
    pub fn undeploy(&self, name: &str, state: KvOnRemove) -> Result<bool, InstallError> {
        if self.is_managed(name) {
            return Err(InstallError::Managed(name.to_string()));
        }
        let _deploying = self.deploying.lock();
        if self.current(name).is_none() {
            return Ok(self.remove(name, state));
        }
        self.store.save(&Stored::default().record(name), &[])?;
        let removed = self.remove(name, state);
        self.report();
        Ok(removed)
    }

    /// Brings back every stored deployment, over the base versions (at start, before serving).
    /// A deployment that cannot be brought back (a corrupt component, a name the directory now
    /// manages) is recorded as the plugin's failure; the base version, if any, keeps serving.
    pub fn restore(&self) -> Result<(), StoreError> {
        for deployment in self.store.deployments()? {
            let name = deployment.name.clone();
            if self.is_managed(&name) {
                self.record_failure(&name, "a deployment stored for this name is shadowed by the plugin directory's file");
                continue;
            }
            if let Err(error) = self.restore_one(&deployment) {
                tracing::error!(plugin = %name, "cannot restore the stored deployment: {error}");
                self.record_failure(&name, &format!("cannot restore the stored deployment: {error}"));
            }
        }
        Ok(())
    }

    fn restore_one(&self, deployment: &Deployment) -> Result<(), String> {
        let name = &deployment.name;
        let stored = Stored { current: deployment.current.clone(), previous: deployment.previous.clone() };
        if stored == Stored::default() {
            self.remove(name, KvOnRemove::Keep);
            return Ok(());
        }
        for version in [&stored.previous, &stored.current].into_iter().flatten() {
            self.activate_stored(name, version)?;
        }
        // Rolled back to the base version: the deployed one is the previous.
        if stored.current.is_none() {
            self.swap(name)?;
        }
        if let Some(slot) = self.slots.lock().get_mut(name) {
            slot.stored = Some(stored);
        }
        Ok(())
    }

    /// Brings this node in line with what the store holds for `name` (or, with `None`, for every
    /// deployment): a change made on another node. Nothing is written to the store. What cannot
    /// be brought in line is recorded as the plugin's failure; the running version keeps serving.
    pub fn sync(&self, name: Option<&str>) {
        let deployments = match self.store.deployments() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("cannot read the deployments to follow them: {e}");
                return;
            }
        };
        for deployment in deployments.iter().filter(|d| name.is_none_or(|n| n == d.name)) {
            if self.is_managed(&deployment.name) {
                continue;
            }
            let want = Stored { current: deployment.current.clone(), previous: deployment.previous.clone() };
            // A deployment this node could not follow is not tried again until it changes.
            if self.slots.lock().get(&deployment.name).is_some_and(|slot| slot.refused.as_ref() == Some(&want)) {
                continue;
            }
            if let Err(error) = self.sync_one(deployment) {
                tracing::error!(plugin = %deployment.name, "cannot follow the stored deployment: {error}");
                self.record_failure(&deployment.name, &format!("cannot follow the stored deployment: {error}"));
                if let Some(slot) = self.slots.lock().get_mut(&deployment.name) {
                    slot.refused = Some(want);
                }
            }
        }
        self.report();
    }

    fn sync_one(&self, deployment: &Deployment) -> Result<(), String> {
        let _deploying = self.deploying.lock();
        let name = &deployment.name;
        let want = Stored { current: deployment.current.clone(), previous: deployment.previous.clone() };
        let (running, previous, stored) = {
            let slots = self.slots.lock();
            let slot = slots.get(name);
            (slot.and_then(|s| s.current.clone()), slot.and_then(|s| s.previous.clone()), slot.and_then(|s| s.stored.clone()))
        };
        if stored.as_ref() == Some(&want) {
            return Ok(());
        }
        if want == Stored::default() {
            if running.is_some() {
                self.remove(name, KvOnRemove::Keep);
            }
            return Ok(());
        }
        let is = |plugin: &Option<Arc<Plugin>>, version: &Version| {
            plugin.as_ref().is_some_and(|p| p.hash() == version.hash && p.manifest().to_toml() == version.manifest)
        };
        let matches = |plugin: &Option<Arc<Plugin>>, version: &Option<Version>| version.as_ref().is_none_or(|v| is(plugin, v));
        match &want.current {
            Some(version) if is(&running, version) && matches(&previous, &want.previous) => {}
            Some(version) if is(&previous, version) && matches(&running, &want.previous) => self.swap(name)?,
            // Anything else is rebuilt as a restart would: the previous version, then the current.
            Some(version) => {
                if let Some(earlier) = want.previous.as_ref().filter(|p| !is(&running, p)) {
                    self.activate_stored(name, earlier)?;
                }
                self.activate_stored(name, version)?;
            }
            // Back to the base version, which is the previous one here.
            None if stored.as_ref().is_some_and(|s| s.current.is_some()) => self.swap(name)?,
            None => {}
        }
        if let Some(slot) = self.slots.lock().get_mut(name) {
            slot.stored = Some(want);
        }
        Ok(())
    }

    /// Loads a stored version of `name` from the store and activates it (not stored again).
    fn activate_stored(&self, name: &str, version: &Version) -> Result<(), String> {
        let bytes = self.store.component(&version.hash).map_err(|e| e.to_string())?;
        let most = self.runtime.max_component_bytes();
        if bytes.len() as u64 > most {
            return Err(format!("the component is {} bytes, over this node's limit of {most} (`limits.max-upload-mib`)", bytes.len()));
        }
        let manifest = Manifest::parse(&version.manifest, name, &format!("stored manifest of `{name}`"), std::path::Path::new("/"))
            .map_err(|e| e.to_string())?;
        if let Some(loaded) = self.prepare(name, &bytes, Some(manifest), false).map_err(|e| e.to_string())? {
            self.activate(loaded.plugin).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Swaps the running and the previous version on the bus (a rollback, not stored).
    pub(super) fn swap(&self, name: &str) -> Result<(), String> {
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(name).ok_or("not running here")?;
        let previous = slot.previous.clone().ok_or("no previous version here")?;
        self.bus.replace(registration(name, &previous)).map_err(|e| e.to_string())?;
        slot.previous = slot.current.replace(previous);
        self.roles_changed(&slots);
        Ok(())
    }

    /// Whether the plugin directory manages `name`: its base version is running.
    pub(super) fn is_managed(&self, name: &str) -> bool {
        self.files && self.slots.lock().get(name).is_some_and(|slot| slot.current.is_some() && slot.stored.is_none())
    }

    fn forget_quietly(&self, name: &str) {
        if let Err(e) = self.store.forget(name) {
            tracing::error!(plugin = %name, "cannot forget the deployment: {e}");
        }
    }

}
