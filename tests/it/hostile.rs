//! Every hostile plugin, placed between two good plugins: both good plugins' output is intact
//! for every event, the hostile one gets the right outcome, and the bus keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use busbar::bus::{Bus, BusLimits, EventStatus, NotDispatched, PublishReport, Registration};
use busbar::plugins::{CompileLimits, Grant, KvOnRemove, Plugin, Registry, Runtime, RuntimeConfig};
use busbar::event::Event;
use busbar::plugins::LoadError;
use serde_json::{Value, json};

use crate::support::{self, payload, recording_bus, tags};

/// Runs `payloads` through `[before, hostile, after]`, twice, and returns the hostile plugin's
/// outcome kinds. Checks that `before` and `after` saw every event both times.
fn between_good_plugins(hostile: &str, tune: impl Fn(&mut busbar::plugins::Manifest), payloads: &[Value]) -> Vec<String> {
    let (bus, recorder) = recording_bus();
    let before = format!("before-{hostile}");
    let after = format!("after-{hostile}");
    let mut manifest = support::manifest("hostile", hostile, hostile);
    manifest.subscriptions = Some(vec!["*".into()]);
    tune(&mut manifest);
    busbar::plugins::register(&bus, support::echo(&before, &["*"])).unwrap();
    busbar::plugins::register(&bus, support::load("hostile", hostile, manifest)).unwrap();
    busbar::plugins::register(&bus, support::echo(&after, &["*"])).unwrap();
    let mut kinds = Vec::new();
    for round in 0..2 {
        for (i, p) in payloads.iter().enumerate() {
            let event = Event::new("hostile:test", "w1").with_payload(&p.to_string()).unwrap();
            let report = bus.publish(event);
            let good: Vec<String> = tags(&recorder.take()).into_iter().filter(|t| t == &before || t == &after).collect();
            assert_eq!(good, [before.clone(), after.clone()], "{hostile}: round {round}, event {i}");
            let outcome = &report.root().listeners[1];
            assert_eq!(outcome.listener, hostile);
            kinds.push(outcome.outcome.kind().to_string());
        }
    }
    kinds
}

#[test]
fn trap_on_demand_is_contained_and_the_instance_replaced() {
    let kinds = between_good_plugins("trap", |_| {}, &[json!({"trap": true}), json!({}), json!({"trap": true}), json!({})]);
    assert_eq!(kinds, ["trap", "ok", "trap", "ok", "trap", "ok", "trap", "ok"]);
}

#[test]
fn infinite_loop_times_out() {
    let kinds = between_good_plugins("spin", |m| m.limits.timeout = Duration::from_millis(20), &[json!({})]);
    assert_eq!(kinds, ["timeout", "timeout"]);
}

#[test]
fn unbounded_allocation_is_out_of_memory() {
    let kinds = between_good_plugins("hog", |_| {}, &[json!({})]);
    assert_eq!(kinds, ["out_of_memory", "out_of_memory"]);
}

#[test]
fn deep_recursion_traps_on_stack_overflow() {
    let (bus, _) = recording_bus();
    let mut manifest = support::manifest("hostile", "recurse", "recurse-alone");
    manifest.subscriptions = Some(vec!["*".into()]);
    busbar::plugins::register(&bus, support::load("hostile", "recurse", manifest)).unwrap();
    let report = bus.publish(Event::new("x", "w"));
    let outcome = &report.root().listeners[0].outcome;
    assert_eq!(outcome.kind(), "trap");
    assert!(format!("{outcome:?}").contains("call stack exhausted"), "{outcome:?}");
    let kinds = between_good_plugins("recurse", |_| {}, &[json!({})]);
    assert_eq!(kinds, ["trap", "trap"]);
}

#[test]
fn oversized_output_is_refused_whole() {
    let generous = |m: &mut busbar::plugins::Manifest| {
        // Producing 100 000 actions takes a while; what is checked here is the refusal, and
        // six refusals in a row would otherwise quarantine the plugin.
        m.limits.timeout = Duration::from_secs(5);
        m.limits.failures_to_quarantine = 100;
    };
    let kinds = between_good_plugins("flood", generous, &[json!({}), json!({"flood": "bytes"}), json!({"flood": "json"})]);
    assert_eq!(kinds, ["invalid_output"; 6]);
}

