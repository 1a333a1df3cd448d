//! In-process costs, each measured beside its baseline in the same run (these machines are
//! shared and noisy: compare ratios, not absolute times). See BENCHMARKS.md.
//!
//! - `dispatch/{native,wasm}/{100B,1KiB,16KiB}`: one event through the bus to one listener that
//!   parses the JSON payload, routes it and returns one message (`bench-logic::route`, the same
//!   code natively and inside the `bench-router` component).
//! - `floor/{native,wasm}`: a listener that does nothing: the cost of crossing into a component.
//! - `throughput/{1,4,16}-plugins/{1-thread,all-cores}`: events per second through N plugins.
//! - `runtime/{ok-ok,trap-ok}`: two calls, the first of which traps and forces the next to
//!   instantiate a fresh instance; the difference is the cost of a trap and a replacement.
//! - `runtime/recycle-instance`: dropping an instance and instantiating its replacement alone.
//! - `runtime/{compile-cold,load-cached}`: loading a component without and with the cache.
//! - `paired`: the dispatch and floor pairs again, native and WASM measured in alternation,
//!   round after round, so that both see the same machine; prints the median ratio and its
//!   spread. Criterion measures one side, then the other, and on a shared host the load can
//!   change in between: this is the ratio to quote. Its last row is an unrelated 1 KiB event
//!   through `bench-router` alone, then beside the hostile plugins of issue #12 (64-pattern
//!   `crowd`, `amplifier`, `flaky`, and `sleeper` kept waiting in host calls by another thread).
//! - `instructions <side>/<case>`: 1 000 publishes of one case (side `native`, `wasm` for the
//!   0.2.0 components, `legacy` for the 0.1.0 one; case `noop`, `100B`, `1KiB`, `16KiB`) in
//!   `measured_publishes`, for callgrind to count (scripts/instructions runs every case).
//! - `kv`: one call of the `echo` test plugin without kv, and with a kv get and set (a counter)
//!   on the embedded store on disk (SQLite, WAL), in memory (`--ephemeral`) and in Redis on
//!   loopback (when `redis-server` is installed), in alternating rounds; prints p50 and p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench_logic::Route;
use busbar::action::{Action, Scope, Target};
use busbar::broadcast::{Broadcaster, Frame};
use busbar::bus::{Bus, Listener, ListenerError};
use busbar::event::{Event, Json};
use busbar::plugins::{Manifest, Plugin, Runtime, RuntimeConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};

/// A Broadcaster that counts and drops frames, so fan-out does not enter the measurement.
#[derive(Default)]
struct Discard(AtomicU64);

