//! Shared helpers: one plugin runtime per test process, loading the built plugins with test
//! manifests, and reading what the Recorder saw. The submodules hold the harnesses the tests
//! share: a server and its clients, child processes, a Redis of the test's own, and waiting.

pub mod process;
pub mod redis;
pub mod server;
pub mod wait;

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use busbar::broadcast::{Delivery, Recorder};
use busbar::bus::Bus;
use busbar::plugins::{Manifest, Plugin, Runtime, RuntimeConfig};
use serde_json::Value;

/// One runtime for the whole test binary, with a compile cache so that each component is
/// compiled once per build.
pub static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache");
    Runtime::new(RuntimeConfig { cache_dir: Some(cache), ..RuntimeConfig::default() }).expect("creating the plugin runtime")
});

/// Path of a built plugin: `group` is `examples`, `testing` or `hostile`.
pub fn built(group: &str, name: &str) -> PathBuf {
    PathBuf::from(busbar::BUILT_PLUGINS_DIR).join(group).join(format!("{name}.wasm"))
}

/// The manifest checked in beside a built plugin, renamed to `as_name`.
pub fn manifest(group: &str, name: &str, as_name: &str) -> Manifest {
    let path = built(group, name).with_extension("toml");
    let mut manifest =
        if path.exists() { Manifest::from_file(&path, name).expect("reading a checked-in manifest") } else { Manifest::named(name) };
    manifest.name = as_name.to_string();
    manifest
}

/// Loads a built plugin under `manifest` into the shared runtime.
pub fn load(group: &str, name: &str, manifest: Manifest) -> Plugin {
    let bytes = std::fs::read(built(group, name)).expect("reading a built plugin");
    RUNTIME.load(&bytes, manifest).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// The `echo` test plugin as `name`, tagged `name`, subscribed to `subscriptions`.
pub fn echo(name: &str, subscriptions: &[&str]) -> Plugin {
    let mut m = manifest("testing", "echo", name);
    m.subscriptions = Some(subscriptions.iter().map(|s| s.to_string()).collect());
    m.config.insert("tag".into(), name.into());
    load("testing", "echo", m)
}

/// A bus whose Broadcaster records every call.
pub fn recording_bus() -> (Bus, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::new());
    (Bus::new(recorder.clone()), recorder)
}

/// The `tag` of every echoed frame, in delivery order.
pub fn tags(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().filter_map(|d| payload(d)["tag"].as_str().map(str::to_string)).collect()
}

pub fn payload(delivery: &Delivery) -> Value {
    serde_json::from_str(delivery.frame.payload.as_str()).expect("frames carry JSON")
}

/// Runs `f` with this thread's log records written, as busbar's binary writes them, into the
/// returned text (plugins are called on the calling thread, so their logs are captured).
pub fn logged(f: impl FnOnce()) -> String {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt().with_writer(capture.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(capture.0.lock().unwrap().clone()).expect("log records are UTF-8")
}

/// Collects what a scoped `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// A component of about 700 KB whose one function nests 60 000 loops, each updating one of
/// 2 000 locals: compiling it takes Cranelift past 2.5 GB within a minute (measured with
/// `/usr/bin/time` on the compile worker; see docs/operations.md, "Limits").
pub fn compile_bomb() -> Vec<u8> {
    let (depth, locals) = (60_000, 2_000);
    let mut body = String::new();
    for d in 0..depth {
        let l = d % locals;
        body.push_str(&format!("(loop (local.set {l} (i64.add (local.get {l}) (i64.const 1))) "));
    }
    body.push_str(&")".repeat(depth));
    let wat = format!(
        r#"(component
             (core module $m (func (export "bomb") (local {})  {body}))
             (core instance $i (instantiate $m)))"#,
        "i64 ".repeat(locals)
    );
    wat::parse_str(&wat).expect("valid WAT")
}