#[test]
fn panic_during_start_up_refuses_the_plugin_at_load() {
    let bytes = std::fs::read(support::built("hostile", "startup-panic")).unwrap();
    let err = support::RUNTIME.load(&bytes, busbar::plugins::Manifest::named("startup-panic")).unwrap_err();
    assert!(matches!(err, LoadError::Startup(_)), "{err}");
    assert_eq!(err.to_string(), "failed at start-up: trap: wasm `unreachable` instruction executed");
}

#[test]
fn sandbox_escapes_fail_inside_the_plugin() {
    let (bus, recorder) = recording_bus();
    busbar::plugins::register(&bus, support::echo("before-sandbox", &["*"])).unwrap();
    let mut manifest = support::manifest("hostile", "sandbox", "sandbox");
    manifest.subscriptions = Some(vec!["*".into()]);
    busbar::plugins::register(&bus, support::load("hostile", "sandbox", manifest)).unwrap();
    busbar::plugins::register(&bus, support::echo("after-sandbox", &["*"])).unwrap();
    let report = bus.publish(Event::new("probe:sandbox", "w1"));
    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{report:?}");
    let deliveries = recorder.take();
    assert_eq!(tags(&deliveries), ["before-sandbox", "after-sandbox"]);
    let report = deliveries.iter().find(|d| d.frame.event_type == "sandbox:report").map(payload).expect("a report");
    for attempt in ["read_etc_passwd", "read_cwd", "write_file", "tcp_connect", "udp_bind", "tcp_listen", "dns"] {
        let result = report[attempt].as_str().unwrap_or_default();
        assert!(result.starts_with("denied"), "{attempt}: {result}");
    }
    assert_eq!(report["env_vars"], 0);
    assert_eq!(report["env_home"], Value::Null);
    assert_eq!(report["env_path"], Value::Null);
    assert_eq!(report["args"], 0);
    // And the bus keeps serving, the sandboxed plugin included.
    let again = bus.publish(Event::new("probe:after", "w1"));
    assert!(again.root().listeners.iter().all(|l| l.outcome.is_ok()), "{again:?}");
    assert_eq!(tags(&recorder.take()), ["before-sandbox", "after-sandbox"]);
}

#[test]
fn follow_up_loop_ends_with_a_clear_outcome() {
    let (bus, recorder) = recording_bus();
    busbar::plugins::register(&bus, support::echo("before-loop", &["loop:*"])).unwrap();
    let manifest = support::manifest("hostile", "follow-up-loop", "follow-up-loop");
    busbar::plugins::register(&bus, support::load("hostile", "follow-up-loop", manifest)).unwrap();
    busbar::plugins::register(&bus, support::echo("after-loop", &["loop:*"])).unwrap();
    let report: PublishReport = bus.publish(Event::new("loop:ping", "w1"));
    let limits = bus.limits();
    let dispatched = report.events.iter().filter(|e| e.status == EventStatus::Dispatched).count();
    assert_eq!(dispatched, 1 + limits.max_follow_ups, "the root plus the follow-up cap");
    assert!(report.events.iter().any(|e| e.status == EventStatus::NotDispatched { reason: NotDispatched::EventLimit }));
    assert!(report.events.iter().all(|e| e.depth <= limits.max_depth + 1));
    // Every dispatched event still reached both good plugins, around the looping one.
    let deliveries = recorder.take();
    assert_eq!(tags(&deliveries).len(), 2 * dispatched);
    for event in report.events.iter().filter(|e| e.status == EventStatus::Dispatched) {
        let names: Vec<&str> = event.listeners.iter().map(|l| l.listener.as_str()).collect();
        assert_eq!(names, ["before-loop", "follow-up-loop", "after-loop"]);
    }
    // The bus keeps serving afterwards.
    let again = bus.publish(Event::new("other:ping", "w1"));
    assert_eq!(again.events.len(), 1);
    assert!(again.root().listeners.is_empty(), "nobody subscribes to other:*");
}

