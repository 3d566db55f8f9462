//! The HTTP proxy end to end: three real lbnode processes serve an HTTP listener from the replicated
//! config, in front of three real demo backends (`lbctl demo-backend`).
//!
//! Addresses: nodes on 127.0.64.1N (the harness's layout), backends on 127.0.64.10K:900K.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, BackendProc, Cluster};

const NET: u8 = 64;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
const HASHED_PORT: u16 = 18080;
const STICKY_PORT: u16 = 18081;

fn config(backends: &[BackendProc]) -> String {
    let mut t = String::new();
    for (name, policy, extra) in [
        ("users", "maglev", "hash_key = \"header:x-user\""),
        ("sticky", "round_robin", "sticky_cookie = \"lbsid\""),
    ] {
        t += &format!("[[pool]]\nname = \"{name}\"\npolicy = \"{policy}\"\n{extra}\n");
        for b in backends {
            t += &format!("[[pool.backend]]\naddr = \"{}\"\n", b.addr);
        }
        t += "[pool.health]\nkind = \"none\"\n\n";
    }
    t += &format!(
        "[[listener]]\nname = \"users\"\nprotocol = \"http\"\nport = {HASHED_PORT}\npool = \"users\"\n\n\
         [[listener]]\nname = \"sticky\"\nprotocol = \"http\"\nport = {STICKY_PORT}\npool = \"sticky\"\n"
    );
    t
}

fn backend_of(headers: &hyper::HeaderMap) -> String {
    lbfleet_tests::header(headers, "x-backend")
}

/// Which backend each node sends `user` to (asserting a 200 from each, proxied by that node).
async fn route_of(nodes: &[String], user: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (status, headers, body) = http_get(n, "/", &[("x-user", user)]).await?;
        ensure!(status == 200, "{n} answered {status} for {user}: {}", String::from_utf8_lossy(&body));
        let via = headers.get("x-lbfleet-node").and_then(|v| v.to_str().ok()).unwrap_or("");
        ensure!(via == (i + 1).to_string(), "{n} answered as node {via:?}");
        out.push(backend_of(&headers));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sends_a_key_to_the_same_backend_and_honours_every_sticky_cookie() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let mut backends = Vec::new();
    for k in 1..=3 {
        backends
            .push(BackendProc::start(&format!("backend-{k}"), &format!("127.0.{NET}.10{k}:900{k}")).await?);
    }
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&backends)).await.context("apply config")?;
    let hashed: Vec<String> = c.nodes.iter().map(|n| format!("{}:{HASHED_PORT}", n.ip)).collect();
    let sticky: Vec<String> = c.nodes.iter().map(|n| format!("{}:{STICKY_PORT}", n.ip)).collect();
    for addr in hashed.iter().chain(&sticky) {
        wait_until(&format!("the listener on {addr} to proxy"), SERVE, || async move {
            let (status, _, _) = http_get(addr, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            Ok(())
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    }

    // The same `x-user` through node 1, 2 and 3 reaches the same backend, every time.
    let mut by_user: BTreeMap<String, String> = BTreeMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        for _ in 0..2 {
            let route = route_of(&hashed, &user).await?;
            ensure!(route.iter().all(|b| *b == route[0]), "{user} went to {route:?}");
            ensure!(route[0].starts_with("backend-"), "{user}: no x-backend in {route:?}");
            if let Some(before) = by_user.insert(user.clone(), route[0].clone()) {
                ensure!(before == route[0], "{user} moved from {before} to {}", route[0]);
            }
        }
    }
    let used: BTreeSet<&String> = by_user.values().collect();
    ensure!(used.len() >= 2, "30 keys all went to {used:?}");

    // A sticky cookie set by node 1 is honoured by nodes 2 and 3 (round robin would move on).
    let (status, headers, _) = http_get(&sticky[0], "/", &[]).await?;
    ensure!(status == 200);
    let pinned = backend_of(&headers);
    let set = headers.get("set-cookie").and_then(|v| v.to_str().ok()).context("no set-cookie")?.to_string();
    let cookie = set.split(';').next().unwrap_or("").to_string();
    ensure!(cookie.starts_with("lbsid="), "{set}");
    for _ in 0..3 {
        for n in &sticky {
            let (status, headers, _) = http_get(n, "/", &[("cookie", &cookie)]).await?;
            ensure!(status == 200);
            ensure!(backend_of(&headers) == pinned, "{n} ignored the cookie of {pinned}");
        }
    }

    // backend-2 dies: its keys go to their next backend, the same one on every node; others stay.
    let victim = "backend-2";
    backends[1].kill9();
    for (user, before) in &by_user {
        let route = route_of(&hashed, user).await?;
        ensure!(route.iter().all(|b| *b == route[0]), "{user} went to {route:?} after {victim} died");
        if before == victim {
            ensure!(route[0] != victim, "{user} still answered by {victim}");
        } else {
            ensure!(route[0] == *before, "{user} moved from {before} to {} though {before} lives", route[0]);
        }
    }
    Ok(())
}

/// `--dataplane-threads 1` runs the proxies on a current-thread runtime on a thread of its own: it
/// proxies like the multi-thread one and stops with the node (SIGTERM, exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_data_plane_thread_proxies_and_stops_with_the_node() -> Result<()> {
    const ONE_NET: u8 = 65;
    const PORT: u16 = 18082;
    if !loopback_ok(Cluster::ip(ONE_NET, 1).into()) {
        println!("NOTICE: 127.0.{ONE_NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(ONE_NET, 1, &["--dataplane-threads", "1"])?;
    c.wait_for_leader(ELECTION).await?;
    let backend = BackendProc::start("backend-1", &format!("127.0.{ONE_NET}.101:9001")).await?;
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{}\"\n\
         [pool.health]\nkind = \"none\"\n\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\n\
         port = {PORT}\npool = \"web\"\n",
        backend.addr
    );
    admin::apply_toml(&c.nodes[0].grpc_addr(), &cfg).await.context("apply config")?;
    let addr = format!("{}:{PORT}", c.nodes[0].ip);
    wait_until(&format!("the listener on {addr} to proxy"), SERVE, || async {
        let (status, _, _) = http_get(&addr, "/", &[]).await?;
        ensure!(status == 200, "status {status}");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    for i in 0..50 {
        let (status, headers, _) = http_get(&addr, "/", &[]).await?;
        ensure!(status == 200, "request {i}: status {status}");
        ensure!(backend_of(&headers) == "backend-1", "request {i} answered by {:?}", backend_of(&headers));
    }
    let code = c.nodes[0].terminate(Duration::from_secs(15)).await?;
    ensure!(code == Some(0), "the node exited with {code:?}\n{}", c.logs());
    Ok(())
}
