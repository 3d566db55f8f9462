//! Listeners with `accept_proxy_protocol`, in process: the real HTTP and TCP proxies on loopback
//! sockets, a routing snapshot from a real `ClusterState`, real backends, and fronts on raw sockets
//! that send headers our encoder writes (v1 and v2) or malformed ones. (`tests/tests/proxy_protocol.rs`
//! puts HAProxy in front of a real `lbnode`.)
//!
//! Addresses: proxies on 127.0.180.x, backends on 127.0.181.x, trusted fronts on 127.0.182.x, an
//! untrusted source on 127.0.183.x.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use super::{encode, Version, V2_SIGNATURE};
use crate::balance::hash_ip;
use crate::balance::routing::SharedRouting;
use crate::proxy::counters::{counters_text, value_of};
use crate::proxy::tcp::tests::{answer_after_eof_backend, config};
use crate::proxy::testkit::{context, ip, routing_for, within};
use crate::proxy::ProxyContext;
use crate::shutdown::Trigger;

const TRUSTED: &str = "accept_proxy_protocol = { from = [\"127.0.182.0/24\"] }";

/// An HTTP backend that answers every request with `x-backend: <name>` and a body of the forwarding
/// headers it received, and counts requests.
struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(name: &'static str, d: u8) -> Backend {
    let listener = TcpListener::bind(SocketAddr::new(ip(181, d), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap_or("?").to_string());
                    let body = format!(
                        "xff={}\nforwarded={}\n",
                        h("x-forwarded-for").unwrap_or_default(),
                        h("forwarded").unwrap_or_default()
                    );
                    let resp =
                        Response::builder().header("x-backend", name).body(Full::new(Bytes::from(body)));
                    async move { Ok::<_, Infallible>(resp.unwrap()) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, requests, task }
}

/// A running proxy (HTTP or TCP) of listener `l`.
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

async fn start(protocol: &str, addr: SocketAddr, routing: &SharedRouting) -> Proxy {
    let listener = TcpListener::bind(addr).await.unwrap();
    let (stop, rx) = crate::shutdown::channel();
    let ctx = context(addr.ip(), routing);
    let task = match protocol {
        "http" => tokio::spawn(crate::proxy::http::serve("l".into(), listener, Arc::clone(&ctx), rx)),
        _ => tokio::spawn(crate::proxy::tcp::serve("l".into(), listener, Arc::clone(&ctx), rx)),
    };
    Proxy { addr, ctx, _stop: stop, task }
}

/// From `from`, send `bytes` to `to` and read everything until the proxy closes (an error when it
/// resets the connection). A TCP exchange half-closes after sending; an HTTP one ends its last request
/// with `Connection: close` instead (hyper stops at a client's half-close).
async fn exchange(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let mut s = sock.connect(to).await?;
    s.write_all(bytes).await?;
    if !bytes.ends_with(b"Connection: close\r\n\r\n") {
        s.shutdown().await?;
    }
    let mut out = Vec::new();
    within("the proxy's answer and close", s.read_to_end(&mut out)).await?;
    Ok(out)
}

fn header_value<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn headers_counter(ctx: &ProxyContext, result: &str) -> u64 {
    let series = format!("proxy_protocol_headers_total{{listener=\"l\",result=\"{result}\"}}");
    value_of(&counters_text(&ctx.metrics), &series).unwrap_or(0)
}

#[tokio::test]
async fn http_listener_forwards_and_hashes_on_the_client_the_front_names() {
    let backends = [backend("b1", 1).await, backend("b2", 2).await, backend("b3", 3).await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let routing = routing_for(&config("http", 7180, "maglev", "source_ip", &addrs, TRUSTED));
    let p = start("http", SocketAddr::new(ip(180, 1), 7180), &routing).await;
    let names: Vec<(SocketAddr, &str)> = addrs.iter().copied().zip(["b1", "b2", "b3"]).collect();

    let mut connections = 0;
    let mut seen_backends = std::collections::BTreeSet::new();
    for (i, version) in (1..=12u8).zip([Version::V1, Version::V2].into_iter().cycle()) {
        let client = SocketAddr::new(IpAddr::from([203, 0, 113, i]), 40000 + u16::from(i));
        let mut wire = encode(version, client, p.addr);
        // Two requests on the connection: both are the front's client.
        wire.extend_from_slice(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let resp = exchange(ip(182, 1), p.addr, &wire).await.unwrap();
        connections += 1;
        let resp = String::from_utf8_lossy(&resp);
        assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
        assert_eq!(resp.matches(&format!("xff={}\n", client.ip())).count(), 2, "{resp}");
        assert_eq!(resp.matches(&format!("forwarded=for={};proto=http;host=x\n", client.ip())).count(), 2);
        // Maglev on the source IP picks the backend of the header's client, not of the front.
        let want = routing.load().pool("p").unwrap().pick(hash_ip(client.ip())).next().unwrap().addr();
        let want_name = names.iter().find(|(a, _)| *a == want).unwrap().1;
        assert_eq!(header_value(&resp, "x-backend"), Some(want_name), "client {client}: {resp}");
        seen_backends.insert(want_name);
    }
    assert!(seen_backends.len() > 1, "the clients should not all hash to one backend: {seen_backends:?}");
    assert_eq!(headers_counter(&p.ctx, "accepted"), connections);
}

#[tokio::test]
async fn http_listener_closes_malformed_and_untrusted_headers_before_any_request() {
    let b = backend("b1", 4).await;
    let routing = routing_for(&config("http", 7181, "round_robin", "source_ip", &[b.addr], TRUSTED));
    let p = start("http", SocketAddr::new(ip(180, 2), 7181), &routing).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // No header at all: the request itself is the malformed header.
    let got = exchange(ip(182, 2), p.addr, request).await;
    assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");
    // A version 2 header with a family the spec does not define.
    let mut bad = V2_SIGNATURE.to_vec();
    bad.extend_from_slice(&[0x21, 0x13, 0x00, 0x0c]);
    bad.extend_from_slice(&[0; 12]);
    bad.extend_from_slice(request);
    let got = exchange(ip(182, 2), p.addr, &bad).await;
    assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");
    // A well-formed header from a source outside `from`.
    let mut spoofed = encode(Version::V1, "198.51.100.1:1234".parse().unwrap(), p.addr);
    spoofed.extend_from_slice(request);
    let got = exchange(ip(183, 1), p.addr, &spoofed).await;
    assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");

    assert_eq!(b.requests.load(Ordering::SeqCst), 0, "no request may reach a backend");
    assert_eq!(headers_counter(&p.ctx, "malformed"), 2);
    assert_eq!(headers_counter(&p.ctx, "untrusted"), 1);
    assert_eq!(headers_counter(&p.ctx, "accepted"), 0);

    // The listener still serves a well-formed header from a trusted front.
    let mut good = encode(Version::V2, "198.51.100.1:1234".parse().unwrap(), p.addr);
    good.extend_from_slice(request);
    let resp = exchange(ip(182, 2), p.addr, &good).await.unwrap();
    assert!(String::from_utf8_lossy(&resp).contains("xff=198.51.100.1\n"));
    assert_eq!(headers_counter(&p.ctx, "accepted"), 1);
}

#[tokio::test]
async fn tcp_listener_sends_the_fronts_addresses_on_to_the_backend() {
    let (b, _t) = answer_after_eof_backend("b", SocketAddr::new(ip(181, 10), 0)).await;
    let extra = format!("proxy_protocol = 2\n{TRUSTED}");
    let routing = routing_for(&config("tcp", 7182, "round_robin", "source_addr", &[b], &extra));
    let p = start("tcp", SocketAddr::new(ip(180, 3), 7182), &routing).await;

    // A v1 header in, the same addresses re-encoded as v2 out, then the client's bytes untouched.
    let (client, dst): (SocketAddr, SocketAddr) =
        ("198.51.100.7:4242".parse().unwrap(), "192.0.2.1:443".parse().unwrap());
    let mut wire = encode(Version::V1, client, dst);
    wire.extend_from_slice(b"payload");
    let answer = exchange(ip(182, 3), p.addr, &wire).await.unwrap();
    let mut want = b"b:".to_vec();
    want.extend_from_slice(&encode(Version::V2, client, dst));
    want.extend_from_slice(b"payload");
    assert_eq!(answer, want);

    // A LOCAL header (the front's own connection, e.g. its health check): the socket's addresses.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(182, 4), 0)).unwrap();
    let mut s = sock.connect(p.addr).await.unwrap();
    let front = s.local_addr().unwrap();
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    local.extend_from_slice(b"ping");
    s.write_all(&local).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the answer", s.read_to_end(&mut answer)).await.unwrap();
    let mut want = b"b:".to_vec();
    want.extend_from_slice(&encode(Version::V2, front, p.addr));
    want.extend_from_slice(b"ping");
    assert_eq!(answer, want);

    // A cut header closes the connection before any backend is dialled.
    let got = exchange(ip(182, 3), p.addr, b"PROXY TCP4 198.51.100.7").await;
    assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");
    assert_eq!(headers_counter(&p.ctx, "accepted"), 2);
    assert_eq!(headers_counter(&p.ctx, "closed"), 1);
    let text = counters_text(&p.ctx.metrics);
    assert_eq!(
        value_of(&text, &format!("tcp_connections_total{{listener=\"l\",pool=\"p\",backend=\"{b}\"}}")),
        Some(2)
    );
}
