//! Hot loading: swaps under a steady publisher lose and double nothing, a watched directory is
//! followed (new, changed, broken, deleted, renamed and slowly written files), failed loads are
//! counted in `/metrics` and listed, rollback restores the previous version, and kv state
//! survives a reload unless the manifest says otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use busbar::event::Event;
use busbar::plugins::{DEBOUNCE, Installed, Manifest, Registry, Runtime, RuntimeConfig};
use serde_json::{Value, json};

use crate::support::server::TestServer;
use crate::support::wait::{eventually, eventually_async};
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
    m.capabilities.grants.insert(busbar::plugins::Grant::Everyone);
    m.config.insert("tag".into(), tag.into());
    m
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
    let published = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..2)
        .map(|thread| {
            let (bus, stop, published) = (bus.clone(), stop.clone(), published.clone());
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
                    published.fetch_add(1, Ordering::Relaxed);
                }
                (sent, failures)
            })
        })
        .collect();

    let bad = echo_bytes()[..4096].to_vec();
    // Each version serves at least `PER_VERSION - 2` events (two publishers may still be on
    // the version before): progress is counted in events, never in time.
    const PER_VERSION: u64 = 20;
    let publishes = |n: u64| {
        let target = published.load(Ordering::Relaxed) + n;
        eventually("the publishers make progress", || published.load(Ordering::Relaxed) >= target);
    };
    for version in 1..=20 {
        publishes(PER_VERSION);
        if version == 10 {
            // A broken version dropped in halfway is refused; the last good one keeps serving.
            assert!(registry.install("swap", &bad, Some(echo_manifest("swap", "broken"))).is_err());
            publishes(PER_VERSION);
        }
        let tag = format!("v{version:02}");
        assert_eq!(registry.install("swap", &echo_bytes(), Some(echo_manifest("swap", &tag))).unwrap(), Installed::Replaced);
    }
    publishes(PER_VERSION);
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
    assert!(total as u64 >= 22 * PER_VERSION, "a steady publisher: {total} events");
    assert_eq!(versions.len(), 21, "every version (v00 to v20) served events: {versions:?}");
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

/// Waits until the watcher of `dir` has handled every change made before the call: a marker
/// plugin is added, then removed, and each is awaited. The watcher takes file events in order
/// and handles one batch at a time, so once the removal shows, nothing older is pending.
fn settle(dir: &std::path::Path, bus: &Bus) {
    let marker = dir.join("settle.wasm");
    write_atomically(&marker, &echo_bytes());
    eventually("the marker loads", || serving(bus, "settle"));
    std::fs::remove_file(&marker).unwrap();
    eventually("the marker goes", || !serving(bus, "settle"));
}

/// `settle`, watching through the server's plugin list.
async fn settle_server(dir: &std::path::Path, server: &TestServer) {
    let marker = dir.join("settle.wasm");
    write_atomically(&marker, &echo_bytes());
    eventually_async("the marker loads", async || plugin_list(server).await.contains_key("settle")).await;
    std::fs::remove_file(&marker).unwrap();
    eventually_async("the marker goes", async || !plugin_list(server).await.contains_key("settle")).await;
}

