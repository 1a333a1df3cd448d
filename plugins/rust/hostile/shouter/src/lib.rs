//! Hostile test plugin: writes text meant to fool whoever reads busbar's logs and reports. With
//! payload `{"say": "error"}` it fails with an error of `bytes` bytes (default 100 000) that
//! starts with a forged log line; with `"log"` it logs and prints lines with embedded newlines,
//! carriage returns, terminal escape sequences and a right-to-left override, then succeeds.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export, log};

/// Looks like a line of busbar's own log, then clears the screen.
const FORGED: &str = "ok\n2026-12-02T00:00:00.000000Z  INFO busbar: admin token accepted\r\x1b[2J\u{202e}";

struct Shouter;

impl Plugin for Shouter {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: serde_json::Value = event.payload_as()?;
        match payload["say"].as_str() {
            Some("error") => {
                let bytes = payload["bytes"].as_u64().unwrap_or(100_000) as usize;
                let mut text = String::from(FORGED);
                text.push_str(&"!".repeat(bytes.saturating_sub(text.len())));
                Err(Error::new(text))
            }
            _ => {
                log::warn(FORGED);
                println!("{FORGED}");
                eprintln!("{FORGED}");
                Ok(vec![])
            }
        }
    }
}

export!(Shouter);
