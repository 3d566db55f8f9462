//! Accepting TCP connections, for every server of the node: the gRPC server (as a `Stream` for
//! tonic's `serve_with_incoming_shutdown`), the admin HTTP server and the data-plane listeners.
//!
//! [`Acceptor::accept`] never fails and never spins:
//! - out of file descriptors or kernel memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): it waits
//!   [`BACKOFF_MIN`], doubling up to [`BACKOFF_MAX`] while the error lasts, and logs at most one
//!   warning per [`LOG_EVERY`] (with the number of failures in between); the pending connections
//!   stay in the kernel's accept queue meanwhile, and are served once descriptors are free again;
//! - an error of the one connection being accepted (reset or aborted before `accept`, a network
//!   error reported on the new socket): the next connection is accepted at once;
//! - any other error: logged (rate-limited the same way) and retried after [`BACKOFF_MIN`].
//!
//! With a connection cap ([`Acceptor::max_connections`]), a permit is taken *before* `accept`, and
//! it is held by the [`Conn`] until the connection is dropped: at the cap the node stops accepting,
//! so further connections wait in the kernel's accept queue (the listen backlog; once it is full
//! the kernel drops new SYNs and clients retry) until an open connection closes. No descriptor is
//! spent on a connection that is over the cap.
//!
//! The data-plane listeners use [`ConnCaps`] instead: their caps (`admission.max_connections`,
//! `admission.max_connections_per_source` of the committed config) can change with every applied config,
//! and a client over one is answered at once (HTTP: `503` with the reason; TCP: closed) rather than
//! left waiting in the queue. [`ConnCaps`] counts every open connection of the listener and of each
//! source IP, caps or not (so a cap set later counts the connections already open); a source's entry
//! is removed when its count reaches 0, so the table never holds more entries than open connections.
//!
//! Every accepted socket gets `TCP_NODELAY`, and TCP keep-alive when configured. [`Conn`]
//! implements tonic's `Connected` with `TcpConnectInfo`, so `Request::remote_addr()` keeps working
//! (and `peer_certs()` once tonic's TLS acceptor wraps it in `TlsConnectInfo`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// First pause after the node ran out of descriptors or memory while accepting.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between accept attempts while that lasts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this interval about failing accepts or a full connection cap.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What an `accept` error means for the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// Out of descriptors or kernel memory: back off, growing.
    Resources,
    /// Only the connection being accepted failed: accept the next one at once.
    Connection,
    /// Anything else: log and retry after a short pause.
    Other,
}

/// Classify an `accept` error (pure).
pub fn classify(e: &io::Error) -> AcceptError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Resources,
        // accept(2) on Linux passes network errors of the new socket through; each is about that
        // one connection.
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::EPERM
            | libc::ETIMEDOUT,
        ) => AcceptError::Connection,
        _ => match e.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptError::Connection,
            _ => AcceptError::Other,
        },
    }
}

