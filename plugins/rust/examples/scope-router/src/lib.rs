//! Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
//! routing hints on the event (`task-id`, `chat-session-id`) rather than re-parsing payloads.
//!
//! Shows: prefix subscriptions and scope targets. Events without the hint are left alone, and
//! keys meant for the server only (`error` of `task:failed`) never leave it.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export, log};

struct ScopeRouter;

impl Plugin for ScopeRouter {
    fn subscriptions() -> Vec<String> {
        vec!["task:*".into(), "chat:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let target = if event.event_type().starts_with("task:") {
            event.task_id().map(Target::task)
        } else {
            event.chat_session_id().map(Target::chat)
        };
        match target {
            Some(target) => Ok(vec![event.forward_without(target, internal_keys(event.event_type()))?]),
            None => {
                log::debug(format!("{} {} has no scope id", event.event_type(), event.id()));
                Ok(vec![])
            }
        }
    }
}

export!(ScopeRouter);

/// Keys that are for the server only and must not reach clients.
fn internal_keys(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "task:failed" => &["error"],
        _ => &[],
    }
}
