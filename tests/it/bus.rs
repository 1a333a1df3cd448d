//! The seed's bus semantics, checked once with native Rust listeners and once with WASM plugins
//! (the `echo` test plugin), through the same assertions.

use std::sync::Arc;

use busbar::action::{Action, Target};
use busbar::bus::{Bus, EventStatus, ListenerError, NotDispatched, Outcome, Registration, Subscription};
use busbar::event::{Event, Json};
use serde_json::{Value, json};

use crate::support::{self, payload, recording_bus, tags};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Native,
    Wasm,
}

/// A listener that sends every event it sees to everyone, tagged `tag`, with every field: the
/// same frame the `echo` plugin sends.
fn recorder_listener(kind: Kind, bus: &Bus, tag: &str, subscriptions: &[&str]) {
    match kind {
        Kind::Native => {
            let tag_owned = tag.to_string();
            let listener = move |event: &Event| -> Result<Vec<Action>, ListenerError> {
                let request: Value = serde_json::from_str(event.payload()).unwrap_or(Value::Null);
                if let Some(message) = request["echo"]["fail"].as_str()
                    && request["echo"]["only"].as_str().is_none_or(|only| only == tag_owned)
                {
                    panic!("{message}");
                }
                let frame = json!({
                    "tag": tag_owned, "id": event.id, "type": event.event_type,
                    "workspace_id": event.workspace_id, "actor_type": event.actor_type,
                    "actor_id": event.actor_id, "payload": event.payload(),
                    "task_id": event.task_id, "chat_session_id": event.chat_session_id,
                    "published_at_ms": event.published_at_ms,
                });
                let payload = Json::parse(frame.to_string()).expect("valid JSON");
                Ok(vec![Action::send(Target::Everyone, event.event_type.clone(), payload)])
            };
            bus.subscribe(tag, subscriptions, listener).expect("subscribing");
        }
        Kind::Wasm => {
            busbar::plugins::register(bus, support::echo(tag, subscriptions)).expect("registering");
        }
    }
}

fn event(event_type: &str) -> Event {
    Event::new(event_type, "w1").with_actor("member", "u1")
}

fn each_kind(check: impl Fn(Kind)) {
    for kind in [Kind::Native, Kind::Wasm] {
        check(kind);
    }
}

#[test]
fn several_subscribers_all_receive_in_registration_order() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        for name in ["first", "second", "third"] {
            recorder_listener(kind, &bus, name, &["issue:created"]);
        }
        let report = bus.publish(event("issue:created"));
        assert_eq!(tags(&recorder.take()), ["first", "second", "third"], "{kind:?}");
        let outcomes: Vec<_> = report.root().listeners.iter().map(|l| (l.listener.as_str(), l.outcome.clone())).collect();
        assert_eq!(
            outcomes,
            [("first", Outcome::Ok { actions: 1 }), ("second", Outcome::Ok { actions: 1 }), ("third", Outcome::Ok { actions: 1 })],
            "{kind:?}"
        );
    });
}

#[test]
fn subscription_matches_the_exact_type_only() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "created", &["issue:created"]);
        for other in ["issue:updated", "issue:created2", "issue", "comment:created"] {
            bus.publish(event(other));
        }
        assert!(recorder.take().is_empty(), "{kind:?}");
        bus.publish(event("issue:created"));
        assert_eq!(tags(&recorder.take()), ["created"], "{kind:?}");
    });
}

#[test]
fn prefix_subscription_matches_the_prefix() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "tasks", &["task:*"]);
        bus.publish(event("task:message"));
        bus.publish(event("task:done"));
        bus.publish(event("taskx:done"));
        assert_eq!(tags(&recorder.take()), ["tasks", "tasks"], "{kind:?}");
    });
}

#[test]
fn publishing_without_subscribers_is_a_no_op() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "other", &["issue:created"]);
        let report = bus.publish(event("nobody:listens"));
        assert_eq!(report.events.len(), 1);
        assert!(report.root().listeners.is_empty());
        assert!(recorder.take().is_empty(), "{kind:?}");
    });
    let (bus, recorder) = recording_bus();
    assert!(bus.publish(event("issue:created")).root().listeners.is_empty());
    assert!(recorder.take().is_empty());
}

#[test]
fn a_failing_listener_does_not_stop_the_ones_after_it() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        for name in ["before", "failing", "after"] {
            recorder_listener(kind, &bus, name, &["issue:created"]);
        }
        recorder_listener(kind, &bus, "global-failing", &["*"]);
        recorder_listener(kind, &bus, "global-after", &["*"]);
        for failing in ["failing", "global-failing"] {
            let e = event("issue:created")
                .with_payload(&json!({"echo": {"fail": "boom", "only": failing}}).to_string())
                .unwrap();
            let report = bus.publish(e);
            let expected: Vec<&str> =
                ["before", "failing", "after", "global-failing", "global-after"].into_iter().filter(|t| *t != failing).collect();
            assert_eq!(tags(&recorder.take()), expected, "{kind:?} {failing}");
            let failed: Vec<_> = report.root().listeners.iter().filter(|l| !l.outcome.is_ok()).collect();
            assert_eq!(failed.len(), 1, "{kind:?}");
            assert_eq!(failed[0].listener, failing);
            let expected_kind = match kind {
                Kind::Native => "trap",
                Kind::Wasm => "error",
            };
            assert_eq!(failed[0].outcome.kind(), expected_kind, "{kind:?}");
        }
        // The bus keeps serving afterwards.
        bus.publish(event("issue:created"));
        assert_eq!(tags(&recorder.take()), ["before", "failing", "after", "global-failing", "global-after"]);
    });
}

