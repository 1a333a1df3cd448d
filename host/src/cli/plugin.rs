//! `busbar plugin new | build | test | check`: the plugin author's loop; `export | import`:
//! deployments in and out of a data directory.
//!
//! `new` scaffolds a plugin from a template (a crate depending on the SDK, a manifest, a README
//! and a test), `build` compiles it to a component in `dist/` (with the library's `build`) and
//! checks it, `test` runs the
//! plugin's `tests/events.jsonl` through it exactly as `busbar dispatch` would and compares the
//! result with `tests/expected.jsonl`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use busbar::broadcast::Recorder;
use busbar::build::{Built, Lang, Toolchains};
use busbar::bus::Bus;
use clap::Args;

use super::RuntimeArgs;

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name (also its directory and crate name).
    name: String,
    /// The language to write it in.
    #[arg(long, default_value = "rust", value_parser = lang_parser())]
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

/// Where `export` and `import` find the store.
#[derive(Args)]
pub struct DataDirArgs {
    /// The data directory (default: $BUSBAR_DATA_DIR, else ~/.local/share/busbar).
    #[arg(long, env = "BUSBAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    fn store(&self) -> anyhow::Result<busbar::store::SqliteStore> {
        let dir = self
            .data_dir
            .clone()
            .or_else(|| busbar::config::default_data_dir(&|key| std::env::var(key).ok()))
            .context("no data directory (pass --data-dir)")?;
        Ok(busbar::store::SqliteStore::open(&dir.join("busbar.db"))?)
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write `name.wasm` and `name.toml` for each deployed plugin.
    dir: PathBuf,
    #[command(flatten)]
    data: DataDirArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A directory of `name.wasm` (and `name.toml`) files, such as `export` writes.
    dir: PathBuf,
    #[command(flatten)]
    data: DataDirArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let names = busbar::plugins::export(&args.data.store()?, &args.dir)?;
    println!("exported {} plugin(s) to {}: {}", names.len(), args.dir.display(), names.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let names = busbar::plugins::import(&args.runtime.runtime()?, &args.data.store()?, &args.dir)?;
    println!("imported {} plugin(s) from {}: {}; a server on this data directory runs them from its next start", names.len(), args.dir.display(), names.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// A template's files, `(path in the new plugin, text)`, from `host/templates/<dir>/`.
macro_rules! template {
    ($dir:literal: $($file:literal),+) => {
        &[$(($file, include_str!(concat!("../../templates/", $dir, "/", $file)))),+]
    };
}

const COMMON_TEMPLATE: &[(&str, &str)] = template!("common": "tests/events.jsonl", "tests/expected.jsonl", ".gitignore");
const RUST_TEMPLATE: &[(&str, &str)] = template!("rust": "Cargo.toml", "plugin.toml", "src/lib.rs", "README.md");
const JS_TEMPLATE: &[(&str, &str)] = template!("js": "app.js", "plugin.toml", "README.md");
const C_TEMPLATE: &[(&str, &str)] = template!("c": "app.c", "plugin.toml", "README.md");
const GO_TEMPLATE: &[(&str, &str)] = template!("go": "app.go", "plugin.toml", "README.md");
const PYTHON_TEMPLATE: &[(&str, &str)] = template!("python": "app.py", "plugin.toml", "README.md");

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
    for (path, text) in template(args.lang).iter().chain(COMMON_TEMPLATE) {
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

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let built = build_dir(&args.dir)?;
    let runtime = args.runtime.runtime()?;
    let bytes = std::fs::read(&built.wasm)?;
    let info = runtime.check(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", built.wasm.display()))?;
    println!("built {} ({} bytes)", built.wasm.display(), info.size);
    println!("  worlds:        {}", info.worlds.join(", "));
    println!("  subscriptions: {}", info.subscriptions.join(", "));
    println!("  start-up:      {} ms (bounded by the manifest's `limits.timeout-ms`)", info.startup_ms);
    Ok(ExitCode::SUCCESS)
}

/// Builds the plugin in `dir` with the toolchains in `$BUSBAR_TOOLCHAINS` (else the cache).
pub fn build_dir(dir: &Path) -> anyhow::Result<Built> {
    let root = busbar::config::toolchains_dir(&|key| std::env::var(key).ok())
        .context("no cache directory for the plugin toolchains (set BUSBAR_TOOLCHAINS)")?;
    Ok(busbar::build::build(dir, &Toolchains::new(&root)?)?)
}

/// The `--lang` values, parsed into the library's `Lang`.
fn lang_parser() -> impl clap::builder::TypedValueParser<Value = Lang> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Lang::ALL.map(Lang::as_str)).try_map(|name| name.parse::<Lang>())
}

/// The files `busbar plugin new` writes for `lang` (besides `COMMON_TEMPLATE`).
fn template(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => RUST_TEMPLATE,
        Lang::Js => JS_TEMPLATE,
        Lang::Python => PYTHON_TEMPLATE,
        Lang::C => C_TEMPLATE,
        Lang::Go => GO_TEMPLATE,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The most lines of code a template may ask its author to read (issue #14).
    const MOST_AUTHOR_LINES: usize = 12;

    /// The lines of `source` that are the author's code: every line except blank ones, comments
    /// (line comments, block comments, Python docstrings) and package, import, `use` and
    /// `#include` lines (an import that opens a bracket runs to the line that closes it).
    fn author_lines(lang: Lang, source: &str) -> Vec<&str> {
        const DOCSTRING: &str = "\"\"\"";
        const IMPORTS: &[&str] = &["#include", "package ", "import ", "import(", "use ", "pub use "];
        let mut code = Vec::new();
        let (mut in_block_comment, mut in_docstring, mut in_import) = (false, false, false);
        for line in source.lines().map(str::trim) {
            if in_block_comment {
                in_block_comment = !line.contains("*/");
                continue;
            }
            if in_docstring {
                in_docstring = !line.contains(DOCSTRING);
                continue;
            }
            if in_import {
                in_import = !(line.starts_with(')') || line.starts_with('}'));
                continue;
            }
            let (comment, import) = if lang == Lang::Python {
                in_docstring = line.starts_with(DOCSTRING) && line.matches(DOCSTRING).count() == 1;
                (line.starts_with('#') || line.starts_with(DOCSTRING), line.starts_with("import ") || line.starts_with("from "))
            } else {
                in_block_comment = line.starts_with("/*") && !line.contains("*/");
                (line.starts_with("//") || line.starts_with("/*"), IMPORTS.iter().any(|p| line.starts_with(p)))
            };
            in_import = import && (line.ends_with('(') || line.ends_with('{'));
            if !line.is_empty() && !comment && !import {
                code.push(line);
            }
        }
        code
    }

    /// The template's source file, the one the author edits.
    fn template_source(lang: Lang) -> &'static str {
        let file = match lang {
            Lang::Rust => "src/lib.rs".to_string(),
            _ => format!("app.{}", lang.extensions()[0]),
        };
        let found = template(lang).iter().find(|(path, _)| *path == file);
        found.unwrap_or_else(|| panic!("the {lang:?} template has no {file}")).1
    }

    #[test]
    fn every_template_asks_for_at_most_twelve_lines_of_author_code() {
        for &lang in Lang::ALL.iter() {
            let code = author_lines(lang, template_source(lang));
            assert!(
                code.len() <= MOST_AUTHOR_LINES,
                "the {lang:?} template has {} lines of author code, more than {MOST_AUTHOR_LINES}:\n{}",
                code.len(),
                code.join("\n")
            );
            assert!(code.len() >= 3, "the {lang:?} template has almost no code: is the counter broken? {code:?}");
        }
    }

    /// The counter leaves out exactly what is not code, in every language, so that a template
    /// that grows by a line of code is caught.
    #[test]
    fn author_lines_are_code_lines_only() {
        let samples = [
            (
                Lang::Rust,
                "//! Docs.\n\nuse a::b;\nuse c::{\n    d,\n};\n/* block\n   comment */\nstruct X;\n// note\nfn f() {\n    g();\n}\n",
                4,
            ),
            (
                Lang::Js,
                "// Docs.\nimport { a } from './a.js';\nimport {\n  b,\n} from './b.js';\n\nexport function f() {\n  return [];\n}\n",
                3,
            ),
            (
                Lang::C,
                "// Docs.\n#include <stdlib.h>\n#include \"busbar.h\"\n/*\n * block\n */\n#define N 3\nint f(void) {\n  return N;  // three\n}\n",
                4,
            ),
            (Lang::Go, "// Docs.\npackage app\n\nimport (\n\t\"fmt\"\n)\n\nimport \"os\"\n\nfunc F() {\n\tfmt.Println(os.Args)\n}\n", 3),
            (
                Lang::Python,
                "\"\"\"Docs,\nover two lines.\"\"\"\n\nimport json\nfrom a import (\n    b,\n)\n# note\n\n\ndef f():\n    \"\"\"One line.\"\"\"\n    return json.dumps(b)\n",
                2,
            ),
        ];
        for (lang, source, expected) in samples {
            assert_eq!(author_lines(lang, source).len(), expected, "{lang:?}: {:?}", author_lines(lang, source));
        }
        // Code added at the end of any template is counted: no template leaves the counter
        // inside a comment, docstring or import, so a template that grows past the limit fails.
        for &lang in Lang::ALL.iter() {
            let line = if lang == Lang::Python { "x = 1\n" } else { "x();\n" };
            let grown = format!("{}{}", template_source(lang), line.repeat(MOST_AUTHOR_LINES + 1));
            assert!(author_lines(lang, &grown).len() > MOST_AUTHOR_LINES, "{lang:?}");
        }
    }
}
