//! Every hostile plugin, placed between two good plugins: both good plugins' output is intact
//! for every event, the hostile one gets the right outcome, and the bus keeps serving.

use std::time::Duration;

use busbar::bus::{EventStatus, PublishReport};
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
    assert!(report.events.iter().any(|e| e.status == EventStatus::FollowUpLimitExceeded));
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
    assert_eq!((last.status, last.depth), (EventStatus::DepthLimitExceeded, limits.max_depth + 1));
    assert!(last.listeners.is_empty(), "its listeners were not run");
    assert_eq!(tags(&recorder.take()).len(), 2 * depths.len(), "both good plugins saw every dispatched event");
    let again = bus.publish(Event::new("loop:pong", "w1"));
    assert_eq!(again.events.len(), limits.max_depth as usize + 2, "and the next publish behaves the same");
}
