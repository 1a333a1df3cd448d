//! The WebSocket protocol's frames, in one place: what clients send and what they receive.
//!
//! This module owns `Inbound` (a client frame: `{"type", "payload"}`), `Control` (every reply
//! and error the server sends outside rooms), and the encoders of room frames (`event`,
//! `skip`, `subscribe_ack`), each written once for every recipient. docs/protocol.md describes
//! exactly these shapes; the tests below pin every one. It must not decide anything: the
//! session and the hub say what to send.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Joined;
use crate::action::Scope;
use crate::broadcast::Frame;
use crate::event::Json;

/// A frame from a client. Unknown types and fields are ignored (newer clients, older servers).
#[derive(Debug, Deserialize)]
pub(crate) struct Inbound {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

/// What the server sends a connection outside its rooms: `{"type", "payload"}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub(crate) enum Control<'a> {
    /// The connection is live.
    AuthAck,
    /// A later `auth` frame was verified: the connection now lasts until `exp`.
    #[serde(rename = "auth_ack")]
    Refreshed { exp: u64 },
    /// A later `auth` frame was refused; nothing changed.
    AuthError { error: &'a str },
    Pong,
    UnsubscribeAck { scope: &'a str, id: &'a str },
    SubscribeError { scope: &'a str, id: &'a str, error: &'a str },
    UnsubscribeError { scope: &'a str, id: &'a str, error: &'a str },
    /// Sent before the server closes the connection.
    Error { code: &'a str, message: &'a str },
}

impl Control<'_> {
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).expect("control frames serialize")
    }
}

/// `{"type": "subscribe_ack", "payload": {scope, id[, workspace_id], epoch, offset[, recovered]}}`.
pub(crate) fn subscribe_ack(scope: &Scope, joined: &Joined) -> Utf8Bytes {
    let mut payload = serde_json::json!({
        "scope": scope.kind.as_str(),
        "id": scope.id,
        "epoch": joined.position.epoch,
        "offset": joined.position.offset,
    });
    if !scope.workspace.is_empty() {
        payload["workspace_id"] = serde_json::json!(scope.workspace);
    }
    if let Some(recovered) = joined.recovered {
        payload["recovered"] = serde_json::json!(recovered);
    }
    Utf8Bytes::from(serde_json::json!({"type": "subscribe_ack", "payload": payload}).to_string())
}

/// Where an `everyone` frame was sent, for `event`.
pub(crate) struct Everyone;

/// The room a frame is encoded for: a scope, or everyone.
pub(crate) trait Destination {
    fn kind(&self) -> &str;
    fn id(&self) -> &str;
    fn workspace(&self) -> &str;
}

impl Destination for Scope {
    fn kind(&self) -> &str {
        self.kind.as_str()
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn workspace(&self) -> &str {
        &self.workspace
    }
}

impl Destination for Everyone {
    fn kind(&self) -> &str {
        "everyone"
    }
    fn id(&self) -> &str {
        ""
    }
    fn workspace(&self) -> &str {
        ""
    }
}

/// Encodes an event frame once, for every recipient. `workspace_id` is the room's workspace
/// (a workspace, task or chat room belongs to one), else the workspace of the event the message
/// came from.
pub(crate) fn event(frame: &Frame, room: &impl Destination, epoch: &str, seq: u64) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        event_type: &'a str,
        payload: &'a Json,
        actor_id: &'a str,
        actor_type: &'a str,
        event_id: &'a str,
        workspace_id: &'a str,
        scope: &'a str,
        scope_id: &'a str,
        epoch: &'a str,
        seq: u64,
    }
    let workspace_id = if room.workspace().is_empty() { &frame.workspace_id } else { room.workspace() };
    let wire = Wire {
        event_type: &frame.event_type,
        payload: &frame.payload,
        actor_id: &frame.actor_id,
        actor_type: &frame.actor_type,
        event_id: &frame.event_id,
        workspace_id,
        scope: room.kind(),
        scope_id: room.id(),
        epoch,
        seq,
    };
    Utf8Bytes::from(serde_json::to_string(&wire).expect("frames serialize"))
}

