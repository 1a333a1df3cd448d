//! A well-behaved test plugin for busbar's own tests: it sends every event it receives to
//! everyone, tagged with its `tag` config value, so a test can see which listener ran, in which
//! order, and with exactly which fields. Subscriptions come from the manifest.
//!
//! On request (payload `{"echo": {...}}`) it also returns an error, panics, prints, publishes a
//! follow-up, or uses its key-value store, so the bus's semantics can be checked through a real component.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, config, export, kv};
use serde_json::{Value, json};

struct Echo;

impl Plugin for Echo {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let tag = config::get("tag").unwrap_or_default();
        let payload: Value = event.payload_as()?;
        let request = &payload["echo"];
        if let Some(message) = request["fail"].as_str() {
            if request["only"].as_str().is_none_or(|only| only == tag) {
                return Err(Error::new(message));
            }
        }
        if let Some(lines) = request["print"].as_u64() {
            for i in 0..lines {
                println!("line {i}");
            }
        }
        if let Some(text) = request["print_unterminated"].as_str() {
            print!("{text}");
            std::io::Write::flush(&mut std::io::stdout())?;
        }
        if request["panic"] == Value::Bool(true) {
            panic!("echo asked to panic");
        }
        let mut actions = vec![Action::send_json(
            Target::Everyone,
            event.event_type(),
            &json!({
                "tag": tag,
                "id": event.id(),
                "type": event.event_type(),
                "workspace_id": event.workspace_id(),
                "actor_type": event.actor_type(),
                "actor_id": event.actor_id(),
                "payload": event.payload(),
                "task_id": event.task_id(),
                "chat_session_id": event.chat_session_id(),
                "published_at_ms": event.published_at_ms(),
            }),
        )?];
        if let Some(follow) = request["follow_up"].as_str() {
            if request["only"].as_str().is_none_or(|only| only == tag) {
                actions.push(event.follow_up(follow, &json!({"from": tag}))?);
            }
        }
        if let Some(key) = request["count"].as_str() {
            // Counts calls per key in the plugin's kv store and reports the new count.
            let n: u64 = kv::get_json(key)?.unwrap_or(0) + 1;
            kv::set_json(key, &n)?;
            actions.push(Action::send_json(Target::Everyone, "echo:count", &json!({"tag": tag, "count": n}))?);
        }
        Ok(actions)
    }
}

export!(Echo);
