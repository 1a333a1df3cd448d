//! The HTTP server loop: which connections are accepted, how long each may take, and how they
//! end at shutdown.
//!
//! This module owns `serve` (in place of `axum::serve`, which has no timeouts and no caps) and
//! `ConnectionLimits`. A connection past the cap on connections in all, or on connections from
//! one address, is answered `503` or `429` and closed before any request is read. Request
//! headers must arrive within the header timeout, which also bounds how long an idle keep-alive
//! connection waits for its next request; a request body must arrive within the body timeout
//! (a layer in the router). A WebSocket keeps its connection's place under the caps until it
//! closes (`Admitted`, carried into the session). Accepted sockets get `TCP_NODELAY` and a
//! bounded kernel send buffer, so little can wait there unseen by the hub. It must not know
//! what the routes do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Bounds on connections and on how long their requests may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections in all (HTTP and WebSocket); more get 503 (`limits.max-connections`).
    pub max_connections: usize,
    /// Open connections from one address; more get 429 (`limits.max-connections-per-address`).
    pub max_per_address: usize,
    /// Time to send a request's headers, and longest wait for the next request on an idle
    /// keep-alive connection (`limits.http-header-timeout-secs`).
    pub header_timeout: Duration,
    /// Time to send a request's body (`limits.http-body-timeout-secs`).
    pub body_timeout: Duration,
    /// Kernel send buffer of each accepted socket, in bytes (`limits.socket-send-buffer-kib`).
    pub send_buffer: usize,
    /// Connections the kernel completes before busbar accepts them (`limits.listen-backlog`;
    /// the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 50_000,
            max_per_address: 1_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            send_buffer: 64 << 10,
            listen_backlog: 4096,
        }
    }
}

/// Connection counters, for `/metrics`.
#[derive(Debug, Default, Serialize)]
pub struct ConnectionMetrics {
    pub open: AtomicU64,
    pub accepted_total: AtomicU64,
    /// Refused because `max-connections` were open.
    pub refused_total: AtomicU64,
    /// Refused because `max-connections-per-address` were open from the same address.
    pub refused_per_address_total: AtomicU64,
}

/// Who holds the places under the caps.
struct Slots {
    limits: ConnectionLimits,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<ConnectionMetrics>,
}

/// One connection's place under the caps, given back when the last clone is dropped (the HTTP
/// connection, and its WebSocket session if it was upgraded).
#[derive(Clone)]
pub struct Admitted {
    _place: Arc<Place>,
}

struct Place {
    address: IpAddr,
    slots: Arc<Slots>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut per_address = self.slots.per_address.lock();
        if let Some(n) = per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&self.address);
            }
        }
        self.slots.metrics.open.fetch_sub(1, Relaxed);
    }
}

/// Why a connection was refused at accept.
enum Refusal {
    Full,
    Address,
}

impl Slots {
    fn admit(self: &Arc<Slots>, address: IpAddr) -> Result<Admitted, Refusal> {
        let mut per_address = self.per_address.lock();
        if self.metrics.open.load(Relaxed) as usize >= self.limits.max_connections {
            self.metrics.refused_total.fetch_add(1, Relaxed);
            return Err(Refusal::Full);
        }
        let from_here = per_address.entry(address).or_insert(0);
        if *from_here >= self.limits.max_per_address {
            self.metrics.refused_per_address_total.fetch_add(1, Relaxed);
            return Err(Refusal::Address);
        }
        *from_here += 1;
        self.metrics.open.fetch_add(1, Relaxed);
        self.metrics.accepted_total.fetch_add(1, Relaxed);
        Ok(Admitted { _place: Arc::new(Place { address, slots: self.clone() }) })
    }
}

/// The raw descriptor of a request's socket, for reading its kernel send queue (see
/// `hub::session`). Valid while the connection (or its WebSocket) lives.
#[derive(Debug, Clone, Copy)]
pub struct SocketFd(pub i32);

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled; then stops
/// accepting, lets every open HTTP connection finish its request, and returns.
/// Listens on `addr` with `backlog` (std's and tokio's default, 128, overflows when hundreds of
/// clients reconnect at once after a restart: the rest wait a second for their SYN to be sent
/// again).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<ConnectionMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Slots { limits, per_address: Mutex::default(), metrics });
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: not fatal.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match slots.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                connections.spawn(refuse(tcp, refusal));
                continue;
            }
        };
        prepare(&tcp, slots.limits.send_buffer);
        connections.spawn(connection(tcp, peer, admitted, router.clone(), slots.limits.header_timeout, shutdown.clone()));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// No Nagle delay (frames are small and latency matters); a bounded kernel send buffer.
fn prepare(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let size = send_buffer as libc::c_int;
    // SAFETY: setsockopt on a socket this function borrows, with a pointer to a local int.
    let set = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!("cannot set SO_SNDBUF: {}", std::io::Error::last_os_error());
    }
}

/// Answers a refused connection with a short response, then closes it.
async fn refuse(mut tcp: TcpStream, refusal: Refusal) {
    let (status, message) = match refusal {
        Refusal::Full => ("503 Service Unavailable", "too many connections to this server; retry later"),
        Refusal::Address => ("429 Too Many Requests", "too many connections from this address"),
    };
    let body = format!("{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"{message}\"}}}}");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
    let _ = tcp.shutdown().await;
}

/// One HTTP connection (HTTP/1.1 or HTTP/2, upgrades included) until it ends, or until
/// shutdown lets its requests in flight finish.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let fd = SocketFd(tcp.as_raw_fd());
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer));
        extensions.insert(fd);
        extensions.insert(admitted.clone());
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "connection ended at shutdown: {e}");
    }
}