#[test]
fn a_watched_directory_is_followed() {
    let (registry, bus, recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    let _watcher = busbar::plugins::watch(dir.path(), registry.clone(), HashMap::new()).unwrap();
    let wasm = dir.path().join("probe.wasm");
    std::fs::write(dir.path().join("probe.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"one\"\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
    write_atomically(&wasm, &echo_bytes());
    eventually("the new plugin serves", || serving(&bus, "probe"));
    bus.publish(Event::new("x", "w"));
    assert_eq!(support::tags(&recorder.take()), ["one"]);

    // A changed manifest replaces the version in place.
    std::fs::write(dir.path().join("probe.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"two\"\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
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

/// The failed loads the registry has counted.
fn failures(registry: &Registry) -> u64 {
    registry.stats().failures_total.load(Ordering::Relaxed)
}

/// The tags echoed for one event.
fn tags_of_one_event(bus: &Bus, recorder: &Recorder) -> Vec<String> {
    bus.publish(Event::new("x", "w"));
    support::tags(&recorder.take())
}

#[test]
fn a_renamed_version_that_fails_to_load_leaves_the_old_name_serving() {
    let (registry, bus, recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    let _watcher = busbar::plugins::watch(dir.path(), registry.clone(), HashMap::new()).unwrap();
    let (wasm, toml) = (dir.path().join("probe.wasm"), dir.path().join("probe.toml"));
    write_atomically(&toml, b"subscriptions = [\"*\"]\n[config]\ntag = \"one\"\n[capabilities]\ngrants = [\"everyone\"]\n");
    write_atomically(&wasm, &echo_bytes());
    eventually("the plugin serves", || serving(&bus, "probe"));

    // A broken component (refused under the running name), then a manifest that renames it: the
    // renamed version cannot load either.
    write_atomically(&wasm, &echo_bytes()[..2000]);
    eventually("the broken component is refused", || failures(&registry) == 1);
    write_atomically(&toml, b"name = \"renamed\"\nsubscriptions = [\"*\"]\n[config]\ntag = \"two\"\n[capabilities]\ngrants = [\"everyone\"]\n");
    eventually("the renamed version is refused", || failures(&registry) == 2);
    assert!(serving(&bus, "probe") && !serving(&bus, "renamed"));
    assert_eq!(tags_of_one_event(&bus, &recorder), ["one"], "the old name keeps serving");
    let view = registry.get("probe").unwrap();
    assert_eq!(view.status, "active");
    let failure = view.last_failure.expect("the failure is recorded on the running plugin");
    assert!(failure.error.contains("`renamed`"), "{}", failure.error);
    assert!(registry.get("renamed").is_none());

    // Once the new version loads, the new name takes the old one's place.
    write_atomically(&wasm, &echo_bytes());
    eventually("the renamed plugin serves", || serving(&bus, "renamed"));
    assert!(!serving(&bus, "probe") && registry.get("probe").is_none());
    assert_eq!(tags_of_one_event(&bus, &recorder), ["two"]);
    assert_eq!(failures(&registry), 2);
}

#[test]
fn a_slowly_written_component_is_loaded_only_once_complete() {
    let (registry, bus, recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"slow\"\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
    let _watcher = busbar::plugins::watch(dir.path(), registry.clone(), HashMap::new()).unwrap();
    let bytes = echo_bytes();
    // Six chunks, each written after a pause well under the debounce: every prefix is a
    // truncated component that would fail to load.
    let mut file = std::fs::File::create(dir.path().join("slow.wasm")).unwrap();
    for chunk in bytes.chunks(bytes.len().div_ceil(6)) {
        std::thread::sleep(DEBOUNCE / 5);
        file.write_all(chunk).unwrap();
    }
    drop(file);
    eventually("the complete component serves", || serving(&bus, "slow"));
    assert_eq!(failures(&registry), 0, "no half-written file was loaded");
    let view = registry.get("slow").unwrap();
    assert!(view.last_failure.is_none());
    assert_eq!(view.plugin.unwrap().hash, busbar::plugins::content_hash(&bytes));
    assert_eq!(tags_of_one_event(&bus, &recorder), ["slow"]);
    // Reading the file to load it does not schedule it again.
    settle(dir.path(), &bus);
    assert_eq!(registry.stats().unchanged_total.load(Ordering::Relaxed), 0, "the file was loaded once");
    assert_eq!(failures(&registry), 0);
}

/// `busbar_plugin_reloads_total{result="failed"}`, scraped from `/metrics`.
async fn failed_reloads(server: &TestServer) -> f64 {
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let sample = text.lines().find_map(|l| l.strip_prefix("busbar_plugin_reloads_total{result=\"failed\"} "));
    sample.unwrap_or_else(|| panic!("no failed-reload sample in:\n{text}")).parse().unwrap()
}

/// `GET /v1/plugins`, by plugin name.
async fn plugin_list(server: &TestServer) -> HashMap<String, Value> {
    let body: Value = reqwest::get(server.url("/v1/plugins")).await.unwrap().json().await.unwrap();
    let plugins = body["plugins"].as_array().expect("a plugin list").iter();
    plugins.map(|p| (p["name"].as_str().unwrap().to_string(), p.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_loads_are_counted_in_metrics_and_listed_while_the_old_version_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (wasm, toml) = (dir.path().join("probe.wasm"), dir.path().join("probe.toml"));
    std::fs::write(&toml, "subscriptions = [\"probe:*\"]\n[config]\ntag = \"one\"\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
    std::fs::write(&wasm, echo_bytes()).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), &echo_bytes()[..2000]).unwrap();
    let server = TestServer::start(|c| c.plugins_dir = Some(dir.path().to_path_buf())).await;
    assert_eq!(failed_reloads(&server).await, 1.0, "the file that failed at start-up counts");
    let listed = plugin_list(&server).await;
    assert_eq!(listed["broken"]["status"], "failed");
    assert!(listed["broken"]["last_failure"]["error"].is_string(), "{}", listed["broken"]);

    // A broken version dropped into the watched directory.
    write_atomically(&wasm, &echo_bytes()[..2000]);
    eventually_async("the broken version is counted", async || failed_reloads(&server).await == 2.0).await;
    let probe = plugin_list(&server).await.remove("probe").unwrap();
    assert_eq!(probe["status"], "active");
    assert!(probe["last_failure"]["error"].is_string(), "{probe}");
    assert_eq!(probe["plugin"]["hash"], busbar::plugins::content_hash(&echo_bytes()), "the old version runs");
    let result = server.publish_ok(json!({"type": "probe:x", "workspace_id": "w"})).await;
    let listener = &result["results"][0]["events"][0]["listeners"][0];
    assert_eq!((&listener["listener"], &listener["outcome"]), (&json!("probe"), &json!("ok")), "{result}");

    // A file that cannot be read (a directory named like a component) and a bad manifest.
    std::fs::create_dir(dir.path().join("unreadable.wasm")).unwrap();
    eventually_async("the unreadable file is counted", async || failed_reloads(&server).await == 3.0).await;
    assert_eq!(plugin_list(&server).await["unreadable"]["status"], "failed");
    std::fs::write(&toml, "limits = 3\n").unwrap();
    eventually_async("the bad manifest is counted", async || failed_reloads(&server).await == 4.0).await;
    let probe = plugin_list(&server).await.remove("probe").unwrap();
    assert_eq!(probe["status"], "active");
    assert!(probe["last_failure"]["error"].as_str().unwrap().contains("probe.toml"), "{probe}");
    // Each failure is counted once: the watcher's own reads of the files schedule nothing.
    settle_server(dir.path(), &server).await;
    assert_eq!(failed_reloads(&server).await, 4.0);
    server.stop().await;
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
    let server = TestServer::start(|_| {}).await;
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

fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn fifos_devices_and_outside_symlinks_in_the_directory_are_refused_and_reload_goes_on() {
    let (registry, bus, recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    // At start-up: a FIFO and a symlink to a device among the components.
    mkfifo(&dir.path().join("fifo.wasm"));
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.wasm")).unwrap();
    std::fs::write(dir.path().join("good.toml"), "subscriptions = [\"*\"]\n[config]\ntag = \"good\"\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
    std::fs::write(dir.path().join("good.wasm"), echo_bytes()).unwrap();
    let started = Instant::now();
    let runtime = registry.runtime().clone();
    let (loaded, refused) = busbar::plugins::load_dir(&runtime, dir.path()).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "start-up was held by {:?}", refused);
    assert_eq!(loaded.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(), ["good"]);
    let mut errors: Vec<String> = refused.iter().map(|f| f.error.to_string()).collect();
    errors.sort();
    assert!(errors[0].ends_with("fifo.wasm is not a regular file (a FIFO); only regular files are loaded"), "{errors:?}");
    assert!(errors[1].ends_with("zero.wasm is a symlink that leads outside its directory; only symlinks within it are followed"), "{errors:?}");
    for plugin in loaded {
        registry.activate(plugin).unwrap();
    }

    // While watched: a FIFO manifest, a FIFO component and a device symlink are refused at once,
    // and a good plugin dropped in afterwards still loads.
    let mut names = HashMap::new();
    names.insert("good".to_string(), "good".to_string());
    let _watcher = busbar::plugins::watch(dir.path(), registry.clone(), names).unwrap();
    mkfifo(&dir.path().join("trap.toml"));
    std::fs::write(dir.path().join("trap.wasm"), echo_bytes()).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", dir.path().join("random.wasm")).unwrap();
    eventually("both are refused", || registry.get("trap").is_some_and(|v| v.last_failure.is_some()) && registry.get("random").is_some());
    let trap = registry.get("trap").unwrap().last_failure.unwrap().error;
    assert!(trap.contains("trap.toml is not a regular file (a FIFO)"), "{trap}");
    write_atomically(&dir.path().join("later.toml"), b"subscriptions = [\"*\"]\n[config]\ntag = \"later\"\n[capabilities]\ngrants = [\"everyone\"]\n");
    write_atomically(&dir.path().join("later.wasm"), &echo_bytes());
    eventually("hot reload still works", || serving(&bus, "later"));
    let mut tags = tags_of_one_event(&bus, &recorder);
    tags.sort();
    assert_eq!(tags, ["good", "later"]);
}

#[test]
fn names_that_are_not_plugin_names_are_refused_everywhere() {
    for name in [".", "..", ".hidden", "-dash", ""] {
        assert!(busbar::plugins::check_plugin_name(name).is_err(), "{name:?}");
    }
    let (registry, _bus, _recorder) = registry();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.toml"), "name = \"..\"\n").unwrap();
    std::fs::write(dir.path().join("probe.wasm"), echo_bytes()).unwrap();
    let (loaded, refused) = busbar::plugins::load_dir(registry.runtime(), dir.path()).unwrap();
    assert!(loaded.is_empty());
    assert!(refused[0].error.to_string().contains("`name` `..` must start with an ASCII letter or digit"), "{}", refused[0].error);
}
