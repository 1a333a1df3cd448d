//! busbar's plugin call beside an Extism plugin's on the same work (issue #18), and both beside
//! the same code as plain Rust: one event in, one routed message (`busbar::action::Action`) out,
//! through `bench-logic::route` (parse the JSON payload, route it, build one message).
//!
//! - native: `bench_logic::route` called directly, the message built as host/benches/dispatch.rs's
//!   `native_router` builds it;
//! - busbar: `Plugin::handle` with the `bench-router` component (contract 0.2.0);
//! - extism: `extism::Plugin::call` of plugins/extism/bench-router's `route` (the same
//!   `bench-logic::route`), the event passed as one buffer (workspace id, event type, payload)
//!   and the answer turned into the same `Action`.
//!
//! The three are timed in alternation, round after round, each round starting with a different
//! one, so that all see the same machine (the method of dispatch.rs's `paired` table); the ratios
//! are taken per round and their median and quartiles printed. `cargo bench` measures;
//! `cargo test` (no `--bench` argument) runs a few rounds.

use std::time::{Duration, Instant};

use bench_logic::Route;
use busbar::action::{Action, Scope, Target};
use busbar::bus::{Listener, ListenerError};
use busbar::event::{Event, Json};
use busbar::plugins::{Manifest, Plugin, Runtime, RuntimeConfig};

/// The native twin of `bench-router` (as in host/benches/dispatch.rs).
fn native_router(event: &Event) -> Result<Vec<Action>, ListenerError> {
    let routed = bench_logic::route(&event.workspace_id, event.payload()).map_err(ListenerError::Failed)?;
    let target = match routed.route {
        Route::Workspace(id) => Target::Workspace { id },
        Route::Task(id) => Target::Scope { scope: Scope::task(&event.workspace_id, id) },
        Route::User(id) => Target::User { id, workspace: Some(event.workspace_id.clone()), exclude_workspace: None },
    };
    let payload = Json::parse(routed.payload).map_err(|e| ListenerError::InvalidOutput(e.to_string()))?;
    Ok(vec![Action::send(target, event.event_type.clone(), payload)])
}

/// busbar's `bench-router` component, loaded as dispatch.rs loads it.
fn busbar_router() -> Plugin {
    let cache_dir = Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-cache"));
    let runtime = Runtime::new(RuntimeConfig { cache_dir, ..RuntimeConfig::default() }).expect("a runtime");
    let component = std::fs::read(format!("{}/testing/bench-router.wasm", busbar::BUILT_PLUGINS_DIR)).expect("the built bench-router component");
    let mut manifest = Manifest::named("bench-router");
    manifest.subscriptions = Some(vec!["*".into()]);
    manifest.limits.failures_to_quarantine = u32::MAX;
    manifest.limits.timeout = Duration::from_secs(1);
    runtime.load(&component, manifest).expect("loading bench-router")
}

/// The Extism plugin, and the buffer its input is written to (kept between calls, as a host
/// that calls it for every event would).
struct ExtismRouter {
    plugin: extism::Plugin,
    input: Vec<u8>,
}

impl ExtismRouter {
    fn new() -> ExtismRouter {
        let module = std::fs::read(env!("EXTISM_BENCH_ROUTER")).expect("the built Extism bench-router (see build.rs)");
        let plugin = extism::Plugin::new(module, [], false).expect("loading the Extism bench-router");
        ExtismRouter { plugin, input: Vec::new() }
    }

