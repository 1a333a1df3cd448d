//! The compiled-component cache: Cranelift output on disk, keyed by content and engine.
//!
//! This module owns `CompileCache`. A component is compiled (by `compile::Compiler`) once per
//! (sha256 of its bytes, engine compatibility hash); a restart loads the serialized artifact
//! instead of compiling (milliseconds instead of up to 25 s for JS and Python components). Only
//! files this cache wrote, and what the compiler just produced, are ever deserialized; a file
//! that fails to load is recompiled and replaced. It must not be pointed at a directory other
//! users can write: deserializing is loading code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::compile::{CompileError, Compiler};

/// Where compiled components live, or nowhere (compile every time).
#[derive(Debug, Clone)]
pub(super) struct CompileCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheUse {
    Hit,
    Compiled,
}

/// The sha256 of a component's bytes, as lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    pub(super) fn disabled() -> CompileCache {
        CompileCache { dir: None }
    }

    /// A cache in `dir`, created (private to this user) if missing.
    pub(super) fn in_dir(dir: impl Into<PathBuf>) -> std::io::Result<CompileCache> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(CompileCache { dir: Some(dir) })
    }

    /// The component for `bytes`, from the cache when possible, else from `compiler`.
    pub(super) fn load(
        &self,
        engine: &Engine,
        compiler: &Compiler,
        bytes: &[u8],
        hash: &str,
    ) -> Result<(Component, CacheUse), CompileError> {
        let path = self.dir.as_ref().map(|dir| dir.join(format!("{hash}-{:016x}.cwasm", engine_key(engine))));
        if let Some(path) = path.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file is in our private cache directory and was written by
            // `Component::serialize` for an engine with the same compatibility hash.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => return Ok((component, CacheUse::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), "recompiling: cached component failed to load: {e}"),
            }
        }
        let compiled = compiler.compile(engine, bytes)?;
        // SAFETY: these bytes are what `Engine::precompile_component` just produced for an
        // engine configured like this one (in this process or in the compile worker).
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| CompileError::Worker(format!("the compiled component does not load: {e:#}")))?;
        if let Some(path) = &path
            && let Err(e) = write_atomically(path, &compiled)
        {
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