impl Broadcaster for Discard {
    fn broadcast_to_workspace(&self, _: &str, _: Frame) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn send_to_user(&self, _: &str, _: &busbar::broadcast::Reach, _: Frame) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn broadcast_to_scope(&self, _: &Scope, _: Frame) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn broadcast(&self, _: Frame) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn runtime(cache: Option<&str>) -> Runtime {
    let cache_dir = cache.map(|name| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target").join(name));
    // BUSBAR_PERF_MAP=1 names guest functions for `perf report` (see BENCHMARKS.md).
    let perf_map = std::env::var_os("BUSBAR_PERF_MAP").is_some();
    Runtime::new(RuntimeConfig { cache_dir, perf_map, ..RuntimeConfig::default() }).expect("runtime")
}

fn component(group: &str, name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/{group}/{name}.wasm", busbar::BUILT_PLUGINS_DIR)).expect("a built plugin")
}

fn plugin(runtime: &Runtime, group: &str, name: &str, as_name: &str) -> Plugin {
    let mut manifest = Manifest::named(as_name);
    manifest.subscriptions = Some(vec!["*".into()]);
    manifest.limits.failures_to_quarantine = u32::MAX;
    manifest.limits.timeout = Duration::from_secs(1);
    runtime.load(&component(group, name), manifest).expect("loading a plugin")
}

/// The native twin of the `bench-router` plugin.
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

fn event(size: usize) -> Event {
    Event::new("issue:updated", "ws-1")
        .with_actor("member", "u-1")
        .with_payload(&bench_logic::payload_of_size(size))
        .expect("valid payload")
}

fn bus_with(listeners: Vec<(String, Arc<dyn Listener>)>) -> Bus {
    let bus = Bus::new(Arc::new(Discard::default()));
    for (name, listener) in listeners {
        bus.register(busbar::bus::Registration::new(name, vec![busbar::bus::Subscription::All], listener))
            .expect("registering");
    }
    bus
}

fn dispatch(c: &mut Criterion) {
    let runtime = runtime(Some("bench-cache"));
    let mut group = c.benchmark_group("dispatch");
    for (label, size) in [("100B", 100), ("1KiB", 1024), ("16KiB", 16 << 10)] {
        let event = event(size);
        group.throughput(Throughput::Elements(1));
        let native = bus_with(vec![("native".into(), Arc::new(native_router))]);
        group.bench_with_input(BenchmarkId::new("native", label), &event, |b, e| b.iter(|| native.publish(e.clone())));
        let wasm = bus_with(vec![("wasm".into(), Arc::new(plugin(&runtime, "testing", "bench-router", "wasm")))]);
        assert!(wasm.publish(event.clone()).root().listeners[0].outcome.is_ok());
        group.bench_with_input(BenchmarkId::new("wasm", label), &event, |b, e| b.iter(|| wasm.publish(e.clone())));
    }
    group.finish();

    let mut group = c.benchmark_group("floor");
    let event = event(100);
    let noop = |_: &Event| -> Result<Vec<Action>, ListenerError> { Ok(Vec::new()) };
    let native = bus_with(vec![("native".into(), Arc::new(noop))]);
    group.bench_function("native", |b| b.iter(|| native.publish(event.clone())));
    let wasm = bus_with(vec![("wasm".into(), Arc::new(plugin(&runtime, "testing", "noop", "wasm")))]);
    group.bench_function("wasm", |b| b.iter(|| wasm.publish(event.clone())));
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let runtime = runtime(Some("bench-cache"));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut group = c.benchmark_group("throughput");
    let event = event(1024);
    for plugins in [1usize, 4, 16] {
        let listeners = (0..plugins)
            .map(|i| {
                let name = format!("router-{i}");
                let listener: Arc<dyn Listener> = Arc::new(plugin(&runtime, "testing", "bench-router", &name));
                (name, listener)
            })
            .collect();
        let bus = Arc::new(bus_with(listeners));
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(format!("{plugins}-plugins"), "1-thread"), |b| {
            b.iter(|| bus.publish(event.clone()))
        });
        group.bench_function(BenchmarkId::new(format!("{plugins}-plugins"), format!("{threads}-threads")), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let started = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let (bus, event) = (&bus, &event);
                        s.spawn(move || {
                            for _ in 0..per_thread {
                                bus.publish(event.clone());
                            }
                        });
                    }
                });
                started.elapsed().mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
            })
        });
    }
    group.finish();
}

