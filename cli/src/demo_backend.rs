//! The demo HTTP backend (`lbctl demo-backend --name backend-2 --listen 127.0.0.1:9002`).
//!
//! HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port. Every response carries
//! `x-backend: <name>` so a test can see where a request went:
//! - `/health`: 200 `ok`
//! - `/echo`: the request body streamed back as it arrives (never buffered whole)
//! - `/sleep/<ms>`: waits, then answers like `/` (for timeout tests; at most [`MAX_SLEEP`])
//! - `/bytes/<n>`: n bytes streamed in chunks
//! - anything else: 200 `<name>\n<METHOD> <path>\n`
//!
//! `--refuse-from IP` (repeatable): connections from that source IP are closed at once, without an
//! answer, which simulates "this node cannot reach the backend" for one lbnode (each node probes from
//! its own IP). A TCP connect still succeeds; an HTTP health check fails.
//!
//! `--udp`: the same address also answers UDP: each datagram is sent back prefixed with `<name>\n`
//! (the reply cut to [`MAX_UDP_REPLY`] bytes), so a UDP test can see which backend a flow reached.
//!
//! SIGTERM or SIGINT: stop accepting, let open connections finish (at most [`DRAIN_DEADLINE`]), exit 0.
//! [`route`] is the pure part (which answer a path gets); [`serve`] is the server around it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Longest `/sleep/<ms>` honoured.
pub const MAX_SLEEP: Duration = Duration::from_secs(600);
/// How long open connections may take to finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest UDP reply (the payload of one IPv4 datagram); a longer echo is cut.
pub const MAX_UDP_REPLY: usize = 65_507;
/// Chunk size of `/bytes/<n>`.
const CHUNK: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = BoxBody<Bytes, BoxError>;

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Echo,
    Sleep(Duration),
    Bytes(u64),
    Default,
    BadRequest(String),
}

/// Decide the answer from the path (query string ignored).
pub fn route(path_and_query: &str) -> Route {
    let path = path_and_query.split('?').next().unwrap_or("");
    match path {
        "/health" => return Route::Health,
        "/echo" => return Route::Echo,
        _ => {}
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        return match ms.parse::<u64>() {
            Ok(ms) if Duration::from_millis(ms) <= MAX_SLEEP => Route::Sleep(Duration::from_millis(ms)),
            Ok(ms) => Route::BadRequest(format!(
                "sleep of {ms} ms is longer than the maximum of {} ms",
                MAX_SLEEP.as_millis()
            )),
            Err(_) => Route::BadRequest(format!("invalid sleep \"{ms}\": expected milliseconds")),
        };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) => Route::Bytes(n),
            Err(_) => Route::BadRequest(format!("invalid byte count \"{n}\"")),
        };
    }
    Route::Default
}

/// Body of the default answer: the backend's name, then method and path.
pub fn default_body(name: &str, method: &str, path: &str) -> String {
    format!("{name}\n{method} {path}\n")
}

/// A body of `remaining` bytes produced in chunks as the peer reads them.
struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk.len() as u64) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn full(s: impl Into<Bytes>) -> RespBody {
    Full::new(s.into()).map_err(|e: Infallible| match e {}).boxed()
}

async fn handle(name: Arc<str>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let method = req.method().to_string();
    let (status, body) = match route(&path) {
        Route::Health => (StatusCode::OK, full("ok\n")),
        Route::Echo => (StatusCode::OK, req.into_body().map_err(|e| Box::new(e) as BoxError).boxed()),
        Route::Sleep(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, full(default_body(&name, &method, &path)))
        }
        Route::Bytes(n) => {
            (StatusCode::OK, RepeatBody { remaining: n, chunk: Bytes::from(vec![b'x'; CHUNK]) }.boxed())
        }
        Route::Default => (StatusCode::OK, full(default_body(&name, &method, &path))),
        Route::BadRequest(msg) => (StatusCode::BAD_REQUEST, full(format!("{name}: {msg}\n"))),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}

/// The answer to one UDP datagram: the backend's name, a newline, then the datagram, at most
/// [`MAX_UDP_REPLY`] bytes in all.
pub fn udp_reply(name: &str, datagram: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1 + datagram.len());
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(datagram);
    out.truncate(MAX_UDP_REPLY);
    out
}

/// Bind UDP on `listen` and answer every datagram with [`udp_reply`] until the process ends.
pub async fn udp_echo(name: String, listen: SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot listen on UDP {listen}"))?;
    tracing::info!(name = %name, addr = %listen, "demo backend answering UDP");
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, peer)) => {
                    // A reply the kernel will not take (buffer full, peer gone) is dropped, as UDP allows.
                    let _ = socket.try_send_to(&udp_reply(&name, &buf[..n]), peer);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }))
}

