//! Hostile test plugin: returns far more than the host accepts from one call: 100 000 actions,
//! or with payload `{"flood": "bytes"}` one 4 MiB message, or with `{"flood": "json"}` a
//! message whose payload is not JSON.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export};
use serde_json::Value;

struct Flood;

impl Plugin for Flood {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: Value = event.payload_as()?;
        match payload["flood"].as_str() {
            Some("bytes") => {
                let big = format!("\"{}\"", "x".repeat(4 << 20));
                Ok(vec![Action::send(Target::Everyone, "flood:bytes", big)])
            }
            Some("json") => Ok(vec![Action::send(Target::Everyone, "flood:json", "{not json")]),
            _ => Ok((0..100_000)
                .map(|i| Action::send(Target::Everyone, "flood:count", i.to_string()))
                .collect()),
        }
    }
}

export!(Flood);
