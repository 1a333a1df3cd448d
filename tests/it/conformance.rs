//! The conformance suite: the same plugins in every guest language must behave exactly like the
//! Rust reference. The cases are data (`tests/conformance/events.jsonl` in, the checked-in
//! `expected.jsonl` out, rendered as `busbar dispatch` prints them); each language's build of the
//! `conform` plugin must reproduce the expected output, and each language's example plugins
//! must produce the Rust examples' output over the sample events. Results are reported per
//! language, then asserted together.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use busbar::plugins::Plugin;

use crate::support;

/// Every guest language busbar builds, with its plugin directory.
const LANGUAGES: &[(&str, &str)] = &[("js", "plugins/js"), ("python", "plugins/python"), ("c", "plugins/c"), ("go", "plugins/go")];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds a plugin with `busbar plugin build` (the toolchains are installed on first use into
/// target/toolchains, and unchanged plugins are not rebuilt).
fn build(dir: &Path) -> Result<PathBuf, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args(["plugin", "build"])
        .arg(dir)
        .env("BUSBAR_TOOLCHAINS", root().join("target/toolchains"))
        .env("BUSBAR_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache"))
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("build of {} failed:\n{}", dir.display(), String::from_utf8_lossy(&output.stderr)));
    }
    let manifest = busbar::plugins::Manifest::from_file(&dir.join("plugin.toml"), "plugin").map_err(|e| e.to_string())?;
    Ok(dir.join("dist").join(format!("{}.wasm", manifest.name)))
}

/// Loads a built plugin with a kv store of its own (every language starts from empty state).
fn load(wasm: &Path) -> Result<Plugin, String> {
    let stem = wasm.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let manifest = busbar::plugins::read_manifest(wasm, stem).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    support::RUNTIME
        .load_with_kv(&bytes, manifest, Arc::new(busbar::plugins::KvStore::detached()))
        .map_err(|e| format!("{}: {e}", wasm.display()))
}

/// Runs events through plugins, rendered exactly as `busbar dispatch` prints them, with trap
/// messages (which name engine internals) reduced to the outcome.
fn render(plugins: Vec<Plugin>, events: &Path) -> String {
    let recorder = Arc::new(Recorder::new());
    let bus = Bus::new(recorder.clone());
    for plugin in plugins {
        busbar::plugins::register(&bus, plugin).unwrap();
    }
    let mut out = String::new();
    for line in std::fs::read_to_string(events).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let event = busbar::event::Event::from_json(line).unwrap();
        let report = bus.publish(event);
        let style = busbar::report::Style { timings: false, redact_traps: true };
        for line in busbar::report::lines(&report, &recorder.take(), style) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        if e.get(i) != a.get(i) {
            return format!(
                "line {}:\n    expected: {}\n    actual:   {}",
                i + 1,
                e.get(i).unwrap_or(&"(nothing)"),
                a.get(i).unwrap_or(&"(nothing)")
            );
        }
    }
    String::new()
}

/// Prints a per-language report and fails if any language failed.
fn report(what: &str, results: Vec<(&str, Result<(), String>)>) {
    let mut failed = Vec::new();
    println!("{what}:");
    for (language, result) in &results {
        match result {
            Ok(()) => println!("  {language:8} ok"),
            Err(why) => {
                println!("  {language:8} FAILED");
                failed.push(format!("{language}: {why}"));
            }
        }
    }
    assert!(failed.is_empty(), "{what} failed for:\n{}", failed.join("\n"));
}

