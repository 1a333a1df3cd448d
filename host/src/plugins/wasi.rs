//! WASI p2 for plugins: what is granted, where the guest's output goes, and blocking calls
//! that end at the call's deadline.
//!
//! This module owns `WasiState`, the WASI half of a plugin's store: a context built with nothing
//! granted beyond the manifest's capabilities (no inherited environment, arguments, stdin,
//! network or directories), a resource table with a bounded number of entries, and the guest's
//! stdout/stderr turned into log lines under the plugin's name. Epoch deadlines interrupt guest
//! code, not a guest parked inside a host call, so WASI's blocking calls (`poll` and
//! `pollable.block`, which every sleep and clock wait goes through) are replaced by versions that
//! give up at the call's `Deadline` and record that they did. It must not decide a call's
//! outcome; `plugin` reads `Deadline::reached` for that.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::clock::{EPOCH_TICK, Ticks};
use super::text;
use super::trips::{Limit, LimitTrips};

/// The WASI `poll` interface, as `wasmtime-wasi` 48 defines it (and as it is shadowed here).
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// Longest line of guest stdout/stderr kept; longer lines are cut.
pub(super) const MAX_LINE: usize = 4096;

/// When the current call (or instantiation) must end, as a tick of the runtime's clock, and
/// whether a host call reached it.
#[derive(Debug)]
pub(crate) struct Deadline {
    at: u64,
    reached: bool,
}

impl Deadline {
    /// How long a host call may still wait.
    fn remaining(&self, ticks: &Ticks) -> Duration {
        EPOCH_TICK * self.at.saturating_sub(ticks.now()) as u32
    }

    /// A host call gave up at the deadline: the error that ends the call.
    fn reach(&mut self) -> wasmtime::Error {
        self.reached = true;
        wasmtime::format_err!("the call's deadline passed while the guest waited in a host call")
    }

    /// Whether a host call gave up at the deadline since the last `start`.
    pub(super) fn reached(&self) -> bool {
        self.reached
    }
}

/// What one plugin's WASI may reach and report to: its name (for log lines), the environment and
/// read-only directories its manifest grants, its resource cap, the runtime's clock and the
/// plugin's limit counters.
pub(crate) struct Grants<'a> {
    pub plugin: &'a Arc<str>,
    pub env: &'a [(String, String)],
    pub read_dirs: &'a [(String, std::path::PathBuf)],
    pub max_resources: usize,
    pub ticks: &'a Ticks,
    pub trips: &'a Arc<LimitTrips>,
}

