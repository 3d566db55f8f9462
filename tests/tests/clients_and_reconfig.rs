//! Real clients through real lbnode processes (h2load, a WebSocket client library), and committed
//! config changes that must not cut established connections.
//!
//! Addresses: nodes on 127.0.51.1N; in-test backends on 127.0.51.10K.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use futures::{SinkExt, StreamExt};
use lbfleet_tests::{admin, http_get, wait_until, BackendProc, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const NET: u8 = 51;
const ELECTION: Duration = Duration::from_secs(20);

fn pool(name: &str, policy: &str, backends: &[&str]) -> String {
    let mut t =
        format!("[[pool]]\nname = \"{name}\"\npolicy = \"{policy}\"\n[pool.health]\nkind = \"none\"\n");
    for b in backends {
        t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
    }
    t
}

fn listener(name: &str, protocol: &str, port: u16, pool: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nport = {port}\npool = \"{pool}\"\n")
}

/// A WebSocket echo server (tokio-tungstenite) on `addr`, serving until the test ends.
async fn ws_echo_backend(addr: &str) -> Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

/// One HTTP/1.1 request on an existing connection; returns (status line, x-backend).
async fn request_on(conn: &mut TcpStream, path: &str) -> Result<(String, String)> {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The demo backend answers with a Content-Length body; read until the head and body are in.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("no answer on the kept connection"))??;
        ensure!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = &text[..head_end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                let status = head.lines().next().unwrap_or("").to_string();
                let backend = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("x-backend:").map(|v| v.trim().to_string())
                    })
                    .unwrap_or_default();
                return Ok((status, backend));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_and_a_websocket_client_work_through_a_node() -> Result<()> {
    let b1 = BackendProc::start("backend-1", "127.0.51.101:9001").await?;
    let b2 = BackendProc::start("backend-2", "127.0.51.102:9002").await?;
    ws_echo_backend("127.0.51.103:9003").await?;
    let mut c = Cluster::start(NET, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let cfg = pool("web", "round_robin", &[&b1.addr, &b2.addr])
        + &pool("ws", "maglev", &["127.0.51.103:9003"])
        + &listener("web", "http", 18080, "web")
        + &listener("ws", "http", 18081, "ws");
    admin::apply_toml(&c.node(leader).grpc_addr(), &cfg).await?;
    let node = "127.0.51.12";
    wait_until("the web listener on node 2", ELECTION, || async {
        let (s, _, _) = http_get(&format!("{node}:18080"), "/", &[]).await?;
        ensure!(s == 200, "status {s}");
        Ok(())
    })
    .await?;

    // h2load speaks HTTP/2 with prior knowledge to http:// URLs.
    match std::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10", &format!("http://{node}:18080/")])
        .output()
    {
        Err(_) => println!("NOTICE: h2load is not installed (apt-get install nghttp2-client); skipping it"),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "h2load failed: {text}");
            assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "h2load: {text}");
            assert!(text.contains("status codes: 2000 2xx"), "h2load: {text}");
        }
    }

    // A WebSocket client library through the proxy to a WebSocket echo backend.
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{node}:18081/chat")).await?;
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await?;
        let echo =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await?.ok_or(anyhow!("closed"))??;
        assert_eq!(echo.into_text()?.as_str(), msg);
    }
    ws.close(None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_keep_established_connections_and_drain_removed_backends() -> Result<()> {
    let b1 = BackendProc::start("backend-1", "127.0.51.111:9001").await?;
    let b2 = BackendProc::start("backend-2", "127.0.51.112:9002").await?;
    let mut c = Cluster::start(NET + 1, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let grpc = c.node(leader).grpc_addr();
    let both = [b1.addr.as_str(), b2.addr.as_str()];
    let v1 = pool("web", "round_robin", &both)
        + &listener("web-tcp", "tcp", 18090, "web")
        + &listener("web", "http", 18091, "web");
    admin::apply_toml(&grpc, &v1).await?;
    let node = "127.0.52.11";
    let tcp_addr: SocketAddr = format!("{node}:18090").parse()?;
    let mut conn =
        wait_until("the tcp listener", ELECTION, || async { Ok(TcpStream::connect(tcp_addr).await?) })
            .await?;
    let (status, pinned) = request_on(&mut conn, "/").await?;
    ensure!(status.contains("200"), "{status}");
    ensure!(pinned == "backend-1" || pinned == "backend-2", "answered by {pinned:?}");
    let other = if pinned == "backend-1" { &b2 } else { &b1 };

    // A slow HTTP request in flight while the config changes underneath it.
    let slow = tokio::spawn(http_get_owned(format!("{node}:18091"), "/sleep/1500".to_string()));

    // Change 1: a new listener and other timeouts; the TCP listener is untouched and keeps its connection.
    let v2 = v1.clone() + &listener("extra", "http", 18092, "web");
    admin::apply_toml(&grpc, &v2).await?;
    let (status, again) = request_on(&mut conn, "/").await?;
    ensure!(status.contains("200") && again == pinned, "after a config change: {status} from {again}");

    // Change 2: remove the backend this connection is on. It is drained, not cut: the established
    // connection still reaches it, new connections go to the remaining backend.
    let v3 = pool("web", "round_robin", &[other.addr.as_str()])
        + &listener("web-tcp", "tcp", 18090, "web")
        + &listener("web", "http", 18091, "web")
        + &listener("extra", "http", 18092, "web");
    admin::apply_toml(&grpc, &v3).await?;
    wait_until("node 1 to apply the change", ELECTION, || async {
        let got = admin::get_config(&format!("{node}:7400"), true).await?;
        ensure!(got.version == 3, "version {}", got.version);
        Ok(())
    })
    .await?;
    let (status, still) = request_on(&mut conn, "/").await?;
    ensure!(status.contains("200") && still == pinned, "the drained connection: {status} from {still}");
    for _ in 0..4 {
        let mut fresh = TcpStream::connect(tcp_addr).await?;
        let (_, b) = request_on(&mut fresh, "/").await?;
        ensure!(b == other.name, "a new connection went to {b}, not {}", other.name);
    }
    let (status, _, body) = slow.await??;
    ensure!(status == 200, "the in-flight request across two config changes: {status} {body:?}");
    Ok(())
}

async fn http_get_owned(addr: String, path: String) -> Result<(u16, hyper::HeaderMap, bytes::Bytes)> {
    http_get(&addr, &path, &[]).await
}
