//! `busbar bench baseline-server` (hidden): what `busbar bench fanout` measures plugins against.
//! The same server as `busbar serve`, on an empty plugin directory, with one native Rust
//! listener that forwards every event with a workspace to its workspace room: the cheapest
//! listener there can be. Kept here, not in the server's configuration, because only the
//! benchmark needs it.

use std::process::ExitCode;

use anyhow::Context;
use busbar::action::{Action, Target};
use busbar::bus::ListenerError;
use busbar::config::{Config, Overrides};
use busbar::event::Event;
use clap::Args;

#[derive(Args, Clone)]
pub struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Share fan-out through Redis.
    #[arg(long)]
    redis_url: Option<String>,
}

pub fn run(args: BaselineArgs) -> anyhow::Result<ExitCode> {
    let empty = tempfile_dir()?;
    let overrides = Overrides {
        listen: Some(args.listen),
        plugins_dir: Some(empty.clone()),
        no_cache: true,
        ephemeral: true,
        redis_url: args.redis_url,
        ..Overrides::default()
    };
    let config = Config::load(&overrides).context("invalid configuration")?;
    let served = super::super::serve::serve(config, |app| {
        app.bus.subscribe("native-forwarder", &["*"], forward).context("registering the native forwarder")
    });
    let _ = std::fs::remove_dir_all(&empty);
    served
}

/// Every event with a workspace to its workspace room, as the example forwarder does, natively.
fn forward(event: &Event) -> Result<Vec<Action>, ListenerError> {
    if event.workspace_id.is_empty() {
        return Ok(Vec::new());
    }
    let target = Target::Workspace { id: event.workspace_id.clone() };
    Ok(vec![Action::send(target, event.event_type.clone(), event.payload.clone())])
}

/// A fresh empty directory for the (absent) plugins.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("busbar-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
