//! Hostile test plugin: waits inside host calls, where epoch deadlines cannot reach it. With
//! payload `{"wait": "sleep"}` it calls `std::thread::sleep` for an hour; `"clock"` blocks on one
//! clock subscription of an hour; `"poll"` polls 1 000 subscriptions at once. With config
//! `at = "load"` it sleeps in `subscriptions()` instead, so loading it never ends. busbar must
//! end every wait at the plugin's deadline.

use std::time::Duration;

use busbar_plugin_sdk::{Action, Error, Event, Plugin, config, export};

mod wasi {
    busbar_plugin_sdk::__private::wit_bindgen::generate!({
        path: "wit",
        world: "busbar:sleeper/waits",
        generate_all,
        runtime_path: "busbar_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use wasi::wasi::clocks::monotonic_clock;
use wasi::wasi::io::poll;

const HOUR_NS: u64 = 3_600_000_000_000;

struct Sleeper;

impl Plugin for Sleeper {
    fn subscriptions() -> Vec<String> {
        if config::get("at").as_deref() == Some("load") {
            std::thread::sleep(Duration::from_secs(3600));
        }
        vec!["sleep:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: serde_json::Value = event.payload_as()?;
        match payload["wait"].as_str().unwrap_or("sleep") {
            "clock" => monotonic_clock::subscribe_duration(HOUR_NS).block(),
            "poll" => {
                let pollables: Vec<poll::Pollable> =
                    (0..1000).map(|_| monotonic_clock::subscribe_duration(HOUR_NS)).collect();
                let borrowed: Vec<&poll::Pollable> = pollables.iter().collect();
                poll::poll(&borrowed);
            }
            _ => std::thread::sleep(Duration::from_secs(3600)),
        }
        Ok(vec![])
    }
}

export!(Sleeper);
