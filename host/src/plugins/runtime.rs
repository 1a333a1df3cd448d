//! The plugin runtime: one wasmtime `Engine` for every plugin, and the load path.
//!
//! This module owns `Runtime` (engine, linker, epoch ticker, compile cache, kv stores) and the
//! lifecycle phases up to a ready `Plugin`:
//! - *check*: the bytes are a component (not a core module, not garbage);
//! - *compile*: once per content hash (by `compile`, in a child process under memory and time
//!   limits when a worker executable is configured), or loaded from the on-disk cache;
//! - *link*: the component's imports are checked against WASI p2 and `busbar:plugin@0.1.0`,
//!   its exports against the `listener` world; the result is an `InstancePre`;
//! - *probe*: one instance is made and `subscriptions()` is called, so a component that traps at
//!   start-up is refused here, never at dispatch.
//!
//! Calls (instantiate per pool slot, call, replace after a trap) are in `plugin`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use wasmtime::Engine;
use wasmtime::component::InstancePre;

use super::cache::{CacheUse, CompileCache, content_hash};
use super::clock::{EPOCH_TICK, Ticks};
use super::compile::{CompileError, CompileLimits, Compiler};
use super::error::LoadError;
use super::engine;
use super::files::{self, FileError};
use super::host::{self, CONTRACT, CONTRACTS, PluginContext, PluginState};
use super::legacy;
use super::kv::{KvStore, KvStores};
use super::manifest::{Manifest, read_manifest};
use super::memory::MemoryBudget;

use super::plugin::{Exports, ListenerIndices, Plugin};
use crate::store::Store;


/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling allocator (faster instantiation, large virtual reservation).
    /// Falls back to on-demand allocation when the reservation is refused.
    pub pooling: bool,
    /// Instance slots in the pool: the most instances alive at once, all plugins together.
    pub instance_slots: u32,
    /// Write `/tmp/perf-<pid>.map` so that `perf` can name compiled guest functions.
    pub perf_map: bool,
    /// Bytes all plugins together may hold: guest memories, tables, outputs being lifted.
    pub memory_budget: usize,
    /// Largest component read from a plugin directory (uploads have the API's own limit).
    pub max_component_bytes: u64,
    /// The busbar executable that compiles components in a child process
    /// (`busbar compile-worker`); `None` compiles in this process, without memory or time limits.
    pub compile_worker: Option<PathBuf>,
    pub compile_limits: CompileLimits,
    /// Where plugins' kv entries (and the registry's deployments) are kept.
    pub store: Arc<dyn Store>,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: None,
            pooling: true,
            instance_slots: 1000,
            perf_map: false,
            memory_budget: MemoryBudget::default_limit(),
            max_component_bytes: 64 << 20,
            compile_worker: None,
            compile_limits: CompileLimits::default(),
            store: crate::store::ephemeral(),
        }
    }
}

/// What `busbar plugin check` reports about a valid component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentInfo {
    pub hash: String,
    pub size: usize,
    pub contract: &'static str,
    pub subscriptions: Vec<String>,
    pub imports: Vec<String>,
    /// How long instantiating it and asking its subscriptions took.
    pub startup_ms: u64,
    /// What it can be: `listener`, `authenticator`, `authorizer` (a manifest's `[policy] roles`
    /// gives it the policy roles).
    pub worlds: Vec<&'static str>,
}

