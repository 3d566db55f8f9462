//! The TCP (L4) proxy of one listener.
//!
//! [`serve`] accepts connections on the listener's socket (`bind_ip:port`) and, for each one:
//! 0. on a listener with `accept_proxy_protocol`, reads the front's PROXY protocol header
//!    ([`super::proxy_protocol::accept`]); its client and destination replace the socket's peer and
//!    local address in every step below (a refused header closes the connection);
//! 1. looks the listener and its pool up in the routing snapshot current at that moment (a listener gone
//!    from the committed config refuses the connection by closing it);
//! 2. computes the request key from the pool's `hash_key` ([`l4_key`]): `source_ip` hashes the client's
//!    IP, `source_addr` its IP and port; pools whose policy does not hash ignore the key;
//! 3. connects to the first backend of the pool's fallback sequence within the listener's connect
//!    timeout, moving on to the next one on failure, at most [`CONNECT_ATTEMPTS`] backends (a connect
//!    failure never reached a backend, so it is always safe to try the next);
//! 4. sets TCP_NODELAY on both sockets, sends a PROXY protocol header first when the listener asks for one
//!    ([`super::proxy_protocol`]), then copies bytes both ways ([`splice`]) with one buffer of
//!    [`BUF_SIZE`] per direction: a half-close (FIN) on one side shuts down the write half of the other
//!    side while the other direction keeps flowing; a connection with no byte in either direction for the
//!    listener's idle timeout is closed on both sides;
//! 5. counts itself in flight on the chosen backend (`BackendHandle::try_track`) for its whole life; a
//!    backend with the pool's `max_connections_per_backend` connections from this node is skipped for
//!    the next candidate (counted in `lbfleet_backend_at_limit_total`), and a connection whose every
//!    candidate is at its limit is closed.
//!
//! Before all that, at accept ([`super::admission`]): a connection over the listener's
//! `admission.max_connections` or `admission.max_connections_per_source`, or without a token of its
//! `admission.rate_limit` (one per new connection), is closed at once and counted in
//! `lbfleet_connections_refused_total{reason}`.
//!
//! When `stop` becomes true the listener socket is closed (no new connections) and established
//! connections keep running until they end, for at most [`SHUTDOWN_GRACE`]; then they are dropped.
//!
//! Each connection costs one task, two sockets and 2 × [`BUF_SIZE`] of buffers; `admission.max_connections`
//! bounds them (unlimited by default, then only the process's descriptors do).

use crate::proxy::access_log::Entry;
use crate::proxy::counters::{AddrLabel, Name, OpenConnection, RequestLabels};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use lbfleet_api::config::{SniRoute, TlsMode};

use super::admission::Admission;
use super::proxy_protocol::{self, accept};
use super::tls::client_hello::{read_sni, HelloError};
use super::ProxyContext;
use crate::accept::{Acceptor, CapSlot};
use crate::balance::key::l4_key;
use crate::balance::{hash_ip, BackendHandle};
use crate::net::connect_tcp;
use crate::shutdown::Shutdown;

/// Backends tried per connection before giving up (the first pick and two fallbacks).
pub const CONNECT_ATTEMPTS: usize = 3;
/// Copy buffer per direction per connection.
pub const BUF_SIZE: usize = 64 * 1024;
/// How long established connections may keep running after `stop` before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// IP protocol number of TCP, for [`hash_flow`].
const PROTO_TCP: u8 = 6;

/// Serve the TCP listener `name` on `listener` until `stop` becomes true (or its sender goes away), then
/// let established connections finish within [`SHUTDOWN_GRACE`].
pub async fn serve(name: String, listener: TcpListener, ctx: Arc<ProxyContext>, stop: Shutdown) {
    serve_with(name, listener, ctx, stop, SHUTDOWN_GRACE).await
}

