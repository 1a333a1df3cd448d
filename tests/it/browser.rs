//! The dashboard and the browser client library in a real headless Chromium (Debian's
//! `chromium`, driven through the DevTools protocol by npm's `playwright-core`), against real
//! `busbar serve` processes. Each scenario is a script in `tests/browser/` that starts the
//! servers it needs (and restarts them), opens pages, and fails with a message; this module
//! installs `playwright-core` (once, into `target/toolchains/browser`) and runs them.
//! `scripts/test` installs Chromium; screenshots land in `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const PLAYWRIGHT_CORE: &str = "playwright-core@1.49.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf()
}

/// `playwright-core`'s entry point, installed from npm on first use.
fn playwright() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo().join("target/toolchains/browser");
    let entry = dir.join("node_modules/playwright-core/index.mjs");
    if !entry.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&dir)
            .arg(PLAYWRIGHT_CORE)
            .status()
            .expect("running npm (scripts/test installs Node.js)");
        assert!(status.success(), "npm install {PLAYWRIGHT_CORE} failed");
    }
    entry
}

/// Runs `tests/browser/<scenario>.mjs` and fails with its output unless it passed.
fn scenario(name: &str) {
    assert!(Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(), "Chromium is missing: scripts/test installs Debian's `chromium`");
    let screenshots = repo().join("target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = Command::new("node")
        .arg(repo().join(format!("tests/browser/{name}.mjs")))
        .env("BUSBAR_BIN", env!("CARGO_BIN_EXE_busbar"))
        .env("PLAYWRIGHT", playwright())
        .env("PLUGINS_DIR", busbar::BUILT_PLUGINS_DIR)
        .env("SCREENSHOTS", &screenshots)
        .env("REPO", repo())
        .output()
        .expect("running node");
    let said = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.contains("scenario passed"), "{name}:\n{said}");
}

#[test]
fn the_dashboard_in_a_real_browser() {
    scenario("dashboard");
}

#[test]
fn the_client_library_in_a_real_browser() {
    scenario("client");
}
