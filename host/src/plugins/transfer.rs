//! Moving deployments between stores, or out of one for a backup: `export` writes each plugin
//! deployed through the API, at its running version, as `name.wasm` and `name.toml` (a directory
//! `busbar serve --plugins` can serve as it is); `import` checks every component of such a
//! directory, then stores them all as deployments (the version each replaces becomes its previous
//! one), which a server on that store runs from its next start.
//!
//! It must not run plugins beyond the check (start-up and `subscriptions`) and must not store
//! anything from a directory with one bad component in it.

use std::path::{Path, PathBuf};

use super::cache::content_hash;
use super::manifest::{ManifestError, read_manifest};
use super::runtime::Runtime;
use crate::store::{Deployment, Store, StoreError, Version};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: String },
}

/// Writes the running version of every deployment in `store` into `dir`; returns their names.
/// Deployments that run their base version (rolled back to it, or deleted) have nothing to
/// write and are left out.
pub fn export(store: &dyn Store, dir: &Path) -> Result<Vec<String>, TransferError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
        move |source| TransferError::Io { path: path.to_path_buf(), source }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for deployment in store.deployments()? {
        let Some(version) = deployment.current else { continue };
        let bytes = store.component(&version.hash)?;
        let (wasm, toml) = (dir.join(format!("{}.wasm", deployment.name)), dir.join(format!("{}.toml", deployment.name)));
        std::fs::write(&wasm, bytes).map_err(io(&wasm))?;
        std::fs::write(&toml, &version.manifest).map_err(io(&toml))?;
        written.push(deployment.name);
    }
    Ok(written)
}

/// Checks every `*.wasm` in `dir` (with the `*.toml` beside it) against `runtime`, then stores
/// each as the running version of its deployment; returns their names. Nothing is stored when
/// any of them is refused.
pub fn import(runtime: &Runtime, store: &dyn Store, dir: &Path) -> Result<Vec<String>, TransferError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TransferError::Io { path: dir.to_path_buf(), source })?;
    let mut wasms: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "wasm")).collect();
    wasms.sort();
    let mut checked = Vec::new();
    for wasm in wasms {
        let stem = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let manifest = read_manifest(&wasm, &stem)?;
        if !manifest.capabilities.read_dirs.is_empty() {
            let error = "`capabilities.read-dirs` cannot be deployed; serve the plugin from the plugin directory".to_string();
            return Err(TransferError::Invalid { path: wasm, error });
        }
        let bytes = std::fs::read(&wasm).map_err(|source| TransferError::Io { path: wasm.clone(), source })?;
        runtime.check(&bytes).map_err(|e| TransferError::Invalid { path: wasm.clone(), error: e.to_string() })?;
        checked.push((manifest, bytes));
    }
    let existing = store.deployments()?;
    let mut names = Vec::new();
    for (manifest, bytes) in checked {
        let current = Some(Version { hash: content_hash(&bytes), manifest: manifest.to_toml() });
        // The version it replaces becomes the previous one; importing the running one again
        // changes nothing.
        let before = existing.iter().find(|d| d.name == manifest.name);
        let previous = match before {
            Some(d) if d.current == current => d.previous.clone(),
            Some(d) => d.current.clone(),
            None => None,
        };
        store.save(&Deployment { name: manifest.name.clone(), current, previous }, &[&bytes])?;
        names.push(manifest.name);
    }
    Ok(names)
}
