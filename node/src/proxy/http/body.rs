//! Body types of the HTTP proxy. Bodies are streamed frame by frame, never collected: memory per request
//! is bounded by hyper's buffers and HTTP/2 flow-control windows, whatever the body size.
//!
//! - [`ReqBody`]: what goes to a backend. Either the client's body or nothing; it tells the sender when
//!   it has been sent in full (the upstream response timeout starts then), stops at the listener's
//!   `max_body` and records why the client's body failed ([`BodyFault`]), so that the proxy answers
//!   the client's fault (400, 413) rather than blaming the backend (502). A failed body is an error to
//!   hyper's client, which then closes the backend connection without finishing the request: a backend
//!   never sees a truncated body as complete.
//! - [`RespBody`]: what goes to the client. A short text (errors, redirects) or the backend's body, which
//!   gives its upstream connection back to the pool once read to the end and holds the backend's
//!   in-flight count until then.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::upstream::{Pooled, Upstreams};
use crate::balance::InFlight;

/// Why the client's request body stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// More than the listener's `max_body` bytes (the limit).
    TooLarge(u64),
    /// The client's framing or connection failed (a bad chunk, a close before the end), as hyper said.
    Client(String),
}

/// Where a [`ReqBody`] records its [`BodyFault`], for the proxy to read after the send failed, and
/// the bytes of it read so far (for the counters and the access log).
#[derive(Debug, Default)]
pub struct BodyCell {
    fault: OnceLock<BodyFault>,
    read: AtomicU64,
}

impl BodyCell {
    /// Why the client's body failed, if it did.
    pub fn fault(&self) -> Option<&BodyFault> {
        self.fault.get()
    }

    /// Body bytes read from the client so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// A [`BodyCell`], shared by the body and the proxy.
pub type FaultCell = Arc<BodyCell>;

/// The error a [`ReqBody`] gives hyper's client when the client's body failed.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0:?}")]
pub struct ClientBodyError(pub BodyFault);

/// Request body sent to a backend.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    /// Dropped when the body has been sent in full (or abandoned).
    sent: Option<oneshot::Sender<()>>,
    max: Option<u64>,
    read: u64,
    fault: FaultCell,
}

impl ReqBody {
    /// The client's body, at most `max` bytes of it.
    pub fn new(inner: Incoming, max: Option<u64>) -> ReqBody {
        ReqBody { inner: Some(inner), sent: None, max, read: 0, fault: FaultCell::default() }
    }

    pub fn empty() -> ReqBody {
        ReqBody { inner: None, sent: None, max: None, read: 0, fault: FaultCell::default() }
    }

    /// A receiver that completes once this body has been sent in full (at once if it is empty).
    pub fn sent_signal(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if !self.is_end_stream() {
            self.sent = Some(tx);
        }
        rx
    }

    /// Where this body records why it failed, if it does.
    pub fn fault(&self) -> FaultCell {
        Arc::clone(&self.fault)
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.sent = None;
        self.inner = None;
        let _ = self.fault.fault.set(fault.clone());
        Poll::Ready(Some(Err(Box::new(ClientBodyError(fault)))))
    }
}

/// The error type of [`ReqBody`], as hyper's client takes it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `e` and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            this.sent = None;
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.sent = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyFault::Client(chain(&e))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    this.fault.read.store(this.read, Ordering::Relaxed);
                    if let Some(max) = this.max.filter(|max| this.read > *max) {
                        // The frame that crosses the limit is not forwarded.
                        return this.fail(BodyFault::TooLarge(max));
                    }
                }
                if inner.is_end_stream() {
                    this.sent = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Response body sent to a client.
#[derive(Debug)]
pub enum RespBody {
    Text(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl RespBody {
    pub fn text(s: impl Into<Bytes>) -> RespBody {
        let b: Bytes = s.into();
        RespBody::Text((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> RespBody {
        RespBody::Text(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Text(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(u) => Pin::new(u).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Text(b) => b.is_none(),
            RespBody::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Text(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Upstream(u) => u.size_hint(),
        }
    }
}

/// What is done once a response body has gone to the client (or was dropped): its bytes counted, and
/// whatever [`Finish::done`] does with them (the access log).
pub trait Finish: Send + 'static {
    /// `sent`: body bytes handed to the client; `complete`: the body reached its end.
    fn done(self, sent: u64, complete: bool);
}

/// A response body that counts what it sends and calls its [`Finish`] once, at its end or drop.
pub struct Tracked<F: Finish> {
    inner: RespBody,
    sent: u64,
    finish: Option<F>,
}

impl<F: Finish> Tracked<F> {
    pub fn new(inner: RespBody, finish: F) -> Self {
        Tracked { inner, sent: 0, finish: Some(finish) }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            f.done(self.sent, complete);
        }
    }
}

impl<F: Finish> Drop for Tracked<F> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<F: Finish + Unpin> Body for Tracked<F> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a finished upstream response gives back: its connection to the pool, its in-flight count.
#[derive(Debug)]
pub struct Release {
    pub upstreams: Arc<Upstreams>,
    pub conn: Pooled,
    /// Held (not read) so that the backend counts the request in flight until the body ends.
    #[allow(dead_code)]
    pub inflight: InFlight,
}

/// A backend's response body on its way to the client.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, release: Release) -> UpstreamBody {
        let mut b = UpstreamBody { inner, release: Some(release) };
        if b.inner.is_end_stream() {
            b.finish();
        }
        b
    }

    /// The body was read to its end: the connection may serve another request.
    fn finish(&mut self) {
        if let Some(r) = self.release.take() {
            r.upstreams.checkin(r.conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(None) => this.finish(),
            // A broken body: the connection is not reused (dropping it closes it).
            Poll::Ready(Some(Err(_))) => this.release = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
