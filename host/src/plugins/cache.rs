//! The compiled-component cache: Cranelift output on disk, keyed by content and engine.
//!
//! This module owns `CompileCache`. A component is compiled once per (sha256 of its bytes,
//! engine compatibility hash); a restart loads the serialized artifact instead of compiling
//! (milliseconds instead of up to 25 s for JS and Python components). Only files this cache
//! wrote are ever deserialized, and a file that fails to load is recompiled and replaced. It
//! must not be pointed at a directory other users can write: deserializing is loading code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components live, or nowhere (compile every time).
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Compiled,
}

/// The sha256 of a component's bytes, as lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    pub fn disabled() -> CompileCache {
        CompileCache { dir: None }
    }

    /// A cache in `dir`, created (private to this user) if missing.
    pub fn in_dir(dir: impl Into<PathBuf>) -> std::io::Result<CompileCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(CompileCache { dir: Some(dir) })
    }

    /// The component for `bytes`, from the cache when possible.
    pub fn load(&self, engine: &Engine, bytes: &[u8], hash: &str) -> wasmtime::Result<(Component, CacheUse)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheUse::Compiled));
        };
        let path = dir.join(format!("{hash}-{:016x}.cwasm", engine_key(engine)));
        if path.exists() {
            // SAFETY: the file is in our private cache directory and was written by
            // `Component::serialize` for an engine with the same compatibility hash.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheUse::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), "recompiling: cached component failed to load: {e}"),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = write_atomically(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), "could not cache compiled component: {e}");
        }
        Ok((component, CacheUse::Compiled))
    }
}

fn engine_key(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    hasher.finish()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