#[test]
fn a_follow_up_chain_from_a_plugin_ends_at_the_depth_limit() {
    let (bus, recorder) = recording_bus();
    busbar::plugins::register(&bus, support::echo("before-chain", &["loop:*"])).unwrap();
    let mut manifest = support::manifest("hostile", "follow-up-loop", "follow-up-chain");
    manifest.config.insert("fanout".into(), "1".into());
    busbar::plugins::register(&bus, support::load("hostile", "follow-up-loop", manifest)).unwrap();
    busbar::plugins::register(&bus, support::echo("after-chain", &["loop:*"])).unwrap();
    let report: PublishReport = bus.publish(Event::new("loop:ping", "w1"));
    let limits = bus.limits();
    let depths: Vec<u32> = report.events.iter().filter(|e| e.status == EventStatus::Dispatched).map(|e| e.depth).collect();
    assert_eq!(depths, (0..=limits.max_depth).collect::<Vec<_>>(), "one event per depth, the root included");
    let last = report.events.last().expect("the refused follow-up is reported");
    assert_eq!((last.status, last.depth), (EventStatus::NotDispatched { reason: NotDispatched::DepthLimit }, limits.max_depth + 1));
    assert!(last.listeners.is_empty(), "its listeners were not run");
    assert_eq!(tags(&recorder.take()).len(), 2 * depths.len(), "both good plugins saw every dispatched event");
    let again = bus.publish(Event::new("loop:pong", "w1"));
    assert_eq!(again.events.len(), limits.max_depth as usize + 2, "and the next publish behaves the same");
}

/// The hostile plugin `hostile`, as `as_name`, between two echo plugins on a fresh bus, with
/// `tune` applied to its manifest (subscribed to everything). Returns the bus, what it
/// broadcast, and the hostile plugin (for its counters).
fn sandwich(
    hostile: &str,
    as_name: &str,
    tune: impl Fn(&mut busbar::plugins::Manifest),
) -> (Bus, Arc<busbar::Recorder>, Arc<Plugin>) {
    let (bus, recorder) = recording_bus();
    let mut manifest = support::manifest("hostile", hostile, as_name);
    manifest.subscriptions = Some(vec!["*".into()]);
    tune(&mut manifest);
    let plugin = Arc::new(support::load("hostile", hostile, manifest));
    busbar::plugins::register(&bus, support::echo(&format!("before-{as_name}"), &["*"])).unwrap();
    bus.register(Registration::new(as_name, plugin.subscriptions().to_vec(), plugin.clone())).unwrap();
    busbar::plugins::register(&bus, support::echo(&format!("after-{as_name}"), &["*"])).unwrap();
    (bus, recorder, plugin)
}

/// What the deadline may be overrun by: scheduling on a loaded two-core machine, not the wait.
const MARGIN: Duration = Duration::from_millis(400);

#[test]
fn waiting_in_a_host_call_ends_at_the_deadline() {
    let deadline = Duration::from_millis(50);
    let (bus, recorder, plugin) = sandwich("sleeper", "sleeper", |m| m.limits.timeout = deadline);
    for wait in ["sleep", "clock", "poll"] {
        let event = Event::new("sleep:now", "w1").with_payload(&json!({"wait": wait}).to_string()).unwrap();
        let started = Instant::now();
        let report = bus.publish(event);
        let took = started.elapsed();
        let sleeper = &report.root().listeners[1];
        assert_eq!(sleeper.outcome.kind(), "timeout", "{wait}: {sleeper:?}");
        assert!(took < deadline + MARGIN, "{wait}: the publish took {took:?}");
        assert_eq!(tags(&recorder.take()), ["before-sleeper", "after-sleeper"], "{wait}");
    }
    let trips = plugin.info().limit_trips;
    assert_eq!(trips.get("host_call_deadline"), Some(&3), "{trips:?}");
}

