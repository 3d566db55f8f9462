//! Hostile HTTP/1.1 against real `lbnode` processes: the listener's `[listener.limits]` travel through
//! the replicated config to every node, each node refuses what they forbid (and the `Host` and framing
//! rules) before anything reaches the backend, counts the refusals on `/metrics`, and a config with an
//! out-of-range limit is refused while the old one keeps serving. The full case list runs in process
//! (`node/src/proxy/http/hostile_tests.rs`).
//!
//! Addresses: nodes on 127.0.164.11–12 (the harness's layout), a raw recording backend on 127.0.164.101.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NET: u8 = 164;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
const WEB_PORT: u16 = 18080;

fn config(backend: &str, limits: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{backend}\"\n\
         [pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {WEB_PORT}\npool = \"web\"\n\
         [listener.limits]\n{limits}\n"
    )
}

/// A backend that keeps every byte it receives and answers each `\r\n\r\n` it sees with a fixed
/// response (the requests the proxy lets through here have no body).
async fn recording_backend(addr: &str) -> Result<(String, Arc<Mutex<Vec<u8>>>)> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    let addr = l.local_addr()?.to_string();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let all = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let all = Arc::clone(&all);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut mine = Vec::new();
                let mut answered = 0;
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    mine.extend_from_slice(&buf[..n]);
                    all.lock().unwrap().extend_from_slice(&buf[..n]);
                    let heads = mine.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    for _ in answered..heads {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    answered = heads;
                }
            });
        }
    });
    Ok((addr, seen))
}

/// Write `bytes` on a new connection and read until the node closes it.
async fn raw(addr: &str, bytes: &[u8]) -> Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    tokio::time::timeout(SERVE, s.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("{addr} did not close the connection"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Status lines (`HTTP/1.1 NNN `) in `text`.
fn status_lines(text: &str) -> usize {
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| {
            let rest = &text.as_bytes()[i + 9..];
            rest.len() > 3 && rest[..3].iter().all(u8::is_ascii_digit) && rest[3] == b' '
        })
        .count()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_refuses_what_the_replicated_limits_forbid() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 2, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let (backend, seen) = recording_backend(&format!("127.0.{NET}.101:0")).await?;
    let limits = "max_headers = 20\nmax_body = 100";
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&backend, limits)).await.context("apply config")?;

    for id in [1u64, 2] {
        let web = format!("{}:{WEB_PORT}", c.ip_of(id));
        wait_until(&format!("node {id}'s listener on {web} to proxy"), SERVE, || {
            let web = web.clone();
            async move {
                let (status, _, _) = http_get(&web, "/ok", &[]).await?;
                ensure!(status == 200, "status {status}");
                Ok(())
            }
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
        let before = seen.lock().unwrap().len();
        let many: String = (0..21).map(|i| format!("X-{i}: v\r\n")).collect();
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        let cases = [
            (
                format!("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n{smuggled}"),
                "413",
                "request body of 101 bytes, above the limit of 100 bytes",
            ),
            (
                format!("GET /many HTTP/1.1\r\nHost: a\r\n{many}\r\n{smuggled}"),
                "431",
                "22 header lines, above the limit of 20",
            ),
            (format!("GET /nohost HTTP/1.1\r\n\r\n{smuggled}"), "400", "without a Host header"),
            (
                format!("GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{smuggled}"),
                "400",
                "more than one Host",
            ),
        ];
        for (bytes, status, words) in &cases {
            let answer = raw(&web, bytes.as_bytes()).await?;
            ensure!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "node {id}: {answer}");
            ensure!(answer.contains(words), "node {id}: no \"{words}\" in {answer}");
            ensure!(answer.contains(&format!("x-lbfleet-node: {id}\r\n")), "node {id}: {answer}");
            ensure!(status_lines(&answer) == 1, "node {id}: two answers: {answer}");
        }
        let reached = seen.lock().unwrap()[before..].to_vec();
        ensure!(reached.is_empty(), "node {id}: the backend got {:?}", String::from_utf8_lossy(&reached));

        let text = http_get(&c.nodes[id as usize - 1].http_addr(), "/metrics", &[]).await?.2;
        let text = String::from_utf8_lossy(&text).into_owned();
        for (reason, n) in [
            ("body_too_large", 1.0),
            ("too_many_headers", 1.0),
            ("missing_host", 1.0),
            ("duplicate_host", 1.0),
        ] {
            let series =
                format!("lbfleet_http_refused_total{{node=\"{id}\",listener=\"web\",reason=\"{reason}\"}}");
            ensure!(value(&text, &series) == Some(n), "{series} should be {n} in\n{text}");
        }
    }

    // An out-of-range limit is refused with its place, and the old limits keep serving.
    let err = admin::apply_toml(&c.nodes[1].grpc_addr(), &config(&backend, "max_headers = 0"))
        .await
        .expect_err("max_headers = 0 must be refused");
    ensure!(
        err.message().contains("listener \"web\" limits: max_headers 0 out of range 1..=1000"),
        "{}",
        err.message()
    );
    let web = format!("{}:{WEB_PORT}", c.ip_of(1));
    let answer = raw(&web, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n").await?;
    ensure!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    Ok(())
}
