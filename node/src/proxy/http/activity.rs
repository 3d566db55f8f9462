//! Per-connection activity for the client idle timeout, and the count of tasks a listener waits for on
//! shutdown.
//!
//! A client connection is idle when no byte has been read from or written to it for the listener's
//! `idle` timeout while no request on it is waiting for a backend's response head (that wait has its own
//! bound, `upstream_response`). An idle connection is closed, whatever state it is in: between
//! keep-alive requests, stalled in the middle of a request body, or a quiet upgraded tunnel.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
// tokio's clock, so that the idle logic runs under a paused clock in tests.
use tokio::time::Instant;

/// When a connection last moved a byte, and how many of its requests wait for a backend.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    waiting: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { base: Instant::now(), last_ms: AtomicU64::new(0), waiting: AtomicUsize::new(0) }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Count one request waiting for a backend's response head until the guard is dropped.
    pub fn waiting(self: &Arc<Self>) -> WaitingGuard {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(Arc::clone(self))
    }

    /// Completes once the connection has been idle for `idle` (see the module doc).
    pub async fn idle_for(&self, idle: Duration) {
        let idle_ms = idle.as_millis() as u64;
        loop {
            let quiet = self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
            let wait = if self.waiting.load(Ordering::Relaxed) > 0 {
                idle_ms.max(1)
            } else if quiet >= idle_ms {
                return;
            } else {
                idle_ms - quiet
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// See [`Activity::waiting`].
#[derive(Debug)]
pub struct WaitingGuard(Arc<Activity>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records its reads and writes in an [`Activity`].
#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        IdleIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts a listener's live tasks (connections, tunnels) so that shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Tasks {
    live: AtomicUsize,
    done: Notify,
}

impl Tasks {
    pub fn enter(self: &Arc<Self>) -> TaskGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        TaskGuard(Arc::clone(self))
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Completes when no task is live.
    pub async fn all_done(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One live task of [`Tasks`].
#[derive(Debug)]
pub struct TaskGuard(Arc<Tasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a paused clock, `idle_for` ends exactly one idle period after the last byte moved.
    #[tokio::test(start_paused = true)]
    async fn idle_ends_one_period_after_the_last_byte() {
        let a = Arc::new(Activity::default());
        let start = Instant::now();
        a.touch();
        a.idle_for(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        // A byte half-way through pushes the end back by as much.
        let start = Instant::now();
        a.touch();
        let toucher = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(15)).await;
                a.touch();
            })
        };
        a.idle_for(Duration::from_secs(30)).await;
        toucher.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(45));
    }

    /// A request waiting for a backend's response head keeps the connection from being idle.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_holds_the_idle_timeout_off() {
        let a = Arc::new(Activity::default());
        a.touch();
        let start = Instant::now();
        let guard = a.waiting();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(guard);
        });
        a.idle_for(Duration::from_secs(10)).await;
        release.await.unwrap();
        // Released at 100 s; idle since the last byte (at 0 s), so it ends at the next look (≤ 110 s).
        assert!(start.elapsed() >= Duration::from_secs(100), "{:?}", start.elapsed());
        assert!(start.elapsed() <= Duration::from_secs(110), "{:?}", start.elapsed());
    }
}
