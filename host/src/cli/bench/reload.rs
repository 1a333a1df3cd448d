//! `busbar bench reload`: hot reload under a steady publisher. New versions of a plugin land in
//! a watched directory (write, then rename) while events flow; it reports the time from a file
//! landing to the new version serving, and events failed, lost or doubled.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use parking_lot::Mutex;

#[derive(Args, Clone)]
pub struct ReloadArgs {
    /// How many new versions to drop into the watched directory.
    #[arg(long, default_value_t = 20)]
    versions: usize,
    /// Publishing threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub fn run(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    use busbar::broadcast::Recorder;
    use busbar::bus::Bus;
    use busbar::plugins::{Registry, Runtime, RuntimeConfig};
    use std::sync::atomic::AtomicBool;

    let echo = std::fs::read(format!("{}/testing/echo.wasm", busbar::BUILT_PLUGINS_DIR))
        .context("the echo test plugin (built with busbar from source)")?;
    let dir = std::env::temp_dir().join(format!("busbar-reload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cache = busbar::config::default_cache_dir(&|k| std::env::var(k).ok());
    let runtime = Arc::new(Runtime::new(RuntimeConfig { cache_dir: cache, ..RuntimeConfig::default() })?);
    let recorder = Arc::new(Recorder::new());
    let bus = Arc::new(Bus::new(recorder.clone()));
    let registry = Arc::new(Registry::new(runtime, bus.clone()));
    let _watcher = busbar::plugins::watch(&dir, registry.clone(), Default::default())?;
    let land = |version: usize| -> anyhow::Result<Instant> {
        std::fs::write(dir.join("swap.toml"), format!("subscriptions = [\"*\"]\n[config]\ntag = \"v{version:03}\"\n[capabilities]\ngrants = [\"everyone\"]\n"))?;
        let tmp = dir.join(".swap.wasm.tmp");
        std::fs::write(&tmp, &echo)?;
        std::fs::rename(&tmp, dir.join("swap.wasm"))?;
        Ok(Instant::now())
    };
    // Version 0, then a steady publisher.
    land(0)?;
    while !bus.listeners().iter().any(|l| l.name == "swap") {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Each publisher records (event id, tag seen, when) as it goes.
    let seen: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (bus, recorder, stop, seen, failures, published) =
                (bus.clone(), recorder.clone(), stop.clone(), seen.clone(), failures.clone(), published.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = bus.publish(busbar::event::Event::new("bench:tick", "w"));
                    published.fetch_add(1, Ordering::Relaxed);
                    failures.fetch_add(report.root().listeners.iter().filter(|l| !l.outcome.is_ok()).count() as u64, Ordering::Relaxed);
                    let now = Instant::now();
                    let mut seen = seen.lock();
                    for delivery in recorder.take() {
                        let payload: serde_json::Value = serde_json::from_str(delivery.frame.payload.as_str()).unwrap_or_default();
                        let tag = payload["tag"].as_str().unwrap_or_default().to_string();
                        seen.push((delivery.frame.event_id, tag, now));
                    }
                }
            })
        })
        .collect();
    let mut landed = Vec::new();
    for version in 1..=args.versions {
        std::thread::sleep(Duration::from_millis(300));
        landed.push((format!("v{version:03}"), land(version)?));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        let _ = publisher.join();
    }
    let seen = seen.lock();
    let mut per_event: std::collections::HashMap<&str, usize> = Default::default();
    for (id, _, _) in seen.iter() {
        *per_event.entry(id.as_str()).or_default() += 1;
    }
    let published = published.load(Ordering::Relaxed);
    let doubled = per_event.values().filter(|n| **n > 1).count();
    let lost = published as usize - per_event.len();
    let mut latencies: Vec<f64> = landed
        .iter()
        .filter_map(|(tag, at)| seen.iter().find(|(_, t, _)| t == tag).map(|(_, _, when)| when.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let _ = std::fs::remove_dir_all(&dir);
    println!("| versions | served | events | failed | lost | doubled | landing -> serving, min / median / max ms |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} |",
        args.versions,
        latencies.len(),
        published,
        failures.load(Ordering::Relaxed),
        lost,
        doubled,
        latencies.first().copied().unwrap_or(f64::NAN),
        latencies.get(latencies.len() / 2).copied().unwrap_or(f64::NAN),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    Ok(ExitCode::SUCCESS)
}
