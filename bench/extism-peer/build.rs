//! Builds the Extism plugins in `plugins/extism` for wasm32-unknown-unknown, with a nested
//! `cargo build` into `target/extism-plugins` at the repository root (a target directory of its
//! own, so that it never waits on this build's lock), and tells the benchmark where
//! `bench-router`'s module is (`EXTISM_BENCH_ROUTER`). busbar's own plugins are built by
//! host/build.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let plugins = root.join("plugins/extism");
    for watched in ["plugins/extism/Cargo.toml", "plugins/extism/Cargo.lock", "plugins/extism/bench-router", "plugins/rust/testing/bench-logic"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target/extism-plugins");
    ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(&plugins).args(["build", "--release", "--target", TARGET, "--target-dir"]).arg(&target_dir);
    // The outer build's settings are not the plugins' settings.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("CARGO_PROFILE_") || k.starts_with("CARGO_CFG_")) {
            build.env_remove(key);
        }
    }
    let status = build.status().expect("running cargo to build the Extism plugins");
    if !status.success() {
        panic!(
            "building the Extism plugins in {} failed (is the {TARGET} target installed? `rustup target add {TARGET}`)",
            plugins.display()
        );
    }
    let module = target_dir.join(TARGET).join("release/extism_bench_router.wasm");
    assert!(module.is_file(), "{} was not built", module.display());
    println!("cargo:rustc-env=EXTISM_BENCH_ROUTER={}", module.display());
}

/// Installs the wasm32-unknown-unknown standard library with rustup when it is missing (the
/// repository's rust-toolchain.toml lists only wasm32-wasip2).
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok().and_then(|o| String::from_utf8(o.stdout).ok());
    let installed = sysroot.is_some_and(|root| Path::new(root.trim()).join("lib/rustlib").join(TARGET).is_dir());
    if !installed {
        println!("cargo:warning=installing the {TARGET} target with rustup");
        let _ = Command::new("rustup").args(["target", "add", TARGET]).status();
    }
}
