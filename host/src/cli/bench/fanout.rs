//! `busbar bench fanout`: the end-to-end load tool. HTTP publish -> plugins -> hub -> N real
//! WebSocket clients, with a baseline in the same run.
//!
//! For each configuration (the baseline: a native forwarder and no plugins, `busbar bench
//! baseline-server`; then the example plugins), it starts the server as a child process,
//! connects N clients to one workspace, measures the server's memory per idle connection, then
//! publishes at a fixed rate for a fixed time. Every event carries its publish time; clients
//! record delivery latency in HDR histograms. It reports deliveries per second, p50/p99/p999
//! latency, evictions, and the CPU time used by the server and by this load generator (to show
//! which one was the bottleneck).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, auth};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Args, Clone)]
pub struct FanoutArgs {
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    clients: Vec<usize>,
    /// Target deliveries per second (events per second = this / clients).
    #[arg(long, default_value_t = 500_000)]
    deliveries: u64,
    /// Seconds of publishing per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Payload bytes per event (padding around the publish time).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Only the plugin configuration (skip the native baseline).
    #[arg(long)]
    no_baseline: bool,
    /// Also measure two nodes through a Redis relay (starts `redis-server`; clients on one
    /// node, publishing on the other).
    #[arg(long)]
    relay: bool,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Measurement {
    config: &'static str,
    clients: usize,
    events_per_second_target: f64,
    events_published: u64,
    deliveries: u64,
    deliveries_expected: u64,
    deliveries_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// How long a `POST /v1/events` took to answer (the publisher's wait), median and p99.
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    evictions: u64,
    idle_kib_per_connection: f64,
    server_cpu_seconds: f64,
    loadgen_cpu_seconds: f64,
    wall_seconds: f64,
}

pub fn run(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    crate::cli::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Vec::new();
    for &clients in &args.clients {
        let mut configs: Vec<&'static str> = if args.no_baseline { vec!["plugins"] } else { vec!["baseline", "plugins"] };
        if args.relay {
            configs.push("relay");
        }
        for &config in &configs {
            eprintln!("bench: {config}, {clients} clients ...");
            let measurement = runtime.block_on(measure(config, clients, &args))?;
            eprintln!(
                "bench: {config}, {clients} clients: {:.0} deliveries/s, p99 {:.1} ms",
                measurement.deliveries_per_second, measurement.p99_ms
            );
            results.push(measurement);
        }
    }
    println!("| config | clients | events/s | deliveries/s | delivered | p50 ms | p99 ms | p99.9 ms | max ms | publish p50 ms | publish p99 ms | evictions | idle KiB/conn | server CPU s | loadgen CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in &results {
        println!(
            "| {} | {} | {:.0} | {:.0} | {}/{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
            m.config,
            m.clients,
            m.events_per_second_target,
            m.deliveries_per_second,
            m.deliveries,
            m.deliveries_expected,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.max_ms,
            m.publish_p50_ms,
            m.publish_p99_ms,
            m.evictions,
            m.idle_kib_per_connection,
            m.server_cpu_seconds,
            m.loadgen_cpu_seconds
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// A process this tool started (a `busbar serve`, a `redis-server`), stopped when dropped.
/// The admin token the benchmark's servers are started with.
pub(super) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

pub(super) struct Server {
    child: Child,
    /// `host:port` of a busbar server; the `redis://` URL of a Redis server.
    pub(super) addr: String,
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
pub(super) fn start_server(config: &str, redis: Option<&str>) -> anyhow::Result<Server> {
    let exe = std::env::current_exe()?;
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
    let mut child = command
        .env("BUSBAR_LOG", "warn")
        .env("BUSBAR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BUSBAR_PUBLISH_TOKEN", "bench-publish-token-012345")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting busbar serve")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(line) = lines.next() else { bail!("the server exited before listening") };
        let line = line?;
        if let Some(rest) = line.strip_prefix("busbar listening on http://") {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    // Keep draining the server's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(Server { child, addr })
}

async fn measure(config: &'static str, clients: usize, args: &FanoutArgs) -> anyhow::Result<Measurement> {
    // Relay: clients on one node (`server`), events published on another (`publisher`).
    let redis = if config == "relay" { Some(start_redis()?) } else { None };
    let server = start_server(config, redis.as_ref().map(|r| r.addr.as_str()))?;
    let publisher = match &redis {
        Some(redis) => Some(start_server(config, Some(&redis.addr))?),
        None => None,
    };
    let publish_addr = publisher.as_ref().unwrap_or(&server).addr.clone();
    let pid = server.child.id();
    let other_pid = publisher.as_ref().map(|p| p.child.id());
    let rss_before = rss_kib(pid)?;
    // One user per client: a user may hold only `max-connections-per-user` (100) connections,
    // and the clients past that were refused (4429) and went on waiting for frames, so the tool
    // reported at most 100 clients' deliveries.
    let token = |n: usize| {
        let claims = Claims { sub: format!("bench-{n}"), exp: busbar::event::now_ms() / 1000 + 3600, workspaces: vec!["bench".into()], grants: Default::default() };
        auth::mint(DEV_JWT_SECRET.as_bytes(), &claims)
    };
    let refused = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    let limiter = Arc::new(tokio::sync::Semaphore::new(200));
    for n in 0..clients {
        let (addr, token, delivered, histogram, connected, limiter, refused) =
            (server.addr.clone(), token(n), delivered.clone(), histogram.clone(), connected.clone(), limiter.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let permit = limiter.acquire_owned().await;
            let mut request = format!("ws://{addr}/ws?workspace_id=bench").into_client_request()?;
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
            // The first frame is the auth_ack; nothing else is sent before publishing starts,
            // so from here the raw stream can be read without losing bytes.
            let first = socket.next().await;
            drop(permit);
            let acked = matches!(&first, Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) if t.contains("auth_ack"));
            if !acked {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            connected.add_permits(1);
            if !acked {
                bail!("the server refused a client: {first:?}");
            }
            let MaybeTlsStream::Plain(stream) = socket.into_inner() else { bail!("expected a plain TCP stream") };
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut count = 0u64;
            let mut frames = FrameReader::new(stream);
            // Counted as they arrive; the latencies are merged every 256 frames and at the end,
            // which comes with an error when the server is killed (a reset): that must not lose
            // what was counted (it did: the tool reported a tenth of the deliveries).
            while let Ok(Some(text)) = frames.next_text().await {
                if let Some(sent) = sent_at(text) {
                    let now = base.elapsed().as_micros() as u64;
                    local.saturating_record(now.saturating_sub(sent).max(1));
                    delivered.fetch_add(1, Ordering::Relaxed);
                    count += 1;
                    if count.is_multiple_of(256) {
                        histogram.lock().add(&local)?;
                        local.reset();
                    }
                }
            }
            histogram.lock().add(&local)?;
            anyhow::Ok(())
        }));
    }
    let all = connected.acquire_many(clients as u32).await.context("clients connecting")?;
    all.forget();
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        bail!("{refused} of {clients} clients were refused");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid)?;
    let idle_kib_per_connection = (rss_idle.saturating_sub(rss_before)) as f64 / clients as f64;

    let events_per_second = (args.deliveries as f64 / clients as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / events_per_second);
    let total_events = (events_per_second * args.seconds as f64).ceil() as u64;
    let padding = "x".repeat(args.payload.saturating_sub(16));
    let http = reqwest::Client::new();
    let url = format!("http://{publish_addr}/v1/events");
    let servers_cpu = || -> anyhow::Result<f64> { Ok(cpu_seconds(pid)? + other_pid.map_or(Ok(0.0), cpu_seconds)?) };
    if config == "relay" {
        // The clients' node subscribes asynchronously: wait until it watches the workspace.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let health = realtime(&http, &server.addr).await?;
            if health["relay"]["watched_scopes"].as_u64().unwrap_or(0) >= 3 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cpu_before = (servers_cpu()?, cpu_seconds(std::process::id())?);
    let started = Instant::now();
    // Events are sent in small batches on a fixed schedule, so that the publisher keeps up.
    let batch = (events_per_second / 200.0).ceil().max(1.0) as u64;
    let mut published = 0u64;
    let mut publish_times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut next = tokio::time::Instant::now();
    while published < total_events {
        let n = batch.min(total_events - published);
        let now_us = base.elapsed().as_micros() as u64;
        let events: Vec<serde_json::Value> = (0..n)
            .map(|_| json!({"type": "bench:tick", "workspace_id": "bench", "payload": {"t": now_us, "pad": padding}}))
            .collect();
        let posted = Instant::now();
        let response = http
            .post(&url)
            .bearer_auth("bench-publish-token-012345")
            .json(&events)
            .send()
            .await
            .context("publishing")?;
        if !response.status().is_success() {
            bail!("publish failed: {}", response.status());
        }
        publish_times.saturating_record(posted.elapsed().as_micros() as u64);
        published += n;
        next += interval.mul_f64(n as f64);
        tokio::time::sleep_until(next).await;
    }
    let expected = published * clients as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = (servers_cpu()?, cpu_seconds(std::process::id())?);
    let realtime = realtime(&http, &server.addr).await?;
    drop(server);
    drop(publisher);
    drop(redis);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let delivered = delivered.load(Ordering::Relaxed);
    let h = histogram.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Measurement {
        config,
        clients,
        events_per_second_target: events_per_second,
        events_published: published,
        deliveries: delivered,
        deliveries_expected: expected,
        deliveries_per_second: delivered as f64 / wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        publish_p50_ms: publish_times.value_at_quantile(0.5) as f64 / 1000.0,
        publish_p99_ms: publish_times.value_at_quantile(0.99) as f64 / 1000.0,
        evictions: realtime["slow_evictions_total"].as_u64().unwrap_or(0),
        idle_kib_per_connection,
        server_cpu_seconds: cpu_after.0 - cpu_before.0,
        loadgen_cpu_seconds: cpu_after.1 - cpu_before.1,
        wall_seconds: wall,
    })
}

/// A minimal reader of server-to-client WebSocket frames (unmasked), cheaper than a full client
/// so that the load generator is not what limits the measurement. Answers pings.
struct FrameReader {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    fn new(stream: tokio::net::TcpStream) -> FrameReader {
        FrameReader { stream, buffer: vec![0; 256 << 10], start: 0, end: 0 }
    }

    /// The next text frame's payload; `None` when the connection ends.
    async fn next_text(&mut self) -> anyhow::Result<Option<&str>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            if let Some((header, len, opcode)) = parse_header(&self.buffer[self.start..self.end]) {
                if self.end - self.start >= header + len {
                    let payload = self.start + header..self.start + header + len;
                    self.start += header + len;
                    match opcode {
                        0x1 => return Ok(std::str::from_utf8(&self.buffer[payload]).ok().or(Some(""))),
                        0x8 => return Ok(None),
                        0x9 => {
                            // Pong, masked with a zero key, echoing the ping's payload.
                            let mut pong = vec![0x8A, 0x80 | len as u8, 0, 0, 0, 0];
                            pong.extend_from_slice(&self.buffer[payload]);
                            self.stream.write_all(&pong).await?;
                        }
                        _ => {}
                    }
                    continue;
                }
                if header + len > self.buffer.len() {
                    self.buffer.resize(header + len, 0);
                }
            }
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.stream.read(&mut self.buffer[self.end..]).await?;
            if read == 0 {
                return Ok(None);
            }
            self.end += read;
        }
    }
}

/// `(header length, payload length, opcode)` of the frame at the start of `bytes`, if complete.
fn parse_header(bytes: &[u8]) -> Option<(usize, usize, u8)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0F;
    match bytes[1] & 0x7F {
        126 if bytes.len() >= 4 => Some((4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize, opcode)),
        127 if bytes.len() >= 10 => {
            let len = u64::from_be_bytes(bytes[2..10].try_into().ok()?);
            Some((10, usize::try_from(len).ok()?, opcode))
        }
        126 | 127 => None,
        len => Some((2, len as usize, opcode)),
    }
}

/// The publish time (µs since the run's start) carried in a frame's payload as `"t":N`.
fn sent_at(frame: &str) -> Option<u64> {
    let at = frame.find("\"t\":")? + 4;
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("reading VmRSS")
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("parsing /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The server's `/health/realtime`.
async fn realtime(http: &reqwest::Client, addr: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{addr}/health/realtime");
    Ok(http.get(url).bearer_auth(ADMIN_TOKEN).send().await?.json().await?)
}
