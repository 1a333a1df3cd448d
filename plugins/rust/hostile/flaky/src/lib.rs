//! Hostile test plugin: fails most calls, but never many in a row. For an event whose payload
//! has `n`, it spins past its deadline unless `n` is a multiple of 5, so four calls in five time
//! out. A quarantine that counts only consecutive failures never catches it.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct Flaky;

impl Plugin for Flaky {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: serde_json::Value = event.payload_as()?;
        if payload["n"].as_u64().unwrap_or(0) % 5 != 0 {
            loop {
                std::hint::spin_loop();
            }
        }
        Ok(vec![])
    }
}

export!(Flaky);
