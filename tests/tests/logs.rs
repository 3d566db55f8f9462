//! A real node's own log and its access log: `--log-format json` gives one JSON object per stderr line;
//! a listener with `access_log = true` writes one JSON line per request or L4 session.
//!
//! Addresses: one node on 127.0.59.11, another (access log test) on 127.0.59.21, a demo backend on
//! 127.0.59.101:9001.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lbfleet_tests::{admin, loopback_ok, wait_until, BackendProc, Cluster};
use serde_json::json;

const NET: u8 = 59;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);

/// Every non-empty line of `text` parsed as a JSON object.
fn json_lines(text: &str) -> Result<Vec<serde_json::Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
            ensure!(v.is_object(), "not a JSON object: {l}");
            Ok(v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_stderr_line() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 1, &["--log-format", "json"])?;
    c.wait_for_leader(ELECTION).await?;
    let text = std::fs::read_to_string(&c.nodes[0].log).context("read the node's log")?;
    let lines = json_lines(&text)?;
    ensure!(lines.len() >= 3, "only {} log lines:\n{text}", lines.len());
    for l in &lines {
        ensure!(l["timestamp"].is_string(), "no timestamp: {l}");
        ensure!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&l["level"].as_str().unwrap_or("")),
            "level: {l}"
        );
        ensure!(l["fields"]["message"].is_string(), "no fields.message: {l}");
    }
    // The node's start is there, with its fields as JSON values.
    ensure!(
        lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("open-file limit"))),
        "no open-file limit line in\n{text}"
    );
    Ok(())
}

fn access_config(backend: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{backend}\"\n\
         [pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18090\npool = \"web\"\naccess_log = true\n\n\
         [[listener]]\nname = \"quiet\"\nprotocol = \"http\"\nport = 18091\npool = \"web\"\n\n\
         [[listener]]\nname = \"l4\"\nprotocol = \"tcp\"\nport = 18092\npool = \"web\"\naccess_log = true\n"
    )
}

/// `curl -sS` with `args`; its stdout.
fn curl(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("curl").arg("-sS").args(args).output().context("run curl")?;
    ensure!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_with_access_log_writes_one_json_line_per_request_and_session() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 2).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let logs = tempfile::tempdir()?;
    let path = logs.path().join("access.log");
    let path_arg = path.to_string_lossy().into_owned();
    let mut c = Cluster::builder(NET).host_base(20).nodes(1).args(&["--access-log", &path_arg]).start()?;
    c.wait_for_leader(ELECTION).await?;
    let backend = BackendProc::start("backend-1", &format!("127.0.{NET}.101:9001")).await?;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &access_config(&backend.addr)).await.context("apply")?;
    let ip = c.nodes[0].ip;
    let web = format!("http://{ip}:18090");
    wait_until("the logged listener to proxy", SERVE, || {
        let url = format!("{web}/ready");
        async move { curl(&["-f", &url]).map(drop) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    let body = "x".repeat(100);
    curl(&["-f", "--data-binary", &body, &format!("{web}/hello?x=1")])?;
    curl(&["-f", &format!("http://{ip}:18091/quiet")])?;
    curl(&["-f", &format!("http://{ip}:18092/through-tcp")])?;

    let lines = wait_until("the access log lines", SERVE, || {
        let path = path.clone();
        async move {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines = json_lines(&text)?;
            let hello = lines.iter().any(|l| l["path"] == "/hello?x=1");
            let tcp = lines.iter().any(|l| l["type"] == "tcp");
            ensure!(hello && tcp, "not yet both lines in\n{text}");
            Ok(lines)
        }
    })
    .await?;
    let hello = lines.iter().find(|l| l["path"] == "/hello?x=1").expect("found above");
    for (field, want) in [
        ("type", json!("http")),
        ("listener", json!("web")),
        ("pool", json!("web")),
        ("backend", json!(backend.addr)),
        ("method", json!("POST")),
        ("status", json!(200)),
        ("bytes_in", json!(100)),
        ("retries", json!(0)),
        ("complete", json!(true)),
    ] {
        ensure!(hello[field] == want, "{field} is {} not {want} in {hello}", hello[field]);
    }
    let client = hello["client"].as_str().unwrap_or("");
    ensure!(client.starts_with("127.0.0.1:") || client.starts_with(&format!("{ip}:")), "client {client}");
    ensure!(hello["bytes_out"].as_u64().is_some_and(|n| n > 0), "bytes_out in {hello}");
    let (duration, head) = (hello["duration"].as_f64(), hello["backend_head"].as_f64());
    ensure!(
        duration.zip(head).is_some_and(|(d, h)| h > 0.0 && h <= d && d < 30.0),
        "duration {duration:?} and backend_head {head:?} in {hello}"
    );
    ensure!(hello["time"].as_str().is_some_and(|t| t.ends_with('Z')), "time in {hello}");
    ensure!(hello.get("tls_version").is_none(), "a cleartext request with TLS fields: {hello}");
    let tcp = lines.iter().find(|l| l["type"] == "tcp").expect("found above");
    ensure!(tcp["listener"] == "l4" && tcp["backend"] == json!(backend.addr), "{tcp}");
    ensure!(
        tcp["bytes_in"].as_u64().is_some_and(|n| n > 0) && tcp["bytes_out"].as_u64().is_some_and(|n| n > 0)
    );
    ensure!(tcp.get("method").is_none(), "{tcp}");
    ensure!(!lines.iter().any(|l| l["listener"] == "quiet"), "a line of the listener without access_log");
    Ok(())
}