/// [`serve`] with an explicit shutdown grace.
pub(crate) async fn serve_with(
    name: String,
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    mut stop: Shutdown,
    grace: Duration,
) {
    let name: Arc<str> = Arc::from(name);
    let local = listener.local_addr().ok();
    info!(listener = %name, addr = ?local, "tcp listener serving");
    // Backs off when out of descriptors (see `crate::accept`); the caps and the rate limit are the
    // listener's own, read from the snapshot at each accept.
    let mut acceptor = Acceptor::new(format!("tcp listener {name}"), listener);
    let refusals = Arc::new(RefusalLog::new());
    let admission = Admission::default();
    let open = ctx.metrics.listener_connections(&name);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            (conn, peer) = acceptor.accept() => {
                let (stream, _) = conn.into_parts();
                match admit(&name, peer, &ctx, &admission) {
                    Ok(slot) => {
                        let (name, ctx, refusals) = (Arc::clone(&name), Arc::clone(&ctx), Arc::clone(&refusals));
                        let held = (slot, OpenConnection::new(&open));
                        conns.spawn(async move {
                            let _held = held;
                            handle(&name, stream, peer, &ctx, &refusals).await
                        });
                    }
                    Err((reason, why)) => {
                        ctx.metrics.connection_refused(&name, reason);
                        debug!(listener = %name, %peer, "tcp connection refused: {why}");
                        if let Some(suppressed) = refusals.should_log() {
                            warn!(listener = %name, %peer, suppressed, "tcp connection refused: {why}");
                        }
                        drop(stream);
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(acceptor);
    let open = conns.len();
    if open > 0 {
        info!(listener = %name, open, "tcp listener stopped accepting; waiting for open connections");
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(listener = %name, left = conns.len(), ?grace, "closing connections still open after the grace");
            conns.shutdown().await;
        }
    }
    info!(listener = %name, "tcp listener stopped");
}

/// Admit a new connection from `peer` under the listener's caps and rate limit, as the snapshot says
/// now; `Err((metric reason, why))` when it must be closed.
fn admit(
    name: &str,
    peer: SocketAddr,
    ctx: &ProxyContext,
    admission: &Admission,
) -> Result<Option<CapSlot>, (&'static str, String)> {
    let routing = ctx.routing.load();
    let limits = routing.listener(name).and_then(|l| l.admission);
    let Some(limits) = limits else {
        // Still counted, so that a cap set later sees the connections already open.
        return Ok(admission.caps.admit(peer.ip(), None, None).ok());
    };
    let slot = admission
        .caps
        .admit(peer.ip(), limits.max_connections, limits.max_connections_per_source)
        .map_err(|over| (over.reason(), over.to_string()))?;
    let now = std::time::Instant::now();
    admission
        .take_listener(limits.rate_limit.as_ref(), routing.live_nodes(), peer.ip(), now)
        .map_err(|l| ("rate_limit", l.reason(&format!("listener \"{name}\""))))?;
    Ok(Some(slot))
}

/// The backends of `pool` to try for `key`, in order: those usable on this node (its active check,
/// passive ejection; see `crate::health`) that have room under `max` (the pool's
/// `max_connections_per_backend`), or, when none is, those with room anywhere in the fleet-wide eligible
/// set, or the first of the eligible set (each will then be found at its limit).
pub(crate) fn candidates(
    ctx: &ProxyContext,
    pool_name: &str,
    pool: &crate::balance::PoolSelector,
    key: u64,
    max: Option<u32>,
) -> Vec<Arc<BackendHandle>> {
    let mut usable = ctx.outlier.usable_in(pool_name);
    let first: Vec<Arc<BackendHandle>> = pool
        .pick_usable(key, |b| {
            usable(b) && {
                let ok = b.has_room(max);
                if !ok {
                    ctx.metrics.backend_at_limit(pool_name, b.addr());
                }
                ok
            }
        })
        .take(CONNECT_ATTEMPTS)
        .cloned()
        .collect();
    if !first.is_empty() {
        return first;
    }
    let roomy: Vec<Arc<BackendHandle>> =
        pool.pick_usable(key, |b| b.has_room(max)).take(CONNECT_ATTEMPTS).cloned().collect();
    if !roomy.is_empty() {
        return roomy;
    }
    pool.pick(key).take(CONNECT_ATTEMPTS).cloned().collect()
}

/// Why a connection was closed without being proxied.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("listener removed from the config")]
    ListenerRemoved,
    #[error("pool \"{0}\" has no selector")]
    NoPool(String),
    #[error("pool \"{0}\" has no usable backend")]
    NoBackend(String),
    #[error("{tried} backend(s) failed, last: {last}")]
    AllFailed { tried: usize, last: String },
    #[error(transparent)]
    ProxyProtocol(#[from] accept::Refused),
    #[error("TLS handshake failed")]
    Handshake,
    #[error("passthrough: {0}")]
    ClientHello(#[from] HelloError),
}

/// The client side of a proxied connection: the socket, or the TLS the listener terminated on it.
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// How a proxied connection ended, with the bytes moved each way.
struct Outcome {
    /// The client: the socket's peer, or the one the front's PROXY protocol header named.
    client: SocketAddr,
    pool: Arc<str>,
    backend: SocketAddr,
    /// The listener logs its connections.
    log: bool,
    end: End,
    to_backend: u64,
    to_client: u64,
}

/// One accepted connection, from lookup to close.
async fn handle(
    name: &Arc<str>,
    client: TcpStream,
    peer: SocketAddr,
    ctx: &ProxyContext,
    refusals: &RefusalLog,
) {
    let (time, started) = (std::time::SystemTime::now(), Instant::now());
    match proxy(name, client, peer, ctx).await {
        Ok(o) => {
            if let (true, Some(sink)) = (o.log, &ctx.access_log) {
                sink.send(Entry {
                    time,
                    kind: "tcp",
                    client: o.client,
                    listener: Arc::clone(name),
                    pool: Some(Arc::clone(&o.pool)),
                    backend: Some(o.backend),
                    bytes_in: o.to_backend,
                    bytes_out: o.to_client,
                    duration: started.elapsed().as_secs_f64(),
                    http: None,
                });
            }
            debug!(
                listener = %name, %peer, client = %o.client, backend = %o.backend, end = ?o.end,
                to_backend = o.to_backend, to_client = o.to_client, "tcp connection closed"
            );
            let labels = RequestLabels {
                listener: Name(Arc::clone(name)),
                pool: Some(Name(Arc::clone(&o.pool))),
                backend: AddrLabel(Some(o.backend)),
            };
            ctx.metrics.traffic(&labels, o.to_backend, o.to_client);
        }
        Err(r) => {
            debug!(listener = %name, %peer, "tcp connection refused: {r}");
            if let Some(suppressed) = refusals.should_log() {
                warn!(listener = %name, %peer, suppressed, "tcp connection refused: {r}");
            }
        }
    }
}

/// At most one warning per [`REFUSAL_LOG_EVERY`] about refused connections (every one is logged at
/// debug level), so a pool with no backend cannot flood the log.
struct RefusalLog {
    start: Instant,
    /// Milliseconds since `start` of the last warning, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

/// See [`RefusalLog`].
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

impl RefusalLog {
    fn new() -> Self {
        RefusalLog { start: Instant::now(), last: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(refusals not logged since the last warning)` when this one should be logged.
    fn should_log(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = REFUSAL_LOG_EVERY.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < every
            || self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

async fn proxy(
    name: &Arc<str>,
    mut client: TcpStream,
    mut peer: SocketAddr,
    ctx: &ProxyContext,
) -> Result<Outcome, Refused> {
    let mut local = client.local_addr().unwrap_or_else(|_| SocketAddr::new(ctx.bind_ip, 0));
    let accept_proxy = ctx.routing.load().listener(name).and_then(|l| l.accept_proxy_protocol.clone());
    if let Some(trusted) = accept_proxy {
        // The front's header first: its client and destination stand for this connection's from here on.
        let a = accept::accept_counted(&mut client, peer, local, &trusted, name, &ctx.metrics).await?;
        (peer, local) = (a.peer, a.local);
    }
    // TLS first: a terminating listener completes the handshake before a backend is chosen; a
    // passthrough one reads the ClientHello (kept, to be sent on untouched) and routes by its SNI.
    let tls = ctx.routing.load().listener(name).and_then(|l| l.tls.clone());
    let mut prefix = Vec::new();
    let mut sni_pool = None;
    let mut client = match tls {
        Some(t) if t.mode == TlsMode::Terminate => {
            let s = super::tls::accept(client, peer, name, t.handshake_timeout, ctx).await;
            ClientIo::Tls(Box::new(s.ok_or(Refused::Handshake)?))
        }
        Some(t) => {
            let read = tokio::time::timeout(t.handshake_timeout, read_sni(&mut client)).await;
            let (sni, bytes) = match read {
                Ok(r) => r.inspect_err(|_| ctx.metrics.tls_handshake_failure(name))?,
                Err(_) => {
                    ctx.metrics.tls_handshake_failure(name);
                    return Err(Refused::ClientHello(HelloError::Timeout(t.handshake_timeout)));
                }
            };
            prefix = bytes;
            let routing = ctx.routing.load();
            if let (Some(sni), Some(l)) = (sni.as_deref(), routing.listener(name)) {
                sni_pool = SniRoute::pick(&l.sni_route, sni).map(str::to_string);
            }
            debug!(listener = %name, %peer, sni = ?sni, pool = ?sni_pool, "passthrough ClientHello read");
            ClientIo::Plain(client)
        }
        None => ClientIo::Plain(client),
    };
    // Everything read from the snapshot is copied out before the first await, so a config change during
    // this connection's life never holds an old snapshot alive.
    let (listener, pool_label, candidates, max_per_backend) = {
        let routing = ctx.routing.load();
        let listener = routing.listener(name).cloned().ok_or(Refused::ListenerRemoved)?;
        let pool_name = sni_pool.unwrap_or_else(|| listener.pool.clone());
        let pool = routing.pool(&pool_name).ok_or_else(|| Refused::NoPool(pool_name.clone()))?;
        let key = match (pool.uses_key(), routing.pool_config(&pool_name)) {
            (true, Some(cfg)) => l4_key(&cfg.hash_key, peer, local.port(), PROTO_TCP),
            (true, None) => hash_ip(peer.ip()),
            (false, _) => 0,
        };
        let max_per_backend = routing.pool_config(&pool_name).and_then(|p| p.max_connections_per_backend);
        let candidates = candidates(ctx, &pool_name, pool, key, max_per_backend);
        (listener, routing.pool_label(&pool_name), candidates, max_per_backend)
    };
    let pool_name = &*pool_label;
    let log = listener.access_log;
    if candidates.is_empty() {
        return Err(Refused::NoBackend(pool_name.to_string()));
    }

    let timeouts = listener.timeouts.clamped();
    let connect_timeout = timeouts.connect;
    let mut last = String::new();
    let mut connected = None;
    let mut failed_before = false;
    for backend in &candidates {
        let Some(inflight) = backend.try_track(max_per_backend) else {
            ctx.metrics.backend_at_limit(pool_name, backend.addr());
            last = format!(
                "backend {} at its connection limit {}",
                backend.addr(),
                max_per_backend.unwrap_or(0)
            );
            debug!(listener = %name, %peer, "{last}");
            continue;
        };
        if failed_before {
            ctx.metrics.retry(&Name(Arc::clone(name)), &Name(Arc::clone(&pool_label)), "connect_failure");
        }
        match tokio::time::timeout(connect_timeout, connect_tcp(ctx.bind_ip, backend.addr())).await {
            Ok(Ok(stream)) => {
                ctx.outlier.record_success(pool_name, backend.addr());
                ctx.metrics.tcp_connection(name, pool_name, backend.addr());
                connected = Some((stream, Arc::clone(backend), inflight));
                break;
            }
            Ok(Err(e)) => last = format!("connect to {}: {e}", backend.addr()),
            Err(_) => last = format!("connect to {}: timed out after {connect_timeout:?}", backend.addr()),
        }
        ctx.outlier.record_connect_failure(pool_name, backend.addr());
        ctx.metrics.connect_failure(pool_name, backend.addr());
        failed_before = true;
        debug!(listener = %name, %peer, backend = %backend.addr(), error = %last, "backend connect failed");
    }
    let Some((mut upstream, backend, _inflight)) = connected else {
        return Err(Refused::AllFailed { tried: candidates.len(), last });
    };
    drop(candidates);

    // Nagle would delay small writes that the peers already sized themselves.
    match &client {
        ClientIo::Plain(c) => c.set_nodelay(true),
        ClientIo::Tls(c) => c.get_ref().0.set_nodelay(true),
    }
    .ok();
    let _ = upstream.set_nodelay(true);

    if let Some(version) = proxy_protocol::Version::from_config(listener.proxy_protocol) {
        let header = proxy_protocol::encode(version, peer, local);
        if let Err(e) = upstream.write_all(&header).await {
            return Ok(Outcome {
                client: peer,
                pool: pool_label,
                log,
                backend: backend.addr(),
                end: End::Error(e.to_string()),
                to_backend: 0,
                to_client: 0,
            });
        }
    }

    if !prefix.is_empty() {
        // Passthrough: the ClientHello read to route, as the client sent it.
        if let Err(e) = upstream.write_all(&prefix).await {
            let end = End::Error(e.to_string());
            return Ok(Outcome {
                client: peer,
                pool: pool_label,
                log,
                backend: backend.addr(),
                end,
                to_backend: 0,
                to_client: 0,
            });
        }
    }
    let idle = timeouts.idle;
    drop(listener);
    let (end, to_backend, to_client) = match &mut client {
        ClientIo::Plain(c) => splice(c, &mut upstream, idle).await,
        ClientIo::Tls(c) => {
            let (mut cr, mut cw) = tokio::io::split(c.as_mut());
            let (mut ur, mut uw) = upstream.split();
            splice_halves((&mut cr, &mut cw), (&mut ur, &mut uw), idle).await
        }
    };
    let to_backend = to_backend + prefix.len() as u64;
    Ok(Outcome { client: peer, pool: pool_label, log, backend: backend.addr(), end, to_backend, to_client })
}

/// How [`splice`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed their write half; everything was delivered.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe); the other direction was dropped with it.
    Error(String),
}

/// Copy `a` → `b` and `b` → `a` until both directions have ended, one fails, or nothing moved for
/// `idle`. An end of stream read from one side shuts down the write half of the other and the opposite
/// direction goes on. Returns how it ended and the bytes copied a → b and b → a.
pub(crate) async fn splice(a: &mut TcpStream, b: &mut TcpStream, idle: Duration) -> (End, u64, u64) {
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    splice_halves((&mut ar, &mut aw), (&mut br, &mut bw), idle).await
}

/// [`splice`] over the read and write halves of any two streams.
async fn splice_halves<AR, AW, BR, BW>(
    (ar, aw): (&mut AR, &mut AW),
    (br, bw): (&mut BR, &mut BW),
    idle: Duration,
) -> (End, u64, u64)
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let (mut ar, mut aw, mut br, mut bw) = (ar, aw, br, bw);
    let activity = Activity::new();
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let copy = async {
        tokio::try_join!(
            pump(&mut ar, &mut bw, &activity, &a_to_b),
            pump(&mut br, &mut aw, &activity, &b_to_a)
        )
    };
    let end = tokio::select! {
        r = copy => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e.to_string()),
        },
        _ = activity.idle_for(idle) => End::Idle,
    };
    (end, a_to_b.load(Ordering::Relaxed), b_to_a.load(Ordering::Relaxed))
}

/// One direction: read into one bounded buffer, write it all, repeat; on end of stream shut down the
/// writer (a FIN to the peer) and finish.
async fn pump<R, W>(r: &mut R, w: &mut W, activity: &Activity, copied: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        w.write_all(&buf[..n]).await?;
        activity.touch();
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// When bytes last moved on a connection, in nanoseconds since the connection started.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_nanos(self.last.load(Ordering::Relaxed));
            // An end past what `Instant` holds is never: wait for shutdown instead of panicking.
            let Some(deadline) = self.start.checked_add(last).and_then(|t| t.checked_add(idle)) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
