//! A real node's own log and its access log: `--log-format json` gives one JSON object per stderr line;
//! a listener with `access_log = true` writes one JSON line per request or L4 session.
//!
//! Addresses: nodes on 127.0.59.1N (the harness's layout), a demo backend on 127.0.59.101:9001.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lbfleet_tests::{loopback_ok, Cluster};

const NET: u8 = 59;
const ELECTION: Duration = Duration::from_secs(20);

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
