//! Building a plugin: a source directory (Rust, JavaScript, Python, C or Go, with its
//! `plugin.toml`) to a component and a copy of its manifest in `dir/dist/`.
//!
//! This module owns the build's one path: find the language, skip the build when nothing it
//! depends on changed (a stamp), build (`guest`: one build per language, with busbar's SDK
//! files), and put the component in place atomically, so that a server watching `dist/` never
//! sees half a file. The toolchains are installed on first use (`toolchain`) into a directory
//! the caller names. It must not load or run what it builds (that is `plugins`), nor read the
//! environment (the binary resolves the toolchains' directory, see `config::toolchains_dir`).

mod guest;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::FromStr;

use crate::plugins::{Manifest, ManifestError};

pub use toolchain::{C_PACKAGES, Toolchains};

/// A plugin's source language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Js,
    Python,
    C,
    Go,
}

named_variants!(Lang { Rust = "rust", Js = "js", Python = "python", C = "c", Go = "go" });

impl Lang {
    /// The language of the plugin in `dir`, from its files.
    pub fn of(dir: &Path) -> Result<Lang, BuildError> {
        let marks = [("Cargo.toml", Lang::Rust), ("app.js", Lang::Js), ("app.py", Lang::Python), ("app.c", Lang::C), ("app.go", Lang::Go)];
        marks.into_iter().find(|(file, _)| dir.join(file).exists()).map(|(_, lang)| lang).ok_or_else(|| BuildError::NotAPlugin(dir.to_path_buf()))
    }

    /// The extensions of its source files (the first is the plugin's main file's).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &["rs"],
            Lang::Js => &["js"],
            Lang::Python => &["py"],
            Lang::C => &["c", "h"],
            Lang::Go => &["go"],
        }
    }
}

impl FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Lang, String> {
        Lang::from_name(s).ok_or_else(|| format!("unknown language `{s}` (rust, js, python, c or go)"))
    }
}

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}: no Cargo.toml, app.js, app.py, app.c or app.go: not a plugin source directory", .0.display())]
    NotAPlugin(PathBuf),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A plugin source the build refuses, and why.
    #[error("{}: {problem}", path.display())]
    Source { path: PathBuf, problem: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A toolchain is missing, or answered what the build cannot use.
    #[error("{0}")]
    Toolchain(String),
    /// A tool ran and failed; its own output says why.
    #[error("{what} failed ({status})")]
    Failed { what: String, status: ExitStatus },
    /// The core module could not be made into a component.
    #[error("making the component: {0}")]
    Component(String),
}

/// An I/O result, said with what was being done.
trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BuildError>;
}

impl<T> Doing<T> for std::io::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BuildError> {
        self.map_err(|source| BuildError::Io { what: what(), source })
    }
}

/// What a build produced: the plugin's name and its component in `dist/`.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub wasm: PathBuf,
}

/// Builds the plugin in `dir` into `dir/dist/<name>.wasm` (and copies its manifest beside it).
/// Builds of one directory take turns (tests build in parallel); a JavaScript, Python, C or Go
/// build is skipped when nothing it depends on changed, Rust's is left to cargo.
pub fn build(dir: &Path, toolchains: &Toolchains) -> Result<Built, BuildError> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = Manifest::from_file(&manifest_path, "plugin")?;
    let lang = Lang::of(dir)?;
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).doing(|| format!("creating {}", dist.display()))?;
    let wasm = dist.join(format!("{}.wasm", manifest.name));
    let _lock = toolchain::lock(&dir.join("target"))?;
    let stamp_path = dist.join(format!(".{}.stamp", manifest.name));
    let stamp = (lang != Lang::Rust).then(|| source_stamp(dir, lang)).transpose()?;
    if let Some(stamp) = &stamp
        && wasm.exists()
        && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == *stamp)
    {
        tracing::info!(plugin = %manifest.name, "up to date");
    } else {
        // Write then rename, so that a server watching dist/ never sees half a file.
        let tmp = dist.join(format!(".{}.wasm.{}.tmp", manifest.name, std::process::id()));
        let built = guest::build(dir, lang, &manifest.name, &tmp, toolchains);
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &wasm).doing(|| format!("renaming {} to {}", tmp.display(), wasm.display()))?;
        if let Some(stamp) = &stamp {
            toolchain::write(&stamp_path, stamp.as_bytes())?;
        }
    }
    let copy = dist.join(format!("{}.toml", manifest.name));
    std::fs::copy(&manifest_path, &copy).doing(|| format!("copying {} to {}", manifest_path.display(), copy.display()))?;
    Ok(Built { name: manifest.name, wasm })
}

/// The plugin's source files of one extension (not recursive), sorted.
fn sources(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, BuildError> {
    let entries = std::fs::read_dir(dir).doing(|| format!("reading {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    Ok(files)
}

/// A hash of everything a JavaScript, Python, C or Go build depends on: the plugin's sources,
/// busbar's files for the language, and busbar's version.
fn source_stamp(dir: &Path, lang: Lang) -> Result<String, BuildError> {
    let mut all = Vec::new();
    for extension in lang.extensions() {
        for file in sources(dir, extension)? {
            all.extend_from_slice(file.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            all.extend_from_slice(&std::fs::read(&file).doing(|| format!("reading {}", file.display()))?);
        }
    }
    for (_, bytes) in guest::sdk_files(lang) {
        all.extend_from_slice(bytes);
    }
    if lang == Lang::Go {
        for (_, bytes) in guest::GO_FILES {
            all.extend_from_slice(bytes);
        }
    }
    all.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    Ok(crate::plugins::content_hash(&all))
}
