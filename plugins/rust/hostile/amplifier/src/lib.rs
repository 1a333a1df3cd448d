//! Hostile test plugin: stays inside its deadline and its output caps, but multiplies work. For
//! every event it handles it spins for `work-ms`, then returns `fanout` follow-ups of its own
//! type, each with a payload of `payload-kib` KiB, so one publish would grow without end. The
//! publish's budget (time, events, output bytes) must stop it with a clear report.

use std::time::{Duration, Instant};

use busbar_plugin_sdk::{Action, Error, Event, Plugin, config, export};

struct Amplifier;

fn setting(key: &str, default: u64) -> u64 {
    config::get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Plugin for Amplifier {
    fn subscriptions() -> Vec<String> {
        vec!["amp:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let work = Duration::from_millis(setting("work-ms", 0));
        let started = Instant::now();
        while started.elapsed() < work {
            std::hint::spin_loop();
        }
        let filler = "x".repeat((setting("payload-kib", 0) << 10) as usize);
        (0..setting("fanout", 4)).map(|n| event.follow_up(event.event_type(), &serde_json::json!({"n": n, "filler": filler}))).collect()
    }
}

export!(Amplifier);