#[test]
fn catch_all_sees_every_type_in_publish_order() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "all", &["*"]);
        let types = ["issue:created", "comment:created", "daemon:heartbeat", "x"];
        for t in types {
            bus.publish(event(t));
        }
        let seen: Vec<String> = recorder.take().iter().map(|d| payload(d)["type"].as_str().unwrap().to_string()).collect();
        assert_eq!(seen, types, "{kind:?}");
    });
}

#[test]
fn catch_all_runs_after_typed_listeners_even_when_registered_first() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "global", &["*"]);
        recorder_listener(kind, &bus, "typed", &["issue:created"]);
        recorder_listener(kind, &bus, "prefixed", &["issue:*"]);
        bus.publish(event("issue:created"));
        assert_eq!(tags(&recorder.take()), ["typed", "prefixed", "global"], "{kind:?}");
    });
}

#[test]
fn fields_pass_through_intact() {
    each_kind(|kind| {
        let (bus, recorder) = recording_bus();
        recorder_listener(kind, &bus, "fields", &["*"]);
        let payload_text = r#"{"b": 1,  "a": ["é", "\u00e9", null], "nested": {"x": 1.50}}"#;
        let e = Event::from_json(
            &json!({
                "id": "evt-1", "type": "task:message", "workspace_id": "ws-9",
                "actor_type": "agent", "actor_id": "agent-3", "task_id": "task-4",
                "chat_session_id": "chat-5", "published_at_ms": 1_700_000_000_123u64,
            })
            .to_string()
            .replace('}', &format!(r#","payload":{payload_text}}}"#)),
        )
        .unwrap();
        bus.publish(e);
        let deliveries = recorder.take();
        assert_eq!(deliveries.len(), 1);
        let seen = payload(&deliveries[0]);
        assert_eq!(seen["id"], "evt-1", "{kind:?}");
        assert_eq!(seen["type"], "task:message");
        assert_eq!(seen["workspace_id"], "ws-9");
        assert_eq!(seen["actor_type"], "agent");
        assert_eq!(seen["actor_id"], "agent-3");
        assert_eq!(seen["task_id"], "task-4");
        assert_eq!(seen["chat_session_id"], "chat-5");
        assert_eq!(seen["published_at_ms"], 1_700_000_000_123u64);
        assert_eq!(seen["payload"], payload_text, "payload reaches the listener byte for byte");
        let frame = &deliveries[0].frame;
        assert_eq!((frame.event_id.as_str(), frame.actor_id.as_str(), frame.actor_type.as_str()), ("evt-1", "agent-3", "agent"));
    });
}

#[test]
fn follow_ups_run_after_the_event_has_been_through_every_listener() {
    let (bus, recorder) = recording_bus();
    busbar::plugins::register(&bus, support::echo("spawner", &["comment:created"])).unwrap();
    busbar::plugins::register(&bus, support::echo("observer", &["*"])).unwrap();
    let e = event("comment:created")
        .with_payload(&json!({"echo": {"follow_up": "inbox:new", "only": "spawner"}}).to_string())
        .unwrap();
    let id = e.id.clone();
    let report = bus.publish(e);
    let seen: Vec<(String, String)> = recorder
        .take()
        .iter()
        .map(|d| (payload(d)["tag"].as_str().unwrap().to_string(), d.frame.event_type.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("spawner".to_string(), "comment:created".to_string()),
            ("observer".into(), "comment:created".into()),
            ("observer".into(), "inbox:new".into()),
        ],
        "the parent reaches every listener before its follow-up is dispatched"
    );
    assert_eq!(report.events.len(), 2);
    assert_eq!(report.events[1].event_id, format!("{id}.1"));
    assert_eq!(report.events[1].parent_id.as_deref(), Some(id.as_str()));
    assert_eq!(report.events[1].depth, 1);
}

#[test]
fn native_follow_up_loops_end_at_the_depth_limit() {
    let (bus, _recorder) = recording_bus();
    bus.subscribe("looper", &["loop:*"], |e: &Event| {
        Ok(vec![Action::Publish(busbar::action::FollowUp {
            event_type: e.event_type.clone(),
            workspace_id: e.workspace_id.clone(),
            actor_type: String::new(),
            actor_id: String::new(),
            payload: Json::empty_object(),
            task_id: None,
            chat_session_id: None,
        })])
    })
    .unwrap();
    let report = bus.publish(event("loop:go"));
    let limit = bus.limits().max_depth;
    assert_eq!(report.events.len() as u32, limit + 2, "depths 0..=limit dispatched, one refused");
    let last = report.events.last().unwrap();
    assert_eq!(last.status, EventStatus::NotDispatched { reason: NotDispatched::DepthLimit });
    assert_eq!(last.depth, limit + 1);
    assert!(last.listeners.is_empty());
}

#[test]
fn registry_changes_keep_order_and_names_unique() {
    let (bus, recorder) = recording_bus();
    recorder_listener(Kind::Native, &bus, "a", &["*"]);
    recorder_listener(Kind::Native, &bus, "b", &["*"]);
    recorder_listener(Kind::Native, &bus, "c", &["*"]);
    let dup = bus.subscribe("b", &["*"], |_: &Event| Ok(vec![]));
    assert_eq!(dup.unwrap_err().to_string(), "a listener named `b` is already registered");
    // Replacing keeps the position.
    let replacement = |_: &Event| -> Result<Vec<Action>, ListenerError> {
        Ok(vec![Action::send(Target::Everyone, "x", Json::parse(r#"{"tag":"b2"}"#.into()).unwrap())])
    };
    bus.replace(Registration::new("b", vec![Subscription::All], Arc::new(replacement))).unwrap();
    bus.publish(event("x"));
    assert_eq!(tags(&recorder.take()), ["a", "b2", "c"]);
    assert!(bus.unregister("a"));
    assert!(!bus.unregister("a"));
    bus.publish(event("x"));
    assert_eq!(tags(&recorder.take()), ["b2", "c"]);
    // Explicit order puts a listener ahead of those registered before it.
    let first = |_: &Event| -> Result<Vec<Action>, ListenerError> {
        Ok(vec![Action::send(Target::Everyone, "x", Json::parse(r#"{"tag":"first"}"#.into()).unwrap())])
    };
    bus.register(Registration::new("first", vec![Subscription::All], Arc::new(first)).with_order(Some(1))).unwrap();
    bus.publish(event("x"));
    assert_eq!(tags(&recorder.take()), ["first", "b2", "c"]);
    let names: Vec<String> = bus.listeners().into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["first", "b", "c"]);
}

#[test]
fn bad_subscriptions_and_names_are_refused() {
    let (bus, _) = recording_bus();
    for (patterns, expected) in [
        (vec!["a*b"], "invalid subscription `a*b`: `*` only at the end"),
        (vec![""], "invalid subscription ``: empty"),
        (vec![], "no subscriptions"),
        (vec!["has space"], "invalid subscription `has space`"),
    ] {
        let err = bus.subscribe("x", &patterns, |_: &Event| Ok(vec![])).unwrap_err().to_string();
        assert!(err.contains(expected), "{patterns:?}: {err}");
    }
    let err = bus.subscribe("bad name", &["*"], |_: &Event| Ok(vec![])).unwrap_err().to_string();
    assert!(err.contains("invalid listener name `bad name`"), "{err}");
}

#[test]
fn publishes_from_many_threads_run_concurrently_and_completely() {
    let (bus, recorder) = recording_bus();
    busbar::plugins::register(&bus, support::echo("concurrent-echo", &["*"])).unwrap();
    recorder_listener(Kind::Native, &bus, "concurrent-native", &["*"]);
    let bus = Arc::new(bus);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let report = bus.publish(event(&format!("load:{t}-{i}")));
                    assert!(report.root().listeners.iter().all(|l| l.outcome.is_ok()));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let deliveries = recorder.take();
    assert_eq!(deliveries.len(), 8 * 200 * 2);
    let stats = bus.listeners();
    assert!(stats.iter().all(|l| l.stats.calls == 1600 && l.stats.outcomes["ok"] == 1600), "{stats:?}");
}

#[test]
fn two_publishes_are_inside_the_same_listener_at_once() {
    // If the bus serialized publishes (one global lock), the second thread could never reach the
    // listener while the first waits in it, and the rendezvous below would time out.
    let (bus, _recorder) = recording_bus();
    let inside = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let rendezvous = inside.clone();
    bus.subscribe("rendezvous", &["*"], move |_: &Event| {
        let (count, arrived) = &*rendezvous;
        let mut count = count.lock().unwrap();
        *count += 1;
        arrived.notify_all();
        let (count, timeout) = arrived.wait_timeout_while(count, std::time::Duration::from_secs(10), |c| *c < 2).unwrap();
        if timeout.timed_out() {
            return Err(busbar::bus::ListenerError::Failed(format!("alone in the listener: {} of 2 publishes arrived", *count)));
        }
        Ok(vec![])
    })
    .unwrap();
    let bus = Arc::new(bus);
    let publishers: Vec<_> = (0..2)
        .map(|i| {
            let bus = bus.clone();
            std::thread::spawn(move || bus.publish(event(&format!("meet:{i}"))))
        })
        .collect();
    for publisher in publishers {
        let report = publisher.join().unwrap();
        assert!(report.root().listeners[0].outcome.is_ok(), "{report:?}");
    }
}
