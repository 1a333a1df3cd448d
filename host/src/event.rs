//! Events: what applications publish on the bus, and how they are read from JSON.
//!
//! This module owns the `Event` type, its JSON form (the HTTP API, `busbar dispatch`) and its
//! validation. It must not know about listeners, plugins or transports: an `Event` is plain
//! data that every other module can share.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// JSON text, validated once and then kept byte for byte (never re-serialized).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Validates `text` as JSON, without copying it.
    pub fn parse(text: String) -> Result<Json, serde_json::Error> {
        RawValue::from_string(text).map(Json)
    }

    /// `{}`.
    pub fn empty_object() -> Json {
        Json::parse("{}".to_string()).expect("`{}` is valid JSON")
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Json {}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest accepted event type, id, workspace, actor or scope id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Deepest nesting of arrays and objects accepted in a payload, by default (`limits.max-json-depth`
/// in busbar.toml for published events, the manifest key of the same name for plugin outputs).
pub const MAX_JSON_DEPTH: usize = 64;

/// How deeply `json` nests arrays and objects (strings are skipped). Linear in the text; used
/// before anything is built from a payload.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Refuses JSON that nests deeper than `max`. Text with no more than `max` opening brackets
/// anywhere (strings included) cannot nest deeper, and is passed after one vectorized count.
pub fn check_json_depth(json: &str, max: usize) -> Result<(), String> {
    let openers = json.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if openers <= max {
        return Ok(());
    }
    let depth = json_depth(json);
    if depth > max {
        return Err(format!("nests {depth} levels deep; the limit is {max}"));
    }
    Ok(())
}

/// A domain event: `issue:created` in workspace `w1` by member `u7`, with a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Unique id. Events published without one get a UUIDv7; follow-ups get `<parent>.<n>`.
    pub id: String,
    /// `resource:verb` by convention.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Empty for events outside any workspace.
    pub workspace_id: String,
    pub actor_type: String,
    pub actor_id: String,
    /// The payload as JSON text; always valid JSON.
    pub payload: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_session_id: Option<String>,
    /// Publish time, in milliseconds since the Unix epoch.
    pub published_at_ms: u64,
}

/// Why an event was refused. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid event JSON: {0}")]
    Json(String),
    #[error("field `{field}`: {problem}")]
    Field { field: &'static str, problem: String },
}

/// The JSON form of an event, as sent by publishers. Only `type` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub workspace_id: String,
    #[serde(default)]
    pub actor_type: String,
    #[serde(default)]
    pub actor_id: String,
    #[serde(default)]
    pub payload: Option<Json>,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub chat_session_id: Option<String>,
    #[serde(default)]
    pub published_at_ms: Option<u64>,
}

impl Event {
    /// A new event with a fresh id, published now, and an empty (`{}`) payload.
    pub fn new(event_type: impl Into<String>, workspace_id: impl Into<String>) -> Event {
        Event {
            id: new_id(),
            event_type: event_type.into(),
            workspace_id: workspace_id.into(),
            actor_type: String::new(),
            actor_id: String::new(),
            payload: Json::empty_object(),
            task_id: None,
            chat_session_id: None,
            published_at_ms: now_ms(),
        }
    }

    /// Sets the payload from JSON text, which must be valid JSON.
    pub fn with_payload(mut self, json: &str) -> Result<Event, EventError> {
        self.payload = parse_payload(json)?;
        Ok(self)
    }

    pub fn with_actor(mut self, actor_type: impl Into<String>, actor_id: impl Into<String>) -> Event {
        self.actor_type = actor_type.into();
        self.actor_id = actor_id.into();
        self
    }

    pub fn with_task(mut self, task_id: impl Into<String>) -> Event {
        self.task_id = Some(task_id.into());
        self
    }

    pub fn with_chat_session(mut self, chat_session_id: impl Into<String>) -> Event {
        self.chat_session_id = Some(chat_session_id.into());
        self
    }

    /// Reads one event from its JSON form and validates it, its payload nesting at most
    /// `MAX_JSON_DEPTH` levels.
    pub fn from_json(json: &str) -> Result<Event, EventError> {
        Event::from_json_with_depth(json, MAX_JSON_DEPTH)
    }

    /// Like `from_json`, with the deepest payload nesting given.
    pub fn from_json_with_depth(json: &str, max_depth: usize) -> Result<Event, EventError> {
        let input: EventInput =
            serde_json::from_str(json).map_err(|e| EventError::Json(e.to_string()))?;
        let event = Event::try_from(input)?;
        check_json_depth(event.payload(), max_depth).map_err(|problem| field("payload", problem))?;
        Ok(event)
    }

    /// The payload's JSON text.
    pub fn payload(&self) -> &str {
        self.payload.as_str()
    }
}

impl TryFrom<EventInput> for Event {
    type Error = EventError;

