//! The faults of `lbchaos run` beyond one node's process: a demo backend killed (and how long until
//! every node has ejected it), every node restarted in turn, and a node added to or removed from the
//! membership under load.
//!
//! - Backends are the `DIR/backend-*.pid` processes of `lbctl local up` (`lbctl demo-backend`), restarted
//!   from their own command line like the nodes.
//! - A node's view of a backend is its `/api/v1/state` (admin HTTP, port [`HTTP_PORT`] on the node's
//!   IP, with the admin token): the node routes to the backend in a pool when the pool's `eligible`
//!   list of its data plane holds the address (fleet-wide health) and its `local_health` has it usable
//!   (this node's own checks and passive outlier ejection). The backend is ejected when no node's data
//!   plane lists it as eligible in any pool (every node has rebuilt its tables without it; a node that
//!   only skips it locally still sends its keys to a fallback, not where the new table would), and back
//!   when every node routes to it in as many pools as before the kill.
//! - The node added is node N+1 on 127.0.0.1(N+1) with a certificate from the cluster's CA
//!   (`lbfleet_cli::ca::CaDir::issue`), started without `--peers` (it waits for the leader) and added
//!   through the admin API as `lbctl nodes add` does (learner, caught up, promoted); at the heal it is
//!   removed, stopped and its data deleted. A removed node is stopped, and at the heal its data is
//!   deleted and it joins again the same way (without `--peers` from then on: with an empty store and
//!   `--peers`, the lowest id would initialize a cluster of its own).
//!
//! Every wait has a deadline; every answer read from a node is bounded ([`MAX_STATE`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lbfleet_cli::client::Admin;
use lbfleet_cli::local::plan::{node_ip, GRPC_PORT, HTTP_PORT};
use lbfleet_tests::process::{alive, signal};
use lbfleet_tests::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{creds, flag, restart, running, NodeProc};

/// Most bytes read of one `/api/v1/state` answer.
pub const MAX_STATE: usize = 8 << 20;
/// The verdict's bound on backend-loss-to-fleet-ejection: from the SIGKILL of a backend until no
/// node's data plane lists it. The demo pools check health every 1 s with a 500 ms timeout and
/// `fall = 2`, and the down vote is committed through Raft: about 2–3 s; 6 s leaves room for a loaded
/// machine.
pub const EJECT_BOUND: Duration = Duration::from_secs(6);
/// Deadline of one state request.
const STATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline for a stopped process to exit, for a membership change, for a node to catch up.
const STEP: Duration = Duration::from_secs(30);

