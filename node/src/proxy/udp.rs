//! The UDP (L4) proxy of one listener.
//!
//! A *flow* is everything one client address sends to this listener (the 5-tuple: client IP and port,
//! listener IP and port, UDP; the listener part is fixed per [`serve`], so the flow table is keyed by the
//! client's address). For each flow [`serve`] keeps:
//! - the backend chosen when the flow started, through the pool's policy with the key of the pool's
//!   `hash_key` ([`super::tcp::l4_key`]); for `hash_key = "flow"` that is
//!   `hash_flow(client, listener_port, 17)`, which leaves out this node's own IP on purpose: the listener
//!   port is the same on every node, so with a hash policy (Maglev) a flow that moves to another node
//!   (ECMP change, node failure) reaches the same backend there;
//! - its own connected upstream socket to that backend (so replies are told apart by socket, and the
//!   backend sees one stable source port per flow), read by one task that sends every reply back to the
//!   client from the listener's socket, i.e. from the address the client sent to;
//! - the time a byte last moved either way.
//!
//! Life of a flow:
//! - it ends after [`effective_idle`] without a datagram in either direction (the listener's idle
//!   timeout, capped at [`UDP_IDLE_CAP`] = 120 s, the stream timeout of Linux conntrack: a UDP flow
//!   has no end the proxy could see, and each flow holds a socket);
//! - when a committed change makes its backend ineligible (removed, down fleet-wide, drained) or points
//!   the listener at another pool, the flow is re-picked on its next datagram. A backend still eligible
//!   keeps its flows even if the table now maps their key elsewhere (connection affinity, as in the
//!   Maglev paper); a drained backend's flows move at once, since a UDP flow never finishes by itself;
//! - the table holds at most [`MAX_FLOWS`] flows; when it is full, datagrams that would start a new flow
//!   are dropped (counted, logged at most once per [`LOG_EVERY`]) until idle flows expire;
//! - all UDP listeners of the node together hold at most [`flow_file_budget`] flows (half the
//!   node's open-file limit, [`FlowBudget`]): each flow holds a socket for up to its idle timeout,
//!   and one datagram from each of as many sources (spoofable) must not take every descriptor the
//!   node's client connections, backend connections, Raft network and admin servers need; a new flow
//!   over it is dropped as `file_limit`;
//! - each flow's socket takes an ephemeral port of the node's IP (UDP has no port sharing per
//!   4-tuple), so on Linux's default `ip_local_port_range` (32768–60999) one node IP holds at most
//!   28,232 flows over all its UDP listeners; a socket the kernel refuses (no free port, no
//!   descriptor, no memory) drops the datagram as `no_socket`, without counting a connect failure
//!   against the backend or trying the next one;
//! - the listener's `admission.max_connections` and `admission.max_connections_per_source` cap its flows in
//!   all and per client IP ([`crate::accept::ConnCaps`]): a datagram that would start a flow over a cap
//!   is dropped and counted in `lbfleet_connections_refused_total{reason}`; a pool's
//!   `max_connections_per_backend` caps the flows of each backend like TCP connections (a backend at
//!   it is skipped for the next candidate). UDP listeners have no rate limit.
//!
//! Datagrams of up to 64 KiB pass either way. Memory is bounded: one 64 KiB receive buffer for the
//! listener, one per worker thread for replies (a reply is copied only when the listener socket's send
//! buffer is full), and a few hundred bytes per flow. A datagram the kernel will not take right away
//! (send buffer full) is dropped, as UDP allows, rather than stalling every other flow.
//!
//! When `stop` becomes true no new flow starts; existing flows keep forwarding until they expire, for
//! at most [`SHUTDOWN_GRACE`]. A listener removed from the config drops all its flows at the next sweep.
//!
//! Known limit: an ICMP "port unreachable" from a backend (the backend process is gone but still in
//! the committed set) does not move the flow locally; the health checks take the backend out, and the
//! flow is then re-picked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::access_log::{AccessLog, Entry};
use super::counters::{AddrLabel, DataplaneMetrics, Name, OpenConnection, RequestLabels};
use super::tcp::candidates;
use super::ProxyContext;
use crate::accept::{CapSlot, ConnCaps};
use crate::balance::key::l4_key;
use crate::balance::{hash_ip, BackendHandle, InFlight, Routing};
use crate::shutdown::Shutdown;
use lbfleet_api::config::Listener;

