//! Why a component was refused at load: `LoadError`, shared by the runtime (which loads) and
//! the plugin version (whose probe can fail), so that neither imports the other for it.
//!
//! Each message says what to do about it. This module holds the type only.

use super::compile::CompileError;
use super::files::FileError;
use super::host::{CONTRACT, CONTRACT_0_1};
use super::manifest::ManifestError;
use super::roles::Role;

/// Why a component was refused. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("not a valid component: {0}")]
    Invalid(String),
    #[error("{0}")]
    Compile(CompileError),
    #[error("built against contract {found}, but this host speaks {CONTRACT} (and still loads {CONTRACT_0_1})")]
    ContractVersion { found: String },
    #[error("does not export `{0}`: it must implement the `listener` world of {CONTRACT} (or serve a policy role)")]
    MissingExport(&'static str),
    #[error("does not match the `{world}` world of {CONTRACT}: {message}")]
    WrongExports { world: &'static str, message: String },
    #[error("its manifest's `[policy] roles` lists `{role}`, which needs the export `{export}` (world `{role}` of {CONTRACT})")]
    RoleExport { role: Role, export: &'static str },
    #[error("role `{role}` is held by plugin `{holder}`: remove it from that plugin first (at most one plugin holds a role)")]
    RoleTaken { role: Role, holder: String },
    #[error("imports something this host does not provide: {0}")]
    UnsupportedImport(String),
    #[error("failed at start-up: {0}")]
    Startup(String),
    #[error("invalid subscriptions: {0}")]
    Subscriptions(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

