//! Keeps the code map honest: every Rust file says why it exists, each outside dependency stays
//! behind the module ARCHITECTURE.md says owns it (redis in `relay`, axum in `api` and the hub's
//! socket, jsonwebtoken in `hub/auth.rs`, notify in the watcher, the environment in `config`...),
//! the hub never calls the bus, every close code and contract item is documented. Each boundary
//! check is shown catching a planted violation.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "node_modules" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in ["host", "plugin-sdk", "plugins", "tests"] {
        rust_files(&root().join(dir), &mut files);
    }
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "files without a `//!` paragraph: {missing:#?}");
}

/// The boundaries ARCHITECTURE.md states: `(what a line may not mention, the only places under
/// host/src where it may)`. A path ending in `/` is a directory.
const BOUNDARIES: &[(&str, &[&str])] = &[
    ("wasmtime::", &["plugins/"]),
    ("wasmtime_wasi", &["plugins/"]),
    ("redis::", &["relay/", "store/"]),
    // The hub's session speaks axum's WebSocket message type; everything else HTTP is `api`.
    // (And `busbar bench fanout`'s naive peer, an axum broadcast server by design.)
    ("axum::", &["api/", "hub/fanout.rs", "hub/mod.rs", "hub/outbox.rs", "hub/protocol.rs", "hub/session.rs", "hub/session/", "cli/bench/naive.rs"]),
    ("hyper::", &["api/serve.rs"]),
    ("hyper_util::", &["api/serve.rs"]),
    ("jsonwebtoken::", &["hub/auth.rs"]),
    // The plugin directory's watcher, and `busbar dev`'s own source watcher.
    ("notify::", &["plugins/watch.rs", "cli/dev.rs"]),
    // The store's backends are known only to the store.
    ("rusqlite::", &["store/"]),
    // Making components from guest toolchains' output is the plugin build's business.
    ("wit_component::", &["build/"]),
    ("wit_parser::", &["build/"]),
    // The library reads the environment in `config` only; the binary (`cli/`) reads its own.
    ("env::var", &["config.rs", "cli/"]),
];

/// Places that must not mention something at all: `(what, where)`.
const NEVER: &[(&str, &str)] = &[
    // The hub is the bus's Broadcaster; it never calls back into the bus.
    ("crate::bus", "hub/"),
    // The bus knows listeners, not what they are made of.
    ("crate::plugins", "bus/"),
    ("crate::hub", "bus/"),
];

/// `(file, line)` pairs breaking a boundary, for files given as `(path under host/src, text)`.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let code = text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//"));
        for (number, line) in code {
            for (needle, homes) in BOUNDARIES {
                if line.contains(needle) && !homes.iter().any(|home| path.starts_with(home)) {
                    found.push(format!("{path}:{}: `{needle}` belongs to {homes:?}", number + 1));
                }
            }
            for (needle, place) in NEVER {
                if line.contains(needle) && path.starts_with(place) {
                    found.push(format!("{path}:{}: {place} must not use `{needle}`", number + 1));
                }
            }
        }
    }
    found
}

#[test]
fn outside_dependencies_stay_behind_their_module() {
    let src = root().join("host/src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| (p.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/"), std::fs::read_to_string(p).unwrap()))
        .collect();
    assert!(files.len() > 40, "read the sources");
    let found = violations(&files);
    assert!(found.is_empty(), "boundaries broken: {found:#?}");
}

#[test]
fn each_boundary_catches_a_planted_violation() {
    let planted = [
        ("bus/mod.rs", "use wasmtime::Engine;"),
        ("hub/mod.rs", "let c = redis::Client::open(url);"),
        ("plugins/host.rs", "use axum::Router;"),
        ("server.rs", "use hyper::server;"),
        ("hub/session.rs", "jsonwebtoken::decode(t, k, v)"),
        ("api/mod.rs", "notify::recommended_watcher(f)"),
        ("plugins/runtime.rs", "let home = std::env::var(\"HOME\");"),
        ("hub/mod.rs", "use crate::bus::Bus;"),
        ("bus/mod.rs", "use crate::plugins::Plugin;"),
        ("plugins/compile.rs", "wit_component::ComponentEncoder::default()"),
        ("cli/plugin.rs", "let r = wit_parser::Resolve::default();"),
        ("plugins/kv.rs", "let c = rusqlite::Connection::open(p);"),
    ];
    for (path, line) in planted {
        let found = violations(&[(path.to_string(), format!("//! A module.\n{line}\n"))]);
        assert_eq!(found.len(), 1, "{path}: `{line}` went unnoticed: {found:?}");
    }
    let allowed = [("plugins/host.rs", "use wasmtime::Engine;"), ("relay/mod.rs", "redis::cmd(\"XADD\")"), ("config.rs", "std::env::var(k)"), ("build/guest.rs", "wit_parser::Resolve::default()")];
    for (path, line) in allowed {
        assert!(violations(&[(path.to_string(), line.to_string())]).is_empty(), "{path}: {line}");
    }
}

