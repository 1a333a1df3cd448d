//! `busbar plugin new | build | test | check`: the plugin author's loop.
//!
//! `new` scaffolds a plugin from a template (a crate depending on the SDK, a manifest, a README
//! and a test), `build` compiles it to a component in `dist/` and checks it, `test` runs the
//! plugin's `tests/events.jsonl` through it exactly as `busbar dispatch` would and compares the
//! result with `tests/expected.jsonl`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::{Context, bail};
use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use clap::{Args, ValueEnum};

use super::RuntimeArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Lang {
    Rust,
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name (also its directory and crate name).
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to create it (default: the current directory).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Path of busbar's `plugin-sdk` (default: the one this binary was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct TestArgs {
    /// The plugin's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Accept the current output as `tests/expected.jsonl`.
    #[arg(long)]
    bless: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

const RUST_TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    ("plugin.toml", include_str!("../../templates/rust/plugin.toml")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
    ("tests/events.jsonl", include_str!("../../templates/rust/tests/events.jsonl")),
    ("tests/expected.jsonl", include_str!("../../templates/rust/tests/expected.jsonl")),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", include_str!("../../templates/rust/.gitignore")),
];

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    busbar::plugins::check_plugin_name(&args.name).map_err(|p| anyhow::anyhow!("plugin name {p}"))?;
    if args.name.contains('.') || args.name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("plugin name `{}` must start with a letter and must not contain `.`", args.name);
    }
    let target = args.dir.join(&args.name);
    if target.exists() {
        bail!("{} already exists", target.display());
    }
    let sdk = match args.sdk {
        Some(sdk) => sdk,
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!("the plugin SDK is not at {} (pass --sdk PATH to busbar's plugin-sdk)", sdk.display())
    })?;
    let type_name: String = args
        .name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| part[..1].to_ascii_uppercase() + &part[1..])
        .collect();
    let template = match args.lang {
        Lang::Rust => RUST_TEMPLATE,
    };
    for (path, text) in template {
        let text = text
            .replace("{{name}}", &args.name)
            .replace("{{type}}", &type_name)
            .replace("{{sdk}}", &sdk.display().to_string());
        let file = target.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    println!("created {}", target.display());
    println!("next: cd {} && busbar plugin build && busbar plugin test", target.display());
    Ok(ExitCode::SUCCESS)
}

/// Where `build` puts the component and its manifest.
pub struct Built {
    pub name: String,
    pub wasm: PathBuf,
}

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let built = build_dir(&args.dir)?;
    let runtime = args.runtime.runtime()?;
    let bytes = std::fs::read(&built.wasm)?;
    let info = runtime.check(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", built.wasm.display()))?;
    println!("built {} ({} bytes)", built.wasm.display(), info.size);
    println!("  subscriptions: {}", info.subscriptions.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Compiles the plugin in `dir` and copies the component and its manifest into `dir/dist/`.
pub fn build_dir(dir: &Path) -> anyhow::Result<Built> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = busbar::plugins::Manifest::from_file(&manifest_path, "plugin")?;
    if !dir.join("Cargo.toml").exists() {
        bail!("{} has no Cargo.toml: only Rust plugins can be built here", dir.display());
    }
    let metadata = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !metadata.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&metadata.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let target_dir = PathBuf::from(metadata["target_directory"].as_str().context("cargo metadata: target_directory")?);
    let package = metadata["packages"][0]["name"].as_str().context("cargo metadata: package name")?.replace('-', "_");
    eprintln!("building {} for wasm32-wasip2 ...", manifest.name);
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{package}.wasm"));
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist)?;
    let wasm = dist.join(format!("{}.wasm", manifest.name));
    // Write then rename, so that a server watching dist/ never sees half a file.
    let tmp = dist.join(format!(".{}.wasm.tmp", manifest.name));
    std::fs::copy(&artifact, &tmp).with_context(|| format!("copying {}", artifact.display()))?;
    std::fs::copy(&manifest_path, dist.join(format!("{}.toml", manifest.name)))?;
    std::fs::rename(&tmp, &wasm)?;
    Ok(Built { name: manifest.name, wasm })
}

pub fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let manifest = busbar::plugins::Manifest::from_file(&args.dir.join("plugin.toml"), "plugin")?;
    let wasm = args.dir.join("dist").join(format!("{}.wasm", manifest.name));
    let wasm = if wasm.exists() { wasm } else { build_dir(&args.dir)?.wasm };
    let runtime = args.runtime.runtime()?;
    let recorder = Arc::new(Recorder::new());
    let bus = Bus::new(recorder.clone());
    let plugin = runtime.load_file(&wasm).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    busbar::plugins::register(&bus, plugin)?;
    let events = args.dir.join("tests/events.jsonl");
    let input: Vec<String> = std::fs::read_to_string(&events)
        .with_context(|| format!("reading {}", events.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    let (output, bad) = super::dispatch::render(&bus, &recorder, &input, false)?;
    let actual: String = output.iter().map(|l| format!("{l}\n")).collect();
    let expected_path = args.dir.join("tests/expected.jsonl");
    if args.bless {
        std::fs::write(&expected_path, &actual)?;
        println!("wrote {}", expected_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let expected = std::fs::read_to_string(&expected_path).with_context(|| format!("reading {}", expected_path.display()))?;
    if bad > 0 {
        eprintln!("{bad} invalid event line(s) in {}", events.display());
    }
    if actual == expected && bad == 0 {
        println!("ok: {} event(s), {} line(s) of output as expected", input.iter().filter(|l| !l.trim().is_empty()).count(), output.len());
        return Ok(ExitCode::SUCCESS);
    }
    let (actual_lines, expected_lines): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    for i in 0..actual_lines.len().max(expected_lines.len()) {
        let (a, e) = (actual_lines.get(i), expected_lines.get(i));
        if a != e {
            eprintln!("first difference at line {}:", i + 1);
            eprintln!("  expected: {}", e.unwrap_or(&"(nothing)"));
            eprintln!("  actual:   {}", a.unwrap_or(&"(nothing)"));
            break;
        }
    }
    eprintln!("FAILED (run `busbar plugin test --bless` to accept the new output)");
    Ok(ExitCode::FAILURE)
}
