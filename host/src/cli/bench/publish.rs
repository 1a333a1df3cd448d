//! `busbar bench publish`: the HTTP publish path, against an empty route in the same run.
//!
//! It starts `busbar serve` (the example plugins, in memory) as a child process and drives it
//! with a minimal HTTP/1.1 load generator (keep-alive connections, one request in flight on
//! each, responses read by `Content-Length`), in alternating rounds: `GET /health` (the empty
//! route: routing, the middleware stack, a small JSON body), `POST /v1/events` with one 1 KiB
//! event, and the same with a batch of events, each with and without the per-listener report.
//! It reports requests and events per second per case, their ratio to the empty route, and the
//! CPU time of the server and of itself. It measures only; it must not tune the server.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::loadgen::cpu_seconds;
use super::servers::{PUBLISH_TOKEN, start_server};

#[derive(Args, Clone)]
pub struct PublishArgs {
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per case per round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds (the cases alternate within each round; the median round is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Events per request in the batch cases.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
}

/// One kind of request.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    events: usize,
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let server = start_server("plugins", None)?;
    let pid = server.pid();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cases = cases(&server.addr, &args);
    println!(
        "publish: {} connections, {} rounds of {} s per case, {} B payloads, batches of {}",
        args.connections, args.rounds, args.seconds, args.payload, args.batch
    );
    let mut rates: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); cases.len()];
    for round in 0..args.rounds {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let cpu = cpu_seconds(pid)?;
            let (requests, wall) = runtime.block_on(drive(&server.addr, &cases[i].request, args.connections, Duration::from_secs(args.seconds)))?;
            let server_cpu = cpu_seconds(pid)? - cpu;
            rates[i].push((requests as f64 / wall, server_cpu / requests.max(1) as f64 * 1e6, wall));
        }
    }
    let median = |values: &[(f64, f64, f64)]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        sorted[sorted.len() / 2]
    };
    let empty = median(&rates[0]).0;
    println!("| case | requests/s | events/s | / empty route (requests) | server CPU per request |");
    println!("|---|---|---|---|---|");
    for (case, rates) in cases.iter().zip(&rates) {
        let (rps, cpu_us, _) = median(rates);
        println!(
            "| {} | {:.0} | {:.0} | {:.2}x | {:.1} µs |",
            case.name,
            rps,
            rps * case.events as f64,
            rps / empty,
            cpu_us
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cases(addr: &str, args: &PublishArgs) -> Vec<Case> {
    let event = |n: usize| {
        let filler = "x".repeat(args.payload.saturating_sub(60));
        serde_json::json!({"type": "issue:updated", "workspace_id": "ws-bench", "actor_type": "member", "actor_id": "u-1",
            "payload": {"id": format!("iss-{n}"), "title": "bench", "body": filler}})
    };
    let post = |path: &str, body: String| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {PUBLISH_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let batch = serde_json::Value::Array((0..args.batch).map(event).collect()).to_string();
    vec![
        Case { name: "empty route (GET /health)", request: format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes(), events: 0 },
        Case { name: "1 event", request: post("/v1/events", event(0).to_string()), events: 1 },
        Case { name: "1 event, no report", request: post("/v1/events?report=none", event(0).to_string()), events: 1 },
        Case { name: "batch", request: post("/v1/events", batch.clone()), events: args.batch },
        Case { name: "batch, no report", request: post("/v1/events?report=none", batch), events: args.batch },
    ]
}

/// `connections` keep-alive connections sending `request` back to back for `time`; returns the
/// requests answered with 200 and the wall time.
async fn drive(addr: &str, request: &[u8], connections: usize, time: Duration) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let until = started + time;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        let request = request.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0u64;
            let mut buffer = Vec::with_capacity(64 << 10);
            while Instant::now() < until {
                stream.write_all(&request).await?;
                read_response(&mut stream, &mut buffer).await?;
                answered += 1;
            }
            anyhow::Ok(answered)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Reads one response (headers, then `Content-Length` bytes of body); fails unless it is a 200.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    buffer.clear();
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 16 << 10];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buffer[..end]).context("response head")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .context("no content-length")?
        .parse()?;
    while buffer.len() < end + length {
        let mut chunk = [0u8; 16 << 10];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-body");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
