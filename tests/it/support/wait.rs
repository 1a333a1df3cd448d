//! Waiting for a condition instead of sleeping: poll every 10 ms, fail after `PATIENCE` naming
//! what was awaited. A test that needs time to pass waits for the thing that time brings about.

use std::time::{Duration, Instant};

/// How long a test waits for anything before it fails (a loaded machine is slow, not stuck).
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `check` every 10 ms until it holds; how long that took.
pub fn eventually(what: &str, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Retries `attempt` every 10 ms until it succeeds; its value. For what the server must make
/// room for first (a connection's place comes back once the server has seen it close).
pub async fn until_ok<T, E: std::fmt::Debug>(what: &str, attempt: impl AsyncFn() -> Result<T, E>) -> T {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 10 ms until it holds.
pub async fn eventually_async(what: &str, check: impl AsyncFn() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
