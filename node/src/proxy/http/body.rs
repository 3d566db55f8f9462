//! Body types of the HTTP proxy. Bodies are streamed frame by frame, never collected: memory per request
//! is bounded by hyper's buffers and HTTP/2 flow-control windows, whatever the body size.
//!
//! - [`ReqBody`]: what goes to a backend. Either the client's body or nothing; it tells the sender when
//!   it has been sent in full (the upstream response timeout starts then).
//! - [`RespBody`]: what goes to the client. A short text (errors, redirects) or the backend's body, which
//!   gives its upstream connection back to the pool once read to the end and holds the backend's
//!   in-flight count until then.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::upstream::{Pooled, Upstreams};
use crate::balance::InFlight;

/// Request body sent to a backend.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    /// Dropped when the body has been sent in full (or abandoned).
    sent: Option<oneshot::Sender<()>>,
}

impl ReqBody {
    pub fn new(inner: Incoming) -> ReqBody {
        ReqBody { inner: Some(inner), sent: None }
    }

    pub fn empty() -> ReqBody {
        ReqBody { inner: None, sent: None }
    }

    /// A receiver that completes once this body has been sent in full (at once if it is empty).
    pub fn sent_signal(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if !self.is_end_stream() {
            self.sent = Some(tx);
        }
        rx
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            this.sent = None;
            return Poll::Ready(None);
        };
        let r = Pin::new(&mut *inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => this.sent = None,
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.sent = None,
            _ => {}
        }
        r
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
