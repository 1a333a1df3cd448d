//! Hostile test plugin: stays under its own memory cap but holds a lot of it. For an event with
//! payload `{"mib": m, "hold-ms": h}` it fills `m` MiB, keeps it for `h` ms (spinning), and
//! returns a message of `out-kib` KiB. Many at once must meet the process-wide memory budget,
//! never the kernel's OOM killer.

use std::time::{Duration, Instant};

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export};

struct Ballast;

impl Plugin for Ballast {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: serde_json::Value = event.payload_as()?;
        let mib = payload["mib"].as_u64().unwrap_or(1) as usize;
        let hold = Duration::from_millis(payload["hold-ms"].as_u64().unwrap_or(0));
        let out_kib = payload["out-kib"].as_u64().unwrap_or(0) as usize;
        let ballast = std::hint::black_box(vec![0x5Au8; mib << 20]);
        let started = Instant::now();
        while started.elapsed() < hold {
            std::hint::spin_loop();
        }
        let out = format!("\"{}\"", "b".repeat(out_kib << 10));
        Ok(vec![Action::send(Target::Everyone, "ballast:held", out), Action::send(Target::Everyone, "ballast:size", ballast.len().to_string())])
    }
}

export!(Ballast);
