//! `busbar dev --plugins DIR`: serve the plugins whose sources are in DIR, and rebuild and
//! hot-swap one when its source changes.
//!
//! Each subdirectory of DIR with a `plugin.toml` is a plugin. It is built into its `dist/`, and
//! the component is copied (write, then rename) into `DIR/.busbar-dev/`, the directory the server
//! watches, so a rebuild reaches the server through the same hot-loading path as a deploy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use notify::{RecursiveMode, Watcher};

#[derive(Args)]
pub struct DevArgs {
    /// Directory whose subdirectories are plugin sources.
    #[arg(long)]
    plugins: PathBuf,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let sources = plugin_sources(&args.plugins)?;
    if sources.is_empty() {
        anyhow::bail!("no plugin sources (subdirectories with a plugin.toml) in {}", args.plugins.display());
    }
    let deploy = args.plugins.join(".busbar-dev");
    std::fs::create_dir_all(&deploy)?;
    for source in &sources {
        if let Err(e) = rebuild(source, &deploy) {
            eprintln!("busbar dev: {}: {e:#}", source.display());
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })?;
    for source in &sources {
        watcher.watch(source, RecursiveMode::Recursive)?;
    }
    std::thread::spawn(move || rebuild_loop(rx, sources, deploy));
    let serve = super::serve::ServeArgs::for_dev(args.plugins.join(".busbar-dev"), args.listen);
    let code = super::serve::run(serve);
    drop(watcher);
    code
}

fn plugin_sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("plugin.toml").is_file())
        .collect();
    sources.sort();
    Ok(sources)
}

fn rebuild(source: &Path, deploy: &Path) -> anyhow::Result<()> {
    let built = super::plugin::build_dir(source)?;
    let tmp = deploy.join(format!(".{}.wasm.tmp", built.name));
    std::fs::copy(&built.wasm, &tmp)?;
    std::fs::copy(source.join("plugin.toml"), deploy.join(format!("{}.toml", built.name)))?;
    std::fs::rename(&tmp, deploy.join(format!("{}.wasm", built.name)))?;
    eprintln!("busbar dev: {} built and deployed", built.name);
    Ok(())
}

/// Rebuilds a plugin once its sources have been quiet for a moment.
fn rebuild_loop(rx: mpsc::Receiver<notify::Result<notify::Event>>, sources: Vec<PathBuf>, deploy: PathBuf) {
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(event)) => {
                for path in event.paths {
                    let ignored = path.components().any(|c| matches!(c.as_os_str().to_str(), Some("target" | "dist" | ".git")));
                    if ignored {
                        continue;
                    }
                    if let Some(source) = sources.iter().find(|s| path.starts_with(s)) {
                        pending.insert(source.clone(), Instant::now());
                    }
                }
            }
            Ok(Err(e)) => eprintln!("busbar dev: watch error: {e}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let quiet: Vec<PathBuf> =
            pending.iter().filter(|(_, at)| at.elapsed() > Duration::from_millis(300)).map(|(s, _)| s.clone()).collect();
        for source in quiet {
            pending.remove(&source);
            if let Err(e) = rebuild(&source, &deploy) {
                eprintln!("busbar dev: {}: {e:#} (the running version keeps serving)", source.display());
            }
        }
    }
}
