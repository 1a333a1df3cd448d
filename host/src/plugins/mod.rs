//! WebAssembly listener plugins: loading components and calling them safely.
//!
//! This module owns everything that touches wasmtime. `Runtime` holds the one engine and loads
//! components (check, compile or load from cache, link, probe); `Plugin` is one loaded version
//! and implements `bus::Listener`; `Manifest` is the per-plugin `plugin.toml`; the `host`
//! submodule holds the bindings and the imports (`log`, `config`, `kv`, WASI with nothing
//! granted). Nothing else in busbar imports wasmtime.

mod cache;
mod clock;
mod access;
mod compile;
mod decisions;
mod engine;
mod error;
mod files;
mod health;
mod host;
mod kv;
mod legacy;
mod lent;
mod manifest;
mod memory;
mod output;
mod plugin;
mod policy;
mod producers;
mod roles;
mod registry;
mod runtime;
mod text;
mod transfer;
mod trips;
mod wasi;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cache::content_hash;
pub use compile::{CompileError, CompileLimits, WORKER_COMMAND, worker_main};
pub use files::FileError;
pub use host::{CONTRACT, CONTRACTS};
pub use kv::{KvStore, KvStores};
pub use manifest::{Capabilities, Limits, Manifest, ManifestError, check_plugin_name, read_manifest};
pub use memory::MemoryBudget;
pub use transfer::{TransferError, export, import};
pub use trips::Limit;
pub use plugin::{Plugin, PluginInfo, PluginStatus};
pub use policy::{Grant, PLUGIN_ACTOR};
pub use access::{PluginAccess, RoleHolders};
pub use decisions::{DecisionOutcome, DecisionStats, RoleDecisions};
pub use roles::{PolicyManifest, Role};
pub use registry::{Failure, InstallError, Installed, KvOnRemove, PluginView, Registry, ReloadStats, RollbackError, VersionView};
pub use error::LoadError;
pub use runtime::{ComponentInfo, Runtime, RuntimeConfig, RuntimeError};
pub use watch::{DEBOUNCE, DirWatcher, watch};

use crate::bus::{Bus, BusError, Registration};

/// A component file that failed to load, and why.
#[derive(Debug)]
pub struct LoadFailure {
    pub path: PathBuf,
    pub error: LoadError,
}

/// Loads every `*.wasm` in `dir` (each with its optional `name.toml` beside it), sorted by
/// manifest order, then name. A file that fails (a FIFO, a device, a symlink out of the
/// directory, a bad component) does not stop the others. Hidden files (a deployer's `.x.wasm`
/// before its rename) are skipped, as the watcher skips them.
pub fn load_dir(runtime: &Runtime, dir: &Path) -> std::io::Result<(Vec<Plugin>, Vec<LoadFailure>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && !path.is_dir())
        .filter(|path| !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    let mut plugins = Vec::new();
    let mut failures = Vec::new();
    for path in files {
        match runtime.load_file(&path) {
            Ok(plugin) => plugins.push(plugin),
            Err(error) => {
                tracing::error!(path = %path.display(), "plugin not loaded: {error}");
                failures.push(LoadFailure { path, error });
            }
        }
    }
    plugins.sort_by(|a, b| {
        let key = |p: &Plugin| (p.manifest().order.unwrap_or(i64::MAX), p.name().to_string());
        key(a).cmp(&key(b))
    });
    Ok((plugins, failures))
}

/// Registers a plugin on the bus under its name, subscriptions and manifest order.
pub fn register(bus: &Bus, plugin: Plugin) -> Result<(), BusError> {
    let order = plugin.manifest().order;
    let name = plugin.name().to_string();
    let subscriptions = plugin.subscriptions().to_vec();
    bus.register(Registration::new(name, subscriptions, Arc::new(plugin)).with_order(order))
}