/// The demo backends of the cluster in `dir` (`DIR/backend-*.pid`); `endpoint` is the `--listen` address.
pub fn discover_backends(dir: &Path) -> Result<Vec<NodeProc>> {
    let mut out = running(dir, "backend-")?;
    for b in &mut out {
        b.endpoint =
            flag(&b.args, "--listen").ok_or_else(|| anyhow!("{} (pid {}) has no --listen", b.name, b.pid))?;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    ensure!(!out.is_empty(), "no backend-*.pid in {}", dir.display());
    Ok(out)
}

/// The admin HTTP address of a node, from its gRPC endpoint (same IP, port [`HTTP_PORT`]).
fn http_addr(grpc: &str) -> String {
    let ip = grpc.rsplit_once(':').map_or(grpc, |(h, _)| h);
    format!("{ip}:{HTTP_PORT}")
}

/// One node's `/api/v1/state`, within [`STATE_TIMEOUT`] and [`MAX_STATE`] bytes.
async fn state(node: &NodeProc, token: &str) -> Result<serde_json::Value> {
    let addr = http_addr(&node.endpoint);
    let ask = async {
        let mut s = TcpStream::connect(&addr).await.with_context(|| format!("connect {addr}"))?;
        let req = format!(
            "GET /api/v1/state HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX_STATE as u64 + 1).read_to_end(&mut buf).await?;
        ensure!(buf.len() <= MAX_STATE, "{addr}: the state is over {MAX_STATE} bytes");
        let end =
            buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("{addr}: no HTTP head"))?;
        let head = String::from_utf8_lossy(&buf[..end]);
        ensure!(head.starts_with("HTTP/1.1 200"), "{addr}: {}", head.lines().next().unwrap_or(""));
        serde_json::from_slice(&buf[end + 4..]).with_context(|| format!("{addr}: state is not JSON"))
    };
    tokio::time::timeout(STATE_TIMEOUT, ask).await.map_err(|_| anyhow!("{addr}: no state within 1 s"))?
}

/// The pools in which the node of `state` lists `backend` as eligible (fleet-wide health) and, with
/// `usable`, does not skip it on its own (`local_health`): the pools where it routes to it.
pub fn pools_listing(state: &serde_json::Value, backend: &str, usable: bool) -> Vec<String> {
    let Some(pools) = state["pools"].as_object() else { return Vec::new() };
    let unusable = |pool: &str| {
        state["local_health"].as_array().is_some_and(|l| {
            l.iter().any(|h| {
                h["pool"].as_str() == Some(pool)
                    && h["addr"].as_str() == Some(backend)
                    && h["usable"].as_bool() == Some(false)
            })
        })
    };
    pools
        .iter()
        .filter(|(name, p)| {
            p["eligible"].as_array().is_some_and(|e| e.iter().any(|b| b.as_str() == Some(backend)))
                && !(usable && unusable(name))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Wait until every node's data plane has `backend` in `pools` of its pools (`0`: eligible in none,
/// ejected everywhere; otherwise eligible and usable: routed to); the time it took.
pub async fn wait_eligible(
    nodes: &[NodeProc],
    token: &str,
    backend: &str,
    pools: usize,
    deadline: Duration,
) -> Result<Duration> {
    let t = Instant::now();
    let what =
        if pools == 0 { "every node to eject the backend" } else { "every node to route to the backend" };
    wait_until(what, deadline, || async {
        for n in nodes {
            let st = state(n, token).await?;
            let listing = pools_listing(&st, backend, pools > 0);
            ensure!(listing.len() == pools, "{} lists {backend} in {listing:?}", n.name);
        }
        Ok(())
    })
    .await?;
    Ok(t.elapsed())
}

/// The pools that route to `backend` on the first node that answers (what a heal restores).
pub async fn pools_of(nodes: &[NodeProc], token: &str, backend: &str) -> Result<usize> {
    for n in nodes {
        if let Ok(st) = state(n, token).await {
            return Ok(pools_listing(&st, backend, true).len());
        }
    }
    bail!("no node answered /api/v1/state")
}

/// The value after `flag` in `args`, replaced by `value`.
fn set_flag(args: &mut [String], flag: &str, value: String) -> Result<()> {
    let i =
        args.iter().position(|a| a == flag).ok_or_else(|| anyhow!("no {flag} in the node's arguments"))?;
    *args.get_mut(i + 1).ok_or_else(|| anyhow!("{flag} without a value"))? = value;
    Ok(())
}

/// Remove `--peers VALUE` from `args`.
pub fn drop_peers(args: &mut Vec<String>) {
    if let Some(i) = args.iter().position(|a| a == "--peers") {
        args.drain(i..(i + 2).min(args.len()));
    }
}

/// A node `id` beside the cluster in `dir`, shaped like `like` (same binary and flags), with its own
/// IP, data directory and certificate, and without `--peers`. Not started.
pub fn spare(dir: &Path, like: &NodeProc, id: u64) -> Result<NodeProc> {
    let ip = node_ip(id).ok_or_else(|| anyhow!("node {id} has no loopback address"))?;
    let tls = lbfleet_cli::ca::CaDir::new(&dir.join("tls"));
    if !tls.node_cert(id).exists() {
        tls.issue(id, &[])?;
    }
    let name = format!("node-{id}");
    let mut args = like.args.clone();
    set_flag(&mut args, "--id", id.to_string())?;
    set_flag(&mut args, "--bind", ip.to_string())?;
    set_flag(&mut args, "--data-dir", dir.join(&name).display().to_string())?;
    set_flag(&mut args, "--cert-file", tls.node_cert(id).display().to_string())?;
    set_flag(&mut args, "--key-file", tls.node_key(id).display().to_string())?;
    drop_peers(&mut args);
    Ok(NodeProc {
        pid_file: dir.join(format!("{name}.pid")),
        name,
        pid: 0,
        args,
        exe: like.exe.clone(),
        endpoint: format!("{ip}:{GRPC_PORT}"),
        service: None,
    })
}

/// The node's id (`--id` of its command line).
pub fn id_of(n: &NodeProc) -> Result<u64> {
    flag(&n.args, "--id").and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("{}: no valid --id", n.name))
}

/// Add node `n` (running) as a voter through any member that takes the change, retried until `STEP`.
pub async fn add_member(members: &[NodeProc], n: &NodeProc) -> Result<()> {
    let id = id_of(n)?;
    let http = http_addr(&n.endpoint);
    wait_until("the node to be added", STEP, || async {
        let mut last = anyhow!("no member to ask");
        for m in members.iter().filter(|m| alive(m.pid)) {
            let admin = match Admin::connect(&m.endpoint, Duration::from_secs(5), creds()).await {
                Ok(a) => a,
                Err(e) => {
                    last = anyhow!("{}: {e}", m.name);
                    continue;
                }
            };
            let req = lbfleet_api::pb::AddNodeRequest {
                id,
                addr: n.endpoint.clone(),
                http_addr: http.clone(),
                learner_only: false,
            };
            match admin.add_node(req).await {
                Ok(_) => return Ok(()),
                Err(e) => last = anyhow!("via {}: {e}", m.name),
            }
        }
        Err(last)
    })
    .await
}

/// Remove node `id` from the membership through any member that takes the change.
pub async fn remove_member(members: &[NodeProc], id: u64) -> Result<()> {
    wait_until("the node to be removed", STEP, || async {
        let mut last = anyhow!("no member to ask");
        for m in members.iter().filter(|m| alive(m.pid)) {
            match Admin::connect(&m.endpoint, Duration::from_secs(5), creds()).await {
                Ok(admin) => match admin.remove_node(id).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = anyhow!("via {}: {e}", m.name),
                },
                Err(e) => last = anyhow!("{}: {e}", m.name),
            }
        }
        Err(last)
    })
    .await
}

/// SIGTERM `n` and wait until it is gone (SIGKILL after [`STEP`]).
pub async fn stop(n: &NodeProc) {
    let pid = n.pid;
    signal(pid, libc::SIGTERM);
    let gone = wait_until("the stopped process to exit", STEP, || async {
        ensure!(!alive(pid), "pid {pid} still alive");
        Ok(())
    })
    .await;
    if gone.is_err() {
        signal(pid, libc::SIGKILL);
    }
}

/// Delete the node's data directory (`--data-dir`).
pub fn wipe(n: &NodeProc) -> Result<()> {
    let d = flag(&n.args, "--data-dir").ok_or_else(|| anyhow!("{}: no --data-dir", n.name))?;
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("delete {d}: {e}")),
    }
}

