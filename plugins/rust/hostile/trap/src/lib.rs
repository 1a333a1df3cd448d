//! Hostile test plugin: panics (a wasm trap) when the payload says `{"trap": true}`, and
//! otherwise answers normally, so tests can check that the next call gets a fresh instance.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export};
use serde_json::Value;

struct Trap;

impl Plugin for Trap {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: Value = event.payload_as()?;
        if payload["trap"] == Value::Bool(true) {
            panic!("trap requested by event {}", event.id());
        }
        Ok(vec![Action::send(Target::Everyone, "trap:ok", "{}")])
    }
}

export!(Trap);
