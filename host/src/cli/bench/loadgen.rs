//! The load generator of `busbar bench fanout`, the same for every server it measures (busbar's
//! configurations and the peers): N WebSocket clients in workspace `bench`, each its own user,
//! each waiting for `{"type":"auth_ack"}`; the server's RSS before and after they connect (memory
//! per idle connection); then events published over HTTP (`POST /v1/events`, batches on a fixed
//! schedule, never waiting for one publish before sending the next, so a slow publish cannot
//! lower the offered rate), each carrying its publish time, which clients turn into delivery
//! latency in HDR histograms; and the CPU time of the server and of this process. It measures
//! and must not judge or print: `fanout` makes the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, auth};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::servers::{ADMIN_TOKEN, PUBLISH_TOKEN, Server, start_naive, start_node, start_redis, start_server};

/// Publishes in flight at once; past this the publisher falls behind its schedule (reported as
/// a lower achieved events/s).
const IN_FLIGHT: usize = 64;

/// What is offered: `deliveries` per second to `clients` clients for `seconds`, events of
/// `payload` bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Offer {
    pub(super) clients: usize,
    pub(super) deliveries: u64,
    pub(super) seconds: u64,
    pub(super) payload: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Measurement {
    pub(super) config: &'static str,
    pub(super) clients: usize,
    pub(super) events_per_second_target: f64,
    /// Events published per second of publishing (below the target if the publisher fell behind).
    pub(super) events_per_second: f64,
    pub(super) events_published: u64,
    pub(super) deliveries: u64,
    pub(super) deliveries_expected: u64,
    /// Deliveries from the first publish to the last delivery.
    pub(super) deliveries_per_second: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
    /// busbar's slow-consumer evictions (`None` for the peers, which have none to report).
    pub(super) evictions: Option<u64>,
    /// Clients whose connection ended before the server was stopped.
    pub(super) closed_early: u64,
    pub(super) idle_kib_per_connection: f64,
    pub(super) server_cpu_seconds: f64,
    /// Server CPU time per delivery, in µs.
    pub(super) cpu_us_per_delivery: f64,
    pub(super) loadgen_cpu_seconds: f64,
    pub(super) wall_seconds: f64,
}

/// The clients' shared counters.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    /// When the last frame arrived, µs since the run's start.
    last_delivery: AtomicU64,
    closed_early: AtomicU64,
    stopping: AtomicBool,
    /// The first client that could not connect, and why: the run stops on it.
    refused: Mutex<Option<String>>,
}

