//! The L7 HTTP proxy of one `protocol = "http"` listener.
//!
//! Layout:
//! - this file: [`serve`] (the accept loop, graceful shutdown) and one task per client connection
//!   (HTTP/1.1 with keep-alive and HTTP/2 cleartext with prior knowledge on the same port, upgrades,
//!   idle timeout).
//! - [`proxy`]: one request: route, pick, connect, send, answer; retries; redirects; upgrades.
//! - [`headers`]: pure: hop-by-hop stripping, forwarding headers, cookies, the host.
//! - [`upstream`]: HTTP/1.1 connections to backends and their per-backend pool.
//! - [`guard`]: pure: the checks a request head passes first (the listener's `limits`, `Host`,
//!   framing), and what hyper refuses before them.
//! - [`body`]: the streaming request and response bodies (the body limit, client body faults).
//! - [`activity`]: the client idle timeout and the task count shutdown waits for.
//!
//! Data enters as client connections accepted on the listener socket and leaves as HTTP/1.1 requests to
//! the backends the routing snapshot (`ctx.routing`, read afresh for every connection and request)
//! picks; responses flow back the same way. Bodies are streamed, never collected.
//!
//! Timeouts come from the listener's `timeouts` as of the connection's accept (connect, idle,
//! request_header) or the request (connect, upstream_response):
//! - `request_header`: hyper's HTTP/1 header read timeout, per request head: hyper starts it when it
//!   begins waiting for a head and stops it once the head is parsed, so a client that trickles its head
//!   (slowloris) is cut at `request_header` however steadily it sends, on a new connection as on a
//!   keep-alive one; it also bounds the wait for the next request (Known limit: an idle HTTP/1
//!   connection is closed after min(idle, request_header)).
//! - `idle`: see [`activity`].
//! - `connect`: per backend connection attempt; `upstream_response`: from the request sent in full to
//!   the response head (504).
//!
//! Request limits come from the listener's `limits` as of the accept (hyper's read buffer and header
//! cap, the HTTP/2 header list size) and the request ([`guard`], the body limit). Defaults (bounds in
//! `lbfleet_api::config`): `max_request_head` 32 KiB (also the HTTP/2 `max_header_list_size`; hyper's
//! HTTP/1 read buffer is twice it), `max_headers` 100 (hyper's cap twice it), `max_request_line` 8 KiB,
//! `max_body` none. Every refusal closes an HTTP/1 connection and is counted in
//! `lbfleet_http_refused_total{listener,reason}`, hyper's own included (`malformed`, `head_too_large`,
//! `header_timeout`, counted when their connection ends).
//!
//! Connection caps (`admission.max_connections`, `admission.max_connections_per_source`, see
//! [`super::admission`]) are checked at accept: a connection over one is answered `503` with the
//! reason and `Connection: close` (HTTP/1.1 reads one request head first; over HTTP/2 each request of
//! it gets the 503) by a short task that lives at most [`REFUSAL_WAIT`]; at most [`MAX_REFUSING`] such
//! answers run at once per listener, beyond that an over-cap connection is closed without an answer.
//! Rate limits are per request, in [`proxy`].
//! A listener with `accept_proxy_protocol` reads the front's PROXY protocol header first
//! ([`super::proxy_protocol::accept`]); the client in it is the connection's peer for hash keys,
//! forwarding headers and logs, and a connection whose header is refused is closed before any HTTP.
//!
//! Known limits: WebSocket over HTTP/2 (RFC 8441 extended CONNECT) is not offered; upgrades work on
//! HTTP/1.1. Backends are spoken to in HTTP/1.1 only. Caps count connections of this node only. Not
//! refused, or not as the proxy would answer:
//! - a head cut by `request_header` gets no 408: hyper closes the connection without an answer, and
//!   has no hook to give one;
//! - what hyper refuses itself (see [`guard`]: heads that do not parse, bad `Content-Length`, heads
//!   beyond twice the limits) is answered with hyper's empty 400/414/431, without the proxy's text or
//!   `x-lbfleet-node`;
//! - `Content-Length` with `Transfer-Encoding: chunked` is forwarded as one chunked request and the
//!   connection closed after it (hyper's handling, RFC 9112 §6.3), not refused with 400;
//! - a client body that fails after the backend has begun to answer cannot be answered 400/413 (that
//!   response is under way): the backend request is aborted and the client's response ends early;
//! - after a refusal the connection is closed at once, without lingering to read what the client still
//!   sends: unread request bytes can make the kernel reset it right after the answer;
//! - chunk extensions are bounded by hyper (16 KiB per body), trailers by hyper (16 KiB), not by the
//!   listener's limits.