/// The growing pause while accepts fail for lack of resources (pure).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The pause to take now: [`BACKOFF_MIN`], then twice the last one, at most [`BACKOFF_MAX`].
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next.unwrap_or(BACKOFF_MIN);
        self.next = Some((pause * 2).min(BACKOFF_MAX));
        pause
    }

    /// An accept succeeded: start again from [`BACKOFF_MIN`].
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// Logs a recurring condition at most once per [`LOG_EVERY`] (pure: the caller passes the time).
#[derive(Debug, Clone, Default)]
pub struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n)` when a line should be logged now, `n` being how many were suppressed since the
    /// last one; `None` to stay quiet.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Accepts connections on one listener; see the module docs.
pub struct Acceptor {
    name: Arc<str>,
    listener: TcpListener,
    permits: Option<(Arc<Semaphore>, usize)>,
    keepalive: Option<socket2::TcpKeepalive>,
    backoff: Backoff,
    errors: RateLimit,
    full: RateLimit,
}

impl Acceptor {
    /// Accept on `listener`; `name` names the server in logs (`"gRPC"`, `"admin HTTP"`, a listener).
    pub fn new(name: impl Into<Arc<str>>, listener: TcpListener) -> Self {
        Acceptor {
            name: name.into(),
            listener,
            permits: None,
            keepalive: None,
            backoff: Backoff::default(),
            errors: RateLimit::default(),
            full: RateLimit::default(),
        }
    }

    /// Keep at most `max` connections open (at least 1); see the module docs.
    pub fn max_connections(mut self, max: usize) -> Self {
        let max = max.max(1);
        self.permits = Some((Arc::new(Semaphore::new(max)), max));
        self
    }

    /// Send TCP keep-alive probes on accepted sockets after `idle` without traffic, then every
    /// `interval`.
    pub fn tcp_keepalive(mut self, idle: Duration, interval: Duration) -> Self {
        self.keepalive = Some(socket2::TcpKeepalive::new().with_time(idle).with_interval(interval));
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections open now (accepted and not yet dropped); 0 without a cap.
    pub fn open(&self) -> usize {
        self.permits.as_ref().map_or(0, |(s, max)| max - s.available_permits())
    }

    /// The next connection. Cancel-safe: a connection is either returned or left in the queue.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let permit = match &self.permits {
                None => None,
                Some((sem, max)) => Some(match Arc::clone(sem).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        if let Some(n) = self.full.check(Instant::now()) {
                            tracing::warn!(
                                server = %self.name,
                                max,
                                since_last = n,
                                "connection cap reached; new connections wait in the accept queue"
                            );
                        }
                        // The semaphore is never closed.
                        let Ok(p) = Arc::clone(sem).acquire_owned().await else { continue };
                        p
                    }
                }),
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    let _ = stream.set_nodelay(true);
                    if let Some(ka) = &self.keepalive {
                        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(ka);
                    }
                    return (Conn { stream, _permit: permit }, peer);
                }
                Err(e) => {
                    drop(permit);
                    let pause = match classify(&e) {
                        AcceptError::Connection => continue,
                        AcceptError::Resources => self.backoff.next_pause(),
                        AcceptError::Other => BACKOFF_MIN,
                    };
                    if let Some(n) = self.errors.check(Instant::now()) {
                        tracing::warn!(
                            server = %self.name,
                            error = %e,
                            failures_since_last = n,
                            "accept failed; pausing {pause:?} before the next attempt"
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown` (it never ends and
    /// never yields an error; dropping it closes the listener).
    pub fn into_incoming(self) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
        futures::stream::unfold(self, |mut acceptor| async move {
            let (conn, _) = acceptor.accept().await;
            Some((Ok(conn), acceptor))
        })
    }
}

/// An accepted connection; holds its place under the connection cap until dropped.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A place under an [`Acceptor`]'s connection cap; released when dropped.
pub type Permit = Option<OwnedSemaphorePermit>;

impl Conn {
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket and its place under the cap (keep the permit as long as the socket).
    pub fn into_parts(self) -> (TcpStream, Permit) {
        (self.stream, self._permit)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Which connection cap a new connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// The listener has `max` connections open.
    Listener { max: u32 },
    /// The client's IP has `max` connections open.
    Source { max: u32 },
}

impl OverCap {
    /// The label of `lbfleet_connections_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            OverCap::Listener { .. } => "listener_cap",
            OverCap::Source { .. } => "source_cap",
        }
    }
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverCap::Listener { max } => write!(f, "listener at its connection limit {max}"),
            OverCap::Source { max } => write!(f, "client address at its connection limit {max}"),
        }
    }
}

/// The open connections of one data-plane listener, in all and by source IP; see the module docs.
#[derive(Debug, Default)]
pub struct ConnCaps {
    inner: std::sync::Mutex<CapCounts>,
}

#[derive(Debug, Default)]
struct CapCounts {
    open: u32,
    by_source: std::collections::HashMap<std::net::IpAddr, u32>,
}

impl ConnCaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, CapCounts> {
        // Plain counter updates: a panic elsewhere cannot leave them half done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a new connection from `source`, unless that would take the listener above `max` or the
    /// source above `per_source` (`None`: no cap). The slot counts until it is dropped.
    pub fn admit(
        self: &Arc<Self>,
        source: std::net::IpAddr,
        max: Option<u32>,
        per_source: Option<u32>,
    ) -> Result<CapSlot, OverCap> {
        let mut c = self.lock();
        if let Some(max) = max.filter(|&m| c.open >= m) {
            return Err(OverCap::Listener { max });
        }
        let from_source = c.by_source.get(&source).copied().unwrap_or(0);
        if let Some(max) = per_source.filter(|&m| from_source >= m) {
            return Err(OverCap::Source { max });
        }
        c.open = c.open.saturating_add(1);
        c.by_source.insert(source, from_source.saturating_add(1));
        Ok(CapSlot { caps: Arc::clone(self), source })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.lock().open
    }

