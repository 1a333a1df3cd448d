//! The seed's forwarder as a plugin, routing as the original did: every event goes to its
//! workspace room, personal events (the original's set: `inbox:new|read|archived|unarchived|
//! batch-read|batch-archived`, `invitation:created|revoked`) only to the recipient named in the
//! payload, workspace-less `daemon:*` events to everyone, and internal keys are stripped before
//! anything leaves.
//!
//! One deliberate difference: `chat:*` events reach the workspace room only when config
//! `chat-to-workspace` is `true`. The original sent chat messages, content included, to every
//! connection of the workspace; by default here they go only to the chat's room (scope-router),
//! whose members the authorizer checks.
//!
//! Shows: routing on the event type, reading the payload as JSON, byte-exact forwarding when
//! nothing needs stripping, a boolean config key, and a `skip` config list of patterns left to
//! other plugins.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, config, export};
use busbar_plugin_sdk::serde_json::Value;

struct Forwarder;

impl Plugin for Forwarder {
    fn subscriptions() -> Vec<String> {
        vec!["*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        // Credential events (a personal access token's hash, for a policy plugin) never reach clients.
        let credentials = event.event_type().starts_with("personal_access_token:");
        if credentials || skipped(event.event_type()) || (event.event_type().starts_with("chat:") && !chat_to_workspace()) {
            return Ok(vec![]);
        }
        if is_personal(event.event_type()) {
            let recipient = recipient(&event)?;
            return Ok(vec![outbound(&event, Target::user(recipient))?]);
        }
        if event.event_type() == "member:added" {
            // The new member's other connections hear about it too, except those already in
            // this workspace, which get it from the workspace room.
            let mut actions = vec![outbound(&event, Target::workspace(event.workspace_id()))?];
            if let Some(user) = member_user(&event)? {
                actions.push(outbound(&event, Target::user_except(user, event.workspace_id()))?);
            }
            return Ok(actions);
        }
        if !event.workspace_id().is_empty() {
            return Ok(vec![outbound(&event, Target::workspace(event.workspace_id()))?]);
        }
        if event.event_type().starts_with("daemon:") {
            return Ok(vec![outbound(&event, Target::Everyone)?]);
        }
        Ok(vec![])
    }
}

export!(Forwarder);

/// Events that concern one person and must never reach a whole workspace: exactly the
/// original's set (`inbox:unread` and `invitation:accepted|declined` go to the workspace).
fn is_personal(event_type: &str) -> bool {
    matches!(
        event_type,
        "inbox:new"
            | "inbox:read"
            | "inbox:archived"
            | "inbox:unarchived"
            | "inbox:batch-read"
            | "inbox:batch-archived"
            | "invitation:created"
            | "invitation:revoked"
    )
}

/// `chat-to-workspace = "true"` sends chat traffic to the whole workspace, as the original did.
fn chat_to_workspace() -> bool {
    config::get("chat-to-workspace").is_some_and(|v| v.trim() == "true")
}

/// `skip` is a comma-separated list of exact types or `prefix:*` patterns.
fn skipped(event_type: &str) -> bool {
    let Some(skip) = config::get("skip") else { return false };
    skip.split(',').map(str::trim).any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => !prefix.is_empty() && event_type.starts_with(prefix),
        None => pattern == event_type,
    })
}

/// The recipient of a personal event, where the seed's producers put it.
fn recipient(event: &Event) -> Result<String, Error> {
    let payload: Value = event.payload_as()?;
    let candidates = [
        &payload["item"]["recipient_id"],
        &payload["recipient_id"],
        &payload["invitation"]["InviteeUserID"],
        &payload["invitation"]["invitee_user_id"],
        &payload["invitee_user_id"],
    ];
    candidates
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .map(str::to_string)
        .ok_or_else(|| Error::new(format!("{}: no recipient in payload", event.event_type())))
}

fn member_user(event: &Event) -> Result<Option<String>, Error> {
    let payload: Value = event.payload_as()?;
    Ok([&payload["member"]["user_id"], &payload["user_id"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .map(str::to_string))
}

/// Keys that are for the server only and must not reach clients, per event type.
fn internal_keys(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "issue:updated" => &["prev_title", "prev_description"],
        "task:failed" => &["error"],
        _ => &[],
    }
}

/// The event as a message for `target`, with internal keys stripped.
fn outbound(event: &Event, target: Target) -> Result<Action, Error> {
    event.forward_without(target, internal_keys(event.event_type()))
}