fn runtime_costs(c: &mut Criterion) {
    let runtime = runtime(Some("bench-cache"));
    let mut group = c.benchmark_group("runtime");
    let trap = plugin(&runtime, "hostile", "trap", "trap");
    let ok = Event::new("t", "w");
    let trapping = Event::new("t", "w").with_payload(r#"{"trap":true}"#).expect("valid");
    group.bench_function("ok-ok", |b| {
        b.iter(|| {
            let _ = trap.handle(&ok);
            let _ = trap.handle(&ok);
        })
    });
    group.bench_function("trap-ok", |b| {
        b.iter(|| {
            let _ = trap.handle(&trapping);
            let _ = trap.handle(&ok);
        })
    });
    group.bench_function("recycle-instance", |b| b.iter(|| trap.recycle_instance().expect("instantiates")));
    group.sample_size(10);
    let bytes = component("examples", "scope-router");
    let cold = self::runtime(None);
    group.bench_function("compile-cold", |b| b.iter(|| cold.load(&bytes, Manifest::named("scope-router")).expect("loads")));
    group.bench_function("load-cached", |b| b.iter(|| runtime.load(&bytes, Manifest::named("scope-router")).expect("loads")));
    group.finish();
}

/// Measures `native` and `wasm` in alternation for `rounds` rounds of `per_round` publishes
/// each (which goes first alternates too); returns the per-call medians and the quartiles of
/// the per-round ratio wasm / native, and the median per-round difference.
fn paired(native: &Bus, wasm: &Bus, event: &Event, rounds: usize, per_round: u32) -> Paired {
    let mut sides = alternated(&[native, wasm], event, rounds, per_round);
    sides.swap_remove(1)
}

/// Measures every bus in turn, round after round (the first of a round rotates), and compares
/// each with the first: its median per-call time, the quartiles of its per-round ratio to the
/// first, and the median per-round difference. The first two rounds warm up.
fn alternated(buses: &[&Bus], event: &Event, rounds: usize, per_round: u32) -> Vec<Paired> {
    let time = |bus: &Bus| {
        let started = Instant::now();
        measured_publishes(bus, event, per_round);
        started.elapsed().as_secs_f64() * 1e6 / f64::from(per_round)
    };
    let n = buses.len();
    let mut times = vec![Vec::new(); n];
    for round in 0..rounds + 2 {
        let mut this = vec![0.0; n];
        for k in 0..n {
            let i = (round + k) % n;
            this[i] = time(buses[i]);
        }
        if round >= 2 {
            for (side, t) in times.iter_mut().zip(this) {
                side.push(t);
            }
        }
    }
    let quantile = |values: &mut Vec<f64>, q: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * q).round() as usize]
    };
    let first = times[0].clone();
    let mut first_sorted = first.clone();
    let first_median = quantile(&mut first_sorted, 0.5);
    times
        .into_iter()
        .map(|mut side| {
            let mut ratios: Vec<f64> = side.iter().zip(&first).map(|(t, f)| t / f).collect();
            let mut differences: Vec<f64> = side.iter().zip(&first).map(|(t, f)| t - f).collect();
            Paired {
                native_us: first_median,
                wasm_us: quantile(&mut side, 0.5),
                ratio: [quantile(&mut ratios, 0.25), quantile(&mut ratios, 0.5), quantile(&mut ratios, 0.75)],
                difference_us: quantile(&mut differences, 0.5),
            }
        })
        .collect()
}

/// The publishes being measured: a function of its own, so that callgrind can count the
/// instructions inside it alone (`--toggle-collect=*measured_publishes*`).
#[inline(never)]
fn measured_publishes(bus: &Bus, event: &Event, count: u32) {
    for _ in 0..count {
        std::hint::black_box(bus.publish(event.clone()));
    }
}

struct Paired {
    native_us: f64,
    wasm_us: f64,
    ratio: [f64; 3],
    difference_us: f64,
}

/// The `paired` table (see the top of this file): native, the 0.2.0 component and the same
/// logic built for contract 0.1.0, in alternation. A smoke run under `cargo test`.
fn paired_ratios(rounds: usize, per_round: u32) {
    let runtime = runtime(Some("bench-cache"));
    println!("paired: native, WASM (contract 0.2.0) and WASM (0.1.0) alternately, {rounds} rounds of {per_round} publishes each");
    println!("| payload | native | wasm 0.2.0 | 0.2.0 / native (median) | p25 - p75 | wasm 0.1.0 | 0.1.0 / native | p25 - p75 |");
    println!("|---|---|---|---|---|---|---|---|");
    let row = |label: &str, now: &Paired, then: &Paired| {
        println!(
            "| {label} | {:.2} µs | {:.2} µs | {:.2}x | {:.2}x - {:.2}x | {:.2} µs | {:.2}x | {:.2}x - {:.2}x |",
            now.native_us, now.wasm_us, now.ratio[1], now.ratio[0], now.ratio[2], then.wasm_us, then.ratio[1], then.ratio[0], then.ratio[2]
        )
    };
    for (label, size) in [("100 B", 100), ("1 KiB", 1024), ("16 KiB", 16 << 10)] {
        let native = bus_with(vec![("native".into(), Arc::new(native_router))]);
        let now = bus_with(vec![("wasm".into(), Arc::new(plugin(&runtime, "testing", "bench-router", "wasm")))]);
        let then = bus_with(vec![("legacy".into(), Arc::new(plugin(&runtime, "testing", "legacy-router", "legacy")))]);
        let sides = alternated(&[&native, &now, &then], &event(size), rounds, per_round);
        row(label, &sides[1], &sides[2]);
    }
    let noop = |_: &Event| -> Result<Vec<Action>, ListenerError> { Ok(Vec::new()) };
    let native = bus_with(vec![("native".into(), Arc::new(noop))]);
    let now = bus_with(vec![("wasm".into(), Arc::new(plugin(&runtime, "testing", "noop", "wasm")))]);
    let then = bus_with(vec![("legacy".into(), Arc::new(plugin(&runtime, "testing", "legacy-router", "legacy")))]);
    let sides = alternated(&[&native, &now, &then], &floor_event(), rounds, per_round);
    row("floor (no-op)", &sides[1], &sides[2]);
    println!(
        "crossing into a component and back (median of wasm - native per round): {:.2} µs with 0.2.0, {:.2} µs with 0.1.0",
        sides[1].difference_us, sides[2].difference_us
    );
    let neighbours = hostile_neighbours(&runtime, rounds, per_round);
    println!(
        "unrelated 1 KiB event, alone vs beside hostile plugins: {:.2} µs vs {:.2} µs, {:.2}x ({:.2}x - {:.2}x)",
        neighbours.native_us, neighbours.wasm_us, neighbours.ratio[1], neighbours.ratio[0], neighbours.ratio[2]
    );
}