pub mod activity;
mod body;
pub mod guard;
pub mod headers;
mod proxy;
pub mod upstream;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use self::activity::{Activity, IdleIo, TaskGuard, Tasks};
use self::headers::Scheme;
use self::upstream::{PoolLimits, Upstreams};
use super::admission::Admission;
use super::counters::{AddrLabel, Name, OpenConnection, RequestLabels};
use super::proxy_protocol::accept::accept_counted;
use super::ProxyContext;
use crate::accept::{Acceptor, CapSlot, OverCap};
use crate::shutdown::Shutdown;
use prometheus_client::metrics::gauge::Gauge;

/// Longest wait for open connections to finish after `stop`, before they are closed: the whole
/// shutdown (grace, then [`FORCE_WAIT`]) fits in the listener manager's own wait.
pub const SHUTDOWN_GRACE: Duration = super::listeners::SHUTDOWN_GRACE.saturating_sub(FORCE_WAIT);
/// HTTP/2: most concurrent streams per client connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 rapid-reset guard (CVE-2023-44487): most streams a client may reset before the proxy has
/// accepted them; beyond it the connection is closed with GOAWAY (ENHANCE_YOUR_CALM).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2: most streams the proxy resets because of client errors before closing the connection.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Longest an over-cap connection is kept to answer it `503`.
pub const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// Most over-cap connections being answered `503` at once per listener; more are closed at once.
pub const MAX_REFUSING: usize = 64;
/// How often idle upstream connections are checked for expiry.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// After the grace, how long closing the remaining connections may take.
const FORCE_WAIT: Duration = Duration::from_secs(2);

/// Knobs of [`serve_with`]; [`serve`] uses [`Options::for_context`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub pool: PoolLimits,
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { pool: PoolLimits::default(), grace: SHUTDOWN_GRACE }
    }
}

impl Options {
    /// The defaults with this node's settings (`upstream_idle_per_backend`).
    pub fn for_context(ctx: &ProxyContext) -> Options {
        let pool =
            PoolLimits { max_idle_per_backend: ctx.upstream_idle_per_backend, ..PoolLimits::default() };
        Options { pool, ..Options::default() }
    }
}

/// What every connection and request of a listener shares.
pub(crate) struct Shared {
    name: String,
    /// `name`, shared: the `listener` label of the request counters.
    label: Arc<str>,
    /// `lbfleet_listener_connections` of this listener.
    connections: Gauge,
    ctx: Arc<ProxyContext>,
    /// The listener's address: the `Host` given to backends for an HTTP/1.0 request without one.
    local_host: Option<HeaderValue>,
    upstreams: Arc<Upstreams>,
    node_header: HeaderValue,
    tasks: Arc<Tasks>,
    /// Becomes true when the grace after `stop` is over: close everything.
    force: Shutdown,
    /// Connection caps and rate-limit buckets of this listener.
    pub(crate) admission: Admission,
    /// Places for over-cap connections being answered (see [`MAX_REFUSING`]).
    refusing: Arc<Semaphore>,
}

/// What the access log tells of a connection's TLS.
#[derive(Debug, Clone)]
pub(crate) struct TlsInfo {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
}

/// One client connection.
pub(crate) struct ConnInfo {
    peer: SocketAddr,
    /// `https` when the listener terminated TLS on it.
    scheme: Scheme,
    /// The TLS the listener terminated, for the access log.
    tls: Option<TlsInfo>,
    activity: Arc<Activity>,
    idle: Duration,
}

/// Serve the HTTP listener `name` on `listener` until `stop` becomes true (or its sender is dropped);
/// then stop accepting, shut open connections down gracefully and return once they are done, or after
/// [`SHUTDOWN_GRACE`].
pub async fn serve(name: String, listener: TcpListener, ctx: Arc<ProxyContext>, stop: Shutdown) {
    let opts = Options::for_context(&ctx);
    serve_with(name, listener, ctx, stop, opts).await
}