/// Most flows one listener tracks at once (all UDP listeners together: also [`flow_file_budget`]).
pub const MAX_FLOWS: usize = 65_536;
/// Largest datagram relayed (the UDP length field's limit).
pub const MAX_DATAGRAM: usize = 64 * 1024;
/// Upper bound of a flow's idle timeout, whatever the listener's `timeouts.idle` says.
pub const UDP_IDLE_CAP: Duration = Duration::from_secs(120);
/// How long existing flows keep forwarding after `stop`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// At most one warning per this interval for dropped datagrams (the counts are in the message).
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// IP protocol number of UDP, for the flow hash.
const PROTO_UDP: u8 = 17;
/// Bounds of the interval between two expiry sweeps (a quarter of the idle timeout, within these).
const SWEEP_MIN: Duration = Duration::from_millis(50);
const SWEEP_MAX: Duration = Duration::from_secs(1);
/// Pause after a failed receive on the listener socket so the loop does not spin.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The idle timeout of a UDP flow on a listener configured with `configured`.
pub fn effective_idle(configured: Duration) -> Duration {
    configured.min(UDP_IDLE_CAP)
}

/// Flows (each one socket) all UDP listeners of a node with this open-file limit may hold at once:
/// half of it, so that flows alone never take the descriptors everything else needs.
pub fn flow_file_budget(open_file_limit: u64) -> usize {
    usize::try_from(open_file_limit / 2).unwrap_or(usize::MAX)
}

/// Whether opening a flow's socket failed for want of something on this node (a free local port, a
/// file descriptor, memory) rather than because of the backend: the next backend would fail alike.
pub fn refused_locally(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EADDRINUSE
                | libc::EADDRNOTAVAIL
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
        )
    )
}

/// The node-wide count of flow sockets against [`flow_file_budget`], shared by every UDP listener of
/// the node ([`ProxyContext::udp_flows`]).
#[derive(Debug)]
pub struct FlowBudget {
    max: usize,
    used: AtomicUsize,
}

impl FlowBudget {
    pub fn new(max: usize) -> FlowBudget {
        FlowBudget { max, used: AtomicUsize::new(0) }
    }

    /// The budget of this process's open-file limit as it is now (1,024 when it cannot be read).
    pub fn for_this_process() -> FlowBudget {
        let limit = crate::accept::open_file_limit().unwrap_or(1024);
        FlowBudget::new(flow_file_budget(limit))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Flows holding a slot now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A slot for one more flow, or `None` when the budget is used up.
    fn take(self: &Arc<Self>) -> Option<BudgetSlot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| BudgetSlot(Arc::clone(self)))
    }
}

impl Default for FlowBudget {
    fn default() -> Self {
        FlowBudget::for_this_process()
    }
}

/// One flow's share of the [`FlowBudget`], given back on drop.
struct BudgetSlot(Arc<FlowBudget>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bounds of one UDP listener (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_flows: usize,
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_flows: MAX_FLOWS, grace: SHUTDOWN_GRACE }
    }
}

