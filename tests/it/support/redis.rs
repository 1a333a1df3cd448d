//! A `redis-server` of the test's own on a free port, started, restarted, put to sleep and
//! killed by the test.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own, persisting every write (so a restart keeps the streams), with
/// `DEBUG` allowed from this machine (to make it stop answering for a while).
pub struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { port, dir: tempfile::tempdir().unwrap(), child: None };
        redis.run();
        redis
    }

    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--enable-debug-command", "local", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts Redis without its data, as a Redis without persistence comes back: a fresh
    /// directory, so no append-only file to load. Every scope's epoch is gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().unwrap();
        self.run();
    }

    /// A connection of the test's own, to look at what the relay keeps in Redis.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Makes Redis stop doing anything for `seconds` (`DEBUG SLEEP`: it reads nothing, answers
    /// nothing, then runs what was sent meanwhile), and returns once it is asleep.
    pub fn sleep(&self, seconds: u64) -> std::net::TcpStream {
        let mut sleeper = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sleeper.write_all(format!("DEBUG SLEEP {seconds}\r\n").as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server never went to sleep");
        }
        sleeper
    }

    /// Whether a fresh connection's PING is answered within 300 ms.
    pub fn answers_ping(&self) -> bool {
        let mut probe = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        probe.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        probe.write_all(b"PING\r\n").unwrap();
        probe.read(&mut [0u8; 16]).is_ok_and(|n| n > 0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