/// [`serve`] with explicit [`Options`].
pub async fn serve_with(
    name: String,
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    stop: Shutdown,
    opts: Options,
) {
    let (force_tx, force_rx) = crate::shutdown::channel();
    let tasks = Arc::new(Tasks::default());
    let upstreams = Arc::new(Upstreams::new(opts.pool, ctx.bind_ip));
    let node_header = HeaderValue::from(ctx.node_id);
    let shared = Arc::new(Shared {
        name: name.clone(),
        label: Arc::from(&*name),
        connections: ctx.metrics.listener_connections(&name),
        ctx,
        local_host: listener.local_addr().ok().and_then(|a| HeaderValue::from_str(&a.to_string()).ok()),
        upstreams: Arc::clone(&upstreams),
        node_header,
        tasks: Arc::clone(&tasks),
        force: force_rx,
        admission: Admission::default(),
        refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
    });
    let reaper = tokio::spawn(async move {
        let every = REAP_EVERY.min(opts.pool.idle_timeout).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            upstreams.reap();
        }
    });
    tracing::info!(listener = %name, addr = ?listener.local_addr().ok(), "http listener serving");
    // Backs off when out of descriptors (see `crate::accept`); the caps are the listener's own
    // (`shared.admission`), read from the snapshot at each accept.
    let mut acceptor = Acceptor::new(format!("http listener {name}"), listener);

    let mut stop_rx = stop.clone();
    loop {
        tokio::select! {
            _ = stop_rx.wait() => break,
            (conn, peer) = acceptor.accept() => {
                let (stream, _) = conn.into_parts();
                let limits = shared.ctx.routing.load().listener(&name).and_then(|l| l.admission);
                let (max, per_source) =
                    limits.map_or((None, None), |l| (l.max_connections, l.max_connections_per_source));
                match shared.admission.caps.admit(peer.ip(), max, per_source) {
                    Ok(slot) => {
                        let held = (tasks.enter(), slot, OpenConnection::new(&shared.connections));
                        tokio::spawn(serve_conn(stream, peer, Arc::clone(&shared), stop.clone(), held));
                    }
                    Err(over) => refuse_conn(stream, peer, over, &shared),
                }
            }
        }
    }
    drop(acceptor);
    tracing::info!(listener = %name, open = tasks.live(), "http listener stopping");
    if tokio::time::timeout(opts.grace, tasks.all_done()).await.is_err() {
        tracing::warn!(
            listener = %name,
            open = tasks.live(),
            "connections still open after {:?}; closing them",
            opts.grace
        );
        force_tx.trigger();
        let _ = tokio::time::timeout(FORCE_WAIT, tasks.all_done()).await;
    }
    reaper.abort();
    tracing::info!(listener = %name, "http listener stopped");
}

/// A connection over a cap: answer its requests `503` with the reason and close it, within
/// [`REFUSAL_WAIT`]; closed at once when [`MAX_REFUSING`] are being answered already.
fn refuse_conn(stream: TcpStream, peer: SocketAddr, over: OverCap, shared: &Arc<Shared>) {
    shared.ctx.metrics.connection_refused(&shared.name, over.reason());
    tracing::debug!(listener = %shared.name, %peer, "connection refused: {over}");
    let Ok(permit) = Arc::clone(&shared.refusing).try_acquire_owned() else { return };
    let guard = shared.tasks.enter();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _held = (permit, guard);
        let reason = format!("listener \"{}\": {over}; try again later", shared.name);
        let svc_shared = Arc::clone(&shared);
        let labels =
            RequestLabels { listener: Name(Arc::clone(&shared.label)), pool: None, backend: AddrLabel(None) };
        let service = service_fn(move |_req| {
            let started = std::time::Instant::now();
            let mut resp =
                proxy::text(hyper::StatusCode::SERVICE_UNAVAILABLE, reason.clone(), &svc_shared.node_header);
            resp.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            svc_shared.ctx.metrics.http_response(&labels, 503, started.elapsed());
            std::future::ready(Ok::<_, Infallible>(resp))
        });
        let _ = stream.set_nodelay(true);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(false).header_read_timeout(REFUSAL_WAIT);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        if tokio::time::timeout(REFUSAL_WAIT, conn).await.is_err() {
            tracing::debug!(%peer, "over-cap connection closed after {REFUSAL_WAIT:?}");
        }
    });
}