    /// The event as the plugin reads it (plugins/extism/bench-router/src/lib.rs), its answer as
    /// busbar's `Action`.
    fn handle(&mut self, event: &Event) -> Result<Vec<Action>, ListenerError> {
        self.input.clear();
        self.input.extend_from_slice(event.workspace_id.as_bytes());
        self.input.push(b'\n');
        self.input.extend_from_slice(event.event_type.as_bytes());
        self.input.push(b'\n');
        self.input.extend_from_slice(event.payload().as_bytes());
        let output: &[u8] = self.plugin.call("route", self.input.as_slice()).map_err(|e| ListenerError::Failed(e.to_string()))?;
        let invalid = |what: &str| ListenerError::InvalidOutput(format!("the Extism plugin's answer: {what}"));
        let (&kind, rest) = output.split_first().ok_or_else(|| invalid("empty"))?;
        let text = std::str::from_utf8(rest).map_err(|_| invalid("not UTF-8"))?;
        let mut parts = text.splitn(3, '\n');
        let (Some(id), Some(event_type), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("fewer than three lines"));
        };
        let target = match kind {
            b'w' => Target::Workspace { id: id.to_string() },
            b't' => Target::Scope { scope: Scope::task(&event.workspace_id, id) },
            b'u' => Target::User { id: id.to_string(), workspace: Some(event.workspace_id.clone()), exclude_workspace: None },
            _ => return Err(invalid("an unknown target kind")),
        };
        let payload = Json::parse(payload.to_string()).map_err(|e| ListenerError::InvalidOutput(e.to_string()))?;
        Ok(vec![Action::send(target, event_type, payload)])
    }
}

fn event(size: usize) -> Event {
    Event::new("issue:updated", "ws-1")
        .with_actor("member", "u-1")
        .with_payload(&bench_logic::payload_of_size(size))
        .expect("valid payload")
}

/// Per-call times (µs) of each side, round after round, the sides in rotating order; the first
/// two rounds warm up and are dropped.
fn alternate(sides: &mut [&mut dyn FnMut() -> Vec<Action>], rounds: usize, per_round: u32) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(rounds); sides.len()];
    for round in 0..rounds + 2 {
        for k in 0..sides.len() {
            let i = (k + round) % sides.len();
            let started = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(sides[i]());
            }
            if round >= 2 {
                times[i].push(started.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
            }
        }
    }
    times
}

/// The 25th, 50th and 75th percentiles.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

fn ratios(over: &[f64], under: &[f64]) -> [f64; 3] {
    quartiles(over.iter().zip(under).map(|(o, u)| o / u).collect())
}

fn table(rounds: usize, per_round: u32) {
    let busbar = busbar_router();
    let mut extism = ExtismRouter::new();
    println!("extism-peer: native, busbar and Extism alternately, {rounds} rounds of {per_round} calls each");
    println!("| payload | native | busbar | extism | extism / busbar (p25 - p75) | busbar / native (p25 - p75) |");
    println!("|---|---|---|---|---|---|");
    for (label, size) in [("100 B", 100), ("1 KiB", 1024), ("16 KiB", 16 << 10)] {
        let event = event(size);
        // The three give the same answer.
        let expected = native_router(&event).expect("native routes");
        assert_eq!(busbar.handle(&event).expect("busbar's plugin routes"), expected, "busbar's answer");
        assert_eq!(extism.handle(&event).expect("the Extism plugin routes"), expected, "Extism's answer");
        let mut native = || native_router(&event).expect("native routes");
        let mut wasm = || busbar.handle(&event).expect("busbar's plugin routes");
        let mut peer = || extism.handle(&event).expect("the Extism plugin routes");
        let times = alternate(&mut [&mut native, &mut wasm, &mut peer], rounds, per_round);
        let (e, b) = (ratios(&times[2], &times[1]), ratios(&times[1], &times[0]));
        let [_, native_us, _] = quartiles(times[0].clone());
        let [_, busbar_us, _] = quartiles(times[1].clone());
        let [_, extism_us, _] = quartiles(times[2].clone());
        println!(
            "| {label} | {native_us:.2} µs | {busbar_us:.2} µs | {extism_us:.2} µs | **{:.2}x** ({:.2}x - {:.2}x) | {:.2}x ({:.2}x - {:.2}x) |",
            e[1], e[0], e[2], b[1], b[0], b[2]
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not, and gets a smoke run.
    if std::env::args().any(|a| a == "--bench") { table(1000, 400) } else { table(3, 20) }
}