/// Start `n` (not a member, empty store) and add it; the time until the change was committed.
pub async fn join(dir: &Path, members: &[NodeProc], n: &mut NodeProc) -> Result<Duration> {
    let t = Instant::now();
    restart(dir, n)?;
    add_member(members, n).await?;
    Ok(t.elapsed())
}

/// Wait until node `n` answers as leader or follower at config version `version` or later.
pub async fn caught_up(n: &NodeProc, version: u64) -> Result<()> {
    wait_until("the restarted node to catch up", STEP, || async {
        let admin = Admin::connect(&n.endpoint, Duration::from_millis(500), creds())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let st = admin.local_status().await.map_err(|e| anyhow!("{e}"))?;
        ensure!(st.role == "leader" || st.role == "follower", "{} is {}", n.name, st.role);
        ensure!(
            st.config_version >= version,
            "{} at config version {} < {version}",
            n.name,
            st.config_version
        );
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_listing_reads_the_data_plane_view() {
        let mut st = serde_json::json!({"pools": {
            "web": {"eligible": ["127.0.0.1:9001", "127.0.0.1:9002"]},
            "chaos-udp": {"eligible": ["127.0.0.1:9002"]},
        }});
        assert_eq!(pools_listing(&st, "127.0.0.1:9001", true), vec!["web".to_string()]);
        assert_eq!(pools_listing(&st, "127.0.0.1:9002", true).len(), 2);
        // Ejected on this node alone (outlier detection): not routed to here.
        st["local_health"] = serde_json::json!([
            {"pool": "web", "addr": "127.0.0.1:9002", "usable": false},
            {"pool": "web", "addr": "127.0.0.1:9001", "usable": true},
        ]);
        assert_eq!(pools_listing(&st, "127.0.0.1:9002", true), vec!["chaos-udp".to_string()]);
        assert_eq!(pools_listing(&st, "127.0.0.1:9002", false).len(), 2, "still in the tables");
        assert_eq!(pools_listing(&st, "127.0.0.1:9001", true), vec!["web".to_string()]);
        assert!(pools_listing(&st, "127.0.0.1:9003", true).is_empty());
        assert!(pools_listing(&serde_json::json!({}), "127.0.0.1:9001", true).is_empty());
    }

    #[test]
    fn a_spare_node_is_shaped_like_the_others_without_peers() {
        let mut args: Vec<String> =
            ["--id", "1", "--bind", "127.0.0.11", "--data-dir", "/d/node-1", "--peers", "1=a"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--cert-file", "c", "--key-file", "k"].iter().map(|s| s.to_string()));
        set_flag(&mut args, "--id", "4".into()).unwrap();
        drop_peers(&mut args);
        assert_eq!(args[..6], ["--id", "4", "--bind", "127.0.0.11", "--data-dir", "/d/node-1"]);
        assert!(!args.contains(&"--peers".to_string()));
        assert!(set_flag(&mut args, "--nope", "x".into()).is_err());
    }
}
