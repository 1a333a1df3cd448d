//! The plugin runtime through real components: instance replacement, quarantine, kv and
//! config, the compile cache, and the load-time checks that refuse bad components.

use std::time::Duration;

use busbar::bus::Listener;
use busbar::event::Event;
use busbar::plugins::{LoadError, Manifest, PluginStatus, Runtime, RuntimeConfig};
use serde_json::json;

use crate::support::wait::eventually;
use crate::support::{self, payload, recording_bus};

fn request(echo: serde_json::Value) -> Event {
    Event::new("test:run", "w1").with_payload(&json!({ "echo": echo }).to_string()).unwrap()
}

#[test]
fn a_trapped_instance_is_replaced_and_kv_survives() {
    let (bus, recorder) = recording_bus();
    let plugin = support::echo("kv-survivor", &["*"]);
    busbar::plugins::register(&bus, plugin).unwrap();
    let count = |recorder: &busbar::broadcast::Recorder| -> Vec<u64> {
        recorder.take().iter().filter(|d| d.frame.event_type == "echo:count").map(|d| payload(d)["count"].as_u64().unwrap()).collect()
    };
    bus.publish(request(json!({"count": "n"})));
    assert_eq!(count(&recorder), [1]);
    let report = bus.publish(request(json!({"panic": true})));
    assert_eq!(report.root().listeners[0].outcome.kind(), "trap");
    bus.publish(request(json!({"count": "n"})));
    assert_eq!(count(&recorder), [2], "the store outlives the trapped instance");
    // A new version of the same plugin (same name) sees the same store.
    let reloaded = support::echo("kv-survivor", &["*"]);
    assert!(reloaded.info().instantiations >= 1);
    let actions = reloaded.handle(&request(json!({"count": "n"}))).unwrap();
    assert_eq!(actions.len(), 2);
    assert!(format!("{actions:?}").contains(r#""count":3"#), "{actions:?}");
}

#[test]
fn warm_instances_are_reused_and_a_trap_costs_exactly_one_instantiation() {
    let plugin = support::echo("warm", &["*"]);
    let probed = plugin.info().instantiations;
    assert_eq!(probed, 1, "loading instantiates once, for the probe");
    assert_eq!(plugin.info().idle_instances, 1, "the probe instance is kept warm");
    for n in 0..20 {
        plugin.handle(&Event::new("x", "w")).unwrap_or_else(|e| panic!("call {n}: {e}"));
    }
    assert_eq!(plugin.info().instantiations, probed, "good calls reuse the warm instance");
    let trapped = plugin.handle(&request(json!({"panic": true}))).unwrap_err();
    assert!(matches!(trapped, busbar::ListenerError::Trap(_)), "{trapped}");
    assert_eq!(plugin.info().idle_instances, 0, "the trapped instance is dropped");
    plugin.handle(&Event::new("x", "w")).unwrap();
    assert_eq!(plugin.info().instantiations, probed + 1, "the call after a trap instantiates once");
    for _ in 0..20 {
        plugin.handle(&Event::new("x", "w")).unwrap();
    }
    assert_eq!(plugin.info().instantiations, probed + 1, "and that instance is reused");
}

#[test]
fn repeated_failures_quarantine_then_recover() {
    let mut manifest = support::manifest("hostile", "trap", "quarantine-trap");
    manifest.limits.failures_to_quarantine = 3;
    manifest.limits.quarantine = Duration::from_millis(300);
    let plugin = support::load("hostile", "trap", manifest);
    let trap = Event::new("t", "w").with_payload(r#"{"trap":true}"#).unwrap();
    let fine = Event::new("t", "w");
    for _ in 0..3 {
        assert!(matches!(plugin.handle(&trap), Err(busbar::ListenerError::Trap(_))));
    }
    assert!(matches!(plugin.status(), PluginStatus::Quarantined { consecutive_failures: 3, .. }));
    let refused = plugin.handle(&fine).unwrap_err();
    assert!(matches!(refused, busbar::ListenerError::Quarantined(_)), "{refused}");
    eventually("the cool-off ends", || plugin.status() == PluginStatus::Active);
    assert!(plugin.handle(&fine).is_ok(), "after the cool-off a good call recovers the plugin");
    assert_eq!(plugin.info().quarantines, 1);
    // A failed probe quarantines again straight away.
    for _ in 0..3 {
        let _ = plugin.handle(&trap);
    }
    eventually("the second cool-off ends", || plugin.status() == PluginStatus::Active);
    assert!(matches!(plugin.handle(&trap), Err(busbar::ListenerError::Trap(_))));
    assert!(matches!(plugin.status(), PluginStatus::Quarantined { .. }), "a failed probe re-quarantines");
}

#[test]
fn config_values_reach_the_plugin() {
    let plugin = support::echo("configured", &["*"]);
    let actions = plugin.handle(&Event::new("x", "w")).unwrap();
    assert!(format!("{actions:?}").contains(r#""tag":"configured""#), "{actions:?}");
}

#[test]
fn kv_limits_are_errors_for_the_guest_not_traps() {
    let mut manifest = support::manifest("testing", "echo", "kv-limited");
    manifest.limits.kv_max_bytes = 0;
    let plugin = support::load("testing", "echo", manifest);
    let err = plugin.handle(&request(json!({"count": "n"}))).unwrap_err();
    assert!(matches!(err, busbar::ListenerError::Failed(ref m) if m.contains("over its 0 byte limit")), "{err}");
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(dir.path().to_path_buf()), ..RuntimeConfig::default() };
    let bytes = std::fs::read(support::built("examples", "scope-router")).unwrap();
    let first = Runtime::new(config.clone()).unwrap();
    assert!(!first.load(&bytes, Manifest::named("scope-router")).unwrap().info().from_cache);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().ends_with(".cwasm"));
    let second = Runtime::new(config.clone()).unwrap();
    assert!(second.load(&bytes, Manifest::named("scope-router")).unwrap().info().from_cache);
    // A damaged cache file is recompiled, not trusted.
    std::fs::write(&files[0], b"garbage").unwrap();
    let third = Runtime::new(config).unwrap();
    let plugin = third.load(&bytes, Manifest::named("scope-router")).unwrap();
    assert!(!plugin.info().from_cache);
    assert!(plugin.handle(&Event::new("task:x", "w").with_task("t1")).is_ok());
}

fn component(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

#[test]
fn bad_components_are_refused_with_clear_errors() {
    let runtime = &*support::RUNTIME;
    let good = std::fs::read(support::built("examples", "scope-router")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"hello".to_vec(), "not a WebAssembly file"),
        ("empty", Vec::new(), "not a WebAssembly file"),
        ("core module", component("(module)"), "a core WebAssembly module, not a component"),
        ("truncated", good[..good.len() / 2].to_vec(), "not a valid component"),
        (
            "other contract",
            component(r#"(component (import "busbar:plugin/log@0.3.0" (instance)))"#),
            "built against contract busbar:plugin@0.3.0, but this host speaks busbar:plugin@0.2.0 (and still loads busbar:plugin@0.1.0)",
        ),
        (
            "unknown import",
            component(r#"(component (import "wasi:http/types@0.2.0" (instance (export "f" (func)))))"#),
            "imports something this host does not provide",
        ),
        ("no exports", component("(component)"), "does not export `handle`"),
        (
            "wrong export types",
            component(
                r#"(component
                     (core module $m (func (export "f")))
                     (core instance $i (instantiate $m))
                     (func $f (canon lift (core func $i "f")))
                     (export "handle" (func $f))
                     (export "subscriptions" (func $f)))"#,
            ),
            "does not match the `listener` world",
        ),
    ];
    for (what, bytes, expected) in cases {
        let err = runtime.load(&bytes, Manifest::named("bad")).err().unwrap_or_else(|| panic!("{what} loaded"));
        assert!(err.to_string().contains(expected), "{what}: {err}");
        let err = runtime.check(&bytes).unwrap_err();
        assert!(err.to_string().contains(expected), "{what} (check): {err}");
    }
    assert!(matches!(runtime.check(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
}

#[test]
fn check_reports_subscriptions_and_imports() {
    let bytes = std::fs::read(support::built("examples", "scope-router")).unwrap();
    let info = support::RUNTIME.check(&bytes).unwrap();
    assert_eq!(info.subscriptions, ["task:*", "chat:*"]);
    assert_eq!(info.contract, "busbar:plugin@0.2.0");
    assert_eq!(info.hash, busbar::plugins::content_hash(&bytes));
    assert!(info.imports.iter().any(|i| i == "busbar:plugin/log@0.2.0"), "{:?}", info.imports);
}

#[test]
fn manifest_limits_apply_per_plugin() {
    let mut manifest = support::manifest("hostile", "flood", "flood-allowed");
    manifest.limits.max_actions = 200_000;
    manifest.limits.max_output_bytes = 8 << 20;
    manifest.limits.timeout = Duration::from_secs(5);
    let plugin = support::load("hostile", "flood", manifest);
    let actions = plugin.handle(&Event::new("x", "w")).unwrap();
    assert_eq!(actions.len(), 100_000, "raised caps let the same output through");
}

#[test]
fn guest_output_reaches_the_log_under_the_plugins_name_within_a_cap() {
    let mut manifest = support::manifest("testing", "echo", "printer");
    manifest.subscriptions = Some(vec!["*".into()]);
    manifest.limits.log_bytes_per_call = 1024;
    let plugin = support::load("testing", "echo", manifest);
    let log = support::logged(|| {
        plugin.handle(&request(json!({"print": 1000}))).unwrap();
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("stream=\"stdout\"")).collect();
    assert!(!lines.is_empty(), "{log}");
    assert!(lines[0].contains("plugin=\"printer\"") && lines[0].contains("line 0"), "{}", lines[0]);
    assert!(lines.len() < 200, "1000 lines printed, the 1 KiB budget lets about 150 through: {}", lines.len());
    // The next call has a fresh budget.
    let again = support::logged(|| {
        plugin.handle(&request(json!({"print": 1}))).unwrap();
    });
    assert!(again.contains("line 0"), "{again}");
    // A panic's message arrives on stderr, as a warning.
    let panicked = support::logged(|| {
        let _ = plugin.handle(&request(json!({"panic": true})));
    });
    assert!(panicked.contains("WARN") && panicked.contains("echo asked to panic"), "{panicked}");
    // A line the call left unterminated reaches the log when the call ends, once.
    let unterminated = support::logged(|| {
        plugin.handle(&request(json!({"print_unterminated": "no newline at the end"}))).unwrap();
        plugin.handle(&request(json!({}))).unwrap();
    });
    assert_eq!(unterminated.matches("no newline at the end").count(), 1, "{unterminated}");
}

#[test]
fn a_plugin_says_what_it_was_written_in_when_its_component_does() {
    let plugin = support::load("examples", "workspace-forwarder", support::manifest("examples", "workspace-forwarder", "forwarder"));
    assert_eq!(plugin.info().language.as_deref(), Some("Rust"));
}