/// The floor's event: 100 B, of the type `legacy-router` answers with nothing.
fn floor_event() -> Event {
    let mut event = event(100);
    event.event_type = "legacy:noop".into();
    event
}

/// One case of the instruction counts (`instructions <case>`), run under callgrind by
/// scripts/instructions: `count` publishes through `measured_publishes` after a warm-up.
fn instructions(case: &str, count: u32) {
    let runtime = runtime(Some("bench-cache"));
    let noop = |_: &Event| -> Result<Vec<Action>, ListenerError> { Ok(Vec::new()) };
    let (listener, event): (Arc<dyn Listener>, Event) = match case.split_once('/') {
        Some(("native", "noop")) => (Arc::new(noop), floor_event()),
        Some(("wasm", "noop")) => (Arc::new(plugin(&runtime, "testing", "noop", "wasm")), floor_event()),
        Some(("legacy", "noop")) => (Arc::new(plugin(&runtime, "testing", "legacy-router", "legacy")), floor_event()),
        Some((side, size)) => {
            let size = match size {
                "100B" => 100,
                "1KiB" => 1024,
                "16KiB" => 16 << 10,
                other => panic!("unknown size {other}"),
            };
            let listener: Arc<dyn Listener> = match side {
                "native" => Arc::new(native_router),
                "wasm" => Arc::new(plugin(&runtime, "testing", "bench-router", "wasm")),
                "legacy" => Arc::new(plugin(&runtime, "testing", "legacy-router", "legacy")),
                other => panic!("unknown side {other}"),
            };
            (listener, event(size))
        }
        None => panic!("a case is <native|wasm|legacy>/<noop|100B|1KiB|16KiB>, not {case}"),
    };
    let bus = bus_with(vec![("measured".into(), listener)]);
    for _ in 0..100 {
        std::hint::black_box(bus.publish(event.clone()));
    }
    measured_publishes(&bus, &event, count);
}

/// `bench-router` alone, against `bench-router` beside the hostile plugins (one of which
/// another thread keeps parked in host calls), for an event only `bench-router` subscribes to.
fn hostile_neighbours(runtime: &Runtime, rounds: usize, per_round: u32) -> Paired {
    let load = |group: &str, name: &str, patterns: &[&str], tune: &dyn Fn(&mut Manifest)| -> Plugin {
        let mut manifest = Manifest::named(name);
        manifest.subscriptions = Some(patterns.iter().map(|p| p.to_string()).collect());
        tune(&mut manifest);
        runtime.load(&component(group, name), manifest).expect("loading a plugin")
    };
    let register = |bus: &Bus, plugin: Plugin| busbar::plugins::register(bus, plugin).expect("registering");
    let quiet = Bus::new(Arc::new(Discard::default()));
    register(&quiet, load("testing", "bench-router", &["issue:*"], &|_| {}));
    let noisy = Bus::new(Arc::new(Discard::default()));
    register(&noisy, load("testing", "bench-router", &["issue:*"], &|_| {}));
    let crowd: Vec<String> = (0..64).map(|i| format!("crowd:{i}")).collect();
    let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
    register(&noisy, load("hostile", "crowd", &crowd, &|m| {
        m.config.insert("count".into(), "64".into());
    }));
    register(&noisy, load("hostile", "amplifier", &["amp:*"], &|_| {}));
    register(&noisy, load("hostile", "flaky", &["flaky:*"], &|_| {}));
    register(&noisy, load("hostile", "sleeper", &["sleep:*"], &|m| {
        m.limits.failures_to_quarantine = u32::MAX;
        m.limits.failure_rate_percent = 100;
    }));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let sleep = Event::new("sleep:now", "ws-1").with_payload(r#"{"wait": "poll"}"#).expect("valid");
            while !done.load(Ordering::Relaxed) {
                noisy.publish(sleep.clone());
            }
        });
        let measured = paired(&quiet, &noisy, &event(1024), rounds, per_round);
        done.store(true, Ordering::Relaxed);
        measured
    })
}

