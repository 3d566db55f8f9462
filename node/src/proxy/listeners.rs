//! Keeps the node's data-plane listeners in step with the committed config.
//!
//! [`run`] follows the applied state: on every change it builds the next [`Routing`] from the previous
//! one, swaps it in, then reconciles the bound sockets. A listener is identified by
//! (name, protocol, port): a change of its pool, routes or timeouts needs no rebind (the proxies read
//! those from the snapshot for every new connection), so established connections are untouched. A
//! listener whose identity changed or that was removed stops accepting; its established connections
//! finish on their own (each proxy bounds that grace). A port that cannot be bound (in use on this node)
//! is reported in [`ListenerStatus`] and retried every [`RETRY_BIND`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbfleet_api::config::{Listener, Protocol};
use lbfleet_api::state::Committed;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ProxyContext;
use crate::balance::Routing;
use crate::shutdown::{Shutdown, Trigger};

/// How often a listener that failed to bind is tried again.
pub const RETRY_BIND: Duration = Duration::from_secs(2);
/// How long [`run`] waits, at shutdown, for every proxy task to finish its connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a node reports about one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: &'static str,
    pub addr: String,
    pub bound: bool,
    /// Why the socket is not bound.
    pub error: Option<String>,
}

/// Shared view of the listeners for the admin endpoints.
pub type ListenerStatuses = Arc<Mutex<Vec<ListenerStatus>>>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Identity {
    name: String,
    protocol: &'static str,
    port: u16,
}

impl Identity {
    fn of(l: &Listener) -> Identity {
        Identity { name: l.name.clone(), protocol: l.protocol.as_str(), port: l.port }
    }
}

struct Running {
    stop: Trigger,
    task: JoinHandle<()>,
}

/// The set of bound listeners of this node.
pub struct ListenerSet {
    /// TCP and HTTP listeners bind here.
    bind_ip: IpAddr,
    /// UDP listeners bind here.
    udp_ip: IpAddr,
    /// And here too (the VIP), with a socket of their own.
    udp_vip: Option<IpAddr>,
    running: BTreeMap<Identity, Running>,
    failed: BTreeMap<Identity, String>,
    /// Stopped listeners whose connections may still be finishing.
    retiring: Vec<JoinHandle<()>>,
    /// Where the proxy tasks run; `None`: the current runtime.
    runtime: Option<Handle>,
}

impl ListenerSet {
    pub fn new(bind_ip: IpAddr) -> ListenerSet {
        ListenerSet::with_udp_ip(bind_ip, bind_ip)
    }

    /// TCP and HTTP listeners on `bind_ip`, UDP listeners on `udp_ip`.
    pub fn with_udp_ip(bind_ip: IpAddr, udp_ip: IpAddr) -> ListenerSet {
        ListenerSet {
            bind_ip,
            udp_ip,
            udp_vip: None,
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            retiring: Vec::new(),
            runtime: None,
        }
    }

    /// UDP listeners also bind a socket of their own on `vip` (the front's VIP), answering from it.
    pub fn with_udp_vip(mut self, vip: Option<IpAddr>) -> ListenerSet {
        self.udp_vip = vip;
        self
    }

