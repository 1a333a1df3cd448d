//! On `comment:created`, publishes an `inbox:new` follow-up event for every `@user` the comment
//! mentions, once per comment and user even if the event is delivered again.
//!
//! Shows: parsing the payload into the author's own types, follow-up events, and the private
//! key-value store (a bounded record of the comments already handled).

use busbar_plugin_sdk::serde_json::json;
use busbar_plugin_sdk::{Action, Error, Event, Plugin, export, kv};
use serde::Deserialize;

/// How many handled comments are remembered; older ones are forgotten first.
const REMEMBERED: usize = 512;

struct MentionNotifier;

#[derive(Deserialize)]
struct CommentCreated {
    comment: Comment,
    #[serde(default)]
    issue_title: String,
}

#[derive(Deserialize)]
struct Comment {
    id: String,
    #[serde(default)]
    issue_id: String,
    content: String,
}

impl Plugin for MentionNotifier {
    fn subscriptions() -> Vec<String> {
        vec!["comment:created".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let created: CommentCreated = event.payload_as()?;
        let comment = &created.comment;
        let key = format!("comment:{}", comment.id);
        if kv::get(&key).is_some() {
            return Ok(vec![]);
        }
        let mut actions = Vec::new();
        for user in mentions(&comment.content) {
            if user == event.actor_id() {
                continue;
            }
            let item = json!({
                "item": {
                    "type": "mention",
                    "recipient_id": user,
                    "comment_id": comment.id,
                    "issue_id": comment.issue_id,
                    "issue_title": created.issue_title,
                }
            });
            actions.push(event.follow_up("inbox:new", &item)?);
        }
        remember(&key)?;
        Ok(actions)
    }
}

export!(MentionNotifier);

/// The distinct `@handles` in `text`, in order of first appearance.
fn mentions(text: &str) -> Vec<&str> {
    let mut found: Vec<&str> = Vec::new();
    for (at, _) in text.match_indices('@') {
        let preceded_by_word = text[..at].chars().next_back().is_some_and(is_handle_char);
        if preceded_by_word {
            continue; // an email address, not a mention
        }
        let rest = &text[at + 1..];
        let end = rest.find(|c: char| !is_handle_char(c)).unwrap_or(rest.len());
        let handle = rest[..end].trim_end_matches('.');
        if !handle.is_empty() && !found.contains(&handle) {
            found.push(handle);
        }
    }
    found
}

fn is_handle_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Marks a comment as handled, forgetting the oldest one past `REMEMBERED`.
fn remember(key: &str) -> Result<(), Error> {
    let mut order: Vec<String> = kv::get_json("order")?.unwrap_or_default();
    order.push(key.to_string());
    while order.len() > REMEMBERED {
        let oldest = order.remove(0);
        kv::delete(&oldest);
    }
    kv::set(key, b"1")?;
    kv::set_json("order", &order)
}
