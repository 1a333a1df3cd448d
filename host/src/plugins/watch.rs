//! Hot loading: a watched plugin directory kept in sync with the registry.
//!
//! This module owns `DirWatcher`. It watches a directory of components (`name.wasm`, with an
//! optional `name.toml` beside it) with `notify`, waits until a file has been quiet for the
//! debounce interval (so half-written files are not loaded; deployers should still write to a
//! temporary name and rename), then installs, replaces or removes the plugin through the
//! `Registry`. Files not ending in `.wasm` or `.toml`, and names starting with `.`, are ignored
//! (so `.x.wasm.tmp` is a safe temporary name). Loading happens on the watcher's thread, never
//! on the event path; a file that fails to read or load (a manifest that renames the plugin
//! included) leaves the running version serving and is recorded, and counted, as its last
//! failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::manifest::{Manifest, read_manifest};
use super::registry::{KvOnRemove, Registry};

/// How long a file must be quiet before it is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches a plugin directory until dropped.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching `dir`. Plugins already in it are not loaded here (see `plugins::load_dir`);
/// `names` maps the file stems of those already loaded to their plugin names.
pub fn watch(dir: &Path, registry: Arc<Registry>, names: HashMap<String, String>) -> notify::Result<DirWatcher> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let stop = Arc::new(AtomicBool::new(false));
    let state = DirSync { dir: dir.to_path_buf(), registry, names };
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("busbar-watch".into())
            .spawn(move || state.run(rx, &stop))
            .map_err(|e| notify::Error::generic(&e.to_string()))?
    };
    Ok(DirWatcher { _watcher: watcher, stop, thread: Some(thread) })
}

struct DirSync {
    dir: PathBuf,
    registry: Arc<Registry>,
    /// File stem -> plugin name (a manifest may name a plugin differently from its file).
    names: HashMap<String, String>,
}

impl DirSync {
    fn run(mut self, rx: mpsc::Receiver<notify::Result<notify::Event>>, stop: &AtomicBool) {
        let mut pending: HashMap<String, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(25)) {
                Ok(Ok(event)) if may_change_content(&event.kind) => {
                    for path in event.paths {
                        if let Some(stem) = plugin_stem(&path) {
                            pending.insert(stem, Instant::now());
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(dir = %self.dir.display(), "watch error: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let quiet: Vec<String> =
                pending.iter().filter(|(_, at)| at.elapsed() >= DEBOUNCE).map(|(stem, _)| stem.clone()).collect();
            for stem in quiet {
                pending.remove(&stem);
                self.sync(&stem);
            }
        }
    }

    /// Brings plugin `stem` in line with the directory: install, replace, or remove it.
    fn sync(&mut self, stem: &str) {
        let wasm = self.dir.join(format!("{stem}.wasm"));
        if !wasm.exists() {
            if let Some(name) = self.names.remove(stem) {
                self.registry.remove(&name, KvOnRemove::Delete);
            }
            return;
        }
        if let Some((manifest, bytes)) = self.read(&wasm, stem) {
            self.install(&wasm, stem, manifest, bytes);
        }
    }

    /// The manifest and component of `stem`; a failure to read either is logged and recorded
    /// against the plugin the file currently serves as.
    fn read(&self, wasm: &Path, stem: &str) -> Option<(Manifest, Vec<u8>)> {
        let read = read_manifest(wasm, stem).map_err(|e| e.to_string()).and_then(|manifest| {
            let bytes = self.registry.runtime().read_file(wasm).map_err(|e| e.to_string())?;
            Ok((manifest, bytes))
        });
        read.inspect_err(|error| {
            tracing::error!(file = %wasm.display(), "plugin not reloaded, the running version keeps serving: {error}");
            self.registry.record_failure(self.names.get(stem).map_or(stem, String::as_str), error);
        })
        .ok()
    }

    /// Installs the version read for `stem`. When its manifest renamed the plugin, the new name
    /// replaces the old one only once the new version has loaded.
    fn install(&mut self, wasm: &Path, stem: &str, manifest: Manifest, bytes: Vec<u8>) {
        let name = manifest.name.clone();
        let result = match self.names.get(stem).filter(|previous| **previous != name) {
            Some(previous) => self.registry.install_renamed(previous, &bytes, manifest),
            None => self.registry.install(&name, &bytes, Some(manifest)),
        };
        match result {
            Ok(installed) => {
                tracing::info!(plugin = %name, file = %wasm.display(), ?installed, "plugin file loaded");
                self.names.insert(stem.to_string(), name);
            }
            Err(e) => tracing::error!(plugin = %name, file = %wasm.display(), "plugin not reloaded, the running version keeps serving: {e}"),
        }
    }
}

/// Whether an event of `kind` may have changed a file. Opening and reading do not: counting
/// them would make the watcher's own reads schedule the file again, forever.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// `name` for `name.wasm` and `name.toml`; nothing for other files (temporary files included).
fn plugin_stem(path: &Path) -> Option<String> {
    let extension = path.extension()?.to_str()?;
    if extension != "wasm" && extension != "toml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then(|| stem.to_string())
}