/// Serve the UDP listener `name` on `socket` until `stop` becomes true (or its sender goes away), then
/// let existing flows run out within [`SHUTDOWN_GRACE`].
pub async fn serve(name: String, socket: UdpSocket, ctx: Arc<ProxyContext>, stop: Shutdown) {
    serve_with(name, socket, ctx, stop, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub(crate) async fn serve_with(
    name: String,
    socket: UdpSocket,
    ctx: Arc<ProxyContext>,
    mut stop: Shutdown,
    limits: Limits,
) {
    let socket = Arc::new(socket);
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(listener = %name, error = %e, "udp listener has no local address; not serving");
            return;
        }
    };
    info!(listener = %name, addr = %local, "udp listener serving");
    let dropped = DropCounters::new(&ctx.metrics, &name);
    let open = ctx.metrics.listener_connections(&name);
    let mut proxy = UdpProxy {
        open,
        dropped,
        name,
        local,
        socket: Arc::clone(&socket),
        ctx,
        limits,
        flows: HashMap::new(),
        caps: Arc::default(),
        epoch: Instant::now(),
        seen: Arc::new(Routing::empty()),
        generation: 0,
        drops: Drops::default(),
        stopping: false,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut next_sweep = Instant::now() + SWEEP_MIN;
    let mut deadline = None;
    loop {
        tokio::select! {
            _ = stop.wait(), if !proxy.stopping => {
                proxy.stopping = true;
                deadline = Some(Instant::now() + limits.grace);
                info!(listener = %proxy.name, flows = proxy.flows.len(), "udp listener stopping: no new flows");
                if proxy.flows.is_empty() {
                    break;
                }
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, client)) => proxy.on_datagram(&buf[..n], client),
                Err(e) => {
                    warn!(listener = %proxy.name, error = %e, "udp receive failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            },
            _ = tokio::time::sleep_until(next_sweep) => {
                let every = proxy.sweep();
                next_sweep = Instant::now() + every;
                proxy.drops.log(&proxy.name);
                if proxy.stopping && proxy.flows.is_empty() {
                    break;
                }
            }
            _ = sleep_until_opt(deadline) => {
                info!(listener = %proxy.name, flows = proxy.flows.len(), "udp listener grace over; dropping flows");
                break;
            }
        }
    }
    proxy.drops.log(&proxy.name);
    info!(listener = %proxy.name, "udp listener stopped");
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// State of one UDP listener, owned by its receive loop.
struct UdpProxy {
    name: String,
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    ctx: Arc<ProxyContext>,
    limits: Limits,
    flows: HashMap<SocketAddr, Flow>,
    /// Flows per listener and per client IP, for the listener's caps.
    caps: Arc<ConnCaps>,
    /// `lbfleet_listener_connections` of this listener (its flows).
    open: Gauge,
    /// Origin of the flows' activity clocks.
    epoch: Instant,
    /// The routing snapshot seen last and a counter bumped whenever it changes, so flows are re-checked
    /// once per change rather than per datagram. (Held, not just its address, so a new snapshot can
    /// never reuse the address of the one compared against.)
    seen: Arc<Routing>,
    generation: u64,
    drops: Drops,
    /// The same drops, never reset, as shown on `/metrics`.
    dropped: DropCounters,
    stopping: bool,
}

/// One client flow.
struct Flow {
    pool: String,
    backend: SocketAddr,
    upstream: Arc<UdpSocket>,
    /// Nanoseconds since the listener's epoch when a datagram last moved either way.
    last: Arc<AtomicU64>,
    /// Set by the reply task when the upstream socket failed for good.
    dead: Arc<AtomicBool>,
    /// Routing generation at which the flow was last found valid.
    generation: u64,
    replies: AbortHandle,
    /// `lbfleet_received_bytes_total` of the flow's listener, pool and backend.
    received: Counter,
    /// The access log entry of the flow, sent when it ends (listeners with `access_log`).
    log: Option<FlowLog>,
    _inflight: InFlight,
    _slot: CapSlot,
    _budget: BudgetSlot,
    _open: OpenConnection,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
        if let Some(l) = self.log.take() {
            l.sink.send(Entry {
                time: l.time,
                kind: "udp",
                client: l.client,
                listener: l.listener,
                pool: Some(l.pool),
                backend: Some(self.backend),
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out.load(Ordering::Relaxed),
                duration: l.started.elapsed().as_secs_f64(),
                http: None,
            });
        }
    }
}

/// What the access log line of a flow needs.
struct FlowLog {
    sink: Arc<AccessLog>,
    time: std::time::SystemTime,
    started: Instant,
    client: SocketAddr,
    listener: Arc<str>,
    pool: Arc<str>,
    /// Payload bytes from the client and (counted by the reply task) to it.
    bytes_in: u64,
    bytes_out: Arc<AtomicU64>,
}

/// Datagrams dropped since the last warning.
#[derive(Default)]
struct Drops {
    table_full: u64,
    file_limit: u64,
    no_socket: u64,
    no_backend: u64,
    listener_removed: u64,
    stopping: u64,
    send_failed: u64,
    logged_at: Option<Instant>,
}

/// The `lbfleet_udp_dropped_total` series of one listener, one per reason.
struct DropCounters {
    table_full: Counter,
    file_limit: Counter,
    no_socket: Counter,
    no_backend: Counter,
    listener_removed: Counter,
    stopping: Counter,
    send_failed: Counter,
}

impl DropCounters {
    fn new(metrics: &DataplaneMetrics, listener: &str) -> Self {
        DropCounters {
            table_full: metrics.udp_drop_counter(listener, "table_full"),
            file_limit: metrics.udp_drop_counter(listener, "file_limit"),
            no_socket: metrics.udp_drop_counter(listener, "no_socket"),
            no_backend: metrics.udp_drop_counter(listener, "no_backend"),
            listener_removed: metrics.udp_drop_counter(listener, "listener_removed"),
            stopping: metrics.udp_drop_counter(listener, "stopping"),
            send_failed: metrics.udp_drop_counter(listener, "send_failed"),
        }
    }
}

impl Drops {
    fn any(&self) -> bool {
        self.table_full
            + self.file_limit
            + self.no_socket
            + self.no_backend
            + self.listener_removed
            + self.stopping
            + self.send_failed
            > 0
    }

    /// Warn with the counts, at most once per [`LOG_EVERY`], and reset them.
    fn log(&mut self, listener: &str) {
        if !self.any() || self.logged_at.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        warn!(
            listener,
            table_full = self.table_full,
            file_limit = self.file_limit,
            no_socket = self.no_socket,
            no_backend = self.no_backend,
            listener_removed = self.listener_removed,
            stopping = self.stopping,
            send_failed = self.send_failed,
            "udp datagrams dropped"
        );
        *self = Drops { logged_at: Some(Instant::now()), ..Drops::default() };
    }
}

impl UdpProxy {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One datagram from `client`: forward it on the client's flow, starting or re-picking the flow as
    /// needed.
    fn on_datagram(&mut self, data: &[u8], client: SocketAddr) {
        let routing = self.ctx.routing.load_full();
        if !Arc::ptr_eq(&routing, &self.seen) {
            self.seen = Arc::clone(&routing);
            self.generation += 1;
        }
        let now = self.now_nanos();
        let keep = match self.flows.get_mut(&client) {
            None => false,
            Some(f) if f.dead.load(Ordering::Relaxed) => false,
            Some(f) if f.generation == self.generation => true,
            Some(f) => {
                let ok = still_valid(&routing, &self.name, f);
                if ok {
                    f.generation = self.generation;
                }
                ok
            }
        };
        if !keep {
            if let Some(old) = self.flows.remove(&client) {
                debug!(listener = %self.name, %client, backend = %old.backend, "udp flow re-picked");
            }
            match self.start_flow(&routing, client) {
                Some(f) => {
                    self.flows.insert(client, f);
                }
                None => return,
            }
        }
        let Some(flow) = self.flows.get_mut(&client) else { return };
        flow.last.store(now, Ordering::Relaxed);
        flow.received.inc_by(data.len() as u64);
        if let Some(l) = &mut flow.log {
            l.bytes_in += data.len() as u64;
        }
        match send_now(&flow.upstream, data) {
            Ok(_) => {}
            // A refusal reported by an earlier datagram's ICMP error; this one may still go through.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if send_now(&flow.upstream, data).is_err() {
                    self.drops.send_failed += 1;
                    self.dropped.send_failed.inc();
                }
            }
            Err(e) => {
                self.drops.send_failed += 1;
                self.dropped.send_failed.inc();
                debug!(listener = %self.name, %client, backend = %flow.backend, error = %e, "udp send to backend failed");
            }
        }
    }

    /// A new flow for `client`, or `None` (the datagram is dropped and counted).
    fn start_flow(&mut self, routing: &Routing, client: SocketAddr) -> Option<Flow> {
        if self.stopping {
            self.drops.stopping += 1;
            self.dropped.stopping.inc();
            return None;
        }
        let Some(listener) = routing.listener(&self.name) else {
            self.drops.listener_removed += 1;
            self.dropped.listener_removed.inc();
            return None;
        };
        if self.flows.len() >= self.limits.max_flows {
            self.drops.table_full += 1;
            self.dropped.table_full.inc();
            self.drops.log(&self.name);
            return None;
        }
        let Some(budget) = self.ctx.udp_flows.take() else {
            self.drops.file_limit += 1;
            self.dropped.file_limit.inc();
            self.drops.log(&self.name);
            return None;
        };
        let Some(pool) = routing.pool(&listener.pool) else {
            self.drops.no_backend += 1;
            self.dropped.no_backend.inc();
            return None;
        };
        let (max, per_source) =
            listener.admission.map_or((None, None), |l| (l.max_connections, l.max_connections_per_source));
        let slot = match self.caps.admit(client.ip(), max, per_source) {
            Ok(slot) => slot,
            Err(over) => {
                self.ctx.metrics.connection_refused(&self.name, over.reason());
                debug!(listener = %self.name, %client, "udp flow refused: {over}");
                return None;
            }
        };
        let key = match (pool.uses_key(), routing.pool_config(&listener.pool)) {
            (true, Some(cfg)) => l4_key(&cfg.hash_key, client, self.local.port(), PROTO_UDP),
            (true, None) => hash_ip(client.ip()),
            (false, _) => 0,
        };
        let max_per_backend = routing.pool_config(&listener.pool).and_then(|p| p.max_connections_per_backend);
        let mut last_error = None;
        for backend in &candidates(&self.ctx, &listener.pool, pool, key, max_per_backend) {
            let Some(inflight) = backend.try_track(max_per_backend) else {
                self.ctx.metrics.backend_at_limit(&listener.pool, backend.addr());
                last_error = Some(format!("backend {} at its connection limit", backend.addr()));
                continue;
            };
            match connect_upstream(self.ctx.bind_ip, backend.addr()) {
                Ok(upstream) => {
                    let held = (inflight, slot, budget);
                    return Some(self.spawn_flow(listener, backend, upstream, client, held));
                }
                Err(e) if refused_locally(&e) => {
                    self.drops.no_socket += 1;
                    self.dropped.no_socket.inc();
                    self.drops.log(&self.name);
                    debug!(listener = %self.name, %client, error = %e, "udp flow: no socket for it on this node");
                    return None;
                }
                Err(e) => {
                    self.ctx.metrics.connect_failure(&listener.pool, backend.addr());
                    last_error = Some(format!("{}: {e}", backend.addr()));
                }
            }
        }
        self.drops.no_backend += 1;
        self.dropped.no_backend.inc();
        if let Some(e) = last_error {
            debug!(listener = %self.name, %client, error = %e, "udp flow could not open an upstream socket");
        }
        None
    }

    fn spawn_flow(
        &self,
        listener: &Listener,
        backend: &Arc<BackendHandle>,
        upstream: UdpSocket,
        client: SocketAddr,
        (inflight, slot, budget): (InFlight, CapSlot, BudgetSlot),
    ) -> Flow {
        let upstream = Arc::new(upstream);
        let last = Arc::new(AtomicU64::new(self.now_nanos()));
        let dead = Arc::new(AtomicBool::new(false));
        let pool = listener.pool.as_str();
        let log = match &self.ctx.access_log {
            Some(sink) if listener.access_log => Some(FlowLog {
                sink: Arc::clone(sink),
                time: std::time::SystemTime::now(),
                started: Instant::now(),
                client,
                listener: Arc::from(self.name.as_str()),
                pool: Arc::from(pool),
                bytes_in: 0,
                bytes_out: Arc::default(),
            }),
            _ => None,
        };
        let labels = RequestLabels {
            listener: Name(Arc::from(self.name.as_str())),
            pool: Some(Name(Arc::from(pool))),
            backend: AddrLabel(Some(backend.addr())),
        };
        let (received, sent) = self.ctx.metrics.traffic_counters(&labels);
        let task = tokio::spawn(relay_replies(
            Arc::clone(&upstream),
            Arc::clone(&self.socket),
            client,
            (Arc::clone(&last), Arc::clone(&dead), sent, log.as_ref().map(|l| Arc::clone(&l.bytes_out))),
            self.epoch,
        ));
        debug!(listener = %self.name, %client, backend = %backend.addr(), "udp flow started");
        self.ctx.metrics.udp_flow(&self.name, pool, backend.addr());
        Flow {
            pool: pool.to_string(),
            backend: backend.addr(),
            upstream,
            last,
            dead,
            generation: self.generation,
            replies: task.abort_handle(),
            received,
            log,
            _inflight: inflight,
            _slot: slot,
            _budget: budget,
            _open: OpenConnection::new(&self.open),
        }
    }

    /// Drop the flows idle for longer than the listener's (capped) idle timeout, or all of them when the
    /// listener is gone. Returns the time until the next sweep.
    fn sweep(&mut self) -> Duration {
        let idle = self.ctx.routing.load().listener(&self.name).map(|l| effective_idle(l.timeouts.idle));
        let Some(idle) = idle else {
            if !self.flows.is_empty() {
                info!(listener = %self.name, flows = self.flows.len(), "udp listener removed; dropping its flows");
                self.flows.clear();
            }
            return SWEEP_MAX;
        };
        let now = self.now_nanos();
        let idle_nanos = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let before = self.flows.len();
        self.flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle_nanos);
        let expired = before - self.flows.len();
        if expired > 0 {
            debug!(listener = %self.name, expired, left = self.flows.len(), "udp flows expired");
        }
        (idle / 4).clamp(SWEEP_MIN, SWEEP_MAX)
    }
}