#[test]
fn every_close_code_is_documented() {
    use busbar::hub::Close;
    let protocol = std::fs::read_to_string(root().join("docs/protocol.md")).unwrap();
    for close in [
        Close::NORMAL,
        Close::GOING_AWAY,
        Close::TOO_BIG,
        Close::SLOW,
        Close::NO_PONG,
        Close::AUTH_TIMEOUT,
        Close::INVALID_TOKEN,
        Close::TOKEN_EXPIRED,
        Close::BAD_REQUEST,
        Close::FORBIDDEN,
        Close::TOO_MANY_CONNECTIONS,
    ] {
        assert!(protocol.contains(&format!("| {} |", close.code)), "close code {} is not in docs/protocol.md", close.code);
    }
}

#[test]
fn every_item_of_the_contract_has_a_doc_comment() {
    // What plugin authors in every language read: each package, interface, world, type, field,
    // case and function declaration is preceded by a `///` line.
    let wit = std::fs::read_to_string(root().join("wit/busbar-plugin.wit")).unwrap();
    let mut previous = "";
    let mut undocumented = Vec::new();
    for (number, line) in wit.lines().enumerate() {
        let line = line.trim();
        let declares = !line.is_empty() && !line.starts_with("//") && !line.starts_with('}') && !line.starts_with("use ")
            && !line.starts_with("import ");
        if declares && !previous.starts_with("///") {
            undocumented.push(format!("{}: {line}", number + 1));
        }
        if !line.is_empty() {
            previous = line;
        }
    }
    assert!(undocumented.is_empty(), "undocumented items in wit/busbar-plugin.wit: {undocumented:#?}");
}

/// `module -> modules it imports` inside one directory of host/src, from `super::<module>` paths
/// (a `super::` path that is not a module of the directory is reported, so re-exports cannot hide
/// an edge).
fn module_graph(files: &[(String, String)]) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let modules: Vec<String> = files.iter().map(|(name, _)| name.trim_end_matches(".rs").to_string()).collect();
    let mut graph = std::collections::BTreeMap::new();
    for (name, text) in files {
        let module = name.trim_end_matches(".rs").to_string();
        let mut uses = Vec::new();
        // Tests inside a module may import its parent's items freely.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("super::") {
                let rest = &line[at + "super::".len()..];
                let first: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if first.is_empty() {
                    continue; // `super::{a, b}`: not used in this crate's plugins module
                }
                if !modules.contains(&first) {
                    return Err(format!("{name}: `super::{first}` is not a module of the directory"));
                }
                if first != module && !uses.contains(&first) {
                    uses.push(first);
                }
            }
        }
        graph.insert(module, uses);
    }
    Ok(graph)
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &std::collections::BTreeMap<String, Vec<String>>, path: &mut Vec<String>, done: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.iter().any(|n| n == node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.push(node.to_string());
        None
    }
    let mut done = Vec::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_plugins_modules_import_each_other_without_cycles() {
    let dir = root().join("host/src/plugins");
    // A module that is a directory counts as one: its `mod.rs`, and its children, whose
    // `crate::plugins::` paths name its siblings (their `super::` is the module itself).
    let files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| (p.extension().is_some_and(|x| x == "rs") && !p.ends_with("mod.rs")) || p.join("mod.rs").exists())
        .map(|p| {
            if !p.is_dir() {
                return (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read_to_string(&p).unwrap());
            }
            let mut text = std::fs::read_to_string(p.join("mod.rs")).unwrap();
            for child in std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).filter(|c| !c.ends_with("mod.rs")) {
                let child = std::fs::read_to_string(child).unwrap();
                text += &child.replace("super::", "self::").replace("crate::plugins::", "super::");
            }
            (format!("{}.rs", p.file_name().unwrap().to_string_lossy()), text)
        })
        .collect();
    let graph = module_graph(&files).unwrap();
    assert!(graph.len() > 15, "{graph:?}");
    assert_eq!(cycle(&graph), None, "{graph:#?}");
    // A planted cycle and a planted re-export are caught.
    let planted = [("a.rs".to_string(), "use super::b::B;".to_string()), ("b.rs".to_string(), "use super::a::A;".to_string())];
    assert_eq!(cycle(&module_graph(&planted).unwrap()), Some(vec!["a".to_string(), "b".to_string()]));
    let reexport = [("a.rs".to_string(), "use super::Registry;".to_string())];
    assert!(module_graph(&reexport).is_err());
}
