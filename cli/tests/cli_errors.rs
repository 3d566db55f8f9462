//! The real lbctl binary's failure modes: a dead endpoint, a bad command line, a missing file.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use lbfleet_tests::{bin, lbctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_fast_with_exit_2_and_names_the_endpoint() -> Result<()> {
    let t0 = Instant::now();
    // A generous --timeout: a refused connection must not wait for it.
    let out =
        lbctl(&["--endpoint", "127.0.0.1:1", "--timeout", "60s", "status"], Duration::from_secs(50)).await?;
    let elapsed = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end(), "lbctl: cannot reach lbnode at 127.0.0.1:1: connection refused");
    assert!(out.stdout.is_empty());
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}: it waited for the 60s timeout");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_command_maps_an_unreachable_endpoint_the_same_way() -> Result<()> {
    for args in [
        &["status"][..],
        &["get", "config"],
        &["backends", "--stale"],
        &["nodes"],
        &["nodes", "remove", "--id", "3"],
        &["drain", "web", "127.0.0.1:9001"],
        &["undrain", "web", "127.0.0.1:9001"],
        &["drain-node"],
        &["undrain-node"],
        &["watch"],
    ] {
        let mut full = vec!["--endpoint", "127.0.0.1:1"];
        full.extend_from_slice(args);
        let out = lbctl(&full, Duration::from_secs(30)).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach lbnode at 127.0.0.1:1: connection refused"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_machine_readable() -> Result<()> {
    let out = lbctl(&["status", "--json", "--endpoint", "127.0.0.1:1"], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["error"]["kind"], "unreachable");
    assert_eq!(v["error"]["endpoint"], "127.0.0.1:1");
    assert_eq!(v["error"]["exit_code"], 2);
    assert_eq!(v["error"]["lines"][0], "cannot reach lbnode at 127.0.0.1:1: connection refused");
    Ok(())
}

#[test]
fn endpoint_comes_from_the_environment() {
    let creds = lbfleet_tests::creds();
    let out = Command::new(bin("lbctl"))
        .args(["status"])
        .env("LBCTL_ENDPOINT", "127.0.0.1:1")
        .env("LBCTL_CA", creds.ca())
        .env("LBCTL_TOKEN", &creds.admin_token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_64_and_help_exits_0() -> Result<()> {
    let out = lbctl(&["stauts"], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("status"), "suggests the right command");
    let out = lbctl(&["--endpoint", "nohost", "status"], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing port"));
    let out = lbctl(&["--help"], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:") && !help.contains("demo-backend"), "{help}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_a_missing_file_exits_1_before_connecting() -> Result<()> {
    let out = lbctl(
        &["--endpoint", "127.0.0.1:1", "apply", "-f", "/nonexistent/cluster.toml"],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("lbctl: cannot read config file \"/nonexistent/cluster.toml\""));
    Ok(())
}
