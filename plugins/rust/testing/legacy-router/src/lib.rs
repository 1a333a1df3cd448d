//! `bench-router` as a component built for contract 0.1.0 (wit/0.1.0, frozen), written against
//! the raw bindings of that version: the whole event is copied in before `handle`. The tests
//! load it to show that 0.1.0 components keep working (every field, kv, log, actions) and the
//! dispatch benchmark runs it beside the 0.2.0 build of the same logic.
//!
//! An event of type `legacy:noop` gets nothing back (the 0.1.0 floor: the whole event copied in
//! for nothing); one of type `legacy:echo` gets the event's fields back instead of being routed, and one
//! of type `legacy:kv` with payload `{"kv": "<key>"}` stores the payload under that key and
//! gets what was there before.

mod bindings {
    busbar_plugin_sdk::__private::wit_bindgen::generate!({
        path: "../../../../wit/0.1.0",
        world: "listener",
        runtime_path: "busbar_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use bench_logic::Route;
use bindings::busbar::plugin::types::{Action, Event, Message, Scope, ScopeKind, Target, UserTarget};
use bindings::busbar::plugin::{kv, log};

struct LegacyRouter;

impl bindings::Guest for LegacyRouter {
    fn subscriptions() -> Vec<String> {
        vec!["*".to_string()]
    }

    fn handle(event: Event) -> Result<Vec<Action>, String> {
        if event.event_type == "legacy:noop" {
            return Ok(Vec::new());
        }
        if event.event_type == "legacy:echo" {
            let fields = serde_json::json!({
                "id": event.id, "type": event.event_type, "workspace_id": event.workspace_id,
                "actor_type": event.actor_type, "actor_id": event.actor_id, "payload": event.payload,
                "task_id": event.task_id, "chat_session_id": event.chat_session_id, "published_at_ms": event.published_at_ms,
            });
            log::write(bindings::busbar::plugin::types::Level::Info, "echoing fields");
            return Ok(vec![send(Target::Workspace(event.workspace_id), event.event_type, fields.to_string())]);
        }
        if event.event_type == "legacy:kv" {
            let payload: serde_json::Value = serde_json::from_str(&event.payload).map_err(|e| e.to_string())?;
            let key = payload["kv"].as_str().unwrap_or("key").to_string();
            let before = kv::get(&key).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            kv::set(&key, event.payload.as_bytes())?;
            let before = serde_json::json!({ "before": before });
            return Ok(vec![send(Target::Workspace(event.workspace_id), event.event_type, before.to_string())]);
        }
        let routed = bench_logic::route(&event.workspace_id, &event.payload)?;
        let target = match routed.route {
            Route::Workspace(id) => Target::Workspace(id),
            Route::Task(id) => Target::Scope(Scope { kind: ScopeKind::Task, id }),
            Route::User(id) => Target::User(UserTarget { user_id: id, exclude_workspace: None }),
        };
        Ok(vec![send(target, event.event_type, routed.payload)])
    }
}

fn send(target: Target, event_type: String, payload: String) -> Action {
    Action::Send(Message { target, event_type, payload })
}

bindings::export!(LegacyRouter with_types_in bindings);
