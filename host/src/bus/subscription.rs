//! What a listener subscribes to: an exact event type, a `prefix:*`, or everything (`*`).
//!
//! This module owns parsing and printing the patterns; the registry indexes them. It must not
//! decide dispatch order (that is the registry's).

use std::fmt;

use serde::Serialize;

use super::BusError;
use crate::event;

/// One thing a listener subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// Exactly this event type.
    Exact(String),
    /// Every type starting with this prefix (written `prefix*`, usually `resource:*`).
    Prefix(String),
    /// Every event (`*`): a catch-all listener.
    All,
}

impl Subscription {
    /// Parses `issue:created`, `issue:*` or `*`.
    pub fn parse(pattern: &str) -> Result<Subscription, BusError> {
        let invalid = |why: &str| BusError::InvalidSubscription(pattern.to_string(), why.to_string());
        if pattern == "*" {
            return Ok(Subscription::All);
        }
        if pattern.is_empty() {
            return Err(invalid("empty"));
        }
        if pattern.find('*').is_some_and(|at| at != pattern.len() - 1) {
            return Err(invalid("`*` only at the end"));
        }
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                event::check_type(prefix).map_err(|e| invalid(&e.to_string()))?;
                Ok(Subscription::Prefix(prefix.to_string()))
            }
            None => {
                event::check_type(pattern).map_err(|e| invalid(&e.to_string()))?;
                Ok(Subscription::Exact(pattern.to_string()))
            }
        }
    }

    /// Parses a list of patterns; the list must not be empty.
    pub fn parse_all<S: AsRef<str>>(patterns: &[S]) -> Result<Vec<Subscription>, BusError> {
        if patterns.is_empty() {
            return Err(BusError::InvalidSubscription(String::new(), "no subscriptions".into()));
        }
        patterns.iter().map(|p| Subscription::parse(p.as_ref())).collect()
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Exact(t) => f.write_str(t),
            Subscription::Prefix(p) => write!(f, "{p}*"),
            Subscription::All => f.write_str("*"),
        }
    }
}

impl Serialize for Subscription {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
