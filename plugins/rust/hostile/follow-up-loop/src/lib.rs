//! Hostile test plugin: answers every event it sees with follow-up events of the same type,
//! forever: two per event by default (a tree, which hits the cap on follow-ups per publish), or
//! `fanout` from its config (1 makes a chain, which hits the depth limit). The bus must end
//! either with a clear outcome.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, config, export};

struct FollowUpLoop;

impl Plugin for FollowUpLoop {
    fn subscriptions() -> Vec<String> {
        vec!["loop:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let fanout: usize = config::get("fanout").and_then(|f| f.parse().ok()).unwrap_or(2);
        (0..fanout).map(|n| event.follow_up(event.event_type(), &serde_json::json!({"again": n}))).collect()
    }
}

export!(FollowUpLoop);
