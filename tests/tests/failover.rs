//! Failover end to end: backup backends take over when every primary is dead, a pool with nothing left
//! answers clear 503s on every node, and the health votes of a killed lbnode stop counting until it
//! returns and votes again.
//!
//! Addresses: nodes on 127.0.55.1N / 127.0.56.1N, demo backends on 127.0.55.10K / 127.0.56.10K.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, wait_until, BackendProc, Cluster};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(20);
const DETECT: Duration = Duration::from_secs(20);

fn health() -> &'static str {
    "[pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2\n"
}

/// Which backend answers `/` through every node's listener (status, x-backend) per node.
async fn answers(c: &Cluster, port: u16) -> Result<Vec<(u16, String, String)>> {
    let mut out = Vec::new();
    for n in &c.nodes {
        let (status, headers, body) = http_get(&format!("{}:{port}", n.ip), "/", &[]).await?;
        let backend = lbfleet_tests::header(&headers, "x-backend");
        out.push((status, backend, String::from_utf8_lossy(&body).to_string()));
    }
    Ok(out)
}

async fn wait_all_answer(
    c: &Cluster,
    port: u16,
    what: &str,
    want: impl Fn(u16, &str, &str) -> bool,
) -> Result<()> {
    wait_until(what, DETECT, || async {
        let a = answers(c, port).await?;
        ensure!(a.iter().all(|(s, b, body)| want(*s, b, body)), "answers: {a:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_over_then_a_dead_pool_answers_503_with_the_reason() -> Result<()> {
    let mut primary = BackendProc::start("primary", "127.0.55.101:9001").await?;
    let mut backup = BackendProc::start("backup", "127.0.55.102:9002").await?;
    let mut c = Cluster::start(55, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n{}\
         [[pool.backend]]\naddr = \"{}\"\n[[pool.backend]]\naddr = \"{}\"\nbackup = true\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18100\npool = \"web\"\n",
        health(),
        primary.addr,
        backup.addr
    );
    admin::apply_toml(&c.node(leader).grpc_addr(), &cfg).await?;
    wait_all_answer(&c, 18100, "the primary to serve on every node", |s, b, _| s == 200 && b == "primary")
        .await?;
    // While the primary is healthy, the backup gets nothing.
    for _ in 0..5 {
        for (s, b, _) in answers(&c, 18100).await? {
            ensure!(s == 200 && b == "primary", "{s} from {b}");
        }
    }

    primary.kill9();
    wait_all_answer(&c, 18100, "the backup to take over on every node", |s, b, _| s == 200 && b == "backup")
        .await?;

    backup.kill9();
    wait_all_answer(&c, 18100, "503 with a reason on every node", |s, _, body| {
        s == 503 && body.contains("web") && !body.trim().is_empty()
    })
    .await?;
    let (_, _, body) = answers(&c, 18100).await?.remove(0);
    println!("a dead pool answers: {}", body.trim());
    // No node crashed on the way.
    for n in &mut c.nodes {
        ensure!(n.is_running(), "node {} exited", n.id);
    }

    let _primary = BackendProc::start("primary", "127.0.55.101:9001").await?;
    wait_all_answer(&c, 18100, "the primary to return", |s, b, _| s == 200 && b == "primary").await?;
    Ok(())
}

async fn fleet_healthy(http: &str, backend: &str) -> Result<bool> {
    let (status, _, body) =
        http_get(http, "/api/v1/state", &[("authorization", &lbfleet_tests::creds().read_bearer())]).await?;
    ensure!(status == 200, "state: {status}");
    let st: Value = serde_json::from_slice(&body).context("state JSON")?;
    st["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["addr"] == backend))
        .and_then(|b| b["healthy"].as_bool())
        .ok_or_else(|| anyhow!("no backend {backend} in {http}'s state"))
}

async fn wait_fleet(http: &str, backend: &str, healthy: bool, what: &str) -> Result<()> {
    wait_until(what, Duration::from_secs(30), || async {
        ensure!(fleet_healthy(http, backend).await? == healthy, "not yet");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_stops_counting_in_health_votes_and_votes_again_when_it_returns() -> Result<()> {
    // Nodes 2 and 3 cannot reach this backend (their health checks get no answer); node 1 can.
    let refused = ["--refuse-from", "127.0.56.12", "--refuse-from", "127.0.56.13"];
    let b = BackendProc::start_with("backend-1", "127.0.56.101:9001", &refused).await?;
    let mut c = Cluster::start(56, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n{}[[pool.backend]]\naddr = \"{}\"\n",
        health(),
        b.addr
    );
    // Write through node 1, which stays up throughout.
    let n1_grpc = c.node(1).grpc_addr();
    let n1_http = c.node(1).http_addr();
    admin::apply_toml(&n1_grpc, &cfg).await?;
    wait_fleet(&n1_http, &b.addr, false, "two of three nodes to vote the backend down").await?;

    // Kill node 3: once the leader marks it down, its down vote stops counting (1 of 2 live voters).
    c.node(3).kill9();
    let leader_http = {
        let l = c.wait_for_leader(ELECTION).await?;
        c.node(l).http_addr()
    };
    wait_fleet(&leader_http, &b.addr, true, "node 3's vote to stop counting").await?;
    let st = admin::status(&n1_grpc).await?;
    let n3 = st.nodes.iter().find(|n| n.id == 3).ok_or_else(|| anyhow!("node 3 in status"))?;
    ensure!(n3.down, "node 3 is shown down: {n3:?}");

    // Node 3 returns: marked up, it votes again, and the backend is down again fleet-wide.
    c.node(3).start()?;
    wait_fleet(&n1_http, &b.addr, false, "node 3 to vote again after it returns").await?;
    let st = admin::status(&n1_grpc).await?;
    ensure!(st.nodes.iter().all(|n| !n.down), "every node is up again: {:?}", st.nodes);
    Ok(())
}

/// SIGTERM of the leader: it leaves Raft before its connections drain, so the others elect a new
/// leader while it still serves an open connection (the drain waits up to 10 s for it). Were Raft
/// stopped after the drain, the old leader would keep heartbeating until it exits.
///
/// Addresses: nodes on 127.0.60.1N, the demo backend on 127.0.60.101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopping_gracefully_gives_up_leadership_before_its_connections_drain() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PORT: u16 = 18160;
    let b = BackendProc::start("backend-1", "127.0.60.101:9001").await?;
    let mut c = Cluster::start(60, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{}\"\n\
         [pool.health]\nkind = \"none\"\n\
         [[listener]]\nname = \"tcp\"\nprotocol = \"tcp\"\nport = {PORT}\npool = \"web\"\n",
        b.addr
    );
    admin::apply_toml(&c.grpc_addr(leader), &cfg).await?;
    // One keep-alive exchange through the leader's TCP listener: the connection is proxied and stays open.
    let front = format!("{}:{PORT}", c.ip_of(leader));
    let mut conn = wait_until("the leader to proxy TCP", ELECTION, || async {
        let mut s = tokio::net::TcpStream::connect(&front).await?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
        ensure!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
        Ok(s)
    })
    .await?;

    let pid = c.node(leader).pid().context("the leader's pid")?;
    ensure!(lbfleet_tests::process::signal(pid, libc::SIGTERM), "SIGTERM to node {leader}");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new = c.wait_for_leader_among(&others, ELECTION).await?;
    ensure!(
        c.node(leader).is_running(),
        "node {leader} had already exited when node {new} took over: leadership outlived the drain"
    );
    // The open connection is still served by the stopping node.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await??;
    ensure!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(conn);
    let code = c.node(leader).wait_exit(Duration::from_secs(30)).await?;
    ensure!(code == Some(0), "node {leader} exited with {code:?}");
    Ok(())
}
