//! Hostile HTTP/1.1 against the proxy, on raw sockets: smuggling and framing cases, `Host` rules,
//! oversized heads, body limits, slowloris. Each case checks the status the client gets, that the
//! connection closes where it must, and exactly what a raw backend received: nothing, or one
//! well-formed request, never a second one.
//!
//! The backend is a raw `TcpListener` that keeps every byte it receives, splits them into requests
//! with `httparse` (the proxy's output must be well-formed), and answers each complete one with a fixed
//! response.
//!
//! Addresses: 127.0.160.x – 127.0.164.x.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{serve_with, Options};
use crate::proxy::counters::{counters_text, value_of};
use crate::proxy::testkit::{context, ip, routing_for, wait_until, within, WAIT};
use crate::proxy::ProxyContext;
use crate::shutdown::Trigger;

// -------------------------------------------------------------------------------------------------
// The raw backend
// -------------------------------------------------------------------------------------------------

const BACKEND_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nx-backend: raw\r\n\r\nraw-ok\n";

/// One complete request as the backend received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    /// Names in lower case, in the order received.
    headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    body: Vec<u8>,
}

impl Received {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// One connection from the proxy.
#[derive(Debug, Default, Clone)]
struct BackendConn {
    bytes: Vec<u8>,
    requests: Vec<Received>,
    /// Bytes that are not a well-formed request.
    garbage: bool,
    /// The proxy closed it.
    closed: bool,
}

impl BackendConn {
    /// Received bytes after the last complete request: an unfinished one.
    fn unfinished(&self) -> bool {
        let used: usize = self.requests.len();
        used == 0 && !self.bytes.is_empty() || self.garbage
    }
}

struct RawBackend {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<BackendConn>>>,
    task: JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one request ends in `b`, if it is all there: `Ok(None)` for "not yet".
fn parse_one(b: &[u8]) -> Result<Option<(Received, usize)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut slots);
    let head = match req.parse(b).map_err(|e| e.to_string())? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut at = head;
    if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        loop {
            let (used, size) = match httparse::parse_chunk_size(&b[at..]).map_err(|e| format!("{e:?}"))? {
                httparse::Status::Complete(c) => c,
                httparse::Status::Partial => return Ok(None),
            };
            at += used;
            let size = size as usize;
            if b.len() < at + size + 2 {
                return Ok(None);
            }
            if size == 0 {
                // No trailers from the proxy: the last chunk ends with one CRLF.
                if &b[at..at + 2] != b"\r\n" {
                    return Err("trailer after the last chunk".into());
                }
                at += 2;
                break;
            }
            body.extend_from_slice(&b[at..at + size]);
            if &b[at + size..at + size + 2] != b"\r\n" {
                return Err("chunk without its CRLF".into());
            }
            at += size + 2;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().map_err(|_| format!("content-length {cl:?}"))?;
        if b.len() < head + n {
            return Ok(None);
        }
        body.extend_from_slice(&b[head..head + n]);
        at = head + n;
    }
    let received = Received {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        headers,
        body,
    };
    Ok(Some((received, at)))
}

