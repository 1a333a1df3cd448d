//! What happened when the bus ran a listener, and what a publish reports back.
//!
//! This module owns `ListenerError` (how a listener fails), `Outcome` (one per listener call)
//! and `PublishReport` (one per `publish`, covering the event and its follow-ups). It holds data
//! only; the bus produces these values and the API and CLI print them.

use std::time::Duration;

use serde::Serialize;

/// How a listener call can fail. Every variant is contained: the listeners after it still run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    /// The listener returned an error (a WASM plugin's `err(..)`).
    #[error("{0}")]
    Failed(String),
    /// A WASM trap (panic, abort, stack overflow...) or a native panic.
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its deadline and was interrupted.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The call tried to grow memory past the listener's cap.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The listener is cooling off after repeated failures and was not called.
    #[error("quarantined: {0}")]
    Quarantined(String),
    /// The call returned something the host refuses (too many actions or bytes, bad JSON).
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// The call's output went where the listener's policy does not reach (another workspace,
    /// everyone, another actor): none of it was applied.
    #[error("policy denied: {0}")]
    PolicyDenied(String),
}

/// The outcome of one listener call, as reported by `publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ok { actions: usize },
    Error { message: String },
    Trap { message: String },
    Timeout { message: String },
    OutOfMemory { message: String },
    Quarantined { message: String },
    InvalidOutput { message: String },
    PolicyDenied { message: String },
    /// The listener returned normally, but its actions would have gone over the publish's
    /// output budget, so none of them was applied.
    OverBudget { message: String },
}

/// The kinds of `Outcome`, in one place: counters, metrics and reports iterate `ALL`, so a new
/// outcome is added here and in `Outcome` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeKind {
    Ok,
    Error,
    Trap,
    Timeout,
    OutOfMemory,
    Quarantined,
    InvalidOutput,
    PolicyDenied,
    OverBudget,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 9] = [
        OutcomeKind::Ok,
        OutcomeKind::Error,
        OutcomeKind::Trap,
        OutcomeKind::Timeout,
        OutcomeKind::OutOfMemory,
        OutcomeKind::Quarantined,
        OutcomeKind::InvalidOutput,
        OutcomeKind::PolicyDenied,
        OutcomeKind::OverBudget,
    ];

    /// The name as it appears in JSON and in metrics labels (`ok`, `trap`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Error => "error",
            OutcomeKind::Trap => "trap",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::OutOfMemory => "out_of_memory",
            OutcomeKind::Quarantined => "quarantined",
            OutcomeKind::InvalidOutput => "invalid_output",
            OutcomeKind::PolicyDenied => "policy_denied",
            OutcomeKind::OverBudget => "over_budget",
        }
    }
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }

    pub fn kind_of(&self) -> OutcomeKind {
        match self {
            Outcome::Ok { .. } => OutcomeKind::Ok,
            Outcome::Error { .. } => OutcomeKind::Error,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::Timeout { .. } => OutcomeKind::Timeout,
            Outcome::OutOfMemory { .. } => OutcomeKind::OutOfMemory,
            Outcome::Quarantined { .. } => OutcomeKind::Quarantined,
            Outcome::InvalidOutput { .. } => OutcomeKind::InvalidOutput,
            Outcome::PolicyDenied { .. } => OutcomeKind::PolicyDenied,
            Outcome::OverBudget { .. } => OutcomeKind::OverBudget,
        }
    }

    /// The outcome's name as it appears in JSON (`ok`, `trap`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind_of().as_str()
    }

    /// The message of a failed call.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::Error { message }
            | Outcome::Trap { message }
            | Outcome::Timeout { message }
            | Outcome::OutOfMemory { message }
            | Outcome::Quarantined { message }
            | Outcome::InvalidOutput { message }
            | Outcome::PolicyDenied { message }
            | Outcome::OverBudget { message } => Some(message),
        }
    }
}

impl From<ListenerError> for Outcome {
    fn from(error: ListenerError) -> Outcome {
        let message = error.to_string();
        match error {
            ListenerError::Failed(message) => Outcome::Error { message },
            ListenerError::Trap(_) => Outcome::Trap { message },
            ListenerError::Timeout(_) => Outcome::Timeout { message },
            ListenerError::OutOfMemory(_) => Outcome::OutOfMemory { message },
            ListenerError::Quarantined(_) => Outcome::Quarantined { message },
            ListenerError::InvalidOutput(_) => Outcome::InvalidOutput { message },
            ListenerError::PolicyDenied(_) => Outcome::PolicyDenied { message },
        }
    }
}

/// One listener's part in dispatching one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerReport {
    pub listener: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub duration_us: u64,
}

/// Whether an event was dispatched, or why not: `"status": "dispatched"`, or
/// `"status": "not_dispatched"` with a `"reason"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventStatus {
    Dispatched,
    /// A follow-up that was not dispatched: its listeners were not run.
    NotDispatched { reason: NotDispatched },
}

/// Why a follow-up was not dispatched. Each is a limit of the publish it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotDispatched {
    /// Deeper than `limits.publish-max-depth`.
    DepthLimit,
    /// Past `limits.publish-max-events` follow-ups.
    EventLimit,
    /// The publish had used its `limits.publish-time-ms`.
    TimeBudget,
}

impl NotDispatched {
    pub const ALL: [NotDispatched; 3] = [NotDispatched::DepthLimit, NotDispatched::EventLimit, NotDispatched::TimeBudget];

    pub fn as_str(self) -> &'static str {
        match self {
            NotDispatched::DepthLimit => "depth_limit",
            NotDispatched::EventLimit => "event_limit",
            NotDispatched::TimeBudget => "time_budget",
        }
    }
}

/// What happened to one event: the published one, or one of its follow-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventReport {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// 0 for the published event, 1 for its follow-ups, and so on.
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(flatten)]
    pub status: EventStatus,
    pub listeners: Vec<ListenerReport>,
}

/// Everything one `publish` did, in dispatch order: the event first, then its follow-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    pub events: Vec<EventReport>,
}

impl PublishReport {
    /// The published event's own report.
    pub fn root(&self) -> &EventReport {
        &self.events[0]
    }

    /// Every listener report of every event, in order.
    pub fn listener_reports(&self) -> impl Iterator<Item = &ListenerReport> {
        self.events.iter().flat_map(|e| e.listeners.iter())
    }

    /// Counts instead of details: what a response shows when the full report would be too large.
    pub fn summary(&self) -> ReportSummary {
        let mut summary = ReportSummary { events: self.events.len(), ..ReportSummary::default() };
        for event in &self.events {
            match event.status {
                EventStatus::Dispatched => summary.dispatched += 1,
                EventStatus::NotDispatched { reason } => *summary.not_dispatched.entry(reason).or_default() += 1,
            }
            for listener in &event.listeners {
                *summary.outcomes.entry(listener.outcome.kind()).or_default() += 1;
            }
        }
        summary
    }
}

/// A publish report in counts: events by status, listener calls by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    pub events: usize,
    pub dispatched: usize,
    pub not_dispatched: std::collections::BTreeMap<NotDispatched, usize>,
    pub outcomes: std::collections::BTreeMap<&'static str, usize>,
}