/// Measures `config`: `baseline`, `plugins` or `relay` (busbar), `naive` or `node` (the peers).
pub(super) async fn measure(config: &'static str, offer: Offer) -> anyhow::Result<Measurement> {
    let clients = offer.clients;
    // Relay: clients on one node (`server`), events published on another (`publisher`).
    let redis = if config == "relay" { Some(start_redis()?) } else { None };
    let server = match config {
        "naive" => start_naive()?,
        "node" => start_node()?,
        _ => start_server(config, redis.as_ref().map(|r| r.addr.as_str()))?,
    };
    let busbar = !matches!(config, "naive" | "node");
    let publisher = match &redis {
        Some(redis) => Some(start_server(config, Some(&redis.addr))?),
        None => None,
    };
    let publish_addr = publisher.as_ref().unwrap_or(&server).addr.clone();
    let pid = server.pid();
    let other_pid = publisher.as_ref().map(Server::pid);
    let rss_before = rss_kib(pid)?;
    // One user per client, as in production: the hub caps connections per user (100 by
    // default) and refuses the rest with an error frame and 4429.
    let exp = busbar::event::now_ms() / 1000 + 3600;
    let token = |i: usize| {
        let claims = Claims { sub: format!("bench-{i}"), exp, workspaces: vec!["bench".into()], grants: Default::default() };
        auth::mint(DEV_JWT_SECRET.as_bytes(), &claims)
    };
    let base = Instant::now();
    let counters = Arc::new(Counters::default());
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    let limiter = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (addr, token, counters, histogram, connected, limiter) =
            (server.addr.clone(), token(i), counters.clone(), histogram.clone(), connected.clone(), limiter.clone());
        tasks.push(tokio::spawn(async move {
            let permit = limiter.acquire_owned().await;
            let stream = connect(&addr, &token).await;
            drop(permit);
            connected.add_permits(1);
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    counters.refused.lock().get_or_insert(format!("{e:#}"));
                    return;
                }
            };
            receive(stream, base, &counters, &histogram).await;
        }));
    }
    connected.acquire_many(clients as u32).await.context("clients connecting")?.forget();
    if let Some(why) = counters.refused.lock().take() {
        bail!("a client could not connect to {config}: {why}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib_per_connection = rss_kib(pid)?.saturating_sub(rss_before) as f64 / clients as f64;

    let http = reqwest::Client::new();
    if config == "relay" {
        // The clients' node subscribes asynchronously: wait until it watches the workspace.
        let deadline = Instant::now() + Duration::from_secs(10);
        while realtime(&http, &server.addr).await?["relay"]["watched_scopes"].as_u64().unwrap_or(0) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let servers_cpu = || -> anyhow::Result<f64> { Ok(cpu_seconds(pid)? + other_pid.map_or(Ok(0.0), cpu_seconds)?) };
    let cpu_before = (servers_cpu()?, cpu_seconds(std::process::id())?);
    let started = base.elapsed();
    let events_per_second_target = (offer.deliveries as f64 / clients as f64).max(1.0);
    let published = publish(&http, &publish_addr, offer, events_per_second_target, base).await?;
    let publishing = base.elapsed().saturating_sub(started).as_secs_f64();
    let expected = published * clients as u64;
    // Wait for every delivery, or until none has arrived for two seconds (evicted clients).
    let (mut seen, mut progress) = (0, Instant::now());
    loop {
        let now = counters.delivered.load(Ordering::Relaxed);
        if now >= expected || progress.elapsed() > Duration::from_secs(2) {
            break;
        }
        if now != seen {
            (seen, progress) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = (counters.last_delivery.load(Ordering::Relaxed) as f64 / 1e6 - started.as_secs_f64()).max(1e-3);
    let cpu_after = (servers_cpu()?, cpu_seconds(std::process::id())?);
    let evictions = if busbar { realtime(&http, &server.addr).await?["slow_evictions_total"].as_u64() } else { None };
    counters.stopping.store(true, Ordering::Relaxed);
    drop(server);
    drop(publisher);
    drop(redis);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let h = histogram.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let server_cpu_seconds = cpu_after.0 - cpu_before.0;
    Ok(Measurement {
        config,
        clients,
        events_per_second_target,
        events_per_second: published as f64 / publishing.max(1e-3),
        events_published: published,
        deliveries: delivered,
        deliveries_expected: expected,
        deliveries_per_second: delivered as f64 / wall,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        evictions,
        closed_early: counters.closed_early.load(Ordering::Relaxed),
        idle_kib_per_connection,
        server_cpu_seconds,
        cpu_us_per_delivery: server_cpu_seconds * 1e6 / delivered.max(1) as f64,
        loadgen_cpu_seconds: cpu_after.1 - cpu_before.1,
        wall_seconds: wall,
    })
}

/// Publishes `offer.seconds` worth of events at `per_second`, in batches on a fixed schedule,
/// up to `IN_FLIGHT` requests at once; returns how many were published.
async fn publish(http: &reqwest::Client, addr: &str, offer: Offer, per_second: f64, base: Instant) -> anyhow::Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let total = (per_second * offer.seconds as f64).ceil() as u64;
    let padding = "x".repeat(offer.payload.saturating_sub(16));
    let url = format!("http://{addr}/v1/events");
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let batch = (per_second / 200.0).ceil().max(1.0) as u64;
    let mut requests = tokio::task::JoinSet::new();
    let (mut published, mut next) = (0u64, tokio::time::Instant::now());
    while published < total {
        let n = batch.min(total - published);
        let permit = in_flight.clone().acquire_owned().await?;
        let now_us = base.elapsed().as_micros() as u64;
        let events: Vec<serde_json::Value> =
            (0..n).map(|_| json!({"type": "bench:tick", "workspace_id": "bench", "payload": {"t": now_us, "pad": padding}})).collect();
        let request = http.post(&url).bearer_auth(PUBLISH_TOKEN).json(&events).send();
        requests.spawn(async move {
            let response = request.await.context("publishing")?;
            drop(permit);
            if !response.status().is_success() {
                bail!("publish failed: {}", response.status());
            }
            anyhow::Ok(())
        });
        while let Some(done) = requests.try_join_next() {
            done??;
        }
        published += n;
        next += interval.mul_f64(n as f64);
        tokio::time::sleep_until(next).await;
    }
    while let Some(done) = requests.join_next().await {
        done??;
    }
    Ok(published)
}

/// One client's frames until its connection ends: each counted, its latency recorded.
async fn receive(stream: tokio::net::TcpStream, base: Instant, counters: &Counters, histogram: &Mutex<Histogram<u64>>) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut frames = FrameReader::new(stream);
    while let Ok(Some(text)) = frames.next_text().await {
        if let Some(sent) = sent_at(text) {
            let now = base.elapsed().as_micros() as u64;
            local.saturating_record(now.saturating_sub(sent).max(1));
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            counters.last_delivery.fetch_max(now, Ordering::Relaxed);
            if local.len() >= 256 {
                let _ = histogram.lock().add(&local);
                local.reset();
            }
        }
    }
    if !counters.stopping.load(Ordering::Relaxed) {
        counters.closed_early.fetch_add(1, Ordering::Relaxed);
    }
    let _ = histogram.lock().add(&local);
}

/// A client connected to `workspace_id=bench` whose `auth_ack` has arrived (anything else, an
/// error frame or a close, is an error), as a raw TCP stream: nothing else is sent before
/// publishing starts, so from here the stream can be read without losing bytes.
async fn connect(addr: &str, token: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut request = format!("ws://{addr}/ws?workspace_id=bench").into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.as_str() == r#"{"type":"auth_ack"}"# => {}
        other => bail!("expected the auth_ack, got {other:?}"),
    }
    let MaybeTlsStream::Plain(stream) = socket.into_inner() else { bail!("expected a plain TCP stream") };
    Ok(stream)
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

pub(super) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
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