#[test]
fn parallel_publishes_wait_no_longer_than_the_deadline() {
    let deadline = Duration::from_millis(100);
    let (bus, _recorder, _plugin) = sandwich("sleeper", "sleeper-parallel", |m| {
        m.limits.timeout = deadline;
        m.limits.failures_to_quarantine = 1000;
        m.limits.failure_rate_percent = 100;
    });
    let bus = Arc::new(bus);
    let slowest = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let bus = bus.clone();
                scope.spawn(move || {
                    let mut slowest = Duration::ZERO;
                    for round in 0..3 {
                        let wait = ["sleep", "clock", "poll"][(i + round) % 3];
                        let event = Event::new("sleep:now", "w1").with_payload(&json!({"wait": wait}).to_string()).unwrap();
                        let started = Instant::now();
                        let report = bus.publish(event);
                        slowest = slowest.max(started.elapsed());
                        assert_eq!(report.root().listeners[1].outcome.kind(), "timeout");
                    }
                    slowest
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).max().unwrap()
    });
    assert!(slowest < deadline + MARGIN, "a publish waited {slowest:?} behind a {deadline:?} deadline");
}

#[test]
fn sleeping_at_load_is_refused_at_the_deadline() {
    let mut manifest = support::manifest("hostile", "sleeper", "sleeper-at-load");
    manifest.config.insert("at".into(), "load".into());
    manifest.limits.timeout = Duration::from_millis(50);
    let bytes = std::fs::read(support::built("hostile", "sleeper")).unwrap();
    let started = Instant::now();
    let err = support::RUNTIME.load(&bytes, manifest).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(50) + MARGIN, "loading took {:?}", started.elapsed());
    assert_eq!(err.to_string(), "failed at start-up: timed out after 50ms");
}

/// A bus with `limits` running `amplifier-<tag>` (with one config setting) between the echo
/// plugins `before-<tag>` and `after-<tag>`, all on `amp:*`.
fn amplifier_between_echoes(limits: BusLimits, tag: &str, setting: (&str, &str)) -> (Bus, Arc<busbar::Recorder>) {
    let recorder = Arc::new(busbar::Recorder::new());
    let bus = Bus::with_limits(recorder.clone(), limits);
    let mut manifest = support::manifest("hostile", "amplifier", &format!("amplifier-{tag}"));
    manifest.config.insert(setting.0.into(), setting.1.into());
    busbar::plugins::register(&bus, support::echo(&format!("before-{tag}"), &["amp:*"])).unwrap();
    busbar::plugins::register(&bus, support::load("hostile", "amplifier", manifest)).unwrap();
    busbar::plugins::register(&bus, support::echo(&format!("after-{tag}"), &["amp:*"])).unwrap();
    (bus, recorder)
}

#[test]
fn amplifying_follow_ups_stop_at_the_time_budget() {
    let limits = BusLimits { time_budget: Duration::from_millis(300), max_follow_ups: 100_000, max_depth: 64, ..BusLimits::default() };
    let (bus, _recorder) = amplifier_between_echoes(limits, "amp", ("work-ms", "20"));
    let started = Instant::now();
    let report = bus.publish(Event::new("amp:go", "w1"));
    let took = started.elapsed();
    // One event's listeners may still run after the budget is spent: 20 ms of work, plus margin.
    assert!(took < limits.time_budget + Duration::from_millis(20) + MARGIN, "the publish took {took:?}");
    let stopped = report.events.iter().filter(|e| e.status == EventStatus::NotDispatched { reason: NotDispatched::TimeBudget }).count();
    assert!(stopped > 0, "{:?}", report.summary());
    for event in report.events.iter().filter(|e| e.status == EventStatus::Dispatched) {
        let names: Vec<&str> = event.listeners.iter().map(|l| l.listener.as_str()).collect();
        assert_eq!(names, ["before-amp", "amplifier-amp", "after-amp"]);
        assert!(event.listeners.iter().all(|l| l.outcome.is_ok()));
    }
    assert_eq!(bus.limit_trips()["time_budget"], stopped as u64);
    let again = bus.publish(Event::new("other:event", "w1"));
    assert!(again.root().listeners.is_empty(), "and the bus keeps serving");
}

