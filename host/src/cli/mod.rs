//! The command line: `busbar dispatch`, `busbar plugin check`, and what they share (logging,
//! the plugin runtime's settings, where plugins come from).
//!
//! This module is the binary's only entry point. It uses `anyhow` and prints errors with their
//! context; everything it runs lives in the library.

mod bench;
mod check;
mod dev;
mod dispatch;
mod plugin;
mod publish;
mod serve;
mod tail;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use busbar::plugins::{Plugin, Runtime, RuntimeConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "busbar", version, about = "A WebAssembly-extensible event bus with realtime fan-out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API, plugins, realtime hub.
    Serve(serve::ServeArgs),
    /// Post events to a running server.
    Publish(publish::PublishArgs),
    /// Connect to a running server as a realtime client and print the frames.
    Tail(tail::TailArgs),
    /// Mint a connection token (development and tests).
    Token(token::TokenArgs),
    /// Measure busbar end to end (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve the plugins in a source directory, rebuilding and hot-swapping them on change.
    Dev(dev::DevArgs),
    /// Run events (JSON lines) through the plugins and print every outcome and broadcast.
    Dispatch(dispatch::DispatchArgs),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Compile a component read on stdin (run by busbar itself, under resource limits).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a component against the contract and print its subscriptions.
    Check(check::CheckArgs),
    /// Create a new plugin from a template.
    New(plugin::NewArgs),
    /// Build a plugin into a component (in its dist/ directory) and check it.
    Build(plugin::BuildArgs),
    /// Write the plugins deployed through the API (in a data directory) into a directory.
    Export(plugin::ExportArgs),
    /// Store a directory's plugins (`name.wasm` + `name.toml`) as deployments in a data
    /// directory; a server on it runs them from its next start.
    Import(plugin::ImportArgs),
    /// Run a plugin's tests/events.jsonl through it and compare with tests/expected.jsonl.
    Test(plugin::TestArgs),
}

/// Settings of the plugin runtime, shared by every command that loads plugins.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Directory for compiled components (default: $XDG_CACHE_HOME/busbar or ~/.cache/busbar).
    #[arg(long, env = "BUSBAR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every component on load instead of using the cache.
    #[arg(long)]
    pub no_cache: bool,
}

impl RuntimeArgs {
    pub fn runtime(&self) -> anyhow::Result<Runtime> {
        let cache_dir = if self.no_cache { None } else { self.cache_dir.clone().or_else(default_cache_dir) };
        let compile_worker = Some(std::env::current_exe().context("cannot find the busbar executable")?);
        Ok(Runtime::new(RuntimeConfig { cache_dir, compile_worker, ..RuntimeConfig::default() })?)
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    busbar::config::default_cache_dir(&|key| std::env::var(key).ok())
}

/// The plugins in `dir`, or the built-in examples. A component that fails to load is reported
/// and skipped.
pub fn load_plugins(runtime: &Runtime, dir: Option<&PathBuf>) -> anyhow::Result<Vec<Plugin>> {
    match dir {
        Some(dir) => {
            let (plugins, failures) = busbar::plugins::load_dir(runtime, dir)
                .with_context(|| format!("reading plugin directory {}", dir.display()))?;
            for failure in &failures {
                eprintln!("busbar: skipped {}: {}", failure.path.display(), failure.error);
            }
            Ok(plugins)
        }
        None => busbar::examples::load(runtime).context("loading the built-in example plugins"),
    }
}

/// Raises this process's open-file limit to the hard limit (10 000 clients need 10 000 sockets).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What a plugin author sees while building: the build's progress (toolchain installs take
/// minutes the first time), and warnings.
const BUILD_LOGGING: &str = "warn,busbar::build=info";

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BUSBAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            serve::run(args)
        }
        Command::Publish(args) => {
            init_logging("warn");
            publish::run(args)
        }
        Command::Tail(args) => {
            init_logging("warn");
            tail::run(args)
        }
        Command::Token(args) => token::run(args),
        Command::Bench(command) => {
            init_logging("warn");
            bench::run(command)
        }
        Command::Dispatch(args) => {
            init_logging("warn");
            dispatch::run(args)
        }
        Command::Plugin(PluginCommand::Check(args)) => {
            init_logging("warn");
            check::run(args)
        }
        Command::Plugin(PluginCommand::New(args)) => plugin::new(args),
        Command::Plugin(PluginCommand::Build(args)) => {
            init_logging(BUILD_LOGGING);
            plugin::build(args)
        }
        Command::Plugin(PluginCommand::Export(args)) => {
            init_logging("warn");
            plugin::export(args)
        }
        Command::Plugin(PluginCommand::Import(args)) => {
            init_logging("warn");
            plugin::import(args)
        }
        Command::Plugin(PluginCommand::Test(args)) => {
            init_logging(BUILD_LOGGING);
            plugin::test(args)
        }
        Command::Dev(args) => {
            init_logging("info");
            dev::run(args)
        }
        Command::CompileWorker => return busbar::plugins::worker_main(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("busbar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
