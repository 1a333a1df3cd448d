//! Generates the bindings of the `policy` world, included as `bindings::policy` (src/lib.rs).
//!
//! `wit_bindgen::generate!` would do, except for one thing: next to the bindings it emits a
//! custom section describing the world's imports, and the linker keeps that section in every
//! component that links this crate. The `policy` world imports `policy-types`, so every
//! listener built with the SDK would import it too and stop having the `listener` world's shape.
//! Here that one section is switched off; a policy plugin still gets the whole `policy` world
//! (imports and exports) from the section that `export_policy!` emits in its own crate.

use wit_bindgen_core::wit_parser::Resolve;
use wit_bindgen_core::{Files, WorldGenerator};
use wit_bindgen_rust::{Opts, WithOption};

/// The start of the attribute on the imports-only section that `pub_export_macro` emits.
const IMPORTS_SECTION: &str = "#[cfg(target_arch = \"wasm32\")]\n#[unsafe(link_section = \"component-type:wit-bindgen:";
const IMPORTS_WORLD: &str = ":policy-with-all-of-its-exports-removed:encoded world";

fn main() {
    println!("cargo:rerun-if-changed=../wit");
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path("../wit").expect("parse ../wit");
    let world = resolve.select_world(&[package], Some("policy")).expect("world `policy` in ../wit");

    // Every interface but `policy-types` is the listener bindings' own (`with`), so the types
    // are shared and the imports are bound once.
    let shared = ["types", "log", "config", "kv"].map(|name| {
        let path = format!("busbar_plugin_sdk::bindings::busbar::plugin::{name}");
        (format!("busbar:plugin/{name}@0.2.0"), WithOption::Path(path))
    });
    let opts = Opts {
        with: shared.into(),
        generate_all: true,
        pub_export_macro: true,
        export_macro_name: Some("__export_policy".into()),
        default_bindings_module: Some("busbar_plugin_sdk::bindings::policy".into()),
        runtime_path: Some("busbar_plugin_sdk::__private::wit_bindgen::rt".into()),
        disable_custom_section_link_helpers: true,
        ..Opts::default()
    };
    let mut files = Files::default();
    opts.build().generate(&mut resolve, world, &mut files).expect("generate the policy bindings");
    let (_, source) = files.iter().next().expect("one generated file");
    let source = std::str::from_utf8(source).expect("UTF-8 bindings");

    let sections: Vec<usize> = source.match_indices(IMPORTS_SECTION).map(|(at, _)| at).collect();
    let imports_only: Vec<usize> =
        sections.into_iter().filter(|at| source[*at..].lines().nth(1).is_some_and(|line| line.contains(IMPORTS_WORLD))).collect();
    assert_eq!(imports_only.len(), 1, "wit-bindgen changed how it emits the imports-only section; update build.rs");
    let at = imports_only[0];
    let patched = format!("{}#[cfg(any())]{}", &source[..at], &source[at + "#[cfg(target_arch = \"wasm32\")]".len()..]);

    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("policy.rs");
    std::fs::write(out, patched).expect("write policy.rs");
}
