//! Builds the Rust plugins in `plugins/rust` for wasm32-wasip2 and gathers each component with
//! its manifest into `$OUT_DIR/plugins/<group>/<name>.{wasm,toml}`: `examples/` (embedded in the
//! binary as `busbar serve`'s default plugins), `policy/` (example policy plugins an operator
//! deploys: not loaded by default), `testing/` and `hostile/` (used by the tests).
//!
//! The plugins are a Cargo workspace of their own, built by a nested `cargo build` into
//! `target/plugins` (a target directory of their own, so that it never waits on this build's
//! lock).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ has a parent").to_path_buf();
    let plugins = root.join("plugins/rust");
    let out = PathBuf::from(env("OUT_DIR")).join("plugins");
    write_go_files(&root, &PathBuf::from(env("OUT_DIR")));
    // Only the Go files that are embedded: a Go plugin's build writes its own target/ under
    // plugins/go, which must not make this script run again.
    for watched in ["plugins/rust", "plugins/go/gen", "plugins/go/pkg", "plugins/go/sdk", "plugins/go/export", "plugin-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("plugins"),
        None => root.join("target/plugins"),
    };
    ensure_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&plugins)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
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
    let status = build.status().expect("running cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the Rust plugins in {} failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`)",
            plugins.display()
        );
    }

    let built = target_dir.join("wasm32-wasip2/release");
    let _ = std::fs::remove_dir_all(&out);
    for group in ["examples", "policy", "testing", "hostile"] {
        let group_out = out.join(group);
        std::fs::create_dir_all(&group_out).expect("creating the plugin output directory");
        let mut crates: Vec<PathBuf> = std::fs::read_dir(plugins.join(group))
            .expect("reading a plugin group")
            .filter_map(|e| e.ok().map(|e| e.path()))
            // A plugin is a crate with a manifest; helper libraries have none.
            .filter(|p| p.join("Cargo.toml").exists() && p.join("plugin.toml").exists())
            .collect();
        crates.sort();
        for dir in crates {
            let name = dir.file_name().and_then(|n| n.to_str()).expect("plugin directory name").to_string();
            let wasm = built.join(format!("{}.wasm", name.replace('-', "_")));
            copy(&wasm, &group_out.join(format!("{name}.wasm")));
            copy(&dir.join("plugin.toml"), &group_out.join(format!("{name}.toml")));
        }
    }
    write_examples_module(&out);
}

/// `$OUT_DIR/examples.rs`: the example plugins as `(name, component, manifest)`, for
/// `include!` by the library.
fn write_examples_module(out: &Path) {
    let dir = out.join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("reading the examples output")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect();
    names.sort();
    let mut code = String::from("&[\n");
    for name in names {
        let wasm = dir.join(format!("{name}.wasm"));
        let toml = dir.join(format!("{name}.toml"));
        let manifest = if toml.exists() {
            format!("include_str!({:?})", toml.display().to_string())
        } else {
            "\"\"".to_string()
        };
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?}), {manifest}),\n",
            wasm.display().to_string()
        ));
    }
    code.push_str("]\n");
    std::fs::write(out.parent().expect("out has a parent").join("examples.rs"), code)
        .expect("writing examples.rs");
}

/// Installs the wasm32-wasip2 standard library with rustup when it is missing (it is listed in
/// rust-toolchain.toml, but not every rustup installs listed targets on its own).
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok().and_then(|o| String::from_utf8(o.stdout).ok());
    let installed = sysroot.is_some_and(|root| Path::new(root.trim()).join("lib/rustlib/wasm32-wasip2").is_dir());
    if !installed {
        println!("cargo:warning=installing the wasm32-wasip2 target with rustup");
        let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
    }
}

/// `$OUT_DIR/go_files.rs`: the Go support files (generated bindings, the vendored
/// go.bytecodealliance.org/pkg, the SDK, the component's exports that call the plugin) as
/// `(path under plugins/go, bytes)`, for `busbar plugin build`.
fn write_go_files(root: &Path, out_dir: &Path) {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let go = root.join("plugins/go");
    let mut files = Vec::new();
    for part in ["gen", "pkg", "sdk", "export"] {
        walk(&go.join(part), &mut files);
    }
    files.sort();
    let mut code = String::from("&[\n");
    for file in files {
        let relative = file.strip_prefix(&go).expect("under plugins/go").display().to_string();
        code.push_str(&format!("    ({relative:?}, include_bytes!({:?})),\n", file.display().to_string()));
    }
    code.push_str("]\n");
    std::fs::write(out_dir.join("go_files.rs"), code).expect("writing go_files.rs");
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("copying {} to {}: {e}", from.display(), to.display());
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("cargo sets {key}"))
}
