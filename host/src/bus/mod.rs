//! The bus: ordered, synchronous dispatch of events to listeners.
//!
//! This module owns `Bus`, the `Listener` trait and the registry of listeners. For each event,
//! listeners subscribed to its type (exactly or by `prefix:*`) run first, in registration order,
//! then catch-all (`*`) listeners in registration order. A failing listener (error, trap,
//! timeout, panic) never stops the ones after it. Actions a listener returns are applied in
//! order as soon as it returns: messages go to the Broadcaster, follow-up events are queued and
//! dispatched after the current event has been through every listener, before `publish`
//! returns. Each publish has a budget (`BusLimits`): follow-up depth, follow-up count, wall
//! time, and bytes of output; a follow-up past one is reported `not_dispatched` with the reason,
//! and a listener whose actions would overdraw the output budget gets `over_budget`.
//!
//! The bus knows nothing of wasmtime, axum or redis: WASM plugins and native Rust listeners
//! reach it through the same `Listener` trait, and frames leave through `Broadcaster`.

mod outcome;
mod registry;
mod stats;
mod subscription;

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

pub use outcome::{
    EventReport, EventStatus, ListenerError, ListenerReport, NotDispatched, Outcome, OutcomeKind, PublishReport,
    ReportSummary,
};
pub use stats::{Latency, LatencySnapshot, ListenerStats, StatsSnapshot};
pub use subscription::Subscription;

use crate::action::{Action, FollowUp};
use crate::broadcast::{self, Broadcaster, Frame};
use crate::event::{self, Event};
use registry::{Entry, Registry};

/// Something that handles events. Implemented by WASM plugins and by native Rust code alike.
///
/// `handle` may be called from many threads at once. A panic inside it is caught and reported
/// as a trap.
pub trait Listener: Send + Sync + 'static {
    fn handle(&self, event: &Event) -> Result<Vec<Action>, ListenerError>;
}

impl<F> Listener for F
where
    F: Fn(&Event) -> Result<Vec<Action>, ListenerError> + Send + Sync + 'static,
{
    fn handle(&self, event: &Event) -> Result<Vec<Action>, ListenerError> {
        self(event)
    }
}

/// Errors from changing the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("invalid subscription `{0}`: {1}")]
    InvalidSubscription(String, String),
    #[error("a listener named `{0}` is already registered")]
    DuplicateName(String),
    #[error("no listener named `{0}`")]
    UnknownListener(String),
    #[error("invalid listener name `{0}`: {1}")]
    InvalidName(String, String),
}

/// A listener with its name, subscriptions and optional position.
pub struct Registration {
    pub name: String,
    pub subscriptions: Vec<Subscription>,
    /// Lower runs first; listeners without an order run after those with one. Ties keep
    /// registration order.
    pub order: Option<i64>,
    pub listener: Arc<dyn Listener>,
}

impl Registration {
    pub fn new(name: impl Into<String>, subscriptions: Vec<Subscription>, listener: Arc<dyn Listener>) -> Registration {
        Registration { name: name.into(), subscriptions, order: None, listener }
    }

    pub fn with_order(mut self, order: Option<i64>) -> Registration {
        self.order = order;
        self
    }
}

/// What the registry says about one listener.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    pub name: String,
    /// Position in dispatch order (0 runs first among the listeners an event matches).
    pub position: usize,
    pub order: Option<i64>,
    pub subscriptions: Vec<Subscription>,
    pub stats: StatsSnapshot,
}

/// The budget of one `publish`, so that a listener loop or an amplifying plugin ends with a
/// clear outcome instead of holding the publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusLimits {
    /// Deepest follow-up dispatched: the published event is depth 0.
    pub max_depth: u32,
    /// Most follow-up events dispatched by one `publish`.
    pub max_follow_ups: usize,
    /// Wall time after which no further follow-up is dispatched. The published event itself
    /// always goes through every listener (each has its own deadline), and so does a follow-up
    /// that started in time.
    pub time_budget: Duration,
    /// Bytes of actions (types, ids, payloads) all listeners together may return in one
    /// publish, follow-ups included.
    pub output_budget: usize,
}

impl Default for BusLimits {
    fn default() -> BusLimits {
        BusLimits { max_depth: 8, max_follow_ups: 256, time_budget: Duration::from_secs(2), output_budget: 16 << 20 }
    }
}

/// How often each publish limit tripped, for `/metrics`.
#[derive(Debug, Default)]
struct Trips {
    not_dispatched: [AtomicU64; NotDispatched::ALL.len()],
    over_budget: AtomicU64,
}

/// The event bus.
pub struct Bus {
    registry: ArcSwap<Registry>,
    /// Serializes registry changes only; publishes never take it.
    writer: Mutex<()>,
    broadcaster: Arc<dyn Broadcaster>,
    limits: BusLimits,
    trips: Trips,
}

