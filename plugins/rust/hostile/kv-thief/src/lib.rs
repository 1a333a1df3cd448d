//! Hostile test plugin: probes plugin state. With payload `{"op": "write"}` it stores a secret
//! in its kv store; `"read"` reports whether a secret is there (a plugin installed under the
//! name of a deleted one must find nothing); `"fill"` writes empty entries until the store
//! refuses, and reports how many fitted (per-entry overhead must be charged).

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export, kv};
use serde_json::json;

struct KvThief;

impl Plugin for KvThief {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: serde_json::Value = event.payload_as()?;
        let report = match payload["op"].as_str() {
            Some("write") => json!({"written": kv::set("secret", b"the deleted plugin's data").is_ok()}),
            Some("fill") => {
                let stored = (0..1_000_000u32).take_while(|i| kv::set(&format!("k{i}"), b"").is_ok()).count();
                json!({"stored": stored})
            }
            _ => json!({"secret": kv::get("secret").map(|v| String::from_utf8_lossy(&v).into_owned())}),
        };
        Ok(vec![Action::send_json(Target::Everyone, "kv-thief:report", &report)?])
    }
}

export!(KvThief);
