//! What a publish did, as lines of JSON: the form `busbar dispatch` prints, `busbar plugin test`
//! compares and the conformance suite checks in every guest language.
//!
//! This module owns `lines`: for each event of a publish, in dispatch order, its Broadcaster
//! calls (`{"kind": "broadcast", ...}`, the frame's payload byte for byte), whether a limit
//! stopped it (`not_dispatched`), then its listeners' outcomes (`outcome`). It must not publish:
//! callers hand it a report and what the Broadcaster recorded.

use serde_json::json;

use crate::broadcast::Delivery;
use crate::bus::{EventStatus, PublishReport};

/// How the lines are written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Add each listener call's `duration_us`.
    pub timings: bool,
    /// Write trap messages (which name engine internals) as `(engine-specific)`, so outputs
    /// compare across languages and wasmtime versions.
    pub redact_traps: bool,
}

/// The report of one publish and the deliveries it made, as lines.
pub fn lines(report: &PublishReport, deliveries: &[Delivery], style: Style) -> Vec<String> {
    let mut out = Vec::new();
    for event in &report.events {
        for delivery in deliveries.iter().filter(|d| d.frame.event_id == event.event_id) {
            out.push(delivery.to_line());
        }
        if let EventStatus::NotDispatched { reason } = event.status {
            let line = json!({"kind": "not_dispatched", "event_id": event.event_id, "type": event.event_type,
                              "depth": event.depth, "reason": reason});
            out.push(line.to_string());
        }
        for listener in &event.listeners {
            let mut line = json!({"kind": "outcome", "event_id": event.event_id, "type": event.event_type,
                                  "listener": listener.listener});
            if let (Some(line), Ok(serde_json::Value::Object(outcome))) =
                (line.as_object_mut(), serde_json::to_value(&listener.outcome))
            {
                line.extend(outcome);
                if style.redact_traps && line["outcome"] == "trap" {
                    line.insert("message".into(), "(engine-specific)".into());
                }
                if style.timings {
                    line.insert("duration_us".into(), listener.duration_us.into());
                }
            }
            out.push(line.to_string());
        }
    }
    out
}
