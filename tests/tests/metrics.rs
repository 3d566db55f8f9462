//! A real node's `/metrics` after real traffic: the data-plane counters and gauges next to the Raft ones.
//!
//! Addresses: the node on 127.0.57.11 (the harness's layout), a demo backend on 127.0.57.101:9001 and
//! a backend address nobody listens on, 127.0.57.102:9.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, BackendProc, Cluster};

const NET: u8 = 57;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
const WEB_PORT: u16 = 18080;
const DEAD_PORT: u16 = 18081;
const MIXED_PORT: u16 = 18082;
const DEAD: &str = "127.0.57.102:9";

fn config(backend: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{backend}\"\n\
         [pool.health]\nkind = \"none\"\n\n\
         [[pool]]\nname = \"dead\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{DEAD}\"\n\
         [pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {WEB_PORT}\npool = \"web\"\n\n\
         [[pool]]\nname = \"mixed\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{DEAD}\"\n\
         [[pool.backend]]\naddr = \"{backend}\"\n[pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"dead\"\nprotocol = \"http\"\nport = {DEAD_PORT}\npool = \"dead\"\n\n\
         [[listener]]\nname = \"mixed\"\nprotocol = \"http\"\nport = {MIXED_PORT}\npool = \"mixed\"\n"
    )
}

/// `lbfleet_http_request_duration_seconds` of the listener `web` (its backend `b`, `ok` responses, one
/// of them held 300 ms by the backend) and of `dead` (one 503 of the proxy itself).
fn check_durations(text: &str, b: &str, ok: f64) -> Result<()> {
    let name = "lbfleet_http_request_duration_seconds";
    ensure!(text.contains(&format!("# TYPE {name} histogram")), "{name} is not a histogram in\n{text}");
    let web = format!("listener=\"web\",pool=\"web\",backend=\"{b}\"");
    let count = value(text, &format!("{name}_count{{node=\"1\",{web}}}"));
    ensure!(count == Some(ok), "{name}_count of {web} should equal its responses ({ok}) in\n{text}");
    let bucket = |le: &str| value(text, &format!("{name}_bucket{{node=\"1\",le=\"{le}\",{web}}}"));
    ensure!(bucket("+Inf") == Some(ok), "the +Inf bucket of {web} should hold all {ok} in\n{text}");
    ensure!(
        bucket("0.25").is_some_and(|v| v <= ok - 1.0) && bucket("0.5").is_some_and(|v| v >= 1.0),
        "the 300 ms request of {web} should be counted above 0.25 s in\n{text}"
    );
    let sum = value(text, &format!("{name}_sum{{node=\"1\",{web}}}"));
    ensure!(sum.is_some_and(|s| (0.3..30.0).contains(&s)), "{name}_sum of {web} is {sum:?} in\n{text}");
    let dead = format!("{name}_count{{node=\"1\",listener=\"dead\",pool=\"dead\",backend=\"\"}}");
    ensure!(value(text, &dead) == Some(1.0), "{dead} should be 1 in\n{text}");
    Ok(())
}

/// Bytes, retries, the ring digest and the Raft indexes after the traffic of the test.
fn check_traffic_and_raft(text: &str, b: &str) -> Result<()> {
    let web = format!("{{node=\"1\",listener=\"web\",pool=\"web\",backend=\"{b}\"}}");
    let received = value(text, &format!("lbfleet_received_bytes_total{web}"));
    ensure!(received.is_some_and(|v| v >= 1000.0), "received bytes of {web}: {received:?} in\n{text}");
    // Each demo answer names its backend: at least "backend-1" per response.
    let sent = value(text, &format!("lbfleet_sent_bytes_total{web}"));
    ensure!(sent.is_some_and(|v| v >= 6.0 * 9.0), "sent bytes of {web}: {sent:?} in\n{text}");
    let retries =
        "lbfleet_retries_total{node=\"1\",listener=\"mixed\",pool=\"mixed\",reason=\"connect_failure\"}";
    ensure!(value(text, retries).is_some_and(|v| v >= 1.0), "{retries} should be at least 1 in\n{text}");
    let ring = text
        .lines()
        .find_map(|l| l.strip_prefix("lbfleet_ring_info{node=\"1\",digest=\"")?.strip_suffix("\"} 1"))
        .with_context(|| format!("no lbfleet_ring_info in\n{text}"))?;
    ensure!(!ring.is_empty(), "an empty ring digest in\n{text}");
    let commit = value(text, "lbfleet_raft_commit_index{node=\"1\"}").unwrap_or(0.0);
    let last = value(text, "lbfleet_raft_last_log_index{node=\"1\"}").unwrap_or(0.0);
    ensure!(commit >= 2.0 && commit <= last, "commit index {commit} (last log {last}) in\n{text}");
    Ok(())
}

