//! A real local cluster: `lbctl local up` with real lbnode processes, every admin command against it,
//! then `lbctl local down`.
//!
//! `lbfleet_tests::bin` builds the lbnode binary next to lbctl first. Needs 127.0.0.11..13 ports
//! 7400, 7401, 8080 and 8081 free (no other test uses those addresses).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{ensure, Result};
use lbfleet_tests::process::alive;
use lbfleet_tests::process::output_within;
use lbfleet_tests::{bin, wait_until};
use serde_json::Value;

/// `DIR/lbctl.env` of the cluster under test, once `local up` wrote it.
static ENV_FILE: OnceLock<PathBuf> = OnceLock::new();

/// The variables `. DIR/lbctl.env` sets (its `export NAME=VALUE` lines).
fn cluster_env() -> Vec<(String, String)> {
    let Some(path) = ENV_FILE.get() else { return Vec::new() };
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// lbctl with only the local cluster's own credentials (from its lbctl.env) in the environment.
fn lbctl_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("lbctl"));
    cmd.args(args)
        .env_remove("LBCTL_ENDPOINT")
        .env_remove("LBCTL_CA")
        .env_remove("LBCTL_TOKEN")
        .envs(cluster_env());
    cmd
}

async fn lbctl(args: &[&str], deadline: Duration) -> Result<Output> {
    output_within(&mut lbctl_cmd(args), deadline).await
}

