//! What one publish into a big room costs the publisher, and what the whole fan-out costs: a
//! `Hub` with 1 000 and 10 000 connected sessions (the real session loop and writer task, on an
//! in-memory socket that counts what is written), published to from a blocking thread as
//! `POST /v1/events` does. See BENCHMARKS.md.
//!
//! - publish: how long `broadcast_to_workspace` takes to return (the publisher's wait), one
//!   event at a time with nothing else running;
//! - delivered: from the call to the last member's socket having the frame;
//! - cpu/delivery: the process's CPU time (user + system) over the single publishes, per frame
//!   written;
//! - burst: 4 publishers, 25 events each at once into the room: how long until all returned
//!   and until everything was written;
//! - idle KiB/session: the process's resident memory per connected session before publishing
//!   (the hub's share of an idle connection: its `Conn`, rooms, session and writer tasks; not
//!   the socket's buffers, which this in-memory socket does not have).
//!
//! `cargo bench --bench fanout` measures; `cargo test` runs it once, with small rooms.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use busbar::broadcast::{Broadcaster, Frame};
use busbar::event::Json;
use busbar::hub::session::{Auth, serve};
use busbar::hub::{Claims, ClaimsAuthorizer, Hub, HubConfig, Identity, TokenVerifier};
use futures_util::{Sink, Stream};

/// How many event frames the sockets were written, and a wake-up when that reaches `target`.
#[derive(Default)]
struct Progress {
    delivered: AtomicU64,
    target: AtomicU64,
    reached: tokio::sync::Notify,
}

impl Progress {
    /// Waits (without spinning: the measurement counts the process's CPU) until `target`
    /// frames were written in all.
    async fn reach(&self, target: u64) {
        self.target.store(target, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.delivered.load(Relaxed) < target {
            let woken = tokio::time::timeout_at(deadline.into(), self.reached.notified()).await;
            assert!(woken.is_ok() || self.delivered.load(Relaxed) >= target, "frames were lost: {} of {target}", self.delivered.load(Relaxed));
        }
    }
}

/// A socket that never sends anything and counts the event frames written to it.
struct Counting {
    progress: Arc<Progress>,
}

impl Stream for Counting {
    type Item = Result<Message, axum::Error>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Pending
    }
}

impl Sink<Message> for Counting {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), axum::Error> {
        if let Message::Text(text) = message
            && text.as_str().starts_with(r#"{"type":"bench:"#)
            && self.progress.delivered.fetch_add(1, Relaxed) + 1 == self.progress.target.load(Relaxed)
        {
            self.progress.reached.notify_one();
        }
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

fn frame(i: u64) -> Frame {
    let payload = format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100));
    Frame {
        event_type: "bench:tick".into(),
        payload: Json::parse(payload).expect("valid JSON"),
        actor_id: "bench".into(),
        actor_type: "system".into(),
        event_id: format!("e{i}"),
        workspace_id: "bench".into(),
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The process's resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

async fn measure(members: usize, rounds: usize) {
    let config = HubConfig { max_connections_per_user: usize::MAX, max_queue_bytes: 64 << 20, ..HubConfig::default() };
    let hub = Arc::new(Hub::new(config, TokenVerifier::new(b"bench-secret"), Arc::new(ClaimsAuthorizer)));
    let progress = Arc::new(Progress::default());
    let rss = rss_kib();
    for n in 0..members {
        let claims = Claims { sub: format!("u{n}"), exp: u64::MAX / 2, workspaces: vec!["bench".into()], grants: Default::default() };
        let identity = Identity { user_id: format!("u{n}"), workspace_id: "bench".into(), claims: Arc::new(claims) };
        let socket = Counting { progress: progress.clone() };
        tokio::spawn(serve(hub.clone(), socket, Auth::Identified { identity, since: HashMap::new(), request: None }, None));
    }
    while hub.connection_count() < members || hub.snapshot().active_scope_rooms.values().sum::<u64>() < members as u64 + 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_kib = (rss_kib().saturating_sub(rss)) as f64 / members as f64;
    let (mut publish, mut done) = (Vec::new(), Vec::new());
    let mut expected = 0;
    let cpu = cpu_seconds();
    for i in 0..rounds as u64 {
        let started = Instant::now();
        let hub2 = hub.clone();
        let returned = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            hub2.broadcast_to_workspace("bench", frame(i));
            started.elapsed()
        })
        .await
        .expect("the publish");
        expected += members as u64;
        progress.reach(expected).await;
        publish.push(returned);
        done.push(started.elapsed());
    }
    let cpu_per_delivery = (cpu_seconds() - cpu) / expected as f64 * 1e6;
    publish.sort();
    done.sort();
    // A burst: 4 publishers at once, 25 events each.
    let started = Instant::now();
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || {
                for i in 0..25 {
                    hub.broadcast_to_workspace("bench", frame(1_000_000 + p * 100 + i));
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("a publisher");
    }
    let burst_returned = started.elapsed();
    expected += 100 * members as u64;
    progress.reach(expected).await;
    let burst_done = started.elapsed();
    println!(
        "| {members} | {rounds} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {idle_kib:.2} |",
        quantile(&publish, 0.5),
        quantile(&publish, 0.9),
        quantile(&publish, 1.0),
        quantile(&done, 0.5),
        quantile(&done, 0.9),
        cpu_per_delivery,
        burst_returned.as_secs_f64() * 1e3,
        burst_done.as_secs_f64() * 1e3,
    );
    hub.shutdown(Duration::from_secs(5)).await;
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    println!("| members | rounds | publish p50 ms | publish p90 ms | publish max ms | delivered p50 ms | delivered p90 ms | CPU µs/delivery | burst of 100: returned ms | burst: delivered ms | idle KiB/session |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let sizes: &[(usize, usize)] = if bench { &[(1_000, 200), (10_000, 40)] } else { &[(50, 5)] };
    for &(members, rounds) in sizes {
        runtime.block_on(measure(members, rounds));
    }
}
