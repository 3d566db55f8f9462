//! Backend connections leave from the node's own IP, end to end: three real lbnode processes in front
//! of two real demo backends, one of which refuses connections from node 2's IP (`--refuse-from`).
//! Nodes 1 and 3 reach both backends; node 2 never gets an answer from the refusing one (it gets the
//! other backend, or a 502/503).
//!
//! Addresses: nodes on 127.0.58.1N (the harness's layout), backends on 127.0.58.10K:910K.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, BackendProc, Cluster};

const NET: u8 = 58;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
const PORT: u16 = 18090;
/// Requests per node; round robin over two backends alternates, so a node reaching both sees each.
const REQUESTS: usize = 12;

fn config(backends: &[&BackendProc]) -> String {
    let mut t = String::from("[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n");
    for b in backends {
        t += &format!("[[pool.backend]]\naddr = \"{}\"\n", b.addr);
    }
    // No active checks: node 2's probes would fail too and hide the refusing backend from its proxy,
    // and this test is about the proxy's own connections.
    t += "[pool.health]\nkind = \"none\"\n\n";
    t += &format!("[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {PORT}\npool = \"web\"\n");
    t
}

/// The backends (by `x-backend`) or error statuses of `REQUESTS` GETs through `addr`, one connection each.
async fn answers(addr: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..REQUESTS {
        let (status, headers, _) = http_get(addr, &format!("/r/{i}"), &[]).await?;
        let backend = headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("");
        out.push(if status == 200 { backend.to_string() } else { format!("status {status}") });
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_one_nodes_ip_is_not_reached_through_that_node() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let node2 = Cluster::ip(NET, 2).to_string();
    let picky =
        BackendProc::start_with("picky", &format!("127.0.{NET}.101:9101"), &["--refuse-from", &node2])
            .await?;
    let open = BackendProc::start("open", &format!("127.0.{NET}.102:9102")).await?;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&[&picky, &open])).await.context("apply config")?;
    let listeners: Vec<String> = c.nodes.iter().map(|n| format!("{}:{PORT}", n.ip)).collect();
    for addr in &listeners {
        wait_until(&format!("the listener on {addr} to proxy"), SERVE, || async move {
            let (status, _, _) = http_get(addr, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            Ok(())
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    }

    for (i, addr) in listeners.iter().enumerate() {
        let got = answers(addr).await?;
        if i == 1 {
            // Node 2: every answer comes from the open backend or is a proxy error, never from picky.
            ensure!(
                got.iter().all(|a| a == "open" || a == "status 502" || a == "status 503"),
                "node 2 got {got:?}"
            );
            ensure!(got.iter().any(|a| a == "open"), "node 2 never reached the open backend: {got:?}");
        } else {
            ensure!(got.iter().any(|a| a == "picky"), "node {} never reached picky: {got:?}", i + 1);
            ensure!(got.iter().any(|a| a == "open"), "node {} never reached open: {got:?}", i + 1);
        }
    }
    Ok(())
}
