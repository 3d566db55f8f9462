//! HAProxy in front of a real `lbnode`, speaking the PROXY protocol to it (`send-proxy` and
//! `send-proxy-v2`), the way an L4 load balancer before the fleet would.
//!
//! What must hold: on an HTTP listener with `accept_proxy_protocol`, the backend sees the address of
//! the client that connected to HAProxy in `X-Forwarded-For`, not HAProxy's; on a TCP listener that
//! also sends `proxy_protocol = 1` to its backend, that backend gets a header naming the same client
//! and the address it connected to on HAProxy; a connection from a source outside the trusted list is
//! closed before any request reaches a backend; `/metrics` counts both.
//!
//! Addresses: the node on 127.0.180.11 (the harness's layout), backends in this test process on
//! 127.0.181.x, HAProxy listening and connecting from 127.0.182.1 (the trusted front), clients on
//! 127.0.183.x, an untrusted direct client on 127.0.184.1. Skipped (with a notice) where `haproxy`
//! is not installed; CI (`.ci/run`) installs it.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const NET: u8 = 180;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
/// lbnode's listeners: HTTP and TCP.
const NODE_HTTP: u16 = 7680;
const NODE_TCP: u16 = 7681;
/// HAProxy's frontends: towards the HTTP listener with v1 and v2, towards the TCP listener with v2.
const FRONT_V1: u16 = 7682;
const FRONT_V2: u16 = 7683;
const FRONT_TCP: u16 = 7684;

fn ip(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, c, d))
}

/// HTTP backend: answers with the `X-Forwarded-For` it received as the body.
async fn http_backend(at: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind(at).await.with_context(|| format!("bind http backend {at}"))?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                    let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
                    let body = format!("xff={}", xff.unwrap_or(""));
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    Ok((addr, task))
}

/// HAProxy, killed when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn haproxy_config(node: Ipv4Addr) -> String {
    let front = ip(182, 1);
    let mut cfg =
        "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
                   timeout server 30s\n"
            .to_string();
    for (port, target, send) in [
        (FRONT_V1, NODE_HTTP, "send-proxy"),
        (FRONT_V2, NODE_HTTP, "send-proxy-v2"),
        (FRONT_TCP, NODE_TCP, "send-proxy-v2"),
    ] {
        cfg += &format!(
            "\nfrontend f{port}\n  bind {front}:{port}\n  default_backend b{port}\n\
             \nbackend b{port}\n  server lbnode {node}:{target} {send} source {front}\n"
        );
    }
    cfg
}

/// From `from`, send `bytes` to `to` (half-closing unless they end an HTTP request with
/// `Connection: close`) and read until the other side closes.
async fn exchange(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0)).with_context(|| format!("bind client {from}"))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .map_err(|_| anyhow!("connect {from} -> {to} timed out"))??;
    s.write_all(bytes).await?;
    if !bytes.ends_with(b"Connection: close\r\n\r\n") {
        s.shutdown().await?;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("answer via {to} timed out"))??;
    Ok(out)
}

/// One GET from `from` through `to`; the body (the backend's view of `X-Forwarded-For`).
async fn get_via(from: IpAddr, to: SocketAddr) -> Result<String> {
    let resp = exchange(from, to, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").await?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    ensure!(resp.starts_with("HTTP/1.1 200"), "via {to}: {resp:?}");
    let (_, body) = resp.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no body: {resp:?}"))?;
    Ok(body.to_string())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_names_the_client_with_send_proxy_and_send_proxy_v2() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        println!("NOTICE: haproxy is not installed (Debian package haproxy); skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 1, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let (web, _w) = http_backend(SocketAddr::new(ip(181, 1), 0)).await?;
    let (raw, _r) = lbfleet_tests::backend::tcp_echo(SocketAddr::new(ip(181, 2), 0)).await?;
    let trusted = "accept_proxy_protocol = { from = [\"127.0.182.0/24\"] }";
    let toml = format!(
        "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddr = \"{web}\"\n[pool.health]\nkind = \"none\"\n\n\
         [[pool]]\nname = \"raw\"\n[[pool.backend]]\naddr = \"{raw}\"\n[pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {NODE_HTTP}\npool = \"web\"\n{trusted}\n\n\
         [[listener]]\nname = \"raw\"\nprotocol = \"tcp\"\nport = {NODE_TCP}\npool = \"raw\"\nproxy_protocol = 1\n\
         {trusted}\n"
    );
    admin::apply_toml(&c.nodes[0].grpc_addr(), &toml).await.context("apply config")?;

    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(c.nodes[0].ip))?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start haproxy")?;
    let _haproxy = Haproxy(child);

    let client = ip(183, 7);
    let (v1, v2) = (SocketAddr::new(ip(182, 1), FRONT_V1), SocketAddr::new(ip(182, 1), FRONT_V2));
    wait_until("HAProxy and the node to serve through send-proxy", SERVE, || async move {
        ensure!(get_via(client, v1).await? == format!("xff={client}"));
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    for front in [v1, v2, v1, v2] {
        let body = get_via(client, front).await?;
        ensure!(
            body == format!("xff={client}"),
            "through {front} the backend saw {body:?}, not the client {client}"
        );
    }

    // TCP: HAProxy's v2 header in, the node's v1 header out, naming the client and HAProxy's address.
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(client, 0))?;
    let tcp_front = SocketAddr::new(ip(182, 1), FRONT_TCP);
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(tcp_front)).await??;
    let port = s.local_addr()?.port();
    s.write_all(b"hello").await?;
    s.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await??;
    let want = format!("PROXY TCP4 {client} 127.0.182.1 {port} {FRONT_TCP}\r\nhello");
    ensure!(
        String::from_utf8_lossy(&answer) == want,
        "the tcp backend got {:?}, not {want:?}",
        String::from_utf8_lossy(&answer)
    );

    // A direct connection from outside the trusted list is closed before any request.
    let direct = SocketAddr::new(IpAddr::V4(c.nodes[0].ip), NODE_HTTP);
    let mut spoofed = b"PROXY TCP4 198.51.100.1 127.0.180.11 1234 7680\r\n".to_vec();
    spoofed.extend_from_slice(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n");
    let got = exchange(ip(184, 1), direct, &spoofed).await;
    ensure!(got.as_ref().map_or(true, Vec::is_empty), "an untrusted source was answered: {got:?}");

    let text = http_get(&c.nodes[0].http_addr(), "/metrics", &[]).await?.2;
    let text = String::from_utf8_lossy(&text).into_owned();
    for (listener, result, at_least) in
        [("web", "accepted", 5.0), ("raw", "accepted", 1.0), ("web", "untrusted", 1.0)]
    {
        let series = format!(
            "lbfleet_proxy_protocol_headers_total{{node=\"1\",listener=\"{listener}\",result=\"{result}\"}}"
        );
        ensure!(
            value(&text, &series).is_some_and(|v| v >= at_least),
            "{series} should be at least {at_least} in\n{text}"
        );
    }
    Ok(())
}
