//! `busbar dispatch`: a plugin author's local loop. Reads events as JSON lines, runs each one
//! through the bus with the plugins given, and prints one JSON line per Broadcaster call and per
//! listener outcome, grouped by event in dispatch order (the event, then its follow-ups).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use busbar::event::Event;
use clap::Args;
use serde_json::json;

use super::RuntimeArgs;

#[derive(Args)]
pub struct DispatchArgs {
    /// Directory of plugins (`name.wasm` with an optional `name.toml` beside it); the built-in
    /// examples when absent.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// File of events, one JSON object per line; standard input when absent.
    #[arg(long)]
    event: Option<PathBuf>,
    /// Include each listener's duration in microseconds.
    #[arg(long)]
    timings: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let runtime = args.runtime.runtime()?;
    let recorder = Arc::new(Recorder::new());
    let bus = Bus::new(recorder.clone());
    for plugin in super::load_plugins(&runtime, args.plugins.as_ref())? {
        busbar::plugins::register(&bus, plugin)?;
    }
    let input: Box<dyn BufRead> = match &args.event {
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(std::io::stdin())),
    };
    let lines: Vec<String> = input.lines().collect::<Result<_, _>>().context("reading events")?;
    let (output, bad_lines) = render(&bus, &recorder, &lines, args.timings)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in output {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(if bad_lines == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Publishes each event line and renders what happened as JSON lines: for each event in
/// dispatch order, its Broadcaster calls, then its listeners' outcomes. Returns the lines and the
/// number of invalid input lines.
pub fn render(bus: &Bus, recorder: &Recorder, input: &[String], timings: bool) -> anyhow::Result<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let mut bad_lines = 0;
    for (index, line) in input.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event = match Event::from_json(line) {
            Ok(event) => event,
            Err(error) => {
                bad_lines += 1;
                out.push(json!({"kind": "invalid_event", "line": index + 1, "error": error.to_string()}).to_string());
                continue;
            }
        };
        let report = bus.publish(event);
        let style = busbar::report::Style { timings, redact_traps: false };
        out.extend(busbar::report::lines(&report, &recorder.take(), style));
    }
    Ok((out, bad_lines))
}
