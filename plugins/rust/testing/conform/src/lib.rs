//! The conformance plugin, reference version: every language implements the same behaviour
//! (see `tests/conformance/README.md`), and its output must match this one's byte for byte.
//!
//! Behaviour by event type: `conf:echo` (payload back, byte-exact), `conf:targets` (one message
//! per target kind), `conf:follow` (a follow-up event), `conf:error` (an error result),
//! `conf:trap` (a panic), `conf:kv` (a counter in the kv store), `conf:config` (manifest
//! values), `conf:parse` (payload parsing), `conf:sandbox` (escape attempts), `conf:log`.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, config, export, kv, log};

struct Conform;

impl Plugin for Conform {
    fn subscriptions() -> Vec<String> {
        vec!["conf:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let everyone = |event_type: &str, payload: String| Action::send(Target::Everyone, event_type, payload);
        Ok(match event.event_type() {
            "conf:echo" => vec![event.forward(Target::Everyone)],
            "conf:targets" => {
                let targets = [
                    Target::workspace(event.workspace_id()),
                    Target::user_except(event.actor_id(), event.workspace_id()),
                    Target::task(event.task_id().clone().unwrap_or_default()),
                    Target::chat(event.chat_session_id().clone().unwrap_or_default()),
                    Target::Everyone,
                ];
                targets
                    .into_iter()
                    .enumerate()
                    .map(|(n, target)| Action::send(target, "conf:target", format!("{{\"n\":{n}}}")))
                    .collect()
            }
            "conf:follow" => vec![event.follow_up("conf:echo", &serde_json::json!({"from": "follow"}))?],
            "conf:error" => return Err(Error::new("requested error")),
            "conf:trap" => panic!("requested trap"),
            "conf:kv" => {
                let count = kv::get("counter")
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| text.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                kv::set("counter", count.to_string().as_bytes())?;
                let deleted = kv::delete("never-set");
                vec![everyone("conf:kv", format!("{{\"count\":{count},\"deleted\":{deleted}}}"))]
            }
            "conf:config" => {
                let greeting = config::get("greeting").unwrap_or_default();
                let missing = config::get("missing").is_none();
                vec![everyone(
                    "conf:config",
                    format!("{{\"greeting\":{},\"missing\":{missing}}}", serde_json::to_string(&greeting)?),
                )]
            }
            "conf:parse" => {
                let payload: serde_json::Value = event.payload_as()?;
                let name = payload["name"].as_str().unwrap_or("nobody");
                vec![everyone("conf:parse", format!("{{\"hello\":{}}}", serde_json::to_string(name)?))]
            }
            "conf:sandbox" => {
                let file = if std::fs::read("/etc/passwd").is_ok() { "allowed" } else { "denied" };
                let env = if std::env::var("HOME").is_ok() { "present" } else { "absent" };
                let network = if std::net::TcpStream::connect("127.0.0.1:80").is_ok() { "allowed" } else { "denied" };
                vec![everyone(
                    "conf:sandbox",
                    format!("{{\"file\":\"{file}\",\"env\":\"{env}\",\"network\":\"{network}\"}}"),
                )]
            }
            "conf:log" => {
                log::info("conformance log line");
                vec![]
            }
            _ => vec![],
        })
    }
}

export!(Conform);
