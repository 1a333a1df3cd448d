//! Hot loading: swaps under a steady publisher lose and double nothing, a watched directory is
//! followed (new, changed, broken, deleted files), rollback restores the previous version, and
//! kv state survives a reload unless the manifest says otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use busbar::event::Event;
use busbar::plugins::{Installed, Manifest, Registry, Runtime, RuntimeConfig};
use serde_json::{Value, json};

use crate::support::{self, payload};

fn registry() -> (Arc<Registry>, Arc<Bus>, Arc<Recorder>) {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache");
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(cache), instance_slots: 256, ..RuntimeConfig::default() })
        .expect("runtime");
    let recorder = Arc::new(Recorder::new());
    let bus = Arc::new(Bus::new(recorder.clone()));
    (Arc::new(Registry::new(Arc::new(runtime), bus.clone())), bus, recorder)
}

fn echo_bytes() -> Vec<u8> {
    std::fs::read(support::built("testing", "echo")).unwrap()
}

fn echo_manifest(name: &str, tag: &str) -> Manifest {
    let mut m = Manifest::named(name);
    m.subscriptions = Some(vec!["*".into()]);
    m.config.insert("tag".into(), tag.into());
    m
}

/// Polls `check` every 10 ms for up to 10 s.
fn eventually(what: &str, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn twenty_swaps_under_a_steady_publisher_lose_and_double_nothing() {
    let (registry, bus, recorder) = registry();
    // A native neighbour before the swapped plugin shows that order never changes.
    bus.register(
        busbar::bus::Registration::new(
            "first",
            vec![busbar::bus::Subscription::All],
            Arc::new(|_: &Event| -> Result<Vec<busbar::Action>, busbar::ListenerError> { Ok(vec![]) }),
        )
        .with_order(Some(0)),
    )
    .unwrap();
    assert_eq!(registry.install("swap", &echo_bytes(), Some(echo_manifest("swap", "v00"))).unwrap(), Installed::Created);

    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..2)
        .map(|thread| {
            let (bus, stop) = (bus.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut failures = 0;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let event = Event::new("load:tick", "w1").with_payload(&json!({"thread": thread, "n": n}).to_string()).unwrap();
                    sent.push(event.id.clone());
                    let report = bus.publish(event);
                    let names: Vec<&str> = report.root().listeners.iter().map(|l| l.listener.as_str()).collect();
                    assert_eq!(names, ["first", "swap"], "order is unchanged during swaps");
                    failures += report.root().listeners.iter().filter(|l| !l.outcome.is_ok()).count();
                    n += 1;
                }
                (sent, failures)
            })
        })
        .collect();

    let bad = echo_bytes()[..4096].to_vec();
    for version in 1..=20 {
        std::thread::sleep(Duration::from_millis(25));
        if version == 10 {
            // A broken version dropped in halfway is refused; the last good one keeps serving.
            assert!(registry.install("swap", &bad, Some(echo_manifest("swap", "broken"))).is_err());
            std::thread::sleep(Duration::from_millis(25));
        }
        let tag = format!("v{version:02}");
        assert_eq!(registry.install("swap", &echo_bytes(), Some(echo_manifest("swap", &tag))).unwrap(), Installed::Replaced);
    }
    std::thread::sleep(Duration::from_millis(25));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(Vec<String>, usize)> = publishers.into_iter().map(|p| p.join().unwrap()).collect();

    let mut tag_of: HashMap<String, String> = HashMap::new();
    for delivery in recorder.take() {
        let frame = payload(&delivery);
        let previous = tag_of.insert(frame["id"].as_str().unwrap().to_string(), frame["tag"].as_str().unwrap().to_string());
        assert!(previous.is_none(), "an event was handled twice");
    }
    let mut total = 0;
    for (sent, failures) in &results {
        assert_eq!(*failures, 0, "no failed publishes");
        total += sent.len();
        let tags: Vec<&String> = sent.iter().map(|id| tag_of.get(id).expect("every event handled exactly once")).collect();
        assert!(tags.windows(2).all(|w| w[0] <= w[1]), "versions switch in order");
        assert!(tags.iter().all(|t| *t != "broken"));
    }
    let versions: std::collections::BTreeSet<&String> = tag_of.values().collect();
    assert!(total > 1000, "a steady publisher: {total} events");
    assert!(versions.len() >= 15, "most versions served events: {versions:?}");
    assert_eq!(versions.last().map(|v| v.as_str()), Some("v20"));
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn serving(bus: &Bus, name: &str) -> bool {
    bus.listeners().iter().any(|l| l.name == name)
}