/// How long a checked component may take to start.
const CHECK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The shared engine and everything every plugin is loaded against.
pub struct Runtime {
    engine: Engine,
    linker: wasmtime::component::Linker<PluginState>,
    cache: CompileCache,
    compiler: Compiler,
    kv: KvStores,
    store: Arc<dyn Store>,
    budget: Arc<MemoryBudget>,
    max_component_bytes: u64,
    pooling: bool,
    /// Advances the epoch; stops when the runtime is dropped.
    ticker: Ticker,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let (engine, pooling) = if config.pooling {
            match Engine::new(&engine::config(Some(config.instance_slots), config.perf_map)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!("pooling allocator unavailable, allocating on demand: {e}");
                    (Engine::new(&engine::config(None, config.perf_map)).map_err(RuntimeError::engine)?, false)
                }
            }
        } else {
            (Engine::new(&engine::config(None, config.perf_map)).map_err(RuntimeError::engine)?, false)
        };
        let mut linker = host::linker(&engine).map_err(RuntimeError::engine)?;
        legacy::add_to_linker(&mut linker).map_err(RuntimeError::engine)?;
        let cache = match config.cache_dir {
            Some(dir) => CompileCache::in_dir(&dir)
                .map_err(|source| RuntimeError::Cache { dir: dir.display().to_string(), source })?,
            None => CompileCache::disabled(),
        };
        let ticker = Ticker::start(engine.clone());
        let budget = Arc::new(MemoryBudget::new(config.memory_budget));
        Ok(Runtime {
            engine,
            linker,
            cache,
            compiler: Compiler::new(config.compile_worker, config.compile_limits),
            kv: KvStores::new(config.store.clone()),
            store: config.store,
            budget,
            max_component_bytes: config.max_component_bytes,
            pooling,
            ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn uses_pooling(&self) -> bool {
        self.pooling
    }

    /// The largest component this runtime loads from a file or a store.
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_bytes
    }

    /// Where kv entries and deployments are kept.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn kv(&self) -> &KvStores {
        &self.kv
    }

    /// Components refused for going over a compile limit, by limit (`memory`, `time`).
    pub fn compile_refusals(&self) -> [(&'static str, u64); 2] {
        self.compiler.refusals()
    }

    /// The process-wide memory budget every plugin draws from.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Reads a component from a plugin directory: a regular file within the size limit.
    pub fn read_file(&self, wasm: &Path) -> Result<Vec<u8>, FileError> {
        files::read(wasm, self.max_component_bytes)
    }

    /// Loads a component file with the manifest beside it (`name.toml`), if any.
    pub fn load_file(&self, wasm: &Path) -> Result<Plugin, LoadError> {
        let bytes = self.read_file(wasm)?;
        let stem = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
        let manifest = read_manifest(wasm, stem)?;
        self.load(&bytes, manifest)
    }

    /// Checks, compiles (or loads from the cache), links and probes a component. The plugin
    /// uses the kv store kept under its name.
    pub fn load(&self, bytes: &[u8], manifest: Manifest) -> Result<Plugin, LoadError> {
        let kv = self.kv.store(&manifest.name);
        self.load_with_kv(bytes, manifest, kv)
    }

    /// Like `load`, with the kv store given.
    pub fn load_with_kv(&self, bytes: &[u8], manifest: Manifest, kv: Arc<KvStore>) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let (pre, exports, hash, cache_use) = self.link(bytes)?;
        let ctx = Arc::new(PluginContext::new(&manifest, kv, self.budget.clone(), self.ticker.ticks.clone()));
        let mut plugin = Plugin::new(self.engine.clone(), pre, exports, manifest, hash, ctx)?;
        plugin.set_from_cache(cache_use == CacheUse::Hit);
        plugin.set_language(super::producers::language(bytes));
        tracing::info!(
            plugin = plugin.name(),
            hash = &plugin.hash()[..12],
            cached = cache_use == CacheUse::Hit,
            took_ms = started.elapsed().as_millis() as u64,
            subscriptions = ?plugin.subscriptions().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// Validates a component without keeping it: what `busbar plugin check` prints. Its
    /// start-up gets `CHECK_DEADLINE` (a check validates, it does not race the clock) and is
    /// reported, so an author sees it beside the manifest's `timeout-ms`.
    pub fn check(&self, bytes: &[u8]) -> Result<ComponentInfo, LoadError> {
        let (pre, exports, hash, _) = self.link(bytes)?;
        let worlds = [("listener", exports.listener.is_some()), ("authenticator", exports.authenticate.is_some()), ("authorizer", exports.authorize.is_some())]
            .into_iter()
            .filter_map(|(world, has)| has.then_some(world))
            .collect();
        let component = pre.component();
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let contract = exports.contract;
        let mut manifest = Manifest::named("check");
        manifest.limits.timeout = CHECK_DEADLINE;
        let ctx = Arc::new(PluginContext::new(&manifest, Arc::new(KvStore::detached()), self.budget.clone(), self.ticker.ticks.clone()));
        let started = std::time::Instant::now();
        let plugin = Plugin::new(self.engine.clone(), pre, exports, manifest, hash.clone(), ctx)?;
        Ok(ComponentInfo {
            startup_ms: started.elapsed().as_millis() as u64,
            worlds,
            hash,
            size: bytes.len(),
            contract,
            subscriptions: plugin.subscriptions().iter().map(ToString::to_string).collect(),
            imports,
        })
    }

    fn link(&self, bytes: &[u8]) -> Result<(InstancePre<PluginState>, Exports, String, CacheUse), LoadError> {
        sniff(bytes)?;
        let hash = content_hash(bytes);
        let (component, cache_use) = self.cache.load(&self.engine, &self.compiler, bytes, &hash).map_err(|e| match e {
            CompileError::Invalid(message) => LoadError::Invalid(message),
            other => LoadError::Compile(other),
        })?;
        let ty = component.component_type();
        let mut built_for_0_1 = false;
        for (name, _) in ty.imports(&self.engine) {
            if let Some(rest) = name.strip_prefix("busbar:plugin/") {
                let found = format!("busbar:plugin@{}", rest.split_once('@').map_or("", |(_, v)| v));
                if !CONTRACTS.contains(&found.as_str()) {
                    return Err(LoadError::ContractVersion { found });
                }
                built_for_0_1 |= found == legacy::CONTRACT;
            }
        }
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let has = |name: &str| ty.exports(&self.engine).any(|(export, _)| export == name);
        // A listener exports both `handle` and `subscriptions`; a policy plugin may export
        // neither. Which policy exports must be there depends on the manifest (see `Plugin::new`).
        let listener = match (has("handle"), has("subscriptions")) {
            (true, true) => Some(
                ListenerIndices::new(&instance_pre, built_for_0_1)
                    .map_err(|e| LoadError::WrongExports { world: "listener", message: format!("{e:#}") })?,
            ),
            (false, false) => None,
            (false, true) => return Err(LoadError::MissingExport("handle")),
            (true, false) => return Err(LoadError::MissingExport("subscriptions")),
        };
        let exports = Exports {
            contract: listener.as_ref().map_or(if built_for_0_1 { legacy::CONTRACT } else { CONTRACT }, ListenerIndices::contract),
            listener,
            authenticate: component.get_export_index(None, "authenticate"),
            authorize: component.get_export_index(None, "authorize"),
        };
        Ok((instance_pre, exports, hash, cache_use))
    }
}

/// Tells components from core modules and from anything else by their header.
fn sniff(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Core modules have version 1 and layer 0; components have layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot use cache directory {dir}: {source}")]
    Cache { dir: String, source: std::io::Error },
}

impl RuntimeError {
    fn engine(e: wasmtime::Error) -> RuntimeError {
        RuntimeError::Engine(format!("{e:#}"))
    }
}

/// A thread that advances the engine's epoch every tick, so deadlines can interrupt guests.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ticks: Ticks,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ticks = Ticks::default();
        let counted = ticks.clone();
        let thread = std::thread::Builder::new()
            .name("busbar-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    counted.advance();
                }
            })
            .expect("spawning the epoch ticker thread");
        Ticker { stop, thread: Some(thread), ticks }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