/// One client connection, until it closes, idles out, or shutdown ends it.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: Shutdown,
    _held: (TaskGuard, CapSlot, OpenConnection),
) {
    // Timeouts as of the accept; if the listener is gone, its requests get 503 "listener removed".
    // Clamped: hyper adds the header timeout to an `Instant`, which a huge one overflows.
    let (timeouts, limits, accept_proxy, tls) = match shared.ctx.routing.load().listener(&shared.name) {
        Some(l) => (
            l.timeouts.clamped(),
            l.limits.clamped(),
            l.accept_proxy_protocol.clone(),
            l.tls.as_ref().map(|t| t.handshake_timeout),
        ),
        None => Default::default(),
    };
    let mut stream = stream;
    let mut peer = peer;
    if let Some(trusted) = accept_proxy {
        // The PROXY protocol header comes before anything else; its client is this connection's peer.
        let local = stream.local_addr().unwrap_or_else(|_| SocketAddr::new(shared.ctx.bind_ip, 0));
        let metrics = &shared.ctx.metrics;
        match accept_counted(&mut stream, peer, local, &trusted, &shared.name, metrics).await {
            Ok(a) => peer = a.peer,
            Err(e) => {
                tracing::debug!(listener = %shared.name, %peer, "connection closed: {e}");
                return;
            }
        }
    }
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_io(stream, peer, (Scheme::Http, None), shared, stop, timeouts, limits).await,
        Some(handshake) => {
            let Some(stream) = super::tls::accept(stream, peer, &shared.name, handshake, &shared.ctx).await
            else {
                return;
            };
            let (_, tls) = stream.get_ref();
            let info = TlsInfo {
                version: tls.protocol_version().and_then(|v| v.as_str()),
                sni: tls.server_name().map(Arc::from),
            };
            serve_io(stream, peer, (Scheme::Https, Some(info)), shared, stop, timeouts, limits).await
        }
    }
}

/// HTTP/1.1 and HTTP/2 on one client connection (cleartext, or TLS the listener terminated; over TLS,
/// the protocol ALPN chose is the one the client speaks first).
async fn serve_io<S>(
    stream: S,
    peer: SocketAddr,
    (scheme, tls): (Scheme, Option<TlsInfo>),
    shared: Arc<Shared>,
    mut stop: Shutdown,
    timeouts: lbfleet_api::config::Timeouts,
    limits: lbfleet_api::config::HttpLimits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(IdleIo::new(stream, Arc::clone(&activity)));
    let info = Arc::new(ConnInfo { peer, scheme, tls, activity: Arc::clone(&activity), idle: timeouts.idle });
    let mut force = shared.force.clone();
    let svc_shared = Arc::clone(&shared);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&svc_shared);
        let info = Arc::clone(&info);
        async move { Ok::<_, Infallible>(proxy::handle(req, &info, &shared).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(timeouts.request_header)
        .max_buf_size(guard::hyper_buffer(&limits))
        .max_headers(guard::hyper_max_headers(&limits));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_request_head)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "client connection ended: {e}");
                    if let Some(reason) = hyper_refusal(&*e) {
                        shared.ctx.metrics.http_refused(&shared.name, reason);
                    }
                }
                break;
            }
            _ = stop.wait(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = activity.idle_for(timeouts.idle) => {
                tracing::debug!(%peer, "client connection idle for {:?}; closed", timeouts.idle);
                break;
            }
            _ = force.wait() => break,
        }
    }
}

/// The `reason` of what hyper refused on its own before a request reached the proxy (see [`guard`]):
/// its automatic 400/414/431 answers and the header read timeout (on which it closes the connection).
fn hyper_refusal(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_timeout() {
        Some("header_timeout")
    } else if e.is_parse_too_large() {
        Some("head_too_large")
    } else if e.is_parse() {
        Some("malformed")
    } else {
        None
    }
}