#[test]
fn the_conformance_plugin_behaves_identically_in_every_language() {
    let events = root().join("tests/conformance/events.jsonl");
    let expected_path = root().join("tests/conformance/expected.jsonl");
    let reference = render(vec![load(&support::built("testing", "conform")).unwrap()], &events);
    if std::env::var_os("BUSBAR_BLESS").is_some() {
        std::fs::write(&expected_path, &reference).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    let mut results = vec![(
        "rust",
        if reference == expected { Ok(()) } else { Err(first_difference(&expected, &reference)) },
    )];
    for (language, dir) in LANGUAGES {
        let result = build(&root().join(dir).join("conform")).and_then(|wasm| load(&wasm)).and_then(|plugin| {
            let actual = render(vec![plugin], &events);
            if actual == expected { Ok(()) } else { Err(first_difference(&expected, &actual)) }
        });
        results.push((language, result));
    }
    report("conformance (tests/conformance)", results);
}

#[test]
fn the_example_plugins_behave_like_the_rust_ones_in_every_language() {
    let events = root().join("tests/data/sample-events.jsonl");
    // Each language's scope-router and mention-notifier, with Rust's workspace-forwarder after
    // them (so that follow-up events reach the output too).
    let forwarder = || load(&support::built("examples", "workspace-forwarder")).unwrap();
    let rust = render(
        vec![
            load(&support::built("examples", "scope-router")).unwrap(),
            load(&support::built("examples", "mention-notifier")).unwrap(),
            forwarder(),
        ],
        &events,
    );
    let mut results = Vec::new();
    for (language, dir) in LANGUAGES {
        let result = (|| {
            let router = load(&build(&root().join(dir).join("scope-router"))?)?;
            let notifier = load(&build(&root().join(dir).join("mention-notifier"))?)?;
            let actual = render(vec![router, notifier, forwarder()], &events);
            if actual == rust { Ok(()) } else { Err(first_difference(&rust, &actual)) }
        })();
        results.push((*language, result));
    }
    report("example plugins over tests/data/sample-events.jsonl", results);
}

#[test]
fn a_failing_plugin_is_contained_like_a_rust_panic_in_every_language() {
    let mut results = Vec::new();
    for (language, dir) in LANGUAGES {
        let result = (|| {
            let failing = load(&build(&root().join(dir).join("failing"))?)?;
            let (bus, recorder) = support::recording_bus();
            busbar::plugins::register(&bus, support::echo(&format!("before-{language}"), &["*"])).unwrap();
            busbar::plugins::register(&bus, failing).unwrap();
            busbar::plugins::register(&bus, support::echo(&format!("after-{language}"), &["*"])).unwrap();
            for round in 0..3 {
                let report = bus.publish(busbar::event::Event::new("any:thing", "w1"));
                let outcomes: Vec<&str> = report.root().listeners.iter().map(|l| l.outcome.kind()).collect();
                if outcomes != ["ok", "trap", "ok"] {
                    return Err(format!("round {round}: outcomes {outcomes:?}"));
                }
                if support::tags(&recorder.take()).len() != 2 {
                    return Err(format!("round {round}: the good plugins did not both run"));
                }
            }
            Ok(())
        })();
        results.push((*language, result));
    }
    report("failing plugins between good ones", results);
}

#[test]
fn scaffolded_plugins_build_and_pass_their_own_test_in_every_language() {
    let parent = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for (language, _) in LANGUAGES {
        let result = (|| {
            let name = format!("hello-{language}");
            let busbar = || {
                let mut c = Command::new(env!("CARGO_BIN_EXE_busbar"));
                c.env("BUSBAR_TOOLCHAINS", root().join("target/toolchains"));
                c.env("BUSBAR_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache"));
                c
            };
            let new = busbar().args(["plugin", "new", &name, "--lang", language, "--dir"]).arg(parent.path()).output().unwrap();
            if !new.status.success() {
                return Err(String::from_utf8_lossy(&new.stderr).into_owned());
            }
            let dir = parent.path().join(&name);
            build(&dir)?;
            let test = busbar().args(["plugin", "test"]).arg(&dir).output().unwrap();
            if !test.status.success() {
                return Err(format!("its test failed: {}", String::from_utf8_lossy(&test.stderr)));
            }
            load(&dir.join("dist").join(format!("{name}.wasm"))).map(|_| ())
        })();
        results.push((*language, result));
    }
    report("busbar plugin new, build, test", results);

    // Every scaffolded component, as built, in one plugin directory served by `busbar serve`.
    let served = parent.path().join("served");
    std::fs::create_dir(&served).unwrap();
    for (language, _) in LANGUAGES {
        let dist = parent.path().join(format!("hello-{language}/dist"));
        for extension in ["wasm", "toml"] {
            let file = format!("hello-{language}.{extension}");
            std::fs::copy(dist.join(&file), served.join(&file)).unwrap();
        }
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = crate::support::server::TestServer::start(|c| c.plugins_dir = Some(served)).await;
        let list: serde_json::Value = reqwest::get(server.url("/v1/plugins")).await.unwrap().json().await.unwrap();
        let mut active: Vec<&str> =
            list["plugins"].as_array().unwrap().iter().filter(|p| p["status"] == "active").map(|p| p["name"].as_str().unwrap()).collect();
        active.sort();
        assert_eq!(active, ["hello-c", "hello-go", "hello-js", "hello-python"], "{list}");
        let published = server.publish_ok(serde_json::json!({"type": "issue:created", "workspace_id": "ws-1"})).await;
        let outcomes = &published["results"][0]["events"][0]["listeners"];
        assert_eq!(outcomes.as_array().unwrap().len(), 4, "{published}");
        assert!(outcomes.as_array().unwrap().iter().all(|l| l["outcome"] == "ok" && l["actions"] == 1), "{published}");
        server.stop().await;
    });
}

#[test]
fn the_languages_benchmark_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args(["bench", "languages", "--quick", "--calls", "5", "--plugins"])
        .arg(root().join("plugins"))
        .arg("--cache-dir")
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache"))
        .env("BUSBAR_TOOLCHAINS", root().join("target/toolchains"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for language in ["rust", "js", "python", "c", "go"] {
        assert!(stdout.contains(&format!("| {language} |")), "{stdout}");
    }
}