impl Bus {
    pub fn new(broadcaster: Arc<dyn Broadcaster>) -> Bus {
        Bus::with_limits(broadcaster, BusLimits::default())
    }

    pub fn with_limits(broadcaster: Arc<dyn Broadcaster>, limits: BusLimits) -> Bus {
        Bus {
            registry: ArcSwap::from_pointee(Registry::default()),
            writer: Mutex::new(()),
            broadcaster,
            limits,
            trips: Trips::default(),
        }
    }

    pub fn limits(&self) -> BusLimits {
        self.limits
    }

    /// How often each publish limit tripped, by name (`depth_limit`, `event_limit`,
    /// `time_budget`, `output_budget`).
    pub fn limit_trips(&self) -> BTreeMap<&'static str, u64> {
        let mut trips: BTreeMap<&'static str, u64> = NotDispatched::ALL
            .iter()
            .map(|r| (r.as_str(), self.trips.not_dispatched[*r as usize].load(Relaxed)))
            .collect();
        trips.insert("output_budget", self.trips.over_budget.load(Relaxed));
        trips
    }

    /// Registers a listener for `patterns` (`issue:created`, `task:*`, `*`) at the end.
    pub fn subscribe<S: AsRef<str>>(
        &self,
        name: &str,
        patterns: &[S],
        listener: impl Listener,
    ) -> Result<(), BusError> {
        let subscriptions = Subscription::parse_all(patterns)?;
        self.register(Registration::new(name, subscriptions, Arc::new(listener)))
    }

    /// Adds a listener. Names are unique.
    pub fn register(&self, registration: Registration) -> Result<(), BusError> {
        check_name(&registration.name)?;
        let _writer = self.writer.lock();
        let current = self.registry.load_full();
        if current.position(&registration.name).is_some() {
            return Err(BusError::DuplicateName(registration.name));
        }
        let mut entries = current.entries.clone();
        entries.push(Arc::new(Entry {
            name: registration.name,
            subscriptions: registration.subscriptions,
            order: registration.order,
            seq: current.next_seq,
            listener: registration.listener,
            stats: Arc::default(),
        }));
        self.registry.store(Arc::new(current.with(entries, current.next_seq + 1)));
        Ok(())
    }

    /// Swaps the listener registered under `registration.name` for a new one, at the same
    /// position and keeping its counters. Calls already running finish on the old listener;
    /// events dispatched after this returns see the new one.
    pub fn replace(&self, registration: Registration) -> Result<(), BusError> {
        let _writer = self.writer.lock();
        let current = self.registry.load_full();
        let index = current
            .position(&registration.name)
            .ok_or_else(|| BusError::UnknownListener(registration.name.clone()))?;
        let old = &current.entries[index];
        let mut entries = current.entries.clone();
        entries[index] = Arc::new(Entry {
            name: registration.name,
            subscriptions: registration.subscriptions,
            order: registration.order.or(old.order),
            seq: old.seq,
            listener: registration.listener,
            stats: old.stats.clone(),
        });
        self.registry.store(Arc::new(current.with(entries, current.next_seq)));
        Ok(())
    }

    /// Removes a listener; returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        let _writer = self.writer.lock();
        let current = self.registry.load_full();
        let Some(index) = current.position(name) else { return false };
        let mut entries = current.entries.clone();
        entries.remove(index);
        self.registry.store(Arc::new(current.with(entries, current.next_seq)));
        true
    }

    /// The registered listeners, in dispatch order.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.registry
            .load()
            .entries
            .iter()
            .enumerate()
            .map(|(position, e)| ListenerInfo {
                name: e.name.clone(),
                position,
                order: e.order,
                subscriptions: e.subscriptions.clone(),
                stats: e.stats.snapshot(),
            })
            .collect()
    }

    /// Dispatches `event` to every matching listener, then its follow-ups, within the publish's
    /// budget, and reports what each listener did. Returns when all of it is done.
    pub fn publish(&self, event: Event) -> PublishReport {
        let started = Instant::now();
        let mut queue = VecDeque::from([Queued { event, depth: 0, parent_id: None, producer: None }]);
        let mut events = Vec::new();
        let mut follow_ups = 0usize;
        let mut output_left = self.limits.output_budget;
        let mut refused: BTreeMap<NotDispatched, usize> = BTreeMap::new();
        while let Some(Queued { event, depth, parent_id, producer }) = queue.pop_front() {
            let mut report = EventReport {
                event_id: event.id.clone(),
                event_type: event.event_type.clone(),
                depth,
                parent_id,
                status: EventStatus::Dispatched,
                listeners: Vec::new(),
            };
            if depth > 0 {
                let reason = if depth > self.limits.max_depth {
                    Some(NotDispatched::DepthLimit)
                } else if follow_ups >= self.limits.max_follow_ups {
                    Some(NotDispatched::EventLimit)
                } else if started.elapsed() >= self.limits.time_budget {
                    Some(NotDispatched::TimeBudget)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.trips.not_dispatched[reason as usize].fetch_add(1, Relaxed);
                    if let Some(producer) = producer {
                        producer.stats.record_follow_up_not_dispatched();
                    }
                    *refused.entry(reason).or_default() += 1;
                    report.status = EventStatus::NotDispatched { reason };
                    events.push(report);
                    continue;
                }
                follow_ups += 1;
            }
            let mut children = 0usize;
            let registry = self.registry.load();
            for entry in registry.matching(&event.event_type) {
                let (mut outcome, took, mut actions) = self.call(entry, &event);
                let size: usize = actions.iter().map(Action::size).sum();
                if size > output_left {
                    self.trips.over_budget.fetch_add(1, Relaxed);
                    outcome = Outcome::OverBudget {
                        message: format!(
                            "{size} bytes of actions, but the publish has {output_left} of its {} byte output budget left",
                            self.limits.output_budget
                        ),
                    };
                    actions.clear();
                } else {
                    output_left -= size;
                }
                entry.stats.record(&outcome, took);
                if !outcome.is_ok() {
                    log_failure(&entry.name, &event, &outcome);
                }
                for action in actions {
                    match action {
                        Action::Send(message) => {
                            let frame = Frame {
                                event_type: message.event_type,
                                payload: message.payload,
                                actor_id: event.actor_id.clone(),
                                actor_type: event.actor_type.clone(),
                                event_id: event.id.clone(),
                                workspace_id: event.workspace_id.clone(),
                            };
                            broadcast::deliver(self.broadcaster.as_ref(), message.target, frame);
                        }
                        Action::Publish(follow_up) => {
                            children += 1;
                            queue.push_back(Queued {
                                event: follow_up_event(&event, children, follow_up),
                                depth: depth + 1,
                                parent_id: Some(event.id.clone()),
                                producer: Some(Arc::clone(entry)),
                            });
                        }
                    }
                }
                report.listeners.push(ListenerReport {
                    listener: entry.name.clone(),
                    outcome,
                    duration_us: took.as_micros() as u64,
                });
            }
            events.push(report);
        }
        if !refused.is_empty() {
            let root = &events[0];
            tracing::warn!(
                event_id = %root.event_id,
                event_type = %root.event_type,
                not_dispatched = ?refused,
                "follow-up events not dispatched: the publish reached its limits"
            );
        }
        PublishReport { events }
    }

    /// Runs one listener, catching panics and checking what it returned.
    fn call(&self, entry: &Entry, event: &Event) -> (Outcome, Duration, Vec<Action>) {
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| entry.listener.handle(event)));
        let took = started.elapsed();
        let result = match result {
            Ok(result) => result.and_then(|actions| check_actions(&actions).map(|()| actions)),
            Err(panic) => Err(ListenerError::Trap(format!("panic: {}", panic_message(&panic)))),
        };
        match result {
            Ok(actions) => (Outcome::Ok { actions: actions.len() }, took, actions),
            Err(error) => (Outcome::from(error), took, Vec::new()),
        }
    }
}