/// `{"type": "skip", scope, scope_id, epoch, seq}`: a position in a user room whose frame was
/// for the user's connections to another workspace.
pub(crate) fn skip(scope: &Scope, epoch: &str, seq: u64) -> Utf8Bytes {
    let skip = serde_json::json!({"type": "skip", "scope": scope.kind.as_str(), "scope_id": scope.id, "epoch": epoch, "seq": seq});
    Utf8Bytes::from(skip.to_string())
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Position;

    fn frame() -> Frame {
        Frame {
            event_type: "issue:created".into(),
            payload: Json::parse(r#"{"n": 1}"#.into()).unwrap(),
            actor_id: "u7".into(),
            actor_type: "member".into(),
            event_id: "e1".into(),
            workspace_id: "A".into(),
        }
    }

    /// Every frame shape the server sends, byte for byte, as docs/protocol.md shows them.
    #[test]
    fn every_frame_shape() {
        let shapes: Vec<(String, &str)> = vec![
            (Control::AuthAck.to_text(), r#"{"type":"auth_ack"}"#),
            (Control::Refreshed { exp: 1767225600 }.to_text(), r#"{"type":"auth_ack","payload":{"exp":1767225600}}"#),
            (Control::AuthError { error: "other_user" }.to_text(), r#"{"type":"auth_error","payload":{"error":"other_user"}}"#),
            (Control::Pong.to_text(), r#"{"type":"pong"}"#),
            (Control::UnsubscribeAck { scope: "task", id: "t-1" }.to_text(), r#"{"type":"unsubscribe_ack","payload":{"scope":"task","id":"t-1"}}"#),
            (
                Control::SubscribeError { scope: "task", id: "t-9", error: "forbidden" }.to_text(),
                r#"{"type":"subscribe_error","payload":{"scope":"task","id":"t-9","error":"forbidden"}}"#,
            ),
            (
                Control::UnsubscribeError { scope: "galaxy", id: "g", error: "unknown_scope" }.to_text(),
                r#"{"type":"unsubscribe_error","payload":{"scope":"galaxy","id":"g","error":"unknown_scope"}}"#,
            ),
            (
                Control::Error { code: "token_expired", message: "token expired" }.to_text(),
                r#"{"type":"error","payload":{"code":"token_expired","message":"token expired"}}"#,
            ),
            (
                event(&frame(), &Scope::task("A", "t-1"), "ep", 3).to_string(),
                r#"{"type":"issue:created","payload":{"n": 1},"actor_id":"u7","actor_type":"member","event_id":"e1","workspace_id":"A","scope":"task","scope_id":"t-1","epoch":"ep","seq":3}"#,
            ),
            (
                event(&frame(), &Scope::user("u7"), "ep", 4).to_string(),
                r#"{"type":"issue:created","payload":{"n": 1},"actor_id":"u7","actor_type":"member","event_id":"e1","workspace_id":"A","scope":"user","scope_id":"u7","epoch":"ep","seq":4}"#,
            ),
            (
                event(&frame(), &Everyone, "ep", 5).to_string(),
                r#"{"type":"issue:created","payload":{"n": 1},"actor_id":"u7","actor_type":"member","event_id":"e1","workspace_id":"A","scope":"everyone","scope_id":"","epoch":"ep","seq":5}"#,
            ),
            (skip(&Scope::user("u7"), "ep", 6).to_string(), r#"{"type":"skip","scope":"user","scope_id":"u7","epoch":"ep","seq":6}"#),
            (
                subscribe_ack(&Scope::chat("A", "c-1"), &Joined { position: Position { epoch: "ep".into(), offset: 7 }, recovered: Some(true) }).to_string(),
                r#"{"type":"subscribe_ack","payload":{"scope":"chat","id":"c-1","epoch":"ep","offset":7,"workspace_id":"A","recovered":true}}"#,
            ),
        ];
        for (got, expected) in shapes {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn every_frame_type_is_in_the_protocol_document() {
        let doc = include_str!("../../../docs/protocol.md");
        for kind in ["auth_ack", "auth_error", "pong", "subscribe_ack", "unsubscribe_ack", "subscribe_error", "skip", "error"] {
            assert!(doc.contains(&format!("\"type\": \"{kind}\"")), "docs/protocol.md never shows a `{kind}` frame");
        }
    }
}
