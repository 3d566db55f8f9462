//! Connections to backends: HTTP/1.1 over TCP (`hyper::client::conn::http1`), kept in a small pool per
//! backend address.
//!
//! A request first *acquires* a connection (an idle pooled one that is still open, else a new one under
//! the connect timeout) and only then is sent on it, Pingora's "connect first, then send": a backend
//! that cannot be reached is detected before any byte of the request is consumed, so the request, body
//! included, can go to the next backend unchanged.
//!
//! A connection returns to the pool when its response body has been read to the end
//! ([`super::body::UpstreamBody`]); a connection whose response was abandoned, broken or upgraded is
//! dropped, which closes it. Limits: at most `max_idle_per_backend` idle connections per backend (the
//! oldest is closed first), none older than `idle_timeout` (checked when taken and by [`Upstreams::reap`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::body::ReqBody;
use crate::net::connect_tcp;

/// How long a pooled connection may take to become ready for its next request before it is given up.
const READY_WAIT: Duration = Duration::from_millis(500);

/// Limits of the upstream pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_idle_per_backend: crate::config::DEFAULT_UPSTREAM_IDLE,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// TLS towards the backends of a pool (`[pool.tls]`): the client config (its CA bundle) and the name
/// sent as SNI and verified (`None`: the backend's IP address).
#[derive(Debug, Clone)]
pub struct BackendTls {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub server_name: Option<String>,
}

/// Idle connections are kept apart by backend address and by whether they are TLS.
type Key = (SocketAddr, bool);

/// One HTTP/1.1 connection to a backend.
#[derive(Debug)]
pub struct Pooled {
    pub addr: SocketAddr,
    /// Over TLS (`[pool.tls]`).
    pub tls: bool,
    pub sender: http1::SendRequest<ReqBody>,
    /// Taken from the pool (it served a request before) rather than connected for this request.
    pub reused: bool,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// Why no connection to a backend could be made. Nothing of the request reached the backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Tls(std::io::Error),
}

/// Idle connections of one listener, by backend address. New connections leave from `source`, the
/// node's IP ([`crate::net`]).
#[derive(Debug)]
pub struct Upstreams {
    limits: PoolLimits,
    source: IpAddr,
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

impl Upstreams {
    pub fn new(limits: PoolLimits, source: IpAddr) -> Upstreams {
        Upstreams { limits, source, idle: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Idle>>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain pushes and pops).
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `addr`: a pooled one if one is open and ready (unless `fresh`), else a new one.
    pub async fn acquire(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        fresh: bool,
    ) -> Result<Pooled, ConnectError> {
        self.acquire_with(addr, connect_timeout, fresh, None).await
    }

    /// [`Upstreams::acquire`] over TLS when `tls` is given (the handshake counts in the connect timeout).
    pub async fn acquire_with(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        fresh: bool,
        tls: Option<&BackendTls>,
    ) -> Result<Pooled, ConnectError> {
        let key = (addr, tls.is_some());
        if !fresh {
            while let Some(mut sender) = self.take_idle(key) {
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                    return Ok(Pooled { addr, tls: key.1, sender, reused: true });
                }
            }
        }
        let sender = connect_with(self.source, addr, connect_timeout, tls).await?;
        Ok(Pooled { addr, tls: key.1, sender, reused: false })
    }

    /// The most recently used idle connection to `addr` that is open and not expired. Expired or closed
    /// ones met on the way are dropped.
    fn take_idle(&self, key: Key) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.lock();
        let list = idle.get_mut(&key)?;
        let mut found = None;
        while let Some(c) = list.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.limits.idle_timeout {
                found = Some(c.sender);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(&key);
        }
        found
    }

    /// Give a connection whose exchange completed back to the pool.
    pub fn checkin(&self, conn: Pooled) {
        if conn.sender.is_closed() || self.limits.max_idle_per_backend == 0 {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry((conn.addr, conn.tls)).or_default();
        list.push(Idle { sender: conn.sender, since: Instant::now() });
        if list.len() > self.limits.max_idle_per_backend {
            list.remove(0);
        }
    }

    /// Close idle connections that expired or whose backend closed them.
    pub fn reap(&self) {
        let timeout = self.limits.idle_timeout;
        let mut idle = self.lock();
        idle.retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
            !list.is_empty()
        });
    }

    /// Number of idle connections to `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        let idle = self.lock();
        [false, true].iter().map(|&tls| idle.get(&(addr, tls)).map_or(0, Vec::len)).sum()
    }
}

/// Open a new HTTP/1.1 connection to `addr` from `source` (TCP_NODELAY); its I/O runs in its own task
/// until the connection closes or its last handle is dropped.
pub async fn connect(
    source: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http1::SendRequest<ReqBody>, ConnectError> {
    connect_with(source, addr, timeout, None).await
}

/// [`connect`], over TLS when `tls` is given: the TCP connect and the TLS handshake share `timeout`.
pub async fn connect_with(
    source: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&BackendTls>,
) -> Result<http1::SendRequest<ReqBody>, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, connect_tcp(source, addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(ConnectError::Timeout(timeout)),
    };
    let _ = stream.set_nodelay(true);
    match tls {
        None => handshake(TokioIo::new(stream), addr).await,
        Some(t) => {
            let name = t.server_name.as_deref();
            let tls_stream = match tokio::time::timeout_at(
                deadline,
                crate::proxy::tls::connect(t.config.clone(), name, addr, stream),
            )
            .await
            {
                Ok(r) => r.map_err(ConnectError::Tls)?,
                Err(_) => return Err(ConnectError::Timeout(timeout)),
            };
            handshake(TokioIo::new(tls_stream), addr).await
        }
    }
}

async fn handshake<T>(io: T, addr: SocketAddr) -> Result<http1::SendRequest<ReqBody>, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %addr, "upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