/// Every action of a call is checked before any is applied: all of them or none.
fn check_actions(actions: &[Action]) -> Result<(), ListenerError> {
    for (i, action) in actions.iter().enumerate() {
        let event_type = match action {
            Action::Send(m) => &m.event_type,
            Action::Publish(f) => &f.event_type,
        };
        event::check_type(event_type)
            .map_err(|e| ListenerError::InvalidOutput(format!("action {i}: {e}")))?;
    }
    Ok(())
}

/// An event waiting in a publish's queue, with the listener that returned it (for follow-ups).
struct Queued {
    event: Event,
    depth: u32,
    parent_id: Option<String>,
    producer: Option<Arc<Entry>>,
}

fn follow_up_event(parent: &Event, n: usize, f: FollowUp) -> Event {
    Event {
        id: format!("{}.{n}", parent.id),
        event_type: f.event_type,
        workspace_id: f.workspace_id,
        actor_type: f.actor_type,
        actor_id: f.actor_id,
        payload: f.payload,
        task_id: f.task_id,
        chat_session_id: f.chat_session_id,
        published_at_ms: event::now_ms(),
    }
}

fn check_name(name: &str) -> Result<(), BusError> {
    let invalid = |why: &str| BusError::InvalidName(name.to_string(), why.to_string());
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(invalid("only ASCII letters, digits, `-`, `_` and `.` are allowed"));
    }
    Ok(())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn log_failure(listener: &str, event: &Event, outcome: &Outcome) {
    let Some(message) = outcome.message() else { return };
    tracing::warn!(
        listener,
        event_id = %event.id,
        event_type = %event.event_type,
        outcome = outcome.kind(),
        "listener failed: {message}"
    );
}