/// Whether `flow` may stay on its backend under `routing`: the listener still exists and uses the same
/// pool, and the backend is still eligible in it.
fn still_valid(routing: &Routing, listener: &str, flow: &Flow) -> bool {
    let Some(l) = routing.listener(listener) else { return false };
    if l.pool != flow.pool {
        return false;
    }
    routing.pool(&l.pool).is_some_and(|p| p.position(flow.backend).is_some())
}

/// A non-blocking UDP socket on an ephemeral port of this node's IP, connected to `backend`.
fn connect_upstream(bind_ip: IpAddr, backend: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(crate::net::udp_socket(bind_ip, backend)?)
}

/// Send on a connected socket without waiting: one `send` system call. (Tokio's `try_send` answers
/// `WouldBlock` until its reactor has seen the socket writable once, which drops the first datagram of
/// every new flow.)
fn send_now(sock: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(sock).send(data)
}

/// [`send_now`] to an address, for the listener's unconnected socket.
fn send_to_now(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_to(data, &to.into())
}

thread_local! {
    /// Receive buffer for replies, one per worker thread (held only between a readiness event and the
    /// non-blocking receive and send that follow it, never across an await).
    static REPLY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_DATAGRAM].into_boxed_slice());
}

/// What one readiness event of an upstream socket led to.
enum Step {
    Sent,
    Nothing,
    /// The listener socket's send buffer was full: the reply, copied, to send with waiting.
    Blocked(Vec<u8>),
    Failed(io::Error),
}

