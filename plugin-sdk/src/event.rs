//! The event a plugin handles: lent by the host for one call, read field by field.
//!
//! This module owns [`Event`], the SDK's view of contract 0.2.0's `event` resource. Each field
//! crosses from the host only when first read, and is kept for the rest of the call, so a
//! plugin pays for exactly the fields it uses, once each. It must not read a field the author
//! did not ask for: helpers such as [`Event::forward`] read only what they put in their action.

use std::cell::OnceCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::busbar::plugin::types;
use crate::{Action, Error, FollowUp, Message, Target};

/// A domain event, as published on the bus. Valid for the call it is handed to.
pub struct Event<'call> {
    lent: &'call types::Event,
    id: OnceCell<String>,
    event_type: OnceCell<String>,
    workspace_id: OnceCell<String>,
    actor_type: OnceCell<String>,
    actor_id: OnceCell<String>,
    payload: OnceCell<String>,
    task_id: OnceCell<Option<String>>,
    chat_session_id: OnceCell<Option<String>>,
}

impl<'call> Event<'call> {
    #[doc(hidden)]
    pub fn lent(lent: &'call types::Event) -> Event<'call> {
        Event {
            lent,
            id: OnceCell::new(),
            event_type: OnceCell::new(),
            workspace_id: OnceCell::new(),
            actor_type: OnceCell::new(),
            actor_id: OnceCell::new(),
            payload: OnceCell::new(),
            task_id: OnceCell::new(),
            chat_session_id: OnceCell::new(),
        }
    }

    /// Unique id of this event. Follow-up events get `<parent-id>.<n>`.
    pub fn id(&self) -> &str {
        self.id.get_or_init(|| self.lent.id())
    }

    /// The event type, `resource:verb` by convention (`issue:created`, `task:message`).
    pub fn event_type(&self) -> &str {
        self.event_type.get_or_init(|| self.lent.event_type())
    }

    /// The workspace the event belongs to; empty for events outside any workspace.
    pub fn workspace_id(&self) -> &str {
        self.workspace_id.get_or_init(|| self.lent.workspace_id())
    }

    /// Who caused the event: `member`, `agent` or `system` by convention; may be empty.
    pub fn actor_type(&self) -> &str {
        self.actor_type.get_or_init(|| self.lent.actor_type())
    }

    /// Id of the actor; may be empty.
    pub fn actor_id(&self) -> &str {
        self.actor_id.get_or_init(|| self.lent.actor_id())
    }

    /// The payload, as JSON text. Always valid JSON; often an object.
    pub fn payload(&self) -> &str {
        self.payload.get_or_init(|| self.lent.payload())
    }

    /// The task this event concerns, if any (routing hint for the `task` scope).
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.get_or_init(|| self.lent.task_id()).as_deref()
    }

    /// The chat session this event concerns, if any (routing hint for the `chat` scope).
    pub fn chat_session_id(&self) -> Option<&str> {
        self.chat_session_id.get_or_init(|| self.lent.chat_session_id()).as_deref()
    }

    /// When the event was published, in milliseconds since the Unix epoch.
    pub fn published_at_ms(&self) -> u64 {
        self.lent.published_at_ms()
    }

    /// Parses the payload into the author's own type.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.payload()).map_err(|e| Error::new(format!("{} payload: {e}", self.event_type())))
    }

    /// A message carrying this event's type and payload, unchanged byte for byte, to `target`.
    pub fn forward(&self, target: Target) -> Action {
        Action::Send(Message { target, event_type: self.event_type().to_string(), payload: self.payload().to_string() })
    }

    /// Like [`Event::forward`], but with the top-level `keys` removed from an object payload.
    /// The payload is forwarded unchanged (byte for byte) when none of the keys is present.
    pub fn forward_without(&self, target: Target, keys: &[&str]) -> Result<Action, Error> {
        if keys.is_empty() {
            return Ok(self.forward(target));
        }
        let mut payload = match self.payload_as::<serde_json::Value>()? {
            serde_json::Value::Object(map) => map,
            _ => return Ok(self.forward(target)),
        };
        let before = payload.len();
        for key in keys {
            payload.remove(*key);
        }
        if payload.len() == before {
            return Ok(self.forward(target));
        }
        Action::send_json(target, self.event_type(), &payload)
    }

    /// A follow-up event of type `event_type` in this event's workspace, by the same actor,
    /// with the same task and chat hints.
    pub fn follow_up<T: Serialize + ?Sized>(&self, event_type: impl Into<String>, payload: &T) -> Result<Action, Error> {
        Ok(Action::Publish(FollowUp {
            event_type: event_type.into(),
            workspace_id: self.workspace_id().to_string(),
            actor_type: self.actor_type().to_string(),
            actor_id: self.actor_id().to_string(),
            payload: serde_json::to_string(payload)?,
            task_id: self.task_id().map(str::to_string),
            chat_session_id: self.chat_session_id().map(str::to_string),
        }))
    }
}

impl std::fmt::Debug for Event<'_> {
    /// The fields read so far; reading more here would make them cross.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id.get())
            .field("event_type", &self.event_type.get())
            .field("workspace_id", &self.workspace_id.get())
            .field("payload", &self.payload.get())
            .finish_non_exhaustive()
    }
}