    /// Connections open now from `source`.
    pub fn open_from(&self, source: std::net::IpAddr) -> u32 {
        self.lock().by_source.get(&source).copied().unwrap_or(0)
    }

    /// Source IPs with at least one open connection.
    pub fn sources(&self) -> usize {
        self.lock().by_source.len()
    }

    fn release(&self, source: std::net::IpAddr) {
        let mut c = self.lock();
        c.open = c.open.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut e) = c.by_source.entry(source) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

/// One connection counted by a [`ConnCaps`]; released when dropped.
#[derive(Debug)]
#[must_use = "the connection counts only while the slot lives"]
pub struct CapSlot {
    caps: Arc<ConnCaps>,
    source: std::net::IpAddr,
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.caps.release(self.source);
    }
}

/// This process's soft limit of open files (`RLIMIT_NOFILE`).
pub fn open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Raise this process's soft limit of open files to its hard limit; returns `(before, after)`.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn running_out_of_descriptors_or_memory_backs_off() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(classify(&io::Error::from_raw_os_error(errno)), AcceptError::Resources, "{errno}");
        }
        assert_eq!(classify(&io::Error::from_raw_os_error(libc::ECONNABORTED)), AcceptError::Connection);
        assert_eq!(classify(&io::Error::from_raw_os_error(libc::EPROTO)), AcceptError::Connection);
        assert_eq!(classify(&io::Error::from_raw_os_error(libc::EBADF)), AcceptError::Other);
        assert_eq!(classify(&io::Error::other("?")), AcceptError::Other);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..8).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(pauses, vec![50, 100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause(), BACKOFF_MIN);
    }

    #[test]
    fn the_log_is_rate_limited_and_counts_what_it_left_out() {
        let mut r = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(r.check(t0), Some(0));
        assert_eq!(r.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.check(t0 + LOG_EVERY), Some(2));
        assert_eq!(r.check(t0 + LOG_EVERY + Duration::from_millis(1)), None);
    }

    #[tokio::test]
    async fn at_the_cap_connections_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new("test", listener).max_connections(1);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let (first, _) = acceptor.accept().await;
        assert!(first.stream().nodelay().unwrap());
        assert_eq!(acceptor.open(), 1);
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), acceptor.accept()).await;
        assert!(waiting.is_err(), "a second connection was accepted over the cap");
        drop(first);
        assert_eq!(acceptor.open(), 0);
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept())
            .await
            .expect("accepted after close");
        c2.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        second.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn caps_count_per_listener_and_per_source_and_forget_a_source_at_zero() {
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let caps = Arc::new(ConnCaps::default());
        // No caps: everything counts, nothing is refused.
        let s1 = caps.admit(a, None, None).unwrap();
        let s2 = caps.admit(a, None, None).unwrap();
        assert_eq!((caps.open(), caps.open_from(a)), (2, 2));
        // Per source: a is at 2, b is not.
        assert_eq!(caps.admit(a, None, Some(2)).unwrap_err(), OverCap::Source { max: 2 });
        let s3 = caps.admit(b, Some(3), Some(2)).unwrap();
        // Per listener: 3 open.
        assert_eq!(caps.admit(b, Some(3), None).unwrap_err(), OverCap::Listener { max: 3 });
        assert_eq!(OverCap::Listener { max: 3 }.to_string(), "listener at its connection limit 3");
        assert_eq!(caps.sources(), 2);
        drop(s3);
        assert_eq!(caps.sources(), 1, "b's entry goes with its last connection");
        drop(s1);
        let s4 = caps.admit(a, Some(3), Some(2)).unwrap();
        drop((s2, s4));
        assert_eq!((caps.open(), caps.sources()), (0, 0));
        // A refusal counts nothing.
        let _held = caps.admit(a, Some(1), None).unwrap();
        assert!(caps.admit(b, Some(1), None).is_err());
        assert_eq!((caps.open(), caps.open_from(b)), (1, 0));
    }

    #[tokio::test]
    async fn the_connection_reports_its_addresses_to_tonic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new("test", listener);
        let client = TcpStream::connect(addr).await.unwrap();
        let (conn, peer) = acceptor.accept().await;
        let info = conn.connect_info();
        assert_eq!(info.remote_addr(), Some(client.local_addr().unwrap()));
        assert_eq!(info.remote_addr(), Some(peer));
        assert_eq!(info.local_addr(), Some(addr));
    }
}
