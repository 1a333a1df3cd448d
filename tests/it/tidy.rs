//! Keeps the code map honest: every Rust file says why it exists, and each outside dependency
//! stays behind the one module that owns it.

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

/// `(crate, the only place under host/src that may use it)`.
const BOUNDARIES: &[(&str, &str)] = &[("wasmtime", "plugins/")];

#[test]
fn outside_dependencies_stay_behind_their_module() {
    let src = root().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for (krate, home) in BOUNDARIES {
        for file in &files {
            let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            if relative.starts_with(home) {
                continue;
            }
            let text = std::fs::read_to_string(file).unwrap();
            let uses = text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//") && (l.contains(&format!("{krate}::")) || l.contains(&format!("{krate}_wasi::")))
            });
            assert!(!uses, "{relative} uses `{krate}`, which belongs to {home}");
        }
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