#[test]
fn a_watched_directory_is_followed() {
    let (registry, bus, recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    let _watcher = busbar::plugins::watch(dir.path(), registry.clone(), HashMap::new()).unwrap();
    let wasm = dir.path().join("probe.wasm");
    std::fs::write(dir.path().join("probe.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"one\"\n").unwrap();
    write_atomically(&wasm, &echo_bytes());
    eventually("the new plugin serves", || serving(&bus, "probe"));
    bus.publish(Event::new("x", "w"));
    assert_eq!(support::tags(&recorder.take()), ["one"]);

    // A changed manifest replaces the version in place.
    std::fs::write(dir.path().join("probe.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"two\"\n").unwrap();
    eventually("the changed plugin serves", || {
        bus.publish(Event::new("x", "w"));
        support::tags(&recorder.take()) == ["two"]
    });

    // A truncated (half-written) component is refused: the running version keeps serving.
    std::fs::write(&wasm, &echo_bytes()[..2000]).unwrap();
    eventually("the failure is recorded", || registry.get("probe").is_some_and(|v| v.last_failure.is_some()));
    assert_eq!(registry.get("probe").unwrap().status, "active");
    bus.publish(Event::new("x", "w"));
    assert_eq!(support::tags(&recorder.take()), ["two"]);

    // Completing the file loads it.
    write_atomically(&wasm, &echo_bytes());
    eventually("the repaired plugin clears its failure", || registry.get("probe").is_some_and(|v| v.last_failure.is_none()));

    // A deleted file stops being called.
    std::fs::remove_file(&wasm).unwrap();
    eventually("the deleted plugin is gone", || !serving(&bus, "probe"));
    bus.publish(Event::new("x", "w"));
    assert!(recorder.take().is_empty());
}

#[test]
fn rollback_restores_the_previous_version() {
    let (registry, bus, recorder) = registry();
    let tag = || {
        bus.publish(Event::new("x", "w"));
        support::tags(&recorder.take())
    };
    assert!(matches!(registry.rollback("r"), Err(busbar::plugins::RollbackError::Unknown(_))));
    registry.install("r", &echo_bytes(), Some(echo_manifest("r", "first"))).unwrap();
    assert!(matches!(registry.rollback("r"), Err(busbar::plugins::RollbackError::NoPrevious(_))));
    registry.install("r", &echo_bytes(), Some(echo_manifest("r", "second"))).unwrap();
    assert_eq!(tag(), ["second"]);
    assert!(registry.get("r").unwrap().previous.is_some());
    registry.rollback("r").unwrap();
    assert_eq!(tag(), ["first"]);
    // Rolling back again returns to the version rolled back from.
    registry.rollback("r").unwrap();
    assert_eq!(tag(), ["second"]);
    assert_eq!(registry.stats().rollbacks_total.load(Ordering::Relaxed), 2);
    // The same component and manifest again is a no-op.
    assert_eq!(registry.install("r", &echo_bytes(), Some(echo_manifest("r", "second"))).unwrap(), Installed::Unchanged);
}

#[test]
fn kv_state_survives_a_reload_unless_the_manifest_resets_it() {
    let (registry, bus, recorder) = registry();
    let count = || -> Vec<u64> {
        bus.publish(Event::new("x", "w").with_payload(r#"{"echo":{"count":"n"}}"#).unwrap());
        recorder.take().iter().filter(|d| d.frame.event_type == "echo:count").map(|d| payload(d)["count"].as_u64().unwrap()).collect()
    };
    registry.install("kv", &echo_bytes(), Some(echo_manifest("kv", "a"))).unwrap();
    assert_eq!(count(), [1]);
    registry.install("kv", &echo_bytes(), Some(echo_manifest("kv", "b"))).unwrap();
    assert_eq!(count(), [2], "state survives a reload");
    let mut reset = echo_manifest("kv", "c");
    reset.reset_kv_on_reload = true;
    registry.install("kv", &echo_bytes(), Some(reset)).unwrap();
    assert_eq!(count(), [1], "the manifest asked for a fresh store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_over_http() {
    let server = crate::server::TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    for tag in ["one", "two"] {
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(echo_bytes()))
            .text("manifest", format!("subscriptions = [\"probe:*\"]\n[config]\ntag = \"{tag}\"\n"));
        assert!(http.put(server.url("/v1/plugins/echo")).multipart(form).send().await.unwrap().status().is_success());
    }
    let response = http.post(server.url("/v1/plugins/echo/rollback")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    assert!(view["previous"]["hash"].is_string());
    let result = server.publish_ok(json!({"type": "probe:x", "workspace_id": "w"})).await;
    assert_eq!(result["results"][0]["events"][0]["listeners"][0]["listener"], "echo");
    let response = http.post(server.url("/v1/plugins/nope/rollback")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}