impl RawBackend {
    async fn start(c: u8, d: u8) -> RawBackend {
        let listener = TcpListener::bind((ip(c, d), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<BackendConn>>> = Arc::default();
        let all = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                let idx = {
                    let mut all = all.lock().unwrap();
                    all.push(BackendConn::default());
                    all.len() - 1
                };
                let all = Arc::clone(&all);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut pos = 0;
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            all.lock().unwrap()[idx].closed = true;
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let mut answers = 0;
                        {
                            let mut all = all.lock().unwrap();
                            let conn = &mut all[idx];
                            conn.bytes.extend_from_slice(&chunk[..n]);
                            while !conn.garbage {
                                match parse_one(&buf[pos..]) {
                                    Ok(Some((r, used))) => {
                                        conn.requests.push(r);
                                        pos += used;
                                        answers += 1;
                                    }
                                    Ok(None) => break,
                                    Err(_) => conn.garbage = true,
                                }
                            }
                        }
                        for _ in 0..answers {
                            if s.write_all(BACKEND_ANSWER).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawBackend { addr, conns, task }
    }

    fn conns(&self) -> Vec<BackendConn> {
        self.conns.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<Received> {
        self.conns().into_iter().flat_map(|c| c.requests).collect()
    }
}

// -------------------------------------------------------------------------------------------------
// The proxy and a raw client
// -------------------------------------------------------------------------------------------------

struct Proxy {
    addr: SocketAddr,
    ctx: Arc<ProxyContext>,
    _stop: Trigger,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy on `127.0.c.d` in front of `backend`, its listener "web" given `listener_extra` lines.
    async fn start(c: u8, d: u8, backend: SocketAddr, listener_extra: &str) -> Proxy {
        let toml = format!(
            "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{backend}\"\n\
             [pool.health]\nkind = \"none\"\n\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 8080\n\
             pool = \"web\"\n{listener_extra}\n"
        );
        let routing = routing_for(&toml);
        let ctx = context(ip(c, d), &routing);
        let listener = TcpListener::bind((ip(c, d), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = crate::shutdown::channel();
        let task =
            tokio::spawn(serve_with("web".into(), listener, Arc::clone(&ctx), stop_rx, Options::default()));
        Proxy { addr, ctx, _stop: stop, task }
    }

    fn refused(&self, reason: &str) -> u64 {
        // `/metrics` adds the `lbfleet_` prefix.
        let series = format!("http_refused_total{{listener=\"web\",reason=\"{reason}\"}}");
        value_of(&counters_text(&self.ctx.metrics), &series).unwrap_or(0)
    }
}

/// What the client read on one connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The first response's head, names in lower case.
    headers: Vec<(String, String)>,
    body: String,
    /// Everything read, first response included.
    all: Vec<u8>,
    /// The proxy closed the connection (EOF or reset) after the first response.
    closed: bool,
    /// The first response's length in bytes.
    first_len: usize,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Bytes read after the first response: none, unless the proxy answered twice.
    fn after_first(&self) -> &[u8] {
        &self.all[self.first_len.min(self.all.len())..]
    }
}

/// Header lines, names in lower case, in the order received.
type Fields = Vec<(String, String)>;

/// One response at the start of `b`, if it is all there: status, headers, body, its length in bytes.
fn parse_response(b: &[u8]) -> Option<(u16, Fields, String, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    let head = match resp.parse(b).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let len: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    if b.len() < head + len {
        return None;
    }
    Some((resp.code?, headers, String::from_utf8_lossy(&b[head..head + len]).into_owned(), head + len))
}

/// Write `bytes` on a new connection (while reading, so that a proxy that stops reading cannot stall
/// the writer) and read the first response; with `until_close`, read on until the proxy closes the
/// connection (within [`WAIT`]).
async fn exchange(to: SocketAddr, bytes: Vec<u8>, until_close: bool) -> Answer {
    let s = within("connect", TcpStream::connect(to)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        // The proxy may refuse and close before it has read everything: that write fails.
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut all = Vec::new();
    let mut first = None;
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if first.is_some() && !until_close {
            break;
        }
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => n,
        };
        all.extend_from_slice(&buf[..n]);
        if first.is_none() {
            first = parse_response(&all);
        }
    }
    writer.abort();
    let (status, headers, body, first_len) = first.unwrap_or((0, Vec::new(), String::new(), 0));
    Answer { status, headers, body, all, closed, first_len }
}

// -------------------------------------------------------------------------------------------------
// The cases
// -------------------------------------------------------------------------------------------------

/// What a case must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Refused by the proxy's checks: this status, the proxy's text body containing the given words,
    /// `x-lbfleet-node`, `Connection: close`, the connection closed, nothing forwarded.
    Refused(u16, &'static str),
    /// Refused by hyper before the proxy sees a request (its own empty answer): this status, the
    /// connection closed, nothing forwarded.
    RefusedByHyper(u16),
    /// A body failure found while forwarding: this status and text, the connection closed, and the
    /// backend got no complete request (it may have seen a head and part of a body, then a close).
    Aborted(u16, &'static str),
    /// Forwarded: 200 from the backend, which received exactly one request.
    One,
    /// [`Want::One`], and then the connection closed.
    OneThenClosed,
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Check one case against a fresh backend connection log; returns the request the backend got for
/// [`Want::One`].
async fn run_case(p: &Proxy, b: &RawBackend, name: &str, bytes: Vec<u8>, want: Want) -> Option<Received> {
    let before_conns = b.conns().len();
    let before = b.requests().len();
    let until_close = !matches!(want, Want::One);
    let want_closed = matches!(want, Want::OneThenClosed);
    let a = exchange(p.addr, bytes, until_close).await;
    let shown = String::from_utf8_lossy(&a.all[..a.all.len().min(600)]).into_owned();
    assert!(a.after_first().is_empty(), "{name}: more than one response on the connection: {shown}");
    let got = |what: &str| format!("{name}: {what}; client read: {shown}");
    match want {
        Want::Refused(status, words) => {
            assert_eq!(a.status, status, "{}", got("status"));
            assert!(a.body.contains(words), "{}", got(&format!("body names \"{words}\"")));
            assert_eq!(a.header("x-lbfleet-node"), Some("1"), "{}", got("x-lbfleet-node"));
            assert_eq!(a.header("connection"), Some("close"), "{}", got("Connection: close"));
            assert!(a.closed, "{}", got("connection closed"));
        }
        Want::RefusedByHyper(status) => {
            assert_eq!(a.status, status, "{}", got("status"));
            assert!(a.closed, "{}", got("connection closed"));
        }
        Want::Aborted(status, words) => {
            assert_eq!(a.status, status, "{}", got("status"));
            assert!(a.body.contains(words), "{}", got(&format!("body names \"{words}\"")));
            assert_eq!(a.header("connection"), Some("close"), "{}", got("Connection: close"));
            assert!(a.closed, "{}", got("connection closed"));
        }
        Want::One | Want::OneThenClosed => {
            assert_eq!(a.status, 200, "{}", got("status"));
            assert_eq!(a.header("x-backend"), Some("raw"), "{}", got("answered by the backend"));
            if want_closed {
                assert_eq!(a.header("connection"), Some("close"), "{}", got("Connection: close"));
                assert!(a.closed, "{}", got("connection closed"));
            }
        }
    }
    let requests = b.requests();
    let new: Vec<&Received> = requests[before..].iter().collect();
    assert!(
        !new.iter().any(|r| r.target.contains("smuggled")),
        "{name}: a hidden request reached the backend: {new:#?}"
    );
    match want {
        Want::One | Want::OneThenClosed => {
            assert_eq!(new.len(), 1, "{name}: the backend got {} requests: {new:#?}", new.len());
            Some(new[0].clone())
        }
        Want::Aborted(..) => {
            assert!(new.is_empty(), "{name}: a complete request reached the backend: {new:#?}");
            // Whatever reached the backend of this request, its connection was closed unfinished.
            for c in &b.conns()[before_conns..] {
                if !c.bytes.is_empty() {
                    wait_until(&format!("{name}: the backend connection closed"), || {
                        b.conns()[before_conns..].iter().all(|c| c.bytes.is_empty() || c.closed)
                    })
                    .await;
                    assert!(
                        c.unfinished(),
                        "{name}: the backend saw {:?}",
                        String::from_utf8_lossy(&c.bytes)
                    );
                }
            }
            None
        }
        _ => {
            assert!(new.is_empty(), "{name}: reached the backend: {new:#?}");
            let sent: usize = b.conns()[before_conns..].iter().map(|c| c.bytes.len()).sum();
            assert_eq!(sent, 0, "{name}: bytes reached the backend");
            None
        }
    }
}

/// `POST /{name}` with `headers` and `body` as raw bytes, then a hidden request.
fn post(name: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("POST /{name} HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}{SMUGGLED}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_framing_cases_are_refused_or_forwarded_as_one_request() {
    let b = RawBackend::start(160, 2).await;
    let p = Proxy::start(160, 1, b.addr, "").await;
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    use Want::*;
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        // Transfer-Encoding variants.
        ("te-xchunked", post("te-x", "Transfer-Encoding: xchunked\r\n", chunked), RefusedByHyper(400)),
        (
            "te-chunked-identity",
            post("te-ci", "Transfer-Encoding: chunked, identity\r\n", chunked),
            RefusedByHyper(400),
        ),
        (
            "te-gzip-chunked",
            post("te-gz", "Transfer-Encoding: gzip, chunked\r\n", chunked),
            Refused(501, "transfer-encoding \"gzip, chunked\" is not supported"),
        ),
        (
            "te-two-lines",
            post("te-2", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked),
            Refused(400, "more than one Transfer-Encoding"),
        ),
        (
            "te-two-lines-gzip",
            post("te-2g", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", chunked),
            Refused(400, "more than one Transfer-Encoding"),
        ),
        (
            "te-space-before-colon",
            post("te-sp", "Transfer-Encoding : chunked\r\n", chunked),
            RefusedByHyper(400),
        ),
        (
            "te-folded",
            post("te-fold", "X-A: 1\r\n Transfer-Encoding: chunked\r\n", chunked),
            RefusedByHyper(400),
        ),
        (
            "te-http10",
            format!(
                "POST /te-10 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}{SMUGGLED}"
            )
            .into_bytes(),
            RefusedByHyper(400),
        ),
        // Content-Length variants.
        (
            "cl-two-different",
            post("cl-2d", "Content-Length: 0\r\nContent-Length: 37\r\n", ""),
            RefusedByHyper(400),
        ),
        ("cl-list-different", post("cl-ld", "Content-Length: 0, 37\r\n", ""), RefusedByHyper(400)),
        ("cl-list-same", post("cl-ls", "Content-Length: 5, 5\r\n", "hello"), RefusedByHyper(400)),
        ("cl-empty", post("cl-e", "Content-Length: \r\n", ""), RefusedByHyper(400)),
        ("cl-negative", post("cl-n", "Content-Length: -1\r\n", ""), RefusedByHyper(400)),
        ("cl-plus", post("cl-p", "Content-Length: +37\r\n", ""), RefusedByHyper(400)),
        ("cl-hex", post("cl-h", "Content-Length: 0x25\r\n", ""), RefusedByHyper(400)),
        // obs-fold anywhere.
        (
            "obs-fold",
            format!("GET /fold HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n{SMUGGLED}").into_bytes(),
            RefusedByHyper(400),
        ),
        (
            "obs-fold-tab",
            format!("GET /fold HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n{SMUGGLED}").into_bytes(),
            RefusedByHyper(400),
        ),
        // Bad chunks: found while the body is forwarded.
        (
            "chunk-size-not-hex",
            post("ch-zz", "Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            Aborted(400, "bad request body"),
        ),
        (
            "chunk-size-overflow",
            post("ch-of", "Transfer-Encoding: chunked\r\n", "fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Aborted(400, "bad request body"),
        ),
        (
            "chunk-missing-crlf",
            post("ch-crlf", "Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"),
            Aborted(400, "bad request body"),
        ),
        (
            "chunk-size-space-in-hex",
            post("ch-sp", "Transfer-Encoding: chunked\r\n", "5 5\r\nhello\r\n0\r\n\r\n"),
            Aborted(400, "bad request body"),
        ),
        (
            "chunk-extension-abuse",
            post(
                "ch-ext",
                "Transfer-Encoding: chunked\r\n",
                &format!("1;{}\r\na\r\n0\r\n\r\n", "x=y;".repeat(5000)),
            ),
            Aborted(400, "bad request body"),
        ),
        (
            "chunk-last-without-crlf",
            post("ch-last", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n"),
            Aborted(400, "bad request body"),
        ),
        // Host.
        (
            "host-missing",
            format!("GET /nohost HTTP/1.1\r\nX-A: 1\r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "without a Host header"),
        ),
        (
            "host-twice",
            format!("GET /twohost HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "more than one Host"),
        ),
        (
            "host-twice-same",
            format!("GET /twohost HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "more than one Host"),
        ),
        (
            "host-empty",
            format!("GET /emptyhost HTTP/1.1\r\nHost: \r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "invalid Host"),
        ),
        (
            "host-invalid",
            format!("GET /badhost HTTP/1.1\r\nHost: a/b@c\r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "invalid Host \"a/b@c\""),
        ),
        (
            "host-userinfo",
            format!("GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n{SMUGGLED}").into_bytes(),
            Refused(400, "userinfo"),
        ),
    ];
    for (name, bytes, want) in cases {
        run_case(&p, &b, name, bytes, want).await;
    }

    // Both framings, in either order: hyper decodes the body as chunked (Transfer-Encoding overrides
    // Content-Length, RFC 9112 §6.3), drops the length and closes the connection after the answer, so
    // what follows the chunked body is never read as a request.
    for (name, framing, body, sent) in [
        ("cl-te", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n", &b""[..]),
        ("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", chunked, &b"hello"[..]),
        (
            "cl-te-cl",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            chunked,
            &b"hello"[..],
        ),
    ] {
        let r = run_case(&p, &b, name, post(name, framing, body), Want::OneThenClosed).await.unwrap();
        assert_eq!(r.body, sent, "{name}");
        assert!(r.all("content-length").is_empty(), "{name}: {r:?}");
        assert_eq!(r.all("transfer-encoding"), ["chunked"], "{name}: {r:?}");
    }

    // Forwarded once, framed once.
    let te_ok = |value: &str| {
        format!("POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:{value}\r\n\r\n{chunked}").into_bytes()
    };
    for (name, value) in
        [("te-leading-spaces", "   chunked"), ("te-leading-tab", "\tchunked"), ("te-upper", " CHUNKED")]
    {
        let r = run_case(&p, &b, name, te_ok(value), One).await.unwrap();
        assert_eq!(r.body, b"hello", "{name}");
        assert_eq!(r.all("transfer-encoding"), ["chunked"], "{name}: {r:?}");
        assert!(r.all("content-length").is_empty(), "{name}: {r:?}");
    }
    for (name, cl) in [("cl-two-same", "Content-Length: 5\r\nContent-Length: 5\r\n")] {
        let bytes = format!("POST /cl HTTP/1.1\r\nHost: a\r\n{cl}\r\nhello").into_bytes();
        let r = run_case(&p, &b, name, bytes, One).await.unwrap();
        assert_eq!(r.all("content-length"), ["5"], "{name}: the length goes out once: {r:?}");
        assert_eq!(r.body, b"hello", "{name}");
    }
    // A GET whose body hides a second request: one request, its body the hidden bytes.
    let bytes =
        format!("GET /pipe HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len());
    let r = run_case(&p, &b, "get-with-hidden-request", bytes.into_bytes(), One).await.unwrap();
    assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/pipe"));
    assert_eq!(r.body, SMUGGLED.as_bytes());
    // Host: HTTP/1.0 without one is forwarded with the listener's address; an absolute-form target
    // wins over Host and goes out in origin form.
    let r = run_case(&p, &b, "http10-no-host", b"GET /old HTTP/1.0\r\n\r\n".to_vec(), One).await.unwrap();
    assert_eq!(r.all("host"), [p.addr.to_string()]);
    let bytes = b"GET http://target.example/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n".to_vec();
    let r = run_case(&p, &b, "absolute-form", bytes, One).await.unwrap();
    assert_eq!((r.target.as_str(), r.all("host")), ("/abs?q=1", vec!["target.example"]));

    // Every refusal is counted by reason.
    for (reason, n) in [
        ("transfer_encoding_repeated", 2),
        ("transfer_encoding_unsupported", 1),
        ("missing_host", 1),
        ("duplicate_host", 2),
        ("invalid_host", 3),
        ("bad_body", 6),
    ] {
        assert_eq!(p.refused(reason), n, "lbfleet_http_refused_total reason={reason}");
    }
    // hyper's own refusals (14 cases above) are counted when their connections end.
    wait_until("hyper's refusals counted", || p.refused("malformed") == 14).await;

    // A client's bad body is the client's fault: nothing counted as a backend failure, and the backend
    // stays usable on this node (six 502s would have ejected it: `consecutive_5xx` is 5).
    let text = counters_text(&p.ctx.metrics);
    let backend_5xx = format!("backend=\"{}\",code_class=\"5xx\"", b.addr);
    assert!(!text.contains(&backend_5xx), "{text}");
    assert!(p.ctx.outlier.is_usable("web", b.addr));

    // Still serving.
    let a = exchange(p.addr, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), false).await;
    assert_eq!(a.status, 200);
    assert_eq!(b.requests().last().unwrap().target, "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused() {
    let b = RawBackend::start(161, 2).await;
    // Defaults: head 32 KiB, 100 headers, request line 8 KiB; hyper's buffer 64 KiB, 200 headers.
    let p = Proxy::start(161, 1, b.addr, "").await;
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: a\r\n{extra}\r\n{SMUGGLED}").into_bytes()
    };
    let header = |n: usize| format!("X-Big: {}\r\n", "h".repeat(n));
    let many = |n: usize| (0..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
    use Want::*;
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "header-over-the-limit",
            get("/", &header(40 * 1024)),
            Refused(431, "above the limit of 32768 bytes"),
        ),
        ("header-over-hyper-buffer", get("/", &header(200 * 1024)), RefusedByHyper(431)),
        ("too-many-headers", get("/", &many(100)), Refused(431, "101 header lines, above the limit of 100")),
        ("far-too-many-headers", get("/", &many(300)), RefusedByHyper(431)),
        (
            "uri-over-the-limit",
            get(&format!("/{}", "u".repeat(9000)), ""),
            Refused(414, "above the limit of 8192 bytes"),
        ),
        ("uri-over-hyper-buffer", get(&format!("/{}", "u".repeat(70_000)), ""), RefusedByHyper(431)),
    ];
    for (name, bytes, want) in cases {
        run_case(&p, &b, name, bytes, want).await;
    }
    // Just within every limit: forwarded.
    let plain = |extra: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes();
    let head_room = 32 * 1024 - 200;
    let r = run_case(&p, &b, "header-within", plain(&header(head_room)), One).await.unwrap();
    assert_eq!(r.all("x-big")[0].len(), head_room);
    let r = run_case(&p, &b, "99-headers", plain(&many(99)), One).await.unwrap();
    assert_eq!(r.all("x-98"), ["v"]);
    assert_eq!(p.refused("too_many_headers"), 1);
    assert_eq!(p.refused("request_line_too_long"), 1);
    wait_until("hyper's refusals counted", || p.refused("head_too_large") == 4).await;

    // A body limit, declared and streamed.
    let b = RawBackend::start(161, 4).await;
    let p = Proxy::start(161, 3, b.addr, "[listener.limits]\nmax_body = 1000\n").await;
    let body = "x".repeat(1000);
    let bytes = format!("POST /cl-at HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{body}").into_bytes();
    let r = run_case(&p, &b, "cl-at-the-limit", bytes, One).await.unwrap();
    assert_eq!(r.body.len(), 1000);
    let bytes =
        format!("POST /cl-over HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n{body}x").into_bytes();
    run_case(
        &p,
        &b,
        "cl-over-the-limit",
        bytes,
        Refused(413, "request body of 1001 bytes, above the limit of 1000"),
    )
    .await;
    let chunked = |total: usize| {
        let mut s = String::new();
        for _ in 0..total / 100 {
            s += &format!("64\r\n{}\r\n", "c".repeat(100));
        }
        s + "0\r\n\r\n"
    };
    let bytes =
        format!("POST /ch-at HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(1000))
            .into_bytes();
    let r = run_case(&p, &b, "chunked-at-the-limit", bytes, One).await.unwrap();
    assert_eq!(r.body.len(), 1000);
    let bytes =
        format!("POST /ch-over HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(2000))
            .into_bytes();
    run_case(
        &p,
        &b,
        "chunked-over-the-limit",
        bytes,
        Aborted(413, "request body above the limit of 1000 bytes"),
    )
    .await;
    assert_eq!(p.refused("body_too_large"), 2);
    let a = exchange(p.addr, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), false).await;
    assert_eq!(a.status, 200);
}

/// A client that sends its head a byte at a time, more slowly than `request_header` allows but fast
/// enough never to be idle, is cut at `request_header`: on a new connection and on a keep-alive one,
/// where the timeout starts again for each head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_at_the_request_header_timeout() {
    let b = RawBackend::start(162, 2).await;
    let p =
        Proxy::start(162, 1, b.addr, "[listener.timeouts]\nrequest_header = \"1s\"\nidle = \"60s\"\n").await;
    // 2,000 bytes at one per 10 ms would take 20 s: far beyond the 1 s header timeout.
    let trickle = format!("GET /slowloris HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n", "p".repeat(2000));
    for keep_alive_first in [false, true] {
        let mut s = within("connect", TcpStream::connect(p.addr)).await.unwrap();
        if keep_alive_first {
            s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while parse_response(&got).is_none() {
                let n = within("first response", s.read(&mut buf)).await.unwrap();
                assert!(n > 0, "closed before the first response");
                got.extend_from_slice(&buf[..n]);
            }
        }
        let mut sent = 0;
        let mut cut = false;
        let mut buf = [0u8; 4096];
        for byte in trickle.as_bytes() {
            if s.write_all(std::slice::from_ref(byte)).await.is_err() {
                cut = true;
                break;
            }
            sent += 1;
            // Between bytes, see whether the proxy closed.
            match tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut = true;
                    break;
                }
                Ok(Ok(n)) => panic!("unexpected answer: {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
        assert!(cut, "keep_alive_first={keep_alive_first}: the whole head was trickled without a cut");
        assert!(sent < trickle.len(), "keep_alive_first={keep_alive_first}");
    }
    assert!(!b.requests().iter().any(|r| r.target == "/slowloris"));
    assert_eq!(b.requests().len(), 1, "only /first reached the backend");
    wait_until("header timeouts counted", || p.refused("header_timeout") == 2).await;
    // Still serving.
    let a = exchange(p.addr, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), false).await;
    assert_eq!(a.status, 200);
}

/// HTTP/2 has the same limits: the header list size is hyper's `max_header_list_size`, set to
/// `max_request_head` (h2 answers 431 itself), and the header count and `Host` rules are the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_meet_the_same_limits() {
    use hyper::Request;
    let b = RawBackend::start(163, 2).await;
    let p = Proxy::start(163, 1, b.addr, "").await;
    let tcp = within("connect", TcpStream::connect(p.addr)).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let send = |mut client: h2::client::SendRequest<bytes::Bytes>, req: Request<()>| async move {
        client = within("h2 ready", client.ready()).await.unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = within("h2 response", resp).await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = within("h2 body", body.data()).await {
            text.extend_from_slice(&chunk.unwrap());
        }
        (client, status, String::from_utf8_lossy(&text).into_owned())
    };
    let mut req = Request::get(format!("http://{}/h2-many", p.addr));
    for i in 0..101 {
        req = req.header(format!("x-{i}"), "v");
    }
    let (client, status, text) = send(client, req.body(()).unwrap()).await;
    assert_eq!((status, text.as_str()), (431, "101 header lines, above the limit of 100\n"));
    let req = Request::get(format!("http://{}/h2-big", p.addr)).header("x-big", "h".repeat(40 * 1024));
    let (client, status, _) = send(client, req.body(()).unwrap()).await;
    assert_eq!(status, 431);
    // 20 KiB: above hyper's default list size (16 KiB), within the listener's 32 KiB head.
    let req = Request::get(format!("http://{}/h2-mid", p.addr)).header("x-mid", "h".repeat(20 * 1024));
    let (_client, status, _) = send(client, req.body(()).unwrap()).await;
    assert_eq!(status, 200);
    let targets: Vec<String> = b.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/h2-mid"]);
    assert_eq!(p.refused("too_many_headers"), 1);
    conn.abort();
}
