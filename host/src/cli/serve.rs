//! `busbar serve`: the server. Defaults that just work: 127.0.0.1:8080, the built-in example
//! plugins, the in-memory hub, and a development JWT secret (with a warning).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use busbar::config::{Config, DEV_JWT_SECRET, Overrides};
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (default: $BUSBAR_CONFIG, else ./busbar.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of plugins (`name.wasm` + optional `name.toml`); default: the built-in examples.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Directory for compiled components.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every component on start instead of using the cache.
    #[arg(long)]
    no_cache: bool,
    /// Where deployments and plugin state are kept (default: $BUSBAR_DATA_DIR, else
    /// ~/.local/share/busbar).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep deployments and plugin state in memory only: a restart starts afresh.
    #[arg(long, conflicts_with = "data_dir")]
    ephemeral: bool,
    /// Share fan-out with other nodes through Redis (e.g. redis://127.0.0.1:6379).
    #[arg(long)]
    redis_url: Option<String>,
}

impl ServeArgs {
    /// What `busbar dev` serves: its deploy directory, watched, keeping nothing across runs.
    pub fn for_dev(plugins: PathBuf, listen: Option<String>) -> ServeArgs {
        ServeArgs {
            config: None,
            listen,
            plugins: Some(plugins),
            cache_dir: None,
            no_cache: false,
            data_dir: None,
            ephemeral: true,
            redis_url: None,
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        plugins_dir: args.plugins,
        cache_dir: args.cache_dir,
        no_cache: args.no_cache,
        data_dir: args.data_dir,
        ephemeral: args.ephemeral,
        redis_url: args.redis_url,
    };
    serve(Config::load(&overrides).context("invalid configuration")?, |_| Ok(()))
}

/// Serves `config` until SIGTERM or SIGINT; `prepare` may add to the app before it listens.
pub fn serve(mut config: Config, prepare: impl FnOnce(&busbar::server::App) -> anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    // Components are compiled by this same executable, in a child process with limits.
    config.compile_worker = Some(std::env::current_exe().context("cannot find the busbar executable")?);
    if config.dev_secret {
        tracing::warn!(
            "no JWT secret configured: using the public development secret {DEV_JWT_SECRET:?}; \
             mint tokens with `busbar token`. Set BUSBAR_JWT_SECRET for anything but local development."
        );
    }
    super::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("busbar").build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let app = busbar::server::build(&config, shutdown.clone())?;
        prepare(&app)?;
        let listener = busbar::api::bind(config.listen, config.connection_limits.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let plugins: Vec<String> = app.registry.list().into_iter().map(|p| format!("{} ({})", p.name, p.status)).collect();
        tracing::info!(%address, plugins = %plugins.join(", "), "busbar listening");
        eprintln!("busbar listening on http://{address} (WebSocket: ws://{address}/ws)");
        tokio::spawn(signal_shutdown(shutdown));
        busbar::server::run(listener, app).await.context("server failed")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
