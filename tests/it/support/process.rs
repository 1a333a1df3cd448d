//! Child processes: the `busbar` binary with a test cache, its output read line by line on a
//! thread, and waiting for (or killing) it within a limit.

use std::path::Path;
use std::process::Command;

pub fn busbar() -> Command {
    static COMMANDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut command = Command::new(env!("CARGO_BIN_EXE_busbar"));
    command.env("BUSBAR_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("busbar-cli-cache"));
    // Each command its own data directory (a test that restarts a server names one itself).
    let n = COMMANDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    command.env("BUSBAR_DATA_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("busbar-data/{}-{n}", std::process::id())));
    command
}

/// Reads a child's lines on a thread; `wait_for` blocks until a line matches.
pub struct Lines(std::sync::mpsc::Receiver<String>, Vec<String>);

impl Lines {
    pub fn of(stream: impl std::io::Read + Send + 'static) -> Lines {
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(receive, Vec::new())
    }

    /// Every line read so far by `wait_for`.
    pub fn seen(&self) -> &[String] {
        &self.1
    }

    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.0.recv_timeout(std::time::Duration::from_secs(30)).unwrap_or_else(|_| panic!("{what}: {:#?}", self.1));
            self.1.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }
}

/// The child's exit status, killing it (and failing) if it has not exited in time.
pub fn exit_within(child: &mut std::process::Child, limit: std::time::Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A server process that is killed if the test fails before stopping it.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl KillOnDrop {
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("still running")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
