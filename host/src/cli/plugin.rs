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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    /// The language of the plugin in `dir`, from its files.
    pub fn of(dir: &Path) -> anyhow::Result<Lang> {
        if dir.join("Cargo.toml").exists() {
            Ok(Lang::Rust)
        } else if dir.join("app.js").exists() {
            Ok(Lang::Js)
        } else if dir.join("app.py").exists() {
            Ok(Lang::Python)
        } else {
            bail!("{}: no Cargo.toml, app.js or app.py: not a plugin source directory", dir.display())
        }
    }
}

/// The helpers `busbar plugin build` puts beside JavaScript and Python plugins.
const JS_SDK: &str = include_str!("../../../plugins/js/sdk/busbar.js");
const PY_SDK: &str = include_str!("../../../plugins/python/sdk/busbar.py");

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

const COMMON_TEMPLATE: &[(&str, &str)] = &[
    ("tests/events.jsonl", include_str!("../../templates/common/tests/events.jsonl")),
    ("tests/expected.jsonl", include_str!("../../templates/common/tests/expected.jsonl")),
    (".gitignore", include_str!("../../templates/common/.gitignore")),
];

const RUST_TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    ("plugin.toml", include_str!("../../templates/rust/plugin.toml")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
    ("README.md", include_str!("../../templates/rust/README.md")),
];

const JS_TEMPLATE: &[(&str, &str)] = &[
    ("app.js", include_str!("../../templates/js/app.js")),
    ("plugin.toml", include_str!("../../templates/js/plugin.toml")),
    ("README.md", include_str!("../../templates/js/README.md")),
];

const PYTHON_TEMPLATE: &[(&str, &str)] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    ("plugin.toml", include_str!("../../templates/python/plugin.toml")),
    ("README.md", include_str!("../../templates/python/README.md")),
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
    // Only Rust plugins depend on a crate; JavaScript and Python get their helpers at build.
    let sdk = match (args.lang, args.sdk) {
        (Lang::Rust, sdk) => {
            let sdk = sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"));
            sdk.canonicalize().with_context(|| {
                format!("the plugin SDK is not at {} (pass --sdk PATH to busbar's plugin-sdk)", sdk.display())
            })?
        }
        (_, _) => PathBuf::new(),
    };
    let type_name: String = args
        .name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| part[..1].to_ascii_uppercase() + &part[1..])
        .collect();
    let template = match args.lang {
        Lang::Rust => RUST_TEMPLATE,
        Lang::Js => JS_TEMPLATE,
        Lang::Python => PYTHON_TEMPLATE,
    };
    for (path, text) in template.iter().chain(COMMON_TEMPLATE) {
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

/// Compiles the plugin in `dir` (Rust, JavaScript or Python) and puts the component and its
/// manifest into `dir/dist/`. JavaScript and Python builds are skipped when nothing changed.
pub fn build_dir(dir: &Path) -> anyhow::Result<Built> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = busbar::plugins::Manifest::from_file(&manifest_path, "plugin")?;
    let lang = Lang::of(dir)?;
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist)?;
    let wasm = dist.join(format!("{}.wasm", manifest.name));
    // Write then rename, so that a server watching dist/ never sees half a file.
    let tmp = dist.join(format!(".{}.wasm.{}.tmp", manifest.name, std::process::id()));
    match lang {
        Lang::Rust => build_rust(dir, &manifest.name, &tmp)?,
        Lang::Js | Lang::Python => {
            // One build of a plugin directory at a time (tests build in parallel).
            let _lock = super::toolchain::lock(&dir.join("target"))?;
            let stamp_path = dist.join(format!(".{}.stamp", manifest.name));
            let stamp = source_stamp(dir, lang)?;
            if wasm.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
                eprintln!("{} is up to date", manifest.name);
            } else {
                build_guest(dir, lang, &manifest.name, &tmp)?;
                std::fs::rename(&tmp, &wasm)?;
                std::fs::write(&stamp_path, stamp)?;
            }
        }
    }
    std::fs::copy(&manifest_path, dist.join(format!("{}.toml", manifest.name)))?;
    if tmp.exists() {
        std::fs::rename(&tmp, &wasm)?;
    }
    Ok(Built { name: manifest.name, wasm })
}

fn build_rust(dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
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
    eprintln!("building {name} for wasm32-wasip2 ...");
    super::toolchain::run(
        Command::new("cargo").args(["build", "--release", "--target", "wasm32-wasip2"]).current_dir(dir),
        "cargo build",
    )?;
    let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{package}.wasm"));
    std::fs::copy(&artifact, out).with_context(|| format!("copying {}", artifact.display()))?;
    Ok(())
}

/// JavaScript and Python: the plugin's sources and the SDK are staged in `dir/target/stage`,
/// then componentized with the pinned toolchain.
fn build_guest(dir: &Path, lang: Lang, name: &str, out: &Path) -> anyhow::Result<()> {
    let (extension, sdk_name, sdk) = match lang {
        Lang::Js => ("js", "busbar.js", JS_SDK),
        Lang::Python => ("py", "busbar.py", PY_SDK),
        Lang::Rust => unreachable!("Rust plugins are built by cargo"),
    };
    let stage = dir.join("target/stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    for file in sources(dir, extension)? {
        std::fs::copy(&file, stage.join(file.file_name().context("a file name")?))?;
    }
    if !stage.join(sdk_name).exists() {
        std::fs::write(stage.join(sdk_name), sdk)?;
    }
    let wit = super::toolchain::wit_dir()?;
    let out = std::path::absolute(out)?;
    eprintln!("building {name} ({}) ...", if lang == Lang::Js { "componentize-js" } else { "componentize-py" });
    match lang {
        Lang::Js => {
            let tool = super::toolchain::componentize_js()?;
            // stdio, clocks and random stay (console.log reaches busbar's log); no http.
            super::toolchain::run(
                Command::new(tool)
                    .arg("app.js")
                    .arg("--wit")
                    .arg(&wit)
                    .args(["-n", "listener", "-d", "http", "fetch-event", "-o"])
                    .arg(&out)
                    .current_dir(&stage),
                "componentize-js",
            )
        }
        Lang::Python => {
            let tool = super::toolchain::componentize_py()?;
            super::toolchain::run(
                Command::new(tool)
                    .arg("-d")
                    .arg(&wit)
                    .args(["-w", "listener", "componentize", "-p", "."])
                    .arg("app")
                    .arg("-o")
                    .arg(&out)
                    .current_dir(&stage),
                "componentize-py",
            )
        }
        Lang::Rust => unreachable!("Rust plugins are built by cargo"),
    }
}

/// The plugin's source files of one extension (not recursive), sorted.
fn sources(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    Ok(files)
}

/// A hash of everything a JavaScript or Python build depends on.
fn source_stamp(dir: &Path, lang: Lang) -> anyhow::Result<String> {
    let (extension, sdk) = match lang {
        Lang::Js => ("js", JS_SDK),
        _ => ("py", PY_SDK),
    };
    let mut all = Vec::new();
    for file in sources(dir, extension)? {
        all.extend_from_slice(file.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        all.extend_from_slice(&std::fs::read(&file)?);
    }
    all.extend_from_slice(sdk.as_bytes());
    all.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    Ok(busbar::plugins::content_hash(&all))
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
