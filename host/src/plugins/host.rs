//! The host side of the contract: the one `bindgen!`, the store context, and the imports.
//!
//! This module owns the bindings generated from `wit/`, `PluginState` (the data of every
//! `Store`: an empty WASI context, the memory limiter, the plugin's config and kv), the
//! implementations of the `log`, `config` and `kv` imports, and the pipe that turns a guest's
//! stdout/stderr into log lines. Imports never trap: a refusal (a kv limit) is the inner
//! `Result` the guest sees. It must not decide policy about calls; `plugin` does that.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Result as WasmResult};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::kv::{KvLimits, KvStore};
use super::manifest::Manifest;

/// The generated bindings. `Listener` here is the component's world, not `bus::Listener`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "listener",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::busbar::plugin::{config, kv, log, types};

/// The contract version this host speaks.
pub const CONTRACT: &str = "busbar:plugin@0.1.0";

/// Longest log line kept from a guest; longer lines are cut.
const MAX_LINE: usize = 4096;

/// What every instance of one plugin version shares.
pub(crate) struct PluginContext {
    pub name: Arc<str>,
    pub config: BTreeMap<String, String>,
    pub kv: Arc<KvStore>,
    pub kv_limits: KvLimits,
    pub env: Vec<(String, String)>,
    pub read_dirs: Vec<(String, std::path::PathBuf)>,
    pub log_bytes_per_call: usize,
}

impl PluginContext {
    pub fn new(manifest: &Manifest, kv: Arc<KvStore>) -> PluginContext {
        PluginContext {
            name: Arc::from(manifest.name.as_str()),
            config: manifest.config.clone(),
            kv,
            kv_limits: KvLimits {
                max_bytes: manifest.limits.kv_max_bytes,
                value_max_bytes: manifest.limits.kv_value_max_bytes,
            },
            env: manifest.capabilities.env.clone().into_iter().collect(),
            read_dirs: manifest.capabilities.read_dirs.clone().into_iter().collect(),
            log_bytes_per_call: manifest.limits.log_bytes_per_call,
        }
    }
}

/// The data inside each plugin `Store`.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    ctx: Arc<PluginContext>,
    /// Log bytes left in the current call, shared with the stdout/stderr pipes.
    log_budget: Arc<AtomicUsize>,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl PluginState {
    /// A fresh state: WASI with nothing granted beyond the manifest's capabilities.
    pub fn new(ctx: Arc<PluginContext>, memory_bytes: usize) -> Result<PluginState, String> {
        let log_budget = Arc::new(AtomicUsize::new(ctx.log_bytes_per_call));
        let stdout = GuestOutput::new(ctx.name.clone(), "stdout", log_budget.clone());
        let stderr = GuestOutput::new(ctx.name.clone(), "stderr", log_budget.clone());
        let mut wasi = WasiCtxBuilder::new();
        // No inherited stdin, args, environment, network or directories: only what the
        // manifest grants. Clocks and random numbers are always available.
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (key, value) in &ctx.env {
            wasi.env(key, value);
        }
        for (guest, host) in &ctx.read_dirs {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| format!("cannot grant directory {}: {e}", host.display()))?;
        }
        Ok(PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_bytes),
            ctx,
            log_budget,
            stdout,
            stderr,
        })
    }

    /// Resets per-call budgets before a call.
    pub fn begin_call(&mut self) {
        self.limiter.refused = None;
        self.log_budget.store(self.ctx.log_bytes_per_call, Ordering::Relaxed);
    }

    /// Flushes any unterminated output line after a call.
    pub fn end_call(&mut self) {
        self.stdout.flush_partial();
        self.stderr.flush_partial();
    }

    fn take_log_budget(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self.log_budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            granted = want.min(left);
            Some(left - granted)
        });
        granted
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Builds the linker every plugin is instantiated against: WASI p2 plus the busbar imports.
pub(crate) fn linker(engine: &wasmtime::Engine) -> WasmResult<Linker<PluginState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    bindings::Listener::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
    Ok(linker)
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    fn write(&mut self, level: types::Level, message: String) {
        let granted = self.take_log_budget(message.len().min(MAX_LINE));
        if granted == 0 {
            return;
        }
        let message = truncate(&message, granted);
        let plugin = &*self.ctx.name;
        match level {
            types::Level::Trace => tracing::trace!(plugin, "{message}"),
            types::Level::Debug => tracing::debug!(plugin, "{message}"),
            types::Level::Info => tracing::info!(plugin, "{message}"),
            types::Level::Warn => tracing::warn!(plugin, "{message}"),
            types::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config.get(&key).cloned()
    }

    fn keys(&mut self) -> Vec<String> {
        self.ctx.config.keys().cloned().collect()
    }
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.ctx.kv.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.ctx.kv.set(&key, value, self.ctx.kv_limits)
    }

    fn delete(&mut self, key: String) -> bool {
        self.ctx.kv.delete(&key)
    }
}

/// Caps linear memory and remembers a refusal, so that an out-of-memory trap can be told apart
/// from any other trap (a Rust guest aborts with `unreachable` when allocation fails).
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// The size a refused growth asked for, during the current call.
    pub refused: Option<usize>,
}

impl MemoryLimiter {
    fn new(max_bytes: usize) -> MemoryLimiter {
        MemoryLimiter { max_bytes, refused: None }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> WasmResult<bool> {
        if desired > self.max_bytes || maximum.is_some_and(|max| desired > max) {
            self.refused = Some(desired);
            return Err(wasmtime::format_err!(
                "memory cap of {} bytes refused growth to {desired} bytes",
                self.max_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> WasmResult<bool> {
        const MAX_TABLE_ELEMENTS: usize = 1 << 20;
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        // A wasip2 component instantiates several core instances (its own, WASI adapters).
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// A guest's stdout or stderr: complete lines become log lines under the plugin's name, within
/// the per-call log budget; the rest is dropped.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<AtomicUsize>,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str, budget: Arc<AtomicUsize>) -> GuestOutput {
        GuestOutput { plugin, stream, budget, partial: Arc::default() }
    }

    fn accept(&self, mut bytes: &[u8]) {
        let mut partial = self.partial.lock();
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            partial.extend_from_slice(&bytes[..newline]);
            self.emit(&partial);
            partial.clear();
            bytes = &bytes[newline + 1..];
        }
        let room = MAX_LINE.saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_partial(&self) {
        let mut partial = self.partial.lock();
        if !partial.is_empty() {
            self.emit(&partial);
            partial.clear();
        }
    }

    fn emit(&self, line: &[u8]) {
        let want = line.len().min(MAX_LINE);
        let mut granted = 0;
        let _ = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            granted = want.min(left);
            Some(left - granted)
        });
        if granted == 0 && want > 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line[..granted]);
        if self.stream == "stderr" {
            tracing::warn!(plugin = &*self.plugin, stream = self.stream, "{text}");
        } else {
            tracing::info!(plugin = &*self.plugin, stream = self.stream, "{text}");
        }
    }
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

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