/// The value of the series `series` (name and labels exactly as rendered) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_nodes_responses_and_show_its_backends_and_listeners() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 1, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let backend = BackendProc::start("backend-1", &format!("127.0.{NET}.101:9001")).await?;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&backend.addr)).await.context("apply config")?;
    let ip = c.nodes[0].ip;
    let web = format!("{ip}:{WEB_PORT}");
    let dead = format!("{ip}:{DEAD_PORT}");
    wait_until(&format!("the listener on {web} to proxy"), SERVE, || {
        let web = web.clone();
        async move {
            let (status, _, _) = http_get(&web, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    for _ in 0..3 {
        let (status, _, _) = http_get(&web, "/", &[]).await?;
        ensure!(status == 200, "{web} answered {status}");
    }
    // One request the backend holds for 300 ms: its duration must land above the 0.25 s bucket.
    let (status, _, _) = http_get(&web, "/sleep/300", &[]).await?;
    ensure!(status == 200, "{web}/sleep/300 answered {status}");
    // Round robin over a dead and a live backend: one of two requests retries after a connect failure.
    let mixed = format!("{ip}:{MIXED_PORT}");
    for _ in 0..2 {
        let (status, _, _) = http_get(&mixed, "/", &[]).await?;
        ensure!(status == 200, "{mixed} answered {status}");
    }
    // A request body of 1000 bytes, sent by curl.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", &"x".repeat(1000)])
        .arg(format!("http://{web}/"))
        .output()
        .context("run curl")?;
    ensure!(
        out.stdout == b"200",
        "curl POST {web}: {:?} {}",
        out.stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // One connection held open: the listener's open-connection gauge sees it.
    let held = tokio::net::TcpStream::connect(&web).await.context("connect to hold")?;
    let (status, _, body) = http_get(&dead, "/", &[]).await?;
    ensure!(status == 503, "{dead} answered {status}: {}", String::from_utf8_lossy(&body));

    let admin = c.nodes[0].http_addr();
    let open = "lbfleet_listener_connections{node=\"1\",listener=\"web\"}";
    wait_until("the held connection in lbfleet_listener_connections", SERVE, || {
        let admin = admin.clone();
        async move {
            let text = String::from_utf8_lossy(&http_get(&admin, "/metrics", &[]).await?.2).into_owned();
            ensure!(value(&text, open) == Some(1.0), "{open} is not 1 in\n{text}");
            Ok(())
        }
    })
    .await?;
    drop(held);
    let text = http_get(&admin, "/metrics", &[]).await?.2;
    let text = String::from_utf8_lossy(&text).into_owned();
    let b = &backend.addr;
    let ok = format!(
        "lbfleet_http_requests_total{{node=\"1\",listener=\"web\",pool=\"web\",backend=\"{b}\",code_class=\"2xx\"}}"
    );
    let unavailable =
        "lbfleet_http_requests_total{node=\"1\",listener=\"dead\",pool=\"dead\",backend=\"\",code_class=\"5xx\"}";
    let failures =
        format!("lbfleet_upstream_connect_failures_total{{node=\"1\",pool=\"dead\",backend=\"{DEAD}\"}}");
    ensure!(value(&text, &ok).is_some_and(|v| v >= 6.0), "{ok} should be at least 6 in\n{text}");
    check_durations(&text, b, value(&text, &ok).unwrap_or(0.0))?;
    check_traffic_and_raft(&text, b)?;
    ensure!(value(&text, unavailable) == Some(1.0), "{unavailable} should be 1 in\n{text}");
    ensure!(value(&text, &failures) == Some(1.0), "{failures} should be 1 in\n{text}");
    for (series, want) in [
        (format!("lbfleet_backend_healthy{{node=\"1\",pool=\"web\",backend=\"{b}\"}}"), 1.0),
        (format!("lbfleet_backend_usable{{node=\"1\",pool=\"web\",backend=\"{b}\"}}"), 1.0),
        ("lbfleet_listener_bound{node=\"1\",listener=\"web\"}".to_string(), 1.0),
        ("lbfleet_raft_is_leader{node=\"1\"}".to_string(), 1.0),
    ] {
        ensure!(value(&text, &series) == Some(want), "{series} should be {want} in\n{text}");
    }
    // Present; its value may still be 1 for a moment while the last response's upstream body is released.
    let in_flight = format!("lbfleet_backend_in_flight{{node=\"1\",pool=\"web\",backend=\"{b}\"}}");
    ensure!(value(&text, &in_flight).is_some(), "{in_flight} missing in\n{text}");
    ensure!(text.matches("# EOF").count() == 1, "one OpenMetrics document:\n{text}");
    Ok(())
}