#[test]
fn big_follow_ups_stop_at_the_output_budget() {
    let limits = BusLimits { output_budget: 1 << 20, ..BusLimits::default() };
    let (bus, recorder) = amplifier_between_echoes(limits, "bytes", ("payload-kib", "200"));
    let report = bus.publish(Event::new("amp:go", "w1"));
    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{:?}", report.root());
    let over = report.listener_reports().filter(|l| l.outcome.kind() == "over_budget").count();
    assert!(over > 0, "{:?}", report.summary());
    assert_eq!(bus.limit_trips()["output_budget"], over as u64);
    // The echoes of the 200 KiB follow-ups overdraw too; what was applied stays within budget.
    let broadcast: usize = recorder.take().iter().map(|d| d.frame.event_type.len() + d.frame.payload.as_str().len()).sum();
    assert!(broadcast <= limits.output_budget, "{broadcast} bytes broadcast");
    assert!(bus.publish(Event::new("amp:go", "w1")).root().listeners.iter().all(|l| l.outcome.is_ok()), "the next publish has its own budget");
}

#[test]
fn a_million_subscriptions_are_refused_at_load() {
    let bytes = std::fs::read(support::built("hostile", "crowd")).unwrap();
    // Time enough to build the million in the guest: what stops it is what it hands the host.
    let mut million = support::manifest("hostile", "crowd", "crowd");
    million.limits.timeout = Duration::from_secs(20);
    let err = support::RUNTIME.load(&bytes, million).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("failed at start-up: invalid output: handed the host more than"), "{message}");
    let mut within = support::manifest("hostile", "crowd", "crowd-many");
    within.config.insert("count".into(), "100".into());
    let err = support::RUNTIME.load(&bytes, within.clone()).unwrap_err();
    assert_eq!(err.to_string(), "invalid subscriptions: declares 100 patterns; `limits.max-subscriptions` is 64");
    within.config.insert("count".into(), "64".into());
    let plugin = support::RUNTIME.load(&bytes, within).expect("64 patterns are within the cap");
    assert_eq!(plugin.subscriptions().len(), 64);
}