/// The WASI context, resources and output pipes of one store.
pub(crate) struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
    ticks: Ticks,
    deadline: Deadline,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl WasiState {
    /// WASI with nothing granted beyond `plugin`'s capabilities; guest output draws on
    /// `log_budget`.
    pub(super) fn new(plugin: &Grants<'_>, log_budget: Arc<AtomicUsize>) -> Result<WasiState, String> {
        let stdout = GuestOutput::new(plugin, "stdout", log_budget.clone());
        let stderr = GuestOutput::new(plugin, "stderr", log_budget);
        let mut wasi = WasiCtxBuilder::new();
        // No inherited stdin, args, environment, network or directories: only what the
        // manifest grants. Clocks and random numbers are always available.
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (key, value) in plugin.env {
            wasi.env(key, value);
        }
        for (guest, host) in plugin.read_dirs {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| format!("cannot grant directory {}: {e}", host.display()))?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(plugin.max_resources);
        let deadline = Deadline { at: 0, reached: false };
        Ok(WasiState { ctx: wasi.build(), table, ticks: plugin.ticks.clone(), deadline, stdout, stderr })
    }

    /// Starts a call (or an instantiation) that must end at tick `at`.
    pub(super) fn start(&mut self, at: u64) {
        self.deadline = Deadline { at, reached: false };
    }

    /// Flushes any unterminated output line after a call.
    pub(super) fn finish(&mut self) {
        self.stdout.flush_partial();
        self.stderr.flush_partial();
    }

    pub(super) fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// How long a host call may still wait before the call's deadline.
    pub(super) fn remaining(&self) -> Duration {
        self.deadline.remaining(&self.ticks)
    }

    pub(super) fn view(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// Links WASI p2, with `poll` and `pollable.block` bounded by the call's deadline.
pub(crate) fn add_to_linker<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    wasi: fn(&mut T) -> &mut WasiState,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap("poll", move |mut store, (pollables,): (Vec<Resource<DynPollable>>,)| {
        let WasiState { table, deadline, ticks, .. } = wasi(store.data_mut());
        let remaining = deadline.remaining(ticks);
        match in_tokio(async { tokio::time::timeout(remaining, table.poll(pollables)).await }) {
            Ok(ready) => Ok((ready?,)),
            Err(_) => Err(deadline.reach()),
        }
    })?;
    poll.func_wrap("[method]pollable.block", move |mut store, (pollable,): (Resource<DynPollable>,)| {
        let WasiState { table, deadline, ticks, .. } = wasi(store.data_mut());
        let remaining = deadline.remaining(ticks);
        match in_tokio(async { tokio::time::timeout(remaining, table.block(pollable)).await }) {
            Ok(done) => done,
            Err(_) => Err(deadline.reach()),
        }
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A guest's stdout or stderr: complete lines become log lines under the plugin's name (escaped,
/// one record per line), within the per-call log budget; the rest is dropped.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    trips: Arc<LimitTrips>,
    stream: &'static str,
    budget: Arc<AtomicUsize>,
    partial: Arc<Mutex<Vec<u8>>>,
    /// Whether `partial` holds bytes: read after every call, so a call that wrote nothing
    /// (almost every call) flushes without taking the lock.
    pending: Arc<AtomicBool>,
}

impl GuestOutput {
    fn new(grants: &Grants<'_>, stream: &'static str, budget: Arc<AtomicUsize>) -> GuestOutput {
        GuestOutput { plugin: grants.plugin.clone(), trips: grants.trips.clone(), stream, budget, partial: Arc::default(), pending: Arc::default() }
    }

    fn accept(&self, mut bytes: &[u8]) {
        let mut partial = self.partial.lock();
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            let room = MAX_LINE.saturating_sub(partial.len());
            partial.extend_from_slice(&bytes[..newline.min(room)]);
            self.emit(&partial);
            partial.clear();
            bytes = &bytes[newline + 1..];
        }
        let room = MAX_LINE.saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.pending.store(!partial.is_empty(), Ordering::Relaxed);
    }

    fn flush_partial(&self) {
        // Writes and this flush happen on the thread running the call.
        if !self.pending.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut partial = self.partial.lock();
        if !partial.is_empty() {
            self.emit(&partial);
            partial.clear();
        }
    }

    fn emit(&self, line: &[u8]) {
        let granted = take_log_budget(&self.budget, line.len().min(MAX_LINE), &self.trips);
        if granted == 0 && !line.is_empty() {
            return;
        }
        let text = text::sanitize(&String::from_utf8_lossy(&line[..granted]), MAX_LINE);
        let plugin = &*self.plugin;
        if self.stream == "stderr" {
            tracing::warn!(plugin, stream = self.stream, "{text}");
        } else {
            tracing::info!(plugin, stream = self.stream, "{text}");
        }
    }
}

/// Takes up to `want` bytes from a per-call log budget; returns what was granted, and counts
/// the plugin's `log_bytes` trip when that is less.
pub(crate) fn take_log_budget(budget: &AtomicUsize, want: usize, trips: &LimitTrips) -> usize {
    let mut granted = 0;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        granted = want.min(left);
        Some(left - granted)
    });
    if granted < want {
        trips.count(Limit::LogBytes);
    }
    granted
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
