//! `GET /metrics`: every counter busbar keeps, in the OpenMetrics text format, written by the
//! `prometheus-client` crate.
//!
//! This module owns the names, help texts, labels and types of the exported metrics. Their values
//! live where they are counted (the hub, the bus, the plugins, the relay, the accept loop); a
//! scrape reads their snapshots through one `Collector`, so nothing is counted twice and
//! nothing here is on the event path. Latencies are histograms in seconds (cumulative buckets,
//! `_sum`, `_count`), so they aggregate across nodes. It must not change any value it reads.

use std::collections::BTreeMap;
use std::fmt::Error as FmtError;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::AppState;

/// The OpenMetrics text of everything busbar counts now.
pub(super) fn render(state: &AppState) -> Result<String, FmtError> {
    let mut registry = Registry::with_prefix("busbar");
    registry.register_collector(Box::new(Scrape(state.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// One scrape's view of the server.
struct Scrape(AppState);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

/// A family of samples of one metric, each with its labels.
struct Family<T>(Vec<(Labels, T)>);

impl<T> Family<T> {
    fn one(value: T) -> Family<T> {
        Family(vec![(Vec::new(), value)])
    }

    fn by(label: &'static str, values: impl IntoIterator<Item = (String, T)>) -> Family<T> {
        Family(values.into_iter().map(|(k, v)| (vec![(label, k)], v)).collect())
    }
}

/// A counter's or a gauge's value.
enum Value {
    Count(u64),
    Level(i64),
    Real(f64),
}

/// A histogram from power-of-two microsecond buckets: `(upper bound in µs, calls)`.
struct Histogram {
    buckets: Vec<(u64, u64)>,
    total_us: u64,
}

impl EncodeMetric for Family<Value> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), FmtError> {
        for (labels, value) in &self.0 {
            let sample = |encoder: &mut MetricEncoder| match value {
                Value::Count(n) => encoder.encode_counter::<NoLabelSet, _, u64>(n, None),
                Value::Level(n) => encoder.encode_gauge(n),
                Value::Real(x) => encoder.encode_gauge(x),
            };
            if labels.is_empty() {
                sample(&mut encoder)?;
            } else {
                sample(&mut encoder.encode_family(labels)?)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        match self.0.first() {
            Some((_, Value::Level(_) | Value::Real(_))) => MetricType::Gauge,
            _ => MetricType::Counter,
        }
    }
}

impl EncodeMetric for Family<Histogram> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), FmtError> {
        for (labels, histogram) in &self.0 {
            // The encoder adds the counts up itself; the last bucket is +Inf.
            let buckets: Vec<(f64, u64)> = histogram
                .buckets
                .iter()
                .map(|(upper_us, n)| (*upper_us as f64 / 1e6, *n))
                .chain(std::iter::once((f64::INFINITY, 0)))
                .collect();
            let count = histogram.buckets.iter().map(|(_, n)| n).sum();
            encoder.encode_family(labels)?.encode_histogram::<NoLabelSet>(histogram.total_us as f64 / 1e6, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes one metric (skipped when it has no samples: OpenMetrics families are never empty).
fn put(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric, samples: usize) -> Result<(), FmtError> {
    if samples == 0 {
        return Ok(());
    }
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, family: Family<u64>) -> Result<(), FmtError> {
    let family = Family(family.0.into_iter().map(|(l, v)| (l, Value::Count(v))).collect());
    put(encoder, name, help, &family, family.0.len())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, family: Family<i64>) -> Result<(), FmtError> {
    let family = Family(family.0.into_iter().map(|(l, v)| (l, Value::Level(v))).collect());
    put(encoder, name, help, &family, family.0.len())
}

fn histogram(encoder: &mut DescriptorEncoder, name: &str, help: &str, family: Family<Histogram>) -> Result<(), FmtError> {
    put(encoder, name, help, &family, family.0.len())
}

fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let state = &self.0;
        let e = &mut encoder;
        let hub = state.hub.snapshot();
        let c = &state.connections;
        gauge(e, "connections_open", "TCP connections open (HTTP and WebSocket).", Family::one(int(c.open.load(Relaxed))))?;
        counter(e, "connections_accepted", "TCP connections accepted.", Family::one(c.accepted_total.load(Relaxed)))?;
        let refused = [("total".to_string(), c.refused_total.load(Relaxed)), ("per_address".to_string(), c.refused_per_address_total.load(Relaxed))];
        counter(e, "connections_refused", "TCP connections refused at accept, by the cap that refused them.", Family::by("reason", refused))?;
        counter(e, "connects", "WebSocket connections accepted.", Family::one(hub.connects_total))?;
        counter(e, "disconnects", "WebSocket connections closed.", Family::one(hub.disconnects_total))?;
        gauge(e, "active_connections", "WebSocket connections open.", Family::one(int(hub.active_connections)))?;
        counter(e, "slow_evictions", "Connections evicted for not keeping up.", Family::one(hub.slow_evictions_total))?;
        counter(e, "messages_sent", "Frames queued to connections.", Family::one(hub.messages_sent_total))?;
        counter(e, "messages_dropped", "Frames dropped (evicted or closed connections).", Family::one(hub.messages_dropped_total))?;
        counter(e, "inbound_too_large", "Inbound frames over the size limit.", Family::one(hub.inbound_too_large_total))?;
        counter(e, "events_sent", "Broadcasts by event type.", Family::by("type", hub.events_sent_by_type))?;
        let scoped = |map: BTreeMap<crate::action::ScopeKind, u64>| map.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Vec<_>>();
        counter(e, "subscribes", "Subscribes accepted by scope kind.", Family::by("scope", scoped(hub.subscribes_total)))?;
        counter(e, "unsubscribes", "Unsubscribes by scope kind.", Family::by("scope", scoped(hub.unsubscribes_total)))?;
        counter(e, "subscribe_denied", "Subscribes denied by scope kind.", Family::by("scope", scoped(hub.subscribe_denied_total)))?;
        let rooms = hub.active_scope_rooms.into_iter().map(|(k, v)| (k.to_string(), int(v)));
        gauge(e, "active_scope_rooms", "Rooms with at least one connection, by scope kind.", Family::by("scope", rooms))?;
        let refusals = hub.auth_failures_total.into_iter().map(|(k, v)| (k.to_string(), v));
        counter(e, "auth_failures", "Refused WebSocket authentications by reason.", Family::by("reason", refusals))?;
        self.plugins(e)?;
        self.relay(e)?;
        let budget = state.registry.runtime().memory_budget();
        gauge(e, "plugin_memory_budget_bytes", "Bytes all plugins together may hold (limits.plugin-memory-mib).", Family::one(int(budget.limit())))?;
        gauge(e, "plugin_memory_used_bytes", "Bytes plugins hold now: guest memories, tables, outputs being lifted.", Family::one(int(budget.used())))?;
        counter(e, "plugin_memory_refusals", "Growths and calls refused because the plugin memory budget was spent.", Family::one(budget.refusals()))?;
        let compiles = state.registry.runtime().compile_refusals().into_iter().map(|(limit, n)| (limit.to_string(), n));
        counter(e, "compile_refusals", "Components refused for going over a compile limit.", Family::by("limit", compiles))?;
        let trips = state.bus.limit_trips().into_iter().map(|(limit, n)| (limit.to_string(), n));
        counter(e, "publish_limit_trips", "Follow-ups not dispatched and outputs refused, by the publish limit that tripped.", Family::by("limit", trips))?;
        Ok(())
    }
}

impl Scrape {
    /// Per plugin: status, calls by outcome, call and decision latency, limits, quarantines.
    fn plugins(&self, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
        let state = &self.0;
        let (mut up, mut calls, mut latency, mut not_dispatched) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut trips, mut quarantines, mut decisions, mut decision_seconds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for view in state.registry.list() {
            let name = view.name.clone();
            up.push((vec![("plugin", name.clone()), ("status", view.status.to_string())], 1));
            if let Some(info) = &view.plugin {
                for (limit, n) in &info.limit_trips {
                    trips.push((vec![("plugin", name.clone()), ("limit", limit.to_string())], *n));
                }
                quarantines.push((vec![("plugin", name.clone()), ("trigger", "rate".to_string())], info.rate_quarantines));
                quarantines.push((vec![("plugin", name.clone()), ("trigger", "consecutive".to_string())], info.quarantines - info.rate_quarantines));
                for (role, decided) in &info.decisions {
                    for (outcome, n) in &decided.outcomes {
                        decisions.push((vec![("plugin", name.clone()), ("role", role.to_string()), ("outcome", outcome.to_string())], *n));
                    }
                    let histogram = Histogram { buckets: decided.latency_buckets.clone(), total_us: decided.total_us };
                    decision_seconds.push((vec![("plugin", name.clone()), ("role", role.to_string())], histogram));
                }
            }
            if let Some(listener) = &view.listener {
                let s = &listener.stats;
                for (outcome, n) in &s.outcomes {
                    calls.push((vec![("plugin", name.clone()), ("outcome", outcome.to_string())], *n));
                }
                not_dispatched.push((vec![("plugin", name.clone())], s.follow_ups_not_dispatched));
                latency.push((vec![("plugin", name.clone())], Histogram { buckets: s.latency.buckets.clone(), total_us: s.latency.total_us }));
            }
        }
        gauge(e, "plugin_info", "Installed plugins and their status.", Family(up))?;
        counter(e, "plugin_limit_trips", "Per-plugin limits that tripped (only those that did).", Family(trips))?;
        counter(e, "plugin_quarantines", "Quarantines by plugin and by what triggered them.", Family(quarantines))?;
        counter(e, "plugin_follow_ups_not_dispatched", "Follow-ups a plugin returned that a publish limit stopped.", Family(not_dispatched))?;
        counter(e, "plugin_calls", "Listener calls by plugin and outcome.", Family(calls))?;
        histogram(e, "plugin_call_duration_seconds", "Listener call time by plugin (power-of-two buckets).", Family(latency))?;
        counter(e, "policy_decisions", "Authenticator and authorizer decisions by plugin, role and outcome.", Family(decisions))?;
        histogram(e, "policy_decision_seconds", "Time of the policy calls that reached the plugin (cached answers excluded).", Family(decision_seconds))?;
        let reloads = state.registry.stats();
        let results = [
            ("created", &reloads.installs_total),
            ("replaced", &reloads.replacements_total),
            ("unchanged", &reloads.unchanged_total),
            ("failed", &reloads.failures_total),
            ("rolled_back", &reloads.rollbacks_total),
        ];
        counter(e, "plugin_reloads", "Plugin installs and reloads by result.", Family::by("result", results.map(|(k, v)| (k.to_string(), v.load(Relaxed)))))
    }

    fn relay(&self, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
        let Some(relay) = &self.0.relay else { return Ok(()) };
        let snapshot = relay.snapshot();
        let m = snapshot.metrics;
        gauge(e, "relay_connected", "1 when the Redis relay is connected.", Family::one(i64::from(m.connected.load(Relaxed))))?;
        gauge(e, "relay_outbox_depth", "Frames waiting for Redis.", Family::one(int(snapshot.outbox_depth)))?;
        gauge(e, "relay_watched_scopes", "Scopes this node receives from Redis.", Family::one(int(snapshot.watched_scopes)))?;
        let lag = Family(vec![(Vec::new(), Value::Real(m.lag_ms.load(Relaxed) as f64 / 1e3))]);
        put(e, "relay_lag_seconds", "Publication to arrival, last relayed frame.", &lag, 1)?;
        gauge(e, "relay_own_frames_tracked", "Own frames delivered locally early, awaiting their Redis copy.", Family::one(int(snapshot.own_frames_tracked)))?;
        for (name, help, value) in [
            ("relay_published", "Frames written to Redis.", &m.published_total),
            ("relay_duplicates", "Frames of retried batches that Redis already had (skipped).", &m.duplicates_total),
            ("relay_publish_errors", "Failed publish batches (retried).", &m.publish_errors_total),
            ("relay_outbox_dropped", "Frames dropped from a full outbox.", &m.outbox_dropped_total),
            ("relay_received", "Frames received from Redis.", &m.received_total),
            ("relay_delivered", "Relayed frames delivered to local rooms.", &m.delivered_total),
            ("relay_gap_fills", "Frames read from streams to fill gaps.", &m.gap_fills_total),
            ("relay_gap_unfilled", "Frames trimmed before a gap could be filled.", &m.gap_unfilled_total),
            ("relay_degraded_local", "Frames delivered locally while Redis was unreachable.", &m.degraded_local_total),
            ("relay_reconnects", "Pub/sub reconnections.", &m.reconnects_total),
        ] {
            counter(e, name, help, Family::one(value.load(Relaxed)))?;
        }
        Ok(())
    }
}