    /// Bind what the snapshot has and this set lacks; stop what this set has and the snapshot lacks.
    pub async fn reconcile(&mut self, ctx: &Arc<ProxyContext>, routing: &Routing) {
        let wanted: BTreeMap<Identity, Arc<Listener>> =
            routing.listeners().map(|l| (Identity::of(l), Arc::clone(l))).collect();
        let gone: Vec<Identity> =
            self.running.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for id in gone {
            if let Some(r) = self.running.remove(&id) {
                tracing::info!(listener = %id.name, protocol = id.protocol, port = id.port, "listener stopping");
                r.stop.trigger();
                self.retiring.push(r.task);
            }
        }
        self.failed.retain(|id, _| wanted.contains_key(id));
        self.retiring.retain(|t| !t.is_finished());
        for (id, l) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            match self.start(ctx, &l).await {
                Ok(r) => {
                    tracing::info!(listener = %id.name, protocol = id.protocol, addr = %self.addr(id.protocol, l.port), "listener bound");
                    self.failed.remove(&id);
                    self.running.insert(id, r);
                }
                Err(e) => {
                    if self.failed.get(&id) != Some(&e) {
                        tracing::error!(listener = %id.name, "{e}");
                    }
                    self.failed.insert(id, e);
                }
            }
        }
    }

    fn addr(&self, protocol: &str, port: u16) -> SocketAddr {
        let ip = if protocol == Protocol::Udp.as_str() { self.udp_ip } else { self.bind_ip };
        SocketAddr::new(ip, port)
    }

    async fn start(&self, ctx: &Arc<ProxyContext>, l: &Listener) -> Result<Running, String> {
        let addr = self.addr(l.protocol.as_str(), l.port);
        let (stop, stop_rx) = crate::shutdown::channel();
        let name = l.name.clone();
        let ctx = Arc::clone(ctx);
        let bind_err = |e: std::io::Error| {
            format!("cannot bind listener \"{}\" ({}) on {addr}: {e}", l.name, l.protocol.as_str())
        };
        // Bind here (so a failure is reported now), register the socket with the runtime the proxy runs
        // on (a tokio socket belongs to the reactor of the runtime that registered it).
        let rt = self.runtime.clone().unwrap_or_else(Handle::current);
        let task = match l.protocol {
            Protocol::Http | Protocol::Tcp => {
                let sock = bind_tcp(addr).map_err(bind_err)?;
                let http = l.protocol == Protocol::Http;
                rt.spawn(async move {
                    let sock = match tokio::net::TcpListener::from_std(sock) {
                        Ok(s) => s,
                        Err(e) => return tracing::error!(listener = %name, "cannot register {addr}: {e}"),
                    };
                    if http {
                        super::http::serve(name, sock, ctx, stop_rx).await
                    } else {
                        super::tcp::serve(name, sock, ctx, stop_rx).await
                    }
                })
            }
            Protocol::Udp => {
                let sock = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
                sock.set_nonblocking(true).map_err(bind_err)?;
                let on_vip = match self.udp_vip {
                    Some(vip) => {
                        let at = SocketAddr::new(vip, l.port);
                        Some(bind_udp_freebind(at).map_err(|e| {
                            format!("cannot bind listener \"{}\" (udp) on the VIP {at}: {e}", l.name)
                        })?)
                    }
                    None => None,
                };
                rt.spawn(async move {
                    let serve = |sock: std::net::UdpSocket| {
                        let (name, ctx, stop) = (name.clone(), Arc::clone(&ctx), stop_rx.clone());
                        async move {
                            let at = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
                            match tokio::net::UdpSocket::from_std(sock) {
                                Ok(s) => super::udp::serve(name, s, ctx, stop).await,
                                Err(e) => tracing::error!(listener = %name, "cannot register {at}: {e}"),
                            }
                        }
                    };
                    match on_vip {
                        Some(v) => {
                            tokio::join!(serve(sock), serve(v));
                        }
                        None => serve(sock).await,
                    }
                })
            }
        };
        Ok(Running { stop, task })
    }

    /// Whether some listener of the snapshot is not bound (so a retry is due).
    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Status of every wanted listener, by name.
    pub fn statuses(&self) -> Vec<ListenerStatus> {
        let mut out: Vec<ListenerStatus> = self
            .running
            .keys()
            .map(|id| ListenerStatus {
                name: id.name.clone(),
                protocol: id.protocol,
                addr: self.addr(id.protocol, id.port).to_string(),
                bound: true,
                error: None,
            })
            .chain(self.failed.iter().map(|(id, e)| ListenerStatus {
                name: id.name.clone(),
                protocol: id.protocol,
                addr: self.addr(id.protocol, id.port).to_string(),
                bound: false,
                error: Some(e.clone()),
            }))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stop every listener and wait (bounded) for their connections to finish.
    pub async fn shutdown(mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.stop.trigger();
            self.retiring.push(r.task);
        }
        let all = futures::future::join_all(self.retiring.drain(..));
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!("data-plane connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
}

/// A non-blocking UDP socket on `addr` with IP_FREEBIND: the VIP may not be on an interface yet
/// (it is put on `lo` by `vip_loopback`, or by the host's own setup), and the socket receives on it
/// once it is. Its replies leave from `addr`.
fn bind_udp_freebind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(P::UDP))?;
    if addr.is_ipv4() {
        sock.set_freebind(true)?;
    } else {
        sock.set_freebind_ipv6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Backlog of data-plane TCP listeners (the kernel caps it at `net.core.somaxconn`).
const TCP_BACKLOG: i32 = 4096;

/// A non-blocking TCP listener with SO_REUSEADDR (a restarted node rebinds at once) and a deep backlog.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(TCP_BACKLOG)?;
    Ok(sock.into())
}

/// Bring the TLS configs in step with the committed config (and the files it names): before the
/// snapshot that uses them is swapped in, so a new TLS listener has its certificates when it binds.
fn refresh_tls(ctx: &ProxyContext, state: &lbfleet_api::state::ClusterState) {
    match state.config.as_ref() {
        Some(c) => ctx.tls.refresh(c.listener.iter(), c.pool.iter()),
        None => ctx.tls.refresh(std::iter::empty(), std::iter::empty()),
    }
}

/// Follow the committed model until `stop`: rebuild and swap the routing snapshot, reconcile listeners.
pub async fn run(
    ctx: Arc<ProxyContext>,
    mut applied: watch::Receiver<Committed>,
    mut stop: Shutdown,
    statuses: ListenerStatuses,
    runtime: Option<Handle>,
) {
    let mut set = ListenerSet::with_udp_ip(ctx.listen_ip, ctx.bind_ip).with_udp_vip(ctx.vip);
    set.runtime = runtime;
    let mut retry = tokio::time::interval(RETRY_BIND);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll_tls = tokio::time::interval(super::tls::POLL_FILES);
    poll_tls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state_changed = true;
    loop {
        if state_changed {
            let a = applied.borrow_and_update().clone();
            let next = Routing::build(&a.state, a.index, &ctx.routing.load());
            refresh_tls(&ctx, &a.state);
            ctx.routing.store(Arc::new(next));
        }
        let routing = ctx.routing.load_full();
        set.reconcile(&ctx, &routing).await;
        if let Ok(mut s) = statuses.lock() {
            *s = set.statuses();
        }
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    break;
                }
                state_changed = true;
            }
            _ = retry.tick(), if set.has_failures() => state_changed = false,
            _ = poll_tls.tick() => {
                refresh_tls(&ctx, &applied.borrow().state);
                state_changed = false;
            }
            _ = stop.wait() => break,
        }
    }
    set.shutdown().await;
}