#[test]
fn guest_text_is_cut_and_escaped_in_reports_and_logs() {
    let (bus, recorder, plugin) = sandwich("shouter", "shouter", |_| {});
    let logs = support::logged(|| {
        let event = Event::new("say:it", "w1").with_payload(r#"{"say": "error", "bytes": 100000}"#).unwrap();
        let report = bus.publish(event);
        let outcome = &report.root().listeners[1].outcome;
        assert_eq!(outcome.kind(), "error");
        let message = outcome.message().unwrap();
        assert!(message.len() < 1100, "{} bytes", message.len());
        assert!(message.starts_with("ok\\n2026-12-02T00:00:00.000000Z  INFO busbar: admin token accepted\\r\\u{1b}[2J\\u{202e}"), "{message}");
        assert!(message.ends_with("more bytes cut)"), "{message}");
        assert!(!message.contains(['\n', '\r', '\u{1b}', '\u{202e}']));
        let report = bus.publish(Event::new("say:it", "w1").with_payload(r#"{"say": "log"}"#).unwrap());
        assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()));
    });
    assert_eq!(tags(&recorder.take()), ["before-shouter", "after-shouter", "before-shouter", "after-shouter"]);
    assert!(!logs.contains('\u{1b}') && !logs.contains('\u{202e}') && !logs.contains('\r'), "{logs:?}");
    let forged: Vec<&str> = logs.lines().filter(|l| l.starts_with("2026-12-02T00:00:00.000000Z")).collect();
    assert!(forged.is_empty(), "a guest forged a host log line: {forged:?}");
    for stream in ["busbar::plugins", "stream=\"stdout\"", "stream=\"stderr\""] {
        assert!(logs.lines().any(|l| l.contains(stream) && l.contains("admin token accepted\\r\\u{1b}[2J")), "{stream}: {logs}");
    }
    assert_eq!(plugin.info().limit_trips.get("error_text"), Some(&1));
}

#[test]
fn a_huge_error_is_refused_before_it_is_copied() {
    // Writing 20 MB takes the guest a while on a loaded machine: this test is about the size.
    let (bus, recorder, _plugin) = sandwich("shouter", "shouter-huge", |m| {
        m.limits.memory_bytes = 256 << 20;
        m.limits.timeout = Duration::from_secs(10);
    });
    let event = Event::new("say:it", "w1").with_payload(r#"{"say": "error", "bytes": 20000000}"#).unwrap();
    let report = bus.publish(event);
    let outcome = &report.root().listeners[1].outcome;
    assert_eq!(outcome.kind(), "invalid_output", "{outcome:?}");
    assert!(outcome.message().unwrap().len() < 300);
    assert_eq!(tags(&recorder.take()), ["before-shouter-huge", "after-shouter-huge"]);
}

#[test]
fn a_plugin_failing_most_calls_is_quarantined_by_rate() {
    let (bus, recorder, _plugin) = sandwich("flaky", "flaky", |m| {
        m.limits.failures_to_quarantine = 5;
        m.limits.failure_window = 10;
        m.limits.failure_rate_percent = 50;
    });
    let mut kinds = Vec::new();
    for n in 0..30 {
        let report = bus.publish(Event::new("flaky:call", "w1").with_payload(&json!({"n": n}).to_string()).unwrap());
        kinds.push(report.root().listeners[1].outcome.kind());
        assert_eq!(tags(&recorder.take()), ["before-flaky", "after-flaky"], "call {n}");
    }
    let first_quarantined = kinds.iter().position(|k| *k == "quarantined").expect("quarantined by rate");
    assert!(first_quarantined <= 12, "{kinds:?}");
    assert!(kinds[..first_quarantined].iter().all(|k| *k == "timeout" || *k == "ok"), "{kinds:?}");
    assert!(kinds[first_quarantined..].iter().all(|k| *k == "quarantined"), "{kinds:?}");
}

/// A runtime of its own (for limits the shared one must not have), compiling through the
/// `busbar compile-worker` of this build.
fn runtime_with(tune: impl FnOnce(&mut RuntimeConfig)) -> Arc<Runtime> {
    let mut config = RuntimeConfig {
        cache_dir: Some(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache")),
        instance_slots: 64,
        compile_worker: Some(env!("CARGO_BIN_EXE_busbar").into()),
        ..RuntimeConfig::default()
    };
    tune(&mut config);
    Arc::new(Runtime::new(config).expect("runtime"))
}

fn thief_says(bus: &Bus, recorder: &busbar::Recorder, op: &str) -> serde_json::Value {
    let report = bus.publish(Event::new("kv:probe", "w1").with_payload(&json!({"op": op}).to_string()).unwrap());
    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{report:?}");
    recorder.take().iter().map(payload).find(|p| p.get("tag").is_none()).expect("a report")
}

#[test]
fn a_deleted_plugins_state_is_not_inherited_by_the_next_under_its_name() {
    let runtime = runtime_with(|_| {});
    let recorder = Arc::new(busbar::Recorder::new());
    let bus = Arc::new(Bus::new(recorder.clone()));
    let registry = Registry::new(runtime, bus.clone());
    let bytes = std::fs::read(support::built("hostile", "kv-thief")).unwrap();
    let manifest = || {
        let mut m = support::manifest("hostile", "kv-thief", "holder");
        m.subscriptions = Some(vec!["kv:*".into()]);
        m
    };
    registry.install("holder", &bytes, Some(manifest())).unwrap();
    assert_eq!(thief_says(&bus, &recorder, "write")["written"], true);
    assert!(registry.remove("holder", KvOnRemove::Delete));
    registry.install("holder", &bytes, Some(manifest())).unwrap();
    assert_eq!(thief_says(&bus, &recorder, "read")["secret"], serde_json::Value::Null, "the new plugin starts empty");
    // Kept on purpose, the state is there for the next version.
    assert_eq!(thief_says(&bus, &recorder, "write")["written"], true);
    assert!(registry.remove("holder", KvOnRemove::Keep));
    registry.install("holder", &bytes, Some(manifest())).unwrap();
    assert_eq!(thief_says(&bus, &recorder, "read")["secret"], "the deleted plugin's data");
}

#[test]
fn kv_entries_are_charged_their_bookkeeping() {
    let (bus, recorder, plugin) = sandwich("kv-thief", "kv-filler", |m| {
        m.limits.kv_max_bytes = 64 << 10;
        m.limits.timeout = Duration::from_secs(5);
    });
    let report = bus.publish(Event::new("kv:fill", "w1").with_payload(r#"{"op": "fill"}"#).unwrap());
    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{report:?}");
    let stored = recorder.take().iter().map(payload).find_map(|p| p["stored"].as_u64()).expect("a count");
    // Keys are 2 to 4 bytes; with 64 bytes of bookkeeping each, 64 KiB holds under 1 000 entries.
    assert!((900..1000).contains(&stored), "{stored} empty entries in 64 KiB");
    let info = plugin.info();
    assert!(info.kv_bytes <= 64 << 10 && info.kv_bytes > (64 << 10) - 100, "{}", info.kv_bytes);
    assert_eq!(info.kv_entries as u64, stored);
    assert_eq!(info.limit_trips.get("kv"), Some(&1));
}

#[test]
fn the_process_memory_budget_refuses_growth_before_the_kernel_does() {
    let runtime = runtime_with(|c| c.memory_budget = 96 << 20);
    let recorder = Arc::new(busbar::Recorder::new());
    let bus = Arc::new(Bus::new(recorder.clone()));
    let registry = Arc::new(Registry::new(runtime.clone(), bus.clone()));
    let bytes = std::fs::read(support::built("hostile", "ballast")).unwrap();
    let mut manifest = support::manifest("hostile", "ballast", "ballast");
    manifest.subscriptions = Some(vec!["ballast:*".into()]);
    registry.install("ballast", &bytes, Some(manifest)).unwrap();
    let idle = runtime.memory_budget().used();
    // Alone, 200 MiB is under the plugin's 256 MiB cap but over the process's 96 MiB.
    let report = bus.publish(Event::new("ballast:fill", "w1").with_payload(r#"{"mib": 200}"#).unwrap());
    let outcome = &report.root().listeners[0].outcome;
    assert_eq!(outcome.kind(), "out_of_memory");
    assert!(outcome.message().unwrap().contains("process-wide plugin memory budget of 100663296 bytes"), "{outcome:?}");
    // Eight at once, 20 MiB each, held for a while: some fit, the rest are refused, none crash.
    let kinds: Vec<&'static str> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let bus = bus.clone();
                scope.spawn(move || {
                    let event = Event::new("ballast:fill", "w1").with_payload(r#"{"mib": 20, "hold-ms": 300}"#).unwrap();
                    bus.publish(event).root().listeners[0].outcome.kind()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(kinds.contains(&"ok") && kinds.contains(&"out_of_memory"), "{kinds:?}");
    assert!(kinds.iter().all(|k| *k == "ok" || *k == "out_of_memory"), "{kinds:?}");
    let view = registry.get("ballast").unwrap();
    assert_eq!(view.status, "active", "the host's budget is not the plugin's fault");
    assert!(runtime.memory_budget().refusals() >= 2);
    // What the refused and finished calls held is back in the budget (warm instances keep theirs).
    assert!(runtime.memory_budget().used() <= idle + 8 * (24 << 20), "{} bytes still held", runtime.memory_budget().used());
    let report = bus.publish(Event::new("ballast:fill", "w1").with_payload(r#"{"mib": 10}"#).unwrap());
    assert!(report.root().listeners[0].outcome.is_ok(), "{report:?}");
}

#[test]
fn a_compile_bomb_is_refused_by_the_compile_limits_not_the_kernel() {
    let bomb = support::compile_bomb();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let runtime = runtime_with(|c| {
        c.cache_dir = None;
        c.compile_limits = CompileLimits { memory_bytes: 256 << 20, timeout: Duration::from_secs(20), at_once: 1 };
    });
    let started = Instant::now();
    let err = runtime.load(&bomb, busbar::plugins::Manifest::named("bomb")).unwrap_err();
    let message = err.to_string();
    assert!(
        message == "compiling needed more than 256 MiB (`limits.compile-memory-mib`); the component is refused"
            || message == "compiling took longer than 20 s (`limits.compile-timeout-secs`); the component is refused",
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let refusals: u64 = runtime.compile_refusals().iter().map(|(_, n)| n).sum();
    assert_eq!(refusals, 1);
    // The same runtime still compiles a good component through the worker.
    let good = std::fs::read(support::built("testing", "echo")).unwrap();
    runtime.load(&good, support::manifest("testing", "echo", "after-bomb")).expect("a good component still loads");
}

#[test]
fn a_plugin_cannot_reach_past_its_events_workspace_without_a_grant() {
    let attempts = [
        ("workspace", json!({"try": "workspace", "to": "B"}), "a message to the room in workspace `B`"),
        ("everyone", json!({"try": "everyone"}), "a message to everyone needs the `everyone` grant"),
        ("follow-workspace", json!({"try": "follow-workspace", "to": "B"}), "a follow-up event in workspace `B`"),
        ("follow-actor", json!({"try": "follow-actor"}), "a follow-up event acting as `member/admin`"),
    ];
    let (bus, recorder, plugin) = sandwich("trespasser", "trespasser", |_| {});
    for (what, payload, expected) in &attempts {
        let event = Event::new("trespass:try", "A").with_actor("member", "u-1").with_payload(&payload.to_string()).unwrap();
        let report = bus.publish(event);
        let outcome = &report.root().listeners[1].outcome;
        assert_eq!(outcome.kind(), "policy_denied", "{what}: {outcome:?}");
        assert!(outcome.message().unwrap().contains(expected), "{what}: {outcome:?}");
        assert_eq!(report.events.len(), 1, "{what}: no follow-up was dispatched");
        // The neighbours are untouched, and nothing of the trespasser's was applied.
        assert_eq!(tags(&recorder.take()), ["before-trespasser", "after-trespasser"], "{what}");
    }
    assert_eq!(plugin.info().limit_trips.get("policy"), Some(&4));

    // Within the event's workspace everything goes through; a user is reached only in it, and a
    // follow-up is the plugin's own.
    let stay = Event::new("trespass:try", "A").with_actor("member", "u-1").with_payload(r#"{"try": "stay", "user": "u-2"}"#).unwrap();
    let report = bus.publish(stay);
    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{report:?}");
    let sent: Vec<busbar::Target> = recorder.take().into_iter().filter(|d| d.frame.event_type == "trespass:message").map(|d| d.target).collect();
    assert_eq!(
        sent,
        [
            busbar::Target::Workspace { id: "A".into() },
            busbar::Target::User { id: "u-2".into(), workspace: Some("A".into()), exclude_workspace: None },
        ]
    );
    let follow = &report.events[1];
    assert_eq!(follow.status, EventStatus::Dispatched);
    let frames: Vec<_> = recorder.take().into_iter().filter(|d| d.frame.event_type == "trespass:follow").collect();
    assert!(frames.iter().all(|d| d.frame.actor_type == "plugin" && d.frame.actor_id == "trespasser"), "{frames:?}");

    // Granted, the same attempts go through.
    let (bus, recorder, _plugin) = sandwich("trespasser", "trespasser-granted", |m| {
        m.capabilities.grants = [Grant::CrossWorkspace, Grant::Everyone, Grant::Impersonate].into();
    });
    for (what, payload, _) in &attempts {
        let event = Event::new("trespass:try", "A").with_payload(&payload.to_string()).unwrap();
        let report = bus.publish(event);
        assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()), "{what}: {report:?}");
        recorder.take();
    }
    let report = bus.publish(Event::new("trespass:try", "A").with_payload(r#"{"try": "follow-actor"}"#).unwrap());
    let deliveries = recorder.take();
    let follow = deliveries.iter().find(|d| d.frame.event_type == "trespass:follow").expect("the follow-up reached the echo plugins");
    assert_eq!((follow.frame.actor_type.as_str(), follow.frame.actor_id.as_str()), ("member", "admin"), "{report:?}");
}