async fn ok_json(args: &[&str]) -> Result<Value> {
    let out = lbctl(args, Duration::from_secs(60)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "lbctl {args:?} failed: {stderr}");
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("lbctl {args:?}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    }))
}

fn free_base_port() -> u16 {
    let offset = (std::process::id() as u16 + 20) % 90;
    (0..90u16)
        .map(|i| 9900 + (offset + i) % 90)
        .find(|b| (1..=3).all(|k| std::net::TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
        .expect("three free ports in 9901..=9992")
}

/// Stops the cluster even when an assertion fails half-way.
struct Down<'a>(&'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ =
            Command::new(bin("lbctl")).args(["local", "down", "--dir", self.0.to_str().unwrap()]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_serves_every_admin_command_then_local_down_stops_everything() -> Result<()> {
    bin("lbnode"); // `lbctl local up` finds it next to lbctl
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    let ds = d.to_str().unwrap();
    let base = free_base_port().to_string();
    let _down = Down(&d);

    let up = ok_json(&[
        "local",
        "up",
        "--nodes",
        "3",
        "--backends",
        "3",
        "--base-port",
        &base,
        "--dir",
        ds,
        "--json",
    ])
    .await?;
    let leader = up["leader"].as_u64().expect("leader id");
    // The credentials file: `. DIR/lbctl.env` then `lbctl status` works, and only its owner reads it.
    let env_file = d.join("lbctl.env");
    assert_eq!(up["env_file"].as_str(), Some(env_file.to_str().unwrap()));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env_file)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let sourced = Command::new("sh")
        .arg("-c")
        .arg(format!(". {} && exec {} status", env_file.display(), bin("lbctl").display()))
        .env_remove("LBCTL_CA")
        .env_remove("LBCTL_TOKEN")
        .output()?;
    assert!(
        sourced.status.success(),
        ". lbctl.env && lbctl status: {}",
        String::from_utf8_lossy(&sourced.stderr)
    );
    ENV_FILE.set(env_file).unwrap();
    assert_eq!(up["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(up["backends"].as_array().unwrap().len(), 3);
    for name in ["node-1", "node-2", "node-3", "backend-1", "backend-2", "backend-3"] {
        assert!(d.join(format!("{name}.pid")).exists(), "{name}.pid");
        assert!(d.join(format!("{name}.log")).exists(), "{name}.log");
    }
    assert!(d.join("demo.toml").exists());
    let pids: Vec<u32> = up["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(up["backends"].as_array().unwrap())
        .map(|p| p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap())
        .collect();
    assert!(pids.iter().all(|p| alive(*p)), "children outlive lbctl local up");

    // Any node's endpoint answers status with the same leader.
    for ep in ["127.0.0.11:7400", "127.0.0.12:7400", "127.0.0.13:7400"] {
        let s = ok_json(&["--endpoint", ep, "status", "--json"]).await?;
        assert_eq!(s["leader"].as_u64(), Some(leader), "{ep}: {s}");
        assert!(s["term"].as_u64().unwrap() >= 1);
        let nodes = s["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{s}");
        for n in nodes {
            assert_eq!(n["reachable"], true, "{s}");
            for k in ["id", "addr", "role", "applied_index", "ring_digest"] {
                assert!(n.get(k).is_some(), "missing {k}: {n}");
            }
        }
        assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1, "{s}");
    }

    // The config in force is the demo config.
    let cfg = ok_json(&["--endpoint", "127.0.0.12:7400", "get", "config", "--json"]).await?;
    assert_eq!(cfg["pool"][0]["name"], "web");
    assert_eq!(cfg["pool"][0]["policy"], "maglev");
    assert_eq!(cfg["pool"][0]["backend"].as_array().unwrap().len(), 3);
    let names: Vec<&str> =
        cfg["listener"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web", "web-tcp"]);
    let toml = lbctl(&["--endpoint", "127.0.0.13:7400", "get", "config", "--stale"], Duration::from_secs(30))
        .await?;
    assert_eq!(toml.status.code(), Some(0));
    let text = String::from_utf8_lossy(&toml.stdout);
    assert!(text.starts_with("# config version "), "{text}");
    lbfleet_api::config::parse(&text, lbfleet_api::config::Format::Toml)
        .expect("get config prints valid TOML");

    // Backends, drain and undrain.
    let b = ok_json(&["backends", "--json"]).await?;
    let backends = b["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    let first = backends[0]["addr"].as_str().unwrap().to_string();
    ok_json(&["drain", "web", &first, "--json"]).await?;
    let b = ok_json(&["--endpoint", "127.0.0.13:7400", "backends", "--json"]).await?;
    let draining = |b: &Value| {
        b["backends"].as_array().unwrap().iter().find(|x| x["addr"] == first.as_str()).unwrap()["draining"]
            .clone()
    };
    assert_eq!(draining(&b), true);
    ok_json(&["undrain", "web", &first, "--json"]).await?;
    assert_eq!(draining(&ok_json(&["backends", "--json"]).await?), false);
    let out = lbctl(&["drain", "nopool", &first], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // A local cluster has no VIP: draining a node has nothing to withdraw, and says so.
    let out = lbctl(&["drain-node"], Duration::from_secs(30)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node 1 announces no VIP"), "{stderr}");

    // A bad config: every problem is printed, exit 1, the config in force is unchanged.
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[[pool]]\nname = \"web\"\npolicy = \"magic\"\n[[listener]]\nname = \"x\"\nprotocol = \"http\"\nport = 7400\npool = \"nope\"\n",
    )
    .unwrap();
    let out = lbctl(&["apply", "-f", bad.to_str().unwrap()], Duration::from_secs(30)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["unknown policy \"magic\"", "reserved", "\"nope\" does not exist"] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
    let version = cfg_version().await?;
    // A good one applies and bumps the version.
    let out =
        lbctl(&["apply", "-f", d.join("demo.toml").to_str().unwrap(), "--json"], Duration::from_secs(30))
            .await?;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(applied["version"].as_u64().unwrap() > version);

    // Membership.
    let n = ok_json(&["nodes", "--json"]).await?;
    assert_eq!(n["nodes"].as_array().unwrap().iter().filter(|m| m["voter"] == true).count(), 3);

    // Watch prints a JSON line per change.
    let mut watch = lbctl_cmd(&["--endpoint", "127.0.0.12:7400", "watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(watch.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch line {line:?}: {e}"));
    assert!(ev["applied_index"].as_u64().unwrap() > 0);
    watch.kill().unwrap();
    watch.wait().unwrap();

    // Down stops every process and removes the pid files.
    let out = lbctl(&["local", "down", "--dir", ds], Duration::from_secs(60)).await?;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("stopped ")).count(), 6, "{text}");
    wait_until("every process to be gone", Duration::from_secs(10), || async {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        ensure!(left.is_empty(), "still alive: {left:?}");
        Ok(())
    })
    .await?;
    assert!(!d.join("node-1.pid").exists());
    let out = lbctl(&["--endpoint", "127.0.0.11:7400", "status"], Duration::from_secs(30)).await?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

async fn cfg_version() -> Result<u64> {
    let out = lbctl(&["get", "config"], Duration::from_secs(30)).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .strip_prefix("# config version ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text}")))
}