    fn try_from(input: EventInput) -> Result<Event, EventError> {
        check_type(&input.event_type)?;
        let id = match input.id {
            Some(id) => {
                check_name("id", &id)?;
                if id.is_empty() {
                    return Err(field("id", "must not be empty"));
                }
                id
            }
            None => new_id(),
        };
        check_names(&input.workspace_id, &input.actor_type, &input.actor_id, input.task_id.as_deref(), input.chat_session_id.as_deref())?;
        Ok(Event {
            id,
            event_type: input.event_type,
            workspace_id: input.workspace_id,
            actor_type: input.actor_type,
            actor_id: input.actor_id,
            payload: input.payload.unwrap_or_else(Json::empty_object),
            task_id: input.task_id,
            chat_session_id: input.chat_session_id,
            published_at_ms: input.published_at_ms.unwrap_or_else(now_ms),
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.event_type, self.id)
    }
}

/// Checks an event type: non-empty, bounded, printable ASCII without spaces or `*`.
pub fn check_type(event_type: &str) -> Result<(), EventError> {
    if event_type.is_empty() {
        return Err(field("type", "must not be empty"));
    }
    check_name("type", event_type)?;
    if let Some(c) = event_type.chars().find(|c| !c.is_ascii_graphic() || *c == '*') {
        return Err(field("type", format!("must not contain {c:?}")));
    }
    Ok(())
}

/// Checks an id or name field (workspace, actor, task, chat): bounded, no control characters.
pub fn check_name(name: &'static str, value: &str) -> Result<(), EventError> {
    if value.len() > MAX_NAME_LEN {
        return Err(field(name, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(field(name, "contains a control character"));
    }
    Ok(())
}

/// Checks the names an event (or a follow-up a plugin asks for) carries besides its type.
pub fn check_names(workspace_id: &str, actor_type: &str, actor_id: &str, task_id: Option<&str>, chat_session_id: Option<&str>) -> Result<(), EventError> {
    check_name("workspace_id", workspace_id)?;
    check_name("actor_type", actor_type)?;
    check_name("actor_id", actor_id)?;
    task_id.map_or(Ok(()), |task| check_name("task_id", task))?;
    chat_session_id.map_or(Ok(()), |chat| check_name("chat_session_id", chat))
}

fn field(field: &'static str, problem: impl Into<String>) -> EventError {
    EventError::Field { field, problem: problem.into() }
}

/// Validates JSON text and keeps it as it is, byte for byte.
pub fn parse_payload(json: &str) -> Result<Json, EventError> {
    Json::parse(json.to_string()).map_err(|e| field("payload", format!("not valid JSON: {e}")))
}

/// A fresh, time-ordered event id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_event_gets_id_time_and_empty_payload() {
        let e = Event::from_json(r#"{"type":"issue:created"}"#).unwrap();
        assert_eq!(e.event_type, "issue:created");
        assert!(!e.id.is_empty());
        assert_eq!(e.payload(), "{}");
        assert!(e.published_at_ms > 0);
    }

    #[test]
    fn depth_skips_strings() {
        assert_eq!(json_depth(r#"{"a":[1,{"b":"[[[{{\"]]"}]}"#), 3);
        assert_eq!(json_depth("1"), 0);
    }

    #[test]
    fn payload_is_kept_byte_for_byte() {
        let json = r#"{"type":"a:b","payload":{"z": 1,  "a":"é\u00e9"}}"#;
        let e = Event::from_json(json).unwrap();
        assert_eq!(e.payload(), r#"{"z": 1,  "a":"é\u00e9"}"#);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"payload":{}}"#, "missing field `type`"),
            (r#"{"type":""}"#, "field `type`: must not be empty"),
            (r#"{"type":"a b"}"#, "field `type`: must not contain ' '"),
            (r#"{"type":"a:*"}"#, "field `type`: must not contain '*'"),
            (r#"{"type":"a","workspace":"w"}"#, "unknown field `workspace`"),
            (r#"{"type":"a","id":""}"#, "field `id`: must not be empty"),
            (r#"{"type":"a","actor_id":"x\ny"}"#, "field `actor_id`: contains a control character"),
            (r#"{"type":"a","payload":}"#, "invalid event JSON"),
        ];
        for (json, expected) in cases {
            let err = Event::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
        let deep = format!(r#"{{"type":"a","payload":{}1{}}}"#, "[".repeat(MAX_JSON_DEPTH + 1), "]".repeat(MAX_JSON_DEPTH + 1));
        let err = Event::from_json(&deep).unwrap_err().to_string();
        assert!(err.contains("field `payload`: nests 65 levels deep; the limit is 64"), "{err}");
        let at_limit = format!(r#"{{"type":"a","payload":{}1{}}}"#, "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
        Event::from_json(&at_limit).unwrap();
        let long = format!(r#"{{"type":"a","task_id":"{}"}}"#, "t".repeat(MAX_NAME_LEN + 1));
        let err = Event::from_json(&long).unwrap_err().to_string();
        assert!(err.contains("field `task_id`: longer than 256 bytes"), "{err}");
    }
}
