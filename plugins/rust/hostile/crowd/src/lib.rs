//! Hostile test plugin: declares `count` subscription patterns (config; a million by default),
//! so that every event would have to be matched against all of them. busbar must refuse it at
//! load with a clear error, and a plugin within the cap must not slow other plugins' events.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, config, export};

struct Crowd;

impl Plugin for Crowd {
    fn subscriptions() -> Vec<String> {
        let count: usize = config::get("count").and_then(|c| c.parse().ok()).unwrap_or(1_000_000);
        (0..count).map(|i| format!("crowd:{i}")).collect()
    }

    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        Ok(vec![])
    }
}

export!(Crowd);
