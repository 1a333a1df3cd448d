//! Hostile test plugin: tries to reach past the workspace of the event it handles. The payload's
//! `try` picks one trespass: a message to another workspace's room (`workspace`, to `to`), to a
//! user's connections everywhere (`user`, to `user`), to everyone (`everyone`), a follow-up event
//! in another workspace (`follow-workspace`), or one acting as someone else (`follow-actor`, as
//! `member/admin`). `stay` sends only within the event's workspace. busbar must refuse each
//! trespass with `policy_denied` unless the manifest grants it.

use busbar_plugin_sdk::{Action, Error, Event, FollowUp, Plugin, Target, export};
use serde_json::Value;

struct Trespasser;

impl Plugin for Trespasser {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: Value = event.payload_as()?;
        let text = |key: &str| payload[key].as_str().unwrap_or_default().to_string();
        let message = |target: Target| Action::send(target, "trespass:message", format!("{{\"from\":{:?}}}", event.workspace_id()));
        let follow_up = |workspace: String, actor: (&str, &str)| {
            Action::Publish(FollowUp {
                event_type: "trespass:follow".into(),
                workspace_id: workspace,
                actor_type: actor.0.into(),
                actor_id: actor.1.into(),
                payload: "{}".into(),
                task_id: None,
                chat_session_id: None,
            })
        };
        Ok(match text("try").as_str() {
            "workspace" => vec![message(Target::workspace(text("to")))],
            "user" => vec![message(Target::user(text("user")))],
            "everyone" => vec![message(Target::Everyone)],
            "follow-workspace" => vec![follow_up(text("to"), ("", ""))],
            "follow-actor" => vec![follow_up(event.workspace_id().to_string(), ("member", "admin"))],
            "stay" => vec![
                message(Target::workspace(event.workspace_id())),
                message(Target::user(text("user"))),
                follow_up(event.workspace_id().to_string(), (event.actor_type(), event.actor_id())),
            ],
            _ => vec![],
        })
    }
}

export!(Trespasser);
