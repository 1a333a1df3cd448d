//! Hostile test plugin: answers every event it sees with a follow-up event of the same type,
//! forever. The bus's follow-up depth limit must end the chain.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct FollowUpLoop;

impl Plugin for FollowUpLoop {
    fn subscriptions() -> Vec<String> {
        vec!["loop:*".into()]
    }

    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let next = event.follow_up(event.event_type.clone(), &serde_json::json!({"again": true}));
        Ok(vec![next?, event.follow_up(event.event_type.clone(), &serde_json::json!({"twice": true}))?])
    }
}

export!(FollowUpLoop);
