//! Contract versions: a component built for 0.1.0 (the event copied in whole) keeps working
//! beside 0.2.0 ones (the event lent, read field by field), through the same bus, limits and
//! output checks. `legacy-router` is `bench-router`'s logic written against wit/0.1.0.

use busbar::action::{Action, Target};
use busbar::bus::{Listener, ListenerError};
use busbar::event::Event;
use serde_json::{Value, json};

use crate::support;

fn sent(actions: &[Action]) -> Vec<(String, String, Value)> {
    actions
        .iter()
        .map(|action| match action {
            Action::Send(m) => (format!("{:?}", m.target), m.event_type.clone(), serde_json::from_str(m.payload.as_str()).unwrap()),
            other => panic!("a message, not {other:?}"),
        })
        .collect()
}

#[test]
fn a_component_built_for_0_1_loads_and_sees_every_field() {
    let bytes = std::fs::read(support::built("testing", "legacy-router")).unwrap();
    let info = support::RUNTIME.check(&bytes).unwrap();
    assert_eq!(info.contract, "busbar:plugin@0.1.0");
    assert!(info.imports.iter().any(|i| i == "busbar:plugin/log@0.1.0"), "{:?}", info.imports);
    let current = support::RUNTIME.check(&std::fs::read(support::built("testing", "bench-router")).unwrap()).unwrap();
    assert_eq!(current.contract, "busbar:plugin@0.2.0");

    let plugin = support::load("testing", "legacy-router", support::manifest("testing", "legacy-router", "legacy"));
    let event = Event::new("legacy:echo", "w1")
        .with_actor("member", "u-1")
        .with_task("t-1")
        .with_chat_session("c-1")
        .with_payload(r#"{"a": [1, 2]}"#)
        .unwrap();
    let actions = plugin.handle(&event).unwrap();
    let expected = json!({
        "id": event.id, "type": "legacy:echo", "workspace_id": "w1", "actor_type": "member", "actor_id": "u-1",
        "payload": r#"{"a": [1, 2]}"#, "task_id": "t-1", "chat_session_id": "c-1", "published_at_ms": event.published_at_ms,
    });
    assert_eq!(sent(&actions), [(format!("{:?}", Target::Workspace { id: "w1".into() }), "legacy:echo".to_string(), expected)]);
}

#[test]
fn the_same_logic_built_for_either_version_answers_alike() {
    let current = support::load("testing", "bench-router", support::manifest("testing", "bench-router", "current"));
    let legacy = support::load("testing", "legacy-router", support::manifest("testing", "legacy-router", "legacy"));
    let payloads = [
        bench_logic::payload_of_size(100),
        bench_logic::payload_of_size(1024),
        bench_logic::payload_of_size(16 * 1024),
        r#"{"id":"i","task_id":"t-9","priority":0,"labels":[],"body":""}"#.to_string(),
        r#"{"id":"i","priority":1,"labels":[],"body":""}"#.to_string(),
    ];
    for payload in payloads {
        let event = Event::new("issue:updated", "w1").with_payload(&payload).unwrap();
        let (a, b) = (current.handle(&event).unwrap(), legacy.handle(&event).unwrap());
        assert_eq!(sent(&a), sent(&b), "{payload}");
    }
    // The guest's own error is the same outcome in both.
    let bad = Event::new("issue:updated", "w1").with_payload("[1]").unwrap();
    assert!(matches!(current.handle(&bad), Err(ListenerError::Failed(_))), "{:?}", current.handle(&bad));
    assert!(matches!(legacy.handle(&bad), Err(ListenerError::Failed(_))), "{:?}", legacy.handle(&bad));
}

#[test]
fn a_0_1_component_keeps_its_kv_and_its_limits() {
    let plugin = support::load("testing", "legacy-router", support::manifest("testing", "legacy-router", "legacy-kv"));
    let first = Event::new("legacy:kv", "w1").with_payload(r#"{"kv": "k", "n": 1}"#).unwrap();
    let second = Event::new("legacy:kv", "w1").with_payload(r#"{"kv": "k", "n": 2}"#).unwrap();
    assert_eq!(sent(&plugin.handle(&first).unwrap())[0].2, json!({"before": null}));
    assert_eq!(sent(&plugin.handle(&second).unwrap())[0].2, json!({"before": r#"{"kv": "k", "n": 1}"#}));

    // Its output goes through the same checks as a 0.2.0 plugin's.
    let mut manifest = support::manifest("testing", "legacy-router", "legacy-capped");
    manifest.limits.max_actions = 0;
    let capped = support::load("testing", "legacy-router", manifest);
    let routed = Event::new("issue:updated", "w1").with_payload(&bench_logic::payload_of_size(100)).unwrap();
    assert!(matches!(capped.handle(&routed), Err(ListenerError::InvalidOutput(_))), "{:?}", capped.handle(&routed));
}

#[test]
fn a_plugin_cannot_read_an_event_after_its_call() {
    // `keeper` keeps the handle it was lent and reads through it in its next call.
    let plugin = support::load("hostile", "keeper", support::manifest("hostile", "keeper", "keeper"));
    let secret = Event::new("keep:first", "w1").with_payload(r#"{"secret": "first"}"#).unwrap();
    assert!(plugin.handle(&secret).unwrap().is_empty());
    let mut trapped = 0;
    for attempt in 0..4 {
        let reuse = Event::new("keep:reuse", "w1").with_payload(&json!({"current": attempt}).to_string()).unwrap();
        match plugin.handle(&reuse) {
            Err(ListenerError::Trap(message)) => {
                assert!(!message.contains("first"), "{message}");
                trapped += 1;
            }
            // Only ever the event being handled (a reused handle slot names the current one),
            // or nothing (a fresh instance after a trap has kept no handle).
            Ok(actions) => {
                for (_, _, payload) in sent(&actions) {
                    assert_eq!(payload, json!({"current": attempt}));
                }
            }
            Err(other) => panic!("attempt {attempt}: {other:?}"),
        }
        assert!(plugin.handle(&secret).is_ok(), "the plugin keeps working");
    }
    println!("stale handle trapped {trapped} times of 4");
}
