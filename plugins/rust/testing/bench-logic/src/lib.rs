//! The routing logic of the dispatch benchmark, shared by the `bench-router` plugin and the
//! native listener it is compared with, so that both sides run exactly the same code.
//!
//! It does what a real listener does: parse the JSON payload, route on its fields, and build one
//! small outgoing payload.

use serde::{Deserialize, Serialize};

/// Where the message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Workspace(String),
    Task(String),
    User(String),
}

/// The routing decision: a target and the outgoing payload (JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    pub payload: String,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(default)]
    task_id: Option<&'a str>,
    #[serde(default)]
    assignee_id: Option<&'a str>,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    labels: Vec<&'a str>,
    #[serde(default)]
    body: &'a str,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    id: &'a str,
    priority: u8,
    urgent: bool,
    labels: usize,
    body_bytes: usize,
}

pub fn route(workspace_id: &str, payload: &str) -> Result<Routed, String> {
    let incoming: Incoming = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let urgent = incoming.priority >= 3 || incoming.labels.contains(&"urgent");
    let route = match (incoming.task_id, incoming.assignee_id) {
        (Some(task), _) => Route::Task(task.to_string()),
        (None, Some(user)) if urgent => Route::User(user.to_string()),
        _ => Route::Workspace(workspace_id.to_string()),
    };
    let outgoing = Outgoing {
        id: incoming.id,
        priority: incoming.priority,
        urgent,
        labels: incoming.labels.len(),
        body_bytes: incoming.body.len(),
    };
    let payload = serde_json::to_string(&outgoing).map_err(|e| e.to_string())?;
    Ok(Routed { route, payload })
}

/// A payload of about `size` bytes that `route` accepts.
pub fn payload_of_size(size: usize) -> String {
    let fixed = r#"{"id":"iss-1","assignee_id":"u-7","priority":3,"labels":["bug","urgent","backend"],"body":""}"#;
    let body = "x".repeat(size.saturating_sub(fixed.len()));
    format!(r#"{{"id":"iss-1","assignee_id":"u-7","priority":3,"labels":["bug","urgent","backend"],"body":"{body}"}}"#)
}
