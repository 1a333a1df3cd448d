//! `busbar bench languages`: the same plugin (`conform`) in every guest language: compile time,
//! cached load, first call and warm calls, side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

#[derive(Args, Clone)]
pub struct LanguagesArgs {
    /// Warm calls measured per case.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// The directory holding `js/`, `python/` and `c/` plugin sources (busbar's `plugins/`).
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
    /// Skip the cold compiles (a smoke run); the cached loads use `--cache-dir`.
    #[arg(long)]
    quick: bool,
    /// The compile cache for the cached loads (default: a fresh temporary directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn run(args: LanguagesArgs) -> anyhow::Result<ExitCode> {
    use busbar::bus::Listener;
    use busbar::plugins::{Runtime, RuntimeConfig};

    let mut components = vec![("rust", PathBuf::from(format!("{}/testing/conform.wasm", busbar::BUILT_PLUGINS_DIR)))];
    for language in ["js", "python", "c", "go"] {
        let built = crate::cli::plugin::build_dir(&args.plugins.join(language).join("conform"))?;
        components.push((language, built.wasm));
    }
    let cold = Runtime::new(RuntimeConfig::default())?;
    let temporary = args.cache_dir.is_none();
    let cache = args.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("busbar-languages-bench-{}", std::process::id())));
    let cached = Runtime::new(RuntimeConfig { cache_dir: Some(cache.clone()), ..RuntimeConfig::default() })?;
    let echo = busbar::event::Event::new("conf:echo", "w").with_payload(r#"{"id":"iss-1","title":"a title"}"#)?;
    let parse = busbar::event::Event::new("conf:parse", "w").with_payload(&format!(r#"{{"name":"Zoë","body":"{}"}}"#, "x".repeat(900)))?;
    println!("| language | component | compile (cold) | load (cached) | new instance + first call | warm call: echo | warm call: parse 1 KiB | parse vs Rust |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rust_parse = None;
    for (language, wasm) in components {
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let manifest = || busbar::plugins::read_manifest(&wasm, "conform");
        let compile = if args.quick {
            None
        } else {
            let started = Instant::now();
            cold.load(&bytes, manifest()?)?;
            Some(started.elapsed())
        };
        cached.load(&bytes, manifest()?)?; // fills the cache
        let started = Instant::now();
        let plugin = cached.load(&bytes, manifest()?)?;
        let load = started.elapsed();
        // A fresh instance, then its first call.
        let mut first = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            plugin.recycle_instance().map_err(|e| anyhow::anyhow!("{e}"))?;
            plugin.handle(&echo).map_err(|e| anyhow::anyhow!("{e}"))?;
            first.push(started.elapsed());
        }
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2]
        };
        let warm = |event: &busbar::event::Event| -> anyhow::Result<Duration> {
            let mut times = Vec::with_capacity(args.calls);
            for _ in 0..args.calls {
                let started = Instant::now();
                plugin.handle(event).map_err(|e| anyhow::anyhow!("{e}"))?;
                times.push(started.elapsed());
            }
            Ok(median(times))
        };
        let (warm_echo, warm_parse) = (warm(&echo)?, warm(&parse)?);
        let ratio = match rust_parse {
            None => {
                rust_parse = Some(warm_parse);
                1.0
            }
            Some(rust) => warm_parse.as_secs_f64() / Duration::as_secs_f64(&rust),
        };
        println!(
            "| {language} | {:.1} MB | {} | {:.1} ms | {:.0} µs | {:.1} µs | {:.1} µs | {ratio:.1}x |",
            bytes.len() as f64 / 1e6,
            compile.map_or("-".to_string(), |c| format!("{:.0} ms", c.as_secs_f64() * 1e3)),
            load.as_secs_f64() * 1e3,
            median(first).as_secs_f64() * 1e6,
            warm_echo.as_secs_f64() * 1e6,
            warm_parse.as_secs_f64() * 1e6,
        );
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&cache);
    }
    Ok(ExitCode::SUCCESS)
}
