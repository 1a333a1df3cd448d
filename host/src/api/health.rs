//! `/health` (liveness), `/health/realtime` (JSON counters) and `/metrics` (Prometheus text).

use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::access::Admin;
use super::error::ApiError;

pub(super) async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn realtime(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(realtime_body(&state))))
}

/// The hub's counters, the plugins, reloads and the relay's state: `/health/realtime`'s body
/// (and the dashboard's `stats`).
pub(super) fn realtime_body(state: &AppState) -> serde_json::Value {
    let mut body = serde_json::to_value(state.hub.snapshot()).unwrap_or_default();
    body["plugins"] = serde_json::to_value(state.registry.list()).unwrap_or_default();
    body["plugin_reloads"] = serde_json::to_value(state.registry.stats()).unwrap_or_default();
    body["relay"] = match &state.relay {
        Some(relay) => {
            let mut value = serde_json::to_value(relay.snapshot()).unwrap_or_default();
            value["enabled"] = json!(true);
            value
        }
        None => json!({"enabled": false}),
    };
    body
}

pub(super) async fn metrics(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus(&state)))
}

fn prometheus(state: &AppState) -> String {
    let hub = state.hub.snapshot();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP busbar_{name} {help}\n# TYPE busbar_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "busbar_{name}{labels} {value}");
        }
    };
    let plain = |v: u64| vec![(String::new(), v as f64)];
    let by = |label: &str, map: Vec<(String, u64)>| map.into_iter().map(|(k, v)| (format!("{{{label}=\"{}\"}}", escape(&k)), v as f64)).collect();
    let c = &state.connections;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    metric("connections_open", "gauge", "TCP connections open (HTTP and WebSocket).", vec![(String::new(), load(&c.open) as f64)]);
    metric("connections_accepted_total", "counter", "TCP connections accepted.", plain(load(&c.accepted_total)));
    metric(
        "connections_refused_total",
        "counter",
        "TCP connections refused at accept, by the cap that refused them.",
        by("reason", vec![("total".into(), load(&c.refused_total)), ("per_address".into(), load(&c.refused_per_address_total))]),
    );
    metric("connects_total", "counter", "WebSocket connections accepted.", plain(hub.connects_total));
    metric("disconnects_total", "counter", "WebSocket connections closed.", plain(hub.disconnects_total));
    metric("active_connections", "gauge", "WebSocket connections open.", vec![(String::new(), hub.active_connections as f64)]);
    metric("slow_evictions_total", "counter", "Connections evicted for not keeping up.", plain(hub.slow_evictions_total));
    metric("messages_sent_total", "counter", "Frames queued to connections.", plain(hub.messages_sent_total));
    metric("messages_dropped_total", "counter", "Frames dropped (evicted or closed connections).", plain(hub.messages_dropped_total));
    metric("inbound_too_large_total", "counter", "Inbound frames over the size limit.", plain(hub.inbound_too_large_total));
    metric("events_sent_total", "counter", "Broadcasts by event type.", by("type", hub.events_sent_by_type.into_iter().collect()));
    let scoped = |map: std::collections::BTreeMap<crate::action::ScopeKind, u64>| map.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    metric("subscribes_total", "counter", "Subscribes accepted by scope kind.", by("scope", scoped(hub.subscribes_total)));
    metric("unsubscribes_total", "counter", "Unsubscribes by scope kind.", by("scope", scoped(hub.unsubscribes_total)));
    metric("subscribe_denied_total", "counter", "Subscribes denied by scope kind.", by("scope", scoped(hub.subscribe_denied_total)));
    metric("active_scope_rooms", "gauge", "Rooms with at least one connection, by scope kind.", by("scope", scoped(hub.active_scope_rooms)));
    metric(
        "auth_failures_total",
        "counter",
        "Refused WebSocket authentications by reason.",
        by("reason", hub.auth_failures_total.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
    );
    let plugins = state.registry.list();
    let mut calls = Vec::new();
    let mut latency = Vec::new();
    let mut up = Vec::new();
    let mut not_dispatched = Vec::new();
    let mut trips = Vec::new();
    let mut quarantines = Vec::new();
    let mut decisions = Vec::new();
    let mut decision_seconds = Vec::new();
    for view in &plugins {
        let name = escape(&view.name);
        up.push((format!("{{plugin=\"{name}\",status=\"{}\"}}", view.status), 1.0));
        if let Some(info) = &view.plugin {
            for (limit, n) in &info.limit_trips {
                trips.push((format!("{{plugin=\"{name}\",limit=\"{limit}\"}}"), *n as f64));
            }
            let by_rate = info.rate_quarantines;
            quarantines.push((format!("{{plugin=\"{name}\",trigger=\"rate\"}}"), by_rate as f64));
            quarantines.push((format!("{{plugin=\"{name}\",trigger=\"consecutive\"}}"), (info.quarantines - by_rate) as f64));
            for (role, decided) in &info.decisions {
                for (outcome, n) in &decided.outcomes {
                    decisions.push((format!("{{plugin=\"{name}\",role=\"{role}\",outcome=\"{outcome}\"}}"), *n as f64));
                }
                decision_seconds.extend(histogram(&format!("plugin=\"{name}\",role=\"{role}\""), decided));
            }
        }
        if let Some(listener) = &view.listener {
            let s = &listener.stats;
            for (outcome, n) in &s.outcomes {
                calls.push((format!("{{plugin=\"{name}\",outcome=\"{outcome}\"}}"), *n as f64));
            }
            not_dispatched.push((format!("{{plugin=\"{name}\"}}"), s.follow_ups_not_dispatched as f64));
            latency.push((format!("{{plugin=\"{name}\",quantile=\"0.5\"}}"), s.latency.p50_us as f64));
            latency.push((format!("{{plugin=\"{name}\",quantile=\"0.99\"}}"), s.latency.p99_us as f64));
        }
    }
    let reloads = state.registry.stats();
    let load_bool = |a: &std::sync::atomic::AtomicBool| a.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        "plugin_reloads_total",
        "counter",
        "Plugin installs and reloads by result.",
        by(
            "result",
            vec![
                ("created".into(), load(&reloads.installs_total)),
                ("replaced".into(), load(&reloads.replacements_total)),
                ("unchanged".into(), load(&reloads.unchanged_total)),
                ("failed".into(), load(&reloads.failures_total)),
                ("rolled_back".into(), load(&reloads.rollbacks_total)),
            ],
        ),
    );
    if let Some(relay) = &state.relay {
        let snapshot = relay.snapshot();
        let m = snapshot.metrics;
        metric("relay_connected", "gauge", "1 when the Redis relay is connected.", vec![(String::new(), f64::from(u8::from(load_bool(&m.connected))))]);
        metric("relay_outbox_depth", "gauge", "Frames waiting for Redis.", vec![(String::new(), snapshot.outbox_depth as f64)]);
        metric("relay_watched_scopes", "gauge", "Scopes this node receives from Redis.", vec![(String::new(), snapshot.watched_scopes as f64)]);
        metric("relay_lag_milliseconds", "gauge", "Publication to arrival, last relayed frame.", vec![(String::new(), load(&m.lag_ms) as f64)]);
        metric("relay_own_frames_tracked", "gauge", "Own frames delivered locally early, awaiting their Redis copy.", vec![(String::new(), snapshot.own_frames_tracked as f64)]);
        for (name, help, value) in [
            ("relay_published_total", "Frames written to Redis.", &m.published_total),
            ("relay_duplicates_total", "Frames of retried batches that Redis already had (skipped).", &m.duplicates_total),
            ("relay_publish_errors_total", "Failed publish batches (retried).", &m.publish_errors_total),
            ("relay_outbox_dropped_total", "Frames dropped from a full outbox.", &m.outbox_dropped_total),
            ("relay_received_total", "Frames received from Redis.", &m.received_total),
            ("relay_delivered_total", "Relayed frames delivered to local rooms.", &m.delivered_total),
            ("relay_gap_fills_total", "Frames read from streams to fill gaps.", &m.gap_fills_total),
            ("relay_gap_unfilled_total", "Frames trimmed before a gap could be filled.", &m.gap_unfilled_total),
            ("relay_degraded_local_total", "Frames delivered locally while Redis was unreachable.", &m.degraded_local_total),
            ("relay_reconnects_total", "Pub/sub reconnections.", &m.reconnects_total),
        ] {
            metric(name, "counter", help, vec![(String::new(), load(value) as f64)]);
        }
    }
    let budget = state.registry.runtime().memory_budget();
    metric("plugin_memory_budget_bytes", "gauge", "Bytes all plugins together may hold (limits.plugin-memory-mib).", vec![(String::new(), budget.limit() as f64)]);
    metric("plugin_memory_used_bytes", "gauge", "Bytes plugins hold now: guest memories, tables, outputs being lifted.", vec![(String::new(), budget.used() as f64)]);
    metric("plugin_memory_refusals_total", "counter", "Growths and calls refused because the plugin memory budget was spent.", plain(budget.refusals()));
    let compiles = state.registry.runtime().compile_refusals();
    metric(
        "compile_refusals_total",
        "counter",
        "Components refused for going over a compile limit.",
        compiles.into_iter().map(|(limit, n)| (format!("{{limit=\"{limit}\"}}"), n as f64)).collect(),
    );
    metric(
        "publish_limit_trips_total",
        "counter",
        "Follow-ups not dispatched and outputs refused, by the publish limit that tripped.",
        state.bus.limit_trips().into_iter().map(|(limit, n)| (format!("{{limit=\"{limit}\"}}"), n as f64)).collect(),
    );
    metric("plugin_info", "gauge", "Installed plugins and their status.", up);
    metric("plugin_limit_trips_total", "counter", "Per-plugin limits that tripped (only those that did).", trips);
    metric("plugin_quarantines_total", "counter", "Quarantines by plugin and by what triggered them.", quarantines);
    metric("plugin_follow_ups_not_dispatched_total", "counter", "Follow-ups a plugin returned that a publish limit stopped.", not_dispatched);
    metric("plugin_calls_total", "counter", "Listener calls by plugin and outcome.", calls);
    metric("policy_decisions_total", "counter", "Authenticator and authorizer decisions by plugin, role and outcome.", decisions);
    metric("policy_decision_seconds", "histogram", "Time of the policy calls that reached the plugin (cached answers excluded).", decision_seconds);
    metric("plugin_latency_microseconds", "gauge", "Call latency quantiles (bucket upper bounds).", latency);
    out
}

/// A Prometheus histogram's samples (`_bucket` with cumulative counts and `le` in seconds,
/// `_sum`, `_count`) from power-of-two microsecond buckets.
fn histogram(labels: &str, decided: &crate::plugins::RoleDecisions) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    let mut cumulative = 0;
    for (upper_us, n) in &decided.latency_buckets {
        cumulative += n;
        samples.push((format!("_bucket{{{labels},le=\"{}\"}}", *upper_us as f64 / 1e6), cumulative as f64));
    }
    samples.push((format!("_bucket{{{labels},le=\"+Inf\"}}"), decided.calls as f64));
    samples.push((format!("_sum{{{labels}}}"), decided.total_us as f64 / 1e6));
    samples.push((format!("_count{{{labels}}}"), decided.calls as f64));
    samples
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