/// Serve until SIGTERM/SIGINT, then drain open connections.
pub async fn serve(name: String, listen: SocketAddr) -> anyhow::Result<()> {
    serve_refusing(name, listen, Vec::new()).await
}

/// [`serve`], closing every connection from a source IP in `refuse_from` at once, unanswered.
pub async fn serve_refusing(
    name: String,
    listen: SocketAddr,
    refuse_from: Vec<IpAddr>,
) -> anyhow::Result<()> {
    if hyper::header::HeaderValue::from_str(&name).is_err() {
        anyhow::bail!("invalid backend name \"{name}\": it must fit in an HTTP header");
    }
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let name: Arc<str> = Arc::from(name);
    tracing::info!(name = %name, addr = %listen, refuse_from = ?refuse_from, "demo backend listening");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have, try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        if refuse_from.contains(&peer.ip()) {
            tracing::debug!(peer = %peer, "connection refused (--refuse-from)");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let svc = hyper::service::service_fn(move |req| handle(name.clone(), req));
        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(name = %name, open = graceful.count(), "shutting down");
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown()).await.is_err() {
        tracing::warn!(name = %name, "connections still open after {:?}; exiting anyway", DRAIN_DEADLINE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/health"), Route::Health);
        assert_eq!(route("/health?x=1"), Route::Health);
        assert_eq!(route("/echo"), Route::Echo);
        assert_eq!(route("/sleep/250"), Route::Sleep(Duration::from_millis(250)));
        assert_eq!(route("/bytes/1048576"), Route::Bytes(1 << 20));
        assert_eq!(route("/bytes/0"), Route::Bytes(0));
        assert_eq!(route("/"), Route::Default);
        assert_eq!(route("/healthz"), Route::Default);
        assert_eq!(route("/echo/more"), Route::Default);
        assert!(matches!(route("/sleep/abc"), Route::BadRequest(m) if m.contains("\"abc\"")));
        assert!(matches!(route("/sleep/600001"), Route::BadRequest(m) if m.contains("maximum")));
        assert!(matches!(route("/bytes/-1"), Route::BadRequest(_)));
    }

    #[test]
    fn udp_reply_names_the_backend_and_is_bounded() {
        assert_eq!(udp_reply("backend-1", b"seq 7"), b"backend-1\nseq 7".to_vec());
        assert_eq!(udp_reply("b", &vec![b'x'; 70_000]).len(), MAX_UDP_REPLY);
    }

    #[tokio::test]
    async fn udp_echo_answers_a_real_datagram() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let task = udp_echo("backend-u".into(), listen).await.unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"hello", listen).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"backend-u\nhello"[..], listen));
        task.abort();
    }

    #[test]
    fn default_body_names_the_backend_first() {
        assert_eq!(default_body("backend-2", "GET", "/a?b"), "backend-2\nGET /a?b\n");
    }

    #[test]
    fn repeat_body_yields_exactly_n_bytes() {
        let mut b = RepeatBody { remaining: (CHUNK as u64) * 2 + 7, chunk: Bytes::from(vec![b'x'; CHUNK]) };
        assert_eq!(b.size_hint().exact(), Some((CHUNK as u64) * 2 + 7));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut total = 0u64;
        let mut frames = 0;
        while let Poll::Ready(Some(Ok(f))) = Pin::new(&mut b).poll_frame(&mut cx) {
            total += f.into_data().map(|d| d.len() as u64).unwrap_or(0);
            frames += 1;
        }
        assert_eq!((total, frames), ((CHUNK as u64) * 2 + 7, 3));
        assert!(b.is_end_stream());
    }

    /// One GET /health from `from`; `None` when the connection is closed without an answer.
    async fn health_from(from: IpAddr, to: SocketAddr) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = sock.connect(to).await.ok()?;
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.ok()?;
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn refuse_from_closes_connections_of_that_ip_only() {
        let listen: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.82.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refused: IpAddr = "127.0.82.12".parse().unwrap();
        let server = tokio::spawn(serve_refusing("backend-r".into(), listen, vec![refused]));
        let other: IpAddr = "127.0.82.13".parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let answer = loop {
            if let Some(a) = health_from(other, listen).await {
                break a;
            }
            assert!(tokio::time::Instant::now() < deadline, "demo backend never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(health_from(refused, listen).await, None, "closed without an answer");
        server.abort();
    }
}
