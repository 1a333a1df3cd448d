//! The servers the benchmarks start as child processes, each stopped when its `Server` is
//! dropped: `busbar serve` (or the hidden `busbar bench baseline-server`), `redis-server`, and
//! `busbar bench fanout`'s two peers, the naive Rust broadcast server (the hidden `busbar bench
//! naive-server`, this same executable) and the Node.js `ws` server (`peers/ws-server.mjs`,
//! with npm's `ws` installed on first use into the toolchains directory). It starts processes
//! and finds their address; it must not measure anything (that is the load generator's).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The admin token the benchmark's busbar servers are started with.
pub(super) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// The publish token the benchmark's busbar servers accept (the peers check none).
pub(super) const PUBLISH_TOKEN: &str = "bench-publish-token-012345";

/// The Node.js peer's script, and the npm packages it runs on, pinned.
const WS_SERVER: &str = include_str!("peers/ws-server.mjs");
const WS_PACKAGE: &str = include_str!("peers/package.json");
const WS_LOCK: &str = include_str!("peers/package-lock.json");

/// A process this tool started (a `busbar serve`, a peer, a `redis-server`), stopped when dropped.
pub(super) struct Server {
    child: Child,
    /// `host:port` of an HTTP server; the `redis://` URL of a Redis server.
    pub(super) addr: String,
}

impl Server {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_redis() -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (apt-get install redis-server)")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server { child, addr: format!("redis://127.0.0.1:{port}") })
}

/// A `busbar serve` (`config`: `baseline`, `plugins` or `relay`), sharing `redis` if given.
/// `BUSBAR_BENCH_SERVER` names another `busbar` executable to run instead of this one (an older
/// build, for a before/after comparison with the same load generator).
pub(super) fn start_server(config: &str, redis: Option<&str>) -> anyhow::Result<Server> {
    let exe = match std::env::var_os("BUSBAR_BENCH_SERVER") {
        Some(exe) => PathBuf::from(exe),
        None => std::env::current_exe()?,
    };
    let mut command = Command::new(exe);
    if config == "baseline" {
        command.args(["bench", "baseline-server", "--listen", "127.0.0.1:0"]);
    } else {
        command.args(["serve", "--ephemeral", "--listen", "127.0.0.1:0"]);
    }
    // Every client and the publisher come from 127.0.0.1: lift the per-address cap (1000) on
    // both servers.
    let limits = std::env::temp_dir().join(format!("busbar-bench-{}.toml", std::process::id()));
    std::fs::write(&limits, "[limits]\nmax-connections-per-address = 10000000\n").context("writing the bench's config")?;
    command.env("BUSBAR_CONFIG", &limits);
    if let Some(url) = redis {
        command.args(["--redis-url", url]);
    }
    command.env("BUSBAR_LOG", "warn").env("BUSBAR_ADMIN_TOKEN", ADMIN_TOKEN).env("BUSBAR_PUBLISH_TOKEN", PUBLISH_TOKEN);
    listening(command, "busbar serve")
}

/// The naive Rust broadcast server: this executable's hidden `bench naive-server`.
pub(super) fn start_naive() -> anyhow::Result<Server> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench", "naive-server", "--listen", "127.0.0.1:0"]);
    listening(command, "the naive server")
}

/// The Node.js `ws` server, after installing `ws` if this is its first use.
pub(super) fn start_node() -> anyhow::Result<Server> {
    let dir = node_peer_dir()?;
    let mut command = Command::new("node");
    command.arg(dir.join("ws-server.mjs")).env("NODE_ENV", "production");
    listening(command, "the Node.js ws server (node)")
}

/// `<toolchains>/bench-node-ws`: npm's `ws` installed (`npm ci` from the pinned lockfile) and
/// the peer's script beside it, so that its `import 'ws'` resolves.
fn node_peer_dir() -> anyhow::Result<PathBuf> {
    let root = busbar::config::toolchains_dir(&|key| std::env::var(key).ok()).context("no directory for the toolchains (set BUSBAR_TOOLCHAINS)")?;
    let toolchains = busbar::build::Toolchains::new(&root)?;
    let dir = toolchains.npm("bench-node-ws", WS_PACKAGE, WS_LOCK, "node_modules/ws/package.json", "npm ws for the bench's Node.js peer")?;
    let script = dir.join("ws-server.mjs");
    if std::fs::read_to_string(&script).ok().as_deref() != Some(WS_SERVER) {
        let tmp = dir.join(format!("ws-server.mjs.tmp{}", std::process::id()));
        std::fs::write(&tmp, WS_SERVER).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &script).with_context(|| format!("writing {}", script.display()))?;
    }
    Ok(dir)
}

/// Spawns `command` and waits for the `... listening on http://<addr>` line on its stderr.
fn listening(mut command: Command, what: &str) -> anyhow::Result<Server> {
    let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().with_context(|| format!("starting {what}"))?;
    let stderr = child.stderr.take().context("server stderr")?;
    let mut server = Server { child, addr: String::new() };
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    server.addr = loop {
        let Some(line) = lines.next() else { bail!("{what} exited before listening: {}", said.join("\n")) };
        let line = line?;
        if let Some((_, rest)) = line.split_once("listening on http://") {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        said.push(line);
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(server)
}