/// Relay every datagram the backend sends on `upstream` to `client` from the listener's socket.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    (last, dead, sent, logged): (Arc<AtomicU64>, Arc<AtomicBool>, Counter, Option<Arc<AtomicU64>>),
    epoch: Instant,
) {
    loop {
        if let Err(e) = upstream.readable().await {
            debug!(%client, error = %e, "udp upstream socket failed");
            dead.store(true, Ordering::Relaxed);
            return;
        }
        let step = REPLY_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            match upstream.try_recv(&mut buf[..]) {
                Ok(n) => match send_to_now(&listener, &buf[..n], client) {
                    Ok(_) => {
                        sent.inc_by(n as u64);
                        if let Some(l) = &logged {
                            l.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Step::Sent
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Blocked(buf[..n].to_vec()),
                    // The client is unreachable for now (e.g. an ICMP error); drop this reply.
                    Err(_) => Step::Nothing,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Nothing,
                // ICMP port unreachable from the backend for an earlier datagram: keep the flow.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Step::Nothing,
                Err(e) => Step::Failed(e),
            }
        });
        match step {
            Step::Nothing => continue,
            Step::Sent => {}
            Step::Blocked(reply) => {
                if listener.send_to(&reply, client).await.is_err() {
                    continue;
                }
                sent.inc_by(reply.len() as u64);
                if let Some(l) = &logged {
                    l.fetch_add(reply.len() as u64, Ordering::Relaxed);
                }
            }
            Step::Failed(e) => {
                debug!(%client, error = %e, "udp upstream receive failed; the flow will be re-opened");
                dead.store(true, Ordering::Relaxed);
                return;
            }
        }
        last.store(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
