//! Compiling components where a hostile one cannot take the host down.
//!
//! A component of under a megabyte can make Cranelift use gigabytes and minutes (deeply nested
//! control flow, huge functions). This module owns `Compiler`, which compiles in a child
//! process (`busbar compile-worker`, the same executable) under an address-space-independent
//! memory limit (`RLIMIT_DATA`) and a wall-clock deadline, a bounded number at a time, and
//! turns each way the child can fail into a `CompileError` that names the limit. Without a
//! worker executable (a library embedder that did not set one) it compiles in this process, with
//! the same concurrency bound but no memory or time limit. The worker's side is
//! `worker_main`. It must not load or run what it compiles.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use wasmtime::Engine;

/// How much compiling may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLimits {
    /// Memory one compilation may use (`limits.compile-memory-mib`).
    pub memory_bytes: u64,
    /// Wall time one compilation may take (`limits.compile-timeout-secs`).
    pub timeout: Duration,
    /// Compilations at once; more wait their turn (`limits.compiles-at-once`).
    pub at_once: usize,
}

impl Default for CompileLimits {
    fn default() -> CompileLimits {
        CompileLimits { memory_bytes: 4 << 30, timeout: Duration::from_secs(120), at_once: 2 }
    }
}

/// Why a component did not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Invalid(String),
    #[error("compiling needed more than {limit_mib} MiB (`limits.compile-memory-mib`); the component is refused")]
    Memory { limit_mib: u64 },
    #[error("compiling took longer than {limit_secs} s (`limits.compile-timeout-secs`); the component is refused")]
    Timeout { limit_secs: u64 },
    #[error("the compile worker failed: {0}")]
    Worker(String),
}

/// Compiles components, in a child process when it has a worker executable.
pub(super) struct Compiler {
    worker: Option<PathBuf>,
    limits: CompileLimits,
    running: Mutex<usize>,
    turn: Condvar,
    memory_refusals: AtomicU64,
    timeouts: AtomicU64,
}

/// What the worker exits with when the component is not valid (its stderr says why).
const EXIT_INVALID: i32 = 3;

/// The argument that makes the busbar executable a compile worker.
pub const WORKER_COMMAND: &str = "compile-worker";

impl Compiler {
    pub(super) fn new(worker: Option<PathBuf>, limits: CompileLimits) -> Compiler {
        Compiler {
            worker,
            limits,
            running: Mutex::new(0),
            turn: Condvar::new(),
            memory_refusals: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Components refused for each compile limit: `memory`, `time`.
    pub(super) fn refusals(&self) -> [(&'static str, u64); 2] {
        [("memory", self.memory_refusals.load(Relaxed)), ("time", self.timeouts.load(Relaxed))]
    }

    /// The serialized, compiled form of the component in `bytes`, for `engine`.
    pub(super) fn compile(&self, engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
        let _turn = self.wait_turn();
        let compiled = match &self.worker {
            Some(program) => self.in_child(program, bytes),
            None => engine.precompile_component(bytes).map_err(|e| CompileError::Invalid(format!("{e:#}"))),
        };
        match &compiled {
            Err(CompileError::Memory { .. }) => self.memory_refusals.fetch_add(1, Relaxed),
            Err(CompileError::Timeout { .. }) => self.timeouts.fetch_add(1, Relaxed),
            _ => 0,
        };
        compiled
    }

    fn wait_turn(&self) -> Turn<'_> {
        let mut running = self.running.lock();
        while *running >= self.limits.at_once.max(1) {
            self.turn.wait(&mut running);
        }
        *running += 1;
        Turn { compiler: self }
    }

    fn in_child(&self, program: &PathBuf, bytes: &[u8]) -> Result<Vec<u8>, CompileError> {
        let worker_error = |e: std::io::Error| CompileError::Worker(format!("{}: {e}", program.display()));
        let memory = self.limits.memory_bytes;
        let mut command = Command::new(program);
        command.arg(WORKER_COMMAND).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Never above what this process may have itself (a lower hard limit wins).
                let mut data = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_DATA, &mut data) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let limit = memory.min(data.rlim_max);
                let data = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::setrlimit(libc::RLIMIT_DATA, &data) != 0 || libc::setrlimit(libc::RLIMIT_CORE, &core) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(worker_error)?;
        let pid = child.id() as libc::pid_t;
        let (done, watchdog) = mpsc::channel::<()>();
        let timeout = self.limits.timeout;
        let killer = std::thread::Builder::new()
            .name("busbar-compile-watchdog".into())
            .spawn(move || {
                if watchdog.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                    // SAFETY: kill on the pid of a child not yet waited for (so not reused).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            })
            .map_err(worker_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = (&mut stderr).take(64 << 10).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let written = stdin.write_all(bytes);
        drop(stdin);
        let mut compiled = Vec::new();
        let read = (&mut stdout).take(memory).read_to_end(&mut compiled);
        let status = child.wait().map_err(worker_error);
        let _ = done.send(());
        let _ = killer.join();
        let stderr = errors.join().unwrap_or_default();
        let status = status?;
        if status.signal() == Some(libc::SIGKILL) && started.elapsed() >= timeout {
            return Err(CompileError::Timeout { limit_secs: timeout.as_secs() });
        }
        if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
            return Err(CompileError::Memory { limit_mib: memory >> 20 });
        }
        if status.code() == Some(EXIT_INVALID) {
            return Err(CompileError::Invalid(stderr.trim().to_string()));
        }
        if !status.success() {
            return Err(CompileError::Worker(format!("{status}: {}", super::text::sanitize(stderr.trim(), 1024))));
        }
        written.map_err(worker_error)?;
        read.map_err(worker_error)?;
        Ok(compiled)
    }
}

/// A compilation's place among those running at once.
struct Turn<'a> {
    compiler: &'a Compiler,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.compiler.running.lock() -= 1;
        self.compiler.turn.notify_one();
    }
}

/// `busbar compile-worker`: reads a component on stdin, writes its compiled form on stdout.
/// Exits with `EXIT_INVALID` and the reason on stderr when the component is not valid.
pub fn worker_main() -> ExitCode {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return ExitCode::FAILURE;
    }
    let engine = match Engine::new(&super::engine::config(None, false)) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot create the engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(compiled) => match write_out(&compiled) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the compiled component: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(EXIT_INVALID as u8)
        }
    }
}

fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}