/// A plugin call without kv beside the same call with a kv get and set, on each store.
fn kv_costs(rounds: usize, per_round: usize) {
    let dir = std::env::temp_dir().join(format!("busbar-bench-kv-{}", std::process::id()));
    let on_disk: Arc<dyn busbar::store::Store> = Arc::new(busbar::store::SqliteStore::open(&dir.join("busbar.db")).expect("a store on disk"));
    let echo = |store: Arc<dyn busbar::store::Store>| {
        let runtime = Runtime::new(RuntimeConfig { cache_dir: Some("bench-cache".into()), store, ..RuntimeConfig::default() }).expect("a runtime");
        // Its counter goes to everyone.
        let manifest = Manifest::parse("[capabilities]\ngrants = [\"everyone\"]\n", "echo", "bench", std::path::Path::new(".")).expect("a manifest");
        runtime.load(&component("testing", "echo"), manifest).expect("loading echo")
    };
    // Redis on loopback, when the machine has it (scripts/test installs it).
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
    let redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok();
    let url = format!("redis://127.0.0.1:{port}");
    let redis_store = redis.as_ref().and_then(|_| {
        let store = busbar::store::RedisStore::open(&url).ok()?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if busbar::store::Store::kv_usage(&store, "probe").is_ok() {
                return Some(Arc::new(store) as Arc<dyn busbar::store::Store>);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    let counting = || Event::new("t", "w").with_payload(r#"{"echo":{"count":"n"}}"#).expect("valid");
    let mut variants = vec![
        ("no kv", echo(busbar::store::ephemeral()), Event::new("t", "w")),
        ("kv get+set, on disk", echo(on_disk), Event::new("t", "w").with_payload(r#"{"echo":{"count":"n"}}"#).expect("valid")),
        ("kv get+set, in memory", echo(busbar::store::ephemeral()), Event::new("t", "w").with_payload(r#"{"echo":{"count":"n"}}"#).expect("valid")),
    ];
    if let Some(store) = redis_store {
        variants.push(("kv get+set, Redis", echo(store), counting()));
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds + 1 {
        for k in 0..variants.len() {
            // Each round starts with a different variant.
            let i = (k + round) % variants.len();
            let (_, plugin, event) = &variants[i];
            for _ in 0..per_round {
                let started = Instant::now();
                std::hint::black_box(plugin.handle(event).expect("echo answers"));
                if round > 0 {
                    samples[i].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    // What was measured is what the names say: the counters are in the stores, the other not.
    let entries: Vec<usize> = variants.iter().map(|(_, plugin, _)| plugin.info().kv_entries).collect();
    assert_eq!(entries[..3], [0, 1, 1], "kv entries per variant");
    assert!(entries[3..].iter().all(|&n| n == 1), "kv entries per variant: {entries:?}");
    println!("kv: one call of the echo plugin, {rounds} alternating rounds of {per_round}");
    for ((name, _, _), mut times) in variants.iter().zip(samples) {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!("  {name:<24} p50 {:>7.2} us  p99 {:>7.2} us", at(0.5), at(0.99));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(mut redis) = redis {
        let _ = redis.kill();
        let _ = redis.wait();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = dispatch, throughput, runtime_costs
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not, and gets a smoke run. A filter
    // that does not mention `paired` skips the table.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if let [mode, case, ..] = filters.as_slice()
        && mode.as_str() == "instructions"
    {
        return instructions(case, 1000);
    }
    if filters.is_empty() || filters.iter().any(|f| f.contains("paired")) {
        if measuring { paired_ratios(200, 2000) } else { paired_ratios(2, 10) }
    }
    if filters.is_empty() || filters.iter().any(|f| f.contains("kv")) {
        if measuring { kv_costs(200, 500) } else { kv_costs(2, 10) }
    }
    if filters.iter().all(|f| f.as_str() != "paired" && f.as_str() != "kv") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
