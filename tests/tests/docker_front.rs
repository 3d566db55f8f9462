//! The compose front, for real: `docker/compose-3.yml` starts a `router` (BIRD, ECMP into its kernel
//! table) and three lbnodes, each with a BIRD of its own that announces the VIP 172.28.1.1 over BGP
//! with BFD. This host reaches the VIP through the router (`docker/front-route.sh add`).
//!
//! - Requests to the VIP spread over all three nodes (each response names its node).
//! - Datagrams to the demo config's UDP listener on the VIP are answered from the VIP (each node binds
//!   a UDP socket on it), before and after a kill.
//! - `docker kill` of a node (SIGKILL: its BIRD dies with it): the router's route loses that node's
//!   next hop within [`WITHDRAW_BOUND`], and requests to the VIP keep succeeding.
//! - `docker pause` of a node (frozen: only BFD notices): the same.
//! - `docker stop` (SIGTERM: the node withdraws the VIP, waits `bgp_withdraw_grace_ms`, then stops
//!   accepting): of a loop of requests running meanwhile (one connection at a time), none fails except
//!   at most the one whose connection was open at the instant the router's route changed: plain ECMP
//!   re-hashes the flows in flight then, and the node a moved flow lands on resets it (README, the
//!   front's known limits).
//!
//! - `lbctl drain-node` on a node: its next hop leaves the router while it runs, and stays out across
//!   a restart until `lbctl undrain-node`.
//!
//! Each is run [`runs`] times (`LBFLEET_FRONT_RUNS`, 1 by default so that CI stays short; the README figures are from 3) and the medians are printed.
//! Then `docker/compose-5.yml` starts, the router gets five next hops and every node answers through
//! the VIP. In both, the `prometheus` service scrapes every node, sees one ring digest, and answers
//! every query of the Grafana dashboard `docker/grafana/lbfleet.json`. Skipped with a notice where no
//! docker engine answers.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lbfleet_tests::compose::{self, Compose, Down, VIP};
use lbfleet_tests::{header, http_get, wait_until};

const PROJECT: &str = "lbfleet-front";
/// The compose files' `prometheus` service.
const PROMETHEUS: &str = "172.28.0.3:9090";
/// The test fails when a next hop outlives its node's failure longer than this.
const WITHDRAW_BOUND: Duration = Duration::from_secs(5);
/// How long a node may take to be announced again after it was restarted or unpaused.
const REJOIN: Duration = Duration::from_secs(90);

fn runs() -> usize {
    std::env::var("LBFLEET_FRONT_RUNS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

fn node_ip(n: usize) -> IpAddr {
    format!("172.28.0.{}", 10 + n).parse().expect("node IP")
}

/// The host's route to the VIP through the router, removed on drop.
struct Route;
impl Route {
    fn add() -> Result<Route> {
        let out = Command::new(compose::repo_root().join("docker/front-route.sh")).arg("add").output()?;
        ensure!(out.status.success(), "front-route.sh add: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Route)
    }
}
impl Drop for Route {
    fn drop(&mut self) {
        let _ = Command::new(compose::repo_root().join("docker/front-route.sh")).arg("del").output();
    }
}

/// One GET through the VIP on a fresh connection: the id of the node that answered.
async fn through_vip() -> Result<String> {
    let (status, headers, _) =
        tokio::time::timeout(Duration::from_secs(3), http_get(&format!("{VIP}:8080"), "/", &[]))
            .await
            .context("no answer through the VIP within 3s")??;
    ensure!(status == 200, "status {status} through the VIP");
    let node = header(&headers, "x-lbfleet-node");
    ensure!(!node.is_empty(), "no x-lbfleet-node header");
    Ok(node)
}

/// The demo config's UDP listener (`docker/demo.toml`).
const UDP_PORT: u16 = 8053;

/// One datagram through the VIP from a fresh source port: the reply comes from the VIP itself (the
/// node's socket on it) and names the demo backend that echoed it.
async fn udp_through_vip(seq: usize) -> Result<String> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    let vip: std::net::SocketAddr = format!("{VIP}:{UDP_PORT}").parse()?;
    let probe = format!("probe {seq}");
    sock.send_to(probe.as_bytes(), vip).await?;
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .context("no UDP reply through the VIP within 3s")??;
    ensure!(from == vip, "the UDP reply came from {from}, not from the VIP {vip}");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (backend, echoed) = text.split_once('\n').context("no backend name in the UDP reply")?;
    ensure!(backend.starts_with("backend-") && echoed == probe, "UDP reply {text:?} to {probe:?}");
    Ok(backend.to_string())
}

/// `n` datagrams through the VIP, each from a new source port (so a new flow, hashed anew by the
/// router): every one answered from the VIP.
async fn udp_all_answered(n: usize) -> Result<()> {
    for i in 0..n {
        udp_through_vip(i).await.with_context(|| format!("datagram {i} of {n} through the VIP"))?;
    }
    Ok(())
}

async fn nexthops(c: &Compose) -> Result<Vec<IpAddr>> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || c.vip_nexthops(VIP)).await?
}

/// Wait until the router's route to the VIP has exactly the next hops of `nodes`.
async fn wait_announced(c: &Compose, nodes: &[usize], timeout: Duration) -> Result<()> {
    let want: Vec<IpAddr> = nodes.iter().map(|n| node_ip(*n)).collect();
    wait_until(&format!("the router's next hops {want:?}"), timeout, || async {
        let got = nexthops(c).await?;
        ensure!(got == want, "next hops {got:?}");
        Ok(())
    })
    .await
}

/// Poll the router until `node` is no longer a next hop; the time since `since`.
async fn time_to_withdraw(c: &Compose, node: usize, since: Instant) -> Result<Duration> {
    Ok(withdraw_window(c, node, since).await?.0)
}

/// Poll the router until `node` is no longer a next hop: the time since `since`, and when the route
/// changed: after the start of the last poll that still saw the node's next hop and before the end of
/// the first that did not.
async fn withdraw_window(c: &Compose, node: usize, since: Instant) -> Result<(Duration, Instant, Instant)> {
    let ip = node_ip(node);
    let last_present = std::sync::Mutex::new(since);
    let gone_at = wait_until(&format!("node {node} withdrawn from the router"), WITHDRAW_BOUND, || async {
        let asked = Instant::now();
        let got = nexthops(c).await?;
        if got.contains(&ip) {
            *last_present.lock().expect("not poisoned") = asked;
            anyhow::bail!("next hops {got:?}");
        }
        Ok(Instant::now())
    })
    .await?;
    let present = *last_present.lock().expect("not poisoned");
    Ok((since.elapsed(), present, gone_at))
}

/// Every node of `expect` answers some request through the VIP.
async fn spread_over(expect: &[usize]) -> Result<()> {
    let want: BTreeSet<String> = expect.iter().map(|n| n.to_string()).collect();
    let seen = std::sync::Mutex::new(BTreeSet::new());
    wait_until(&format!("answers from nodes {want:?} through the VIP"), Duration::from_secs(60), || async {
        for _ in 0..10 {
            if let Ok(n) = through_vip().await {
                seen.lock().expect("not poisoned").insert(n);
            }
        }
        let seen = seen.lock().expect("not poisoned").clone();
        ensure!(seen == want, "answers from {seen:?}");
        Ok(())
    })
    .await
}

/// `n` requests through the VIP in a row, each on a fresh connection: all succeed, from the nodes
/// of `alive` only.
async fn all_succeed(n: usize, alive: &[usize]) -> Result<()> {
    for i in 0..n {
        let node = through_vip().await.with_context(|| format!("request {i} of {n}"))?;
        ensure!(alive.iter().any(|a| a.to_string() == node), "answered by node {node}, not in {alive:?}");
    }
    Ok(())
}

/// Percent-encode a query parameter (RFC 3986 unreserved characters stay).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One instant query to the compose Prometheus: the result vector.
async fn prom_query(expr: &str) -> Result<Vec<serde_json::Value>> {
    let path = format!("/api/v1/query?query={}", url_encode(expr));
    let (status, _, body) = http_get(PROMETHEUS, &path, &[]).await?;
    let text = String::from_utf8_lossy(&body);
    ensure!(status == 200, "Prometheus answered {status} to `{expr}`: {text}");
    let v: serde_json::Value = serde_json::from_slice(&body).with_context(|| format!("`{expr}`: {text}"))?;
    ensure!(v["status"] == "success", "`{expr}`: {text}");
    ensure!(v["data"]["resultType"] == "vector", "`{expr}` is not an instant vector: {text}");
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The single value of a one-element query result.
async fn prom_value(expr: &str) -> Result<f64> {
    let result = prom_query(expr).await?;
    ensure!(result.len() == 1, "`{expr}` gave {} series: {result:?}", result.len());
    let v = result[0]["value"][1].as_str().context("a sample value")?;
    v.parse().with_context(|| format!("`{expr}` = {v}"))
}

/// The `prometheus` service scrapes all `n` nodes: every target up, every node serving, one ring
/// digest, traffic counted; and every query of the Grafana dashboard is valid PromQL that answers.
async fn prometheus_scrapes_every_node(n: usize) -> Result<()> {
    let n_f = n as f64;
    wait_until(&format!("Prometheus scraping {n} nodes that agree"), Duration::from_secs(90), || async {
        let up = prom_value(r#"sum(up{job="lbfleet"})"#).await?;
        ensure!(up == n_f, "{up} of {n} targets up");
        let serving = prom_value("sum(lbfleet_node_up)").await?;
        ensure!(serving == n_f, "{serving} of {n} nodes report lbfleet_node_up");
        let digests = prom_value("count(count by (digest) (lbfleet_ring_info))").await?;
        ensure!(digests == 1.0, "{digests} ring digests across the nodes");
        let leaders = prom_value("sum(lbfleet_raft_is_leader)").await?;
        ensure!(leaders == 1.0, "{leaders} nodes claim leadership");
        // The requests of `spread_over`: a rate needs two scrapes after the counter appeared.
        let rates = prom_query("sum by (listener) (rate(lbfleet_http_requests_total[1m]))").await?;
        ensure!(!rates.is_empty(), "no HTTP request rate yet");
        Ok(())
    })
    .await?;
    let path = compose::repo_root().join("docker/grafana/lbfleet.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().context("the dashboard's panels")? {
        for target in panel["targets"].as_array().context("a panel's targets")? {
            let expr = target["expr"].as_str().context("a target's expr")?;
            prom_query(expr).await.with_context(|| format!("panel {}", panel["title"]))?;
            queries += 1;
        }
    }
    println!("prometheus: {n} nodes scraped, one ring digest, {queries} dashboard queries answered");
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// `lbctl ARGS` run inside node 1's container against node 1, with the admin token (`docker exec`,
/// off the runtime's threads).
async fn lbctl_on_node_1(c: &Compose, args: &[&str]) -> Result<String> {
    let c = c.clone();
    let mut argv: Vec<String> = [
        "/usr/local/bin/lbctl",
        "--endpoint",
        "172.28.0.11:7400",
        "--ca",
        "/certs/ca.pem",
        "--token-file",
        "/certs/admin.token",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        c.exec("lbnode-1", &argv)
    })
    .await?
}

/// How many times node 1 logged that it withdrew the VIP because it is drained.
async fn drained_withdrawals(c: &Compose) -> Result<usize> {
    let c = c.clone();
    let logs = tokio::task::spawn_blocking(move || c.logs("lbnode-1", 100_000)).await?;
    Ok(logs.matches("VIP withdrawn: this node is drained").count())
}

/// `lbctl drain-node` on node 1: its next hop leaves the router while it keeps running, requests
/// through the VIP go to the others, `lbctl status` says so, a restart keeps it drained, and
/// `lbctl undrain-node` brings its next hop back.
async fn drain_node(c: &Compose) -> Result<()> {
    let all = [1, 2, 3];
    let t0 = Instant::now();
    let out = lbctl_on_node_1(c, &["drain-node"]).await?;
    ensure!(out.starts_with("node 1 is drained: it withdraws the VIP 172.28.1.1"), "{out}");
    let took = time_to_withdraw(c, 1, t0).await?;
    all_succeed(10, &[2, 3]).await.context("requests through the VIP with node 1 drained")?;
    let again = lbctl_on_node_1(c, &["drain-node"]).await?;
    ensure!(again.starts_with("node 1 was already drained"), "{again}");
    let status = lbctl_on_node_1(c, &["status"]).await?;
    ensure!(status.contains("node 1: drained"), "{status}");

    // A restart keeps the drain: the node starts, withdraws (its log says why), and stays out.
    let before = drained_withdrawals(c).await?;
    blocking(c, Compose::stop, "lbnode-1".into()).await?;
    blocking(c, Compose::start, "lbnode-1".into()).await?;
    wait_until("node 1 to withdraw the VIP again after its restart, as drained", REJOIN, || async {
        ensure!(drained_withdrawals(c).await? > before, "not yet");
        Ok(())
    })
    .await?;
    let hops = nexthops(c).await?;
    ensure!(!hops.contains(&node_ip(1)), "a drained node announced the VIP after a restart: {hops:?}");
    wait_until("node 1's status after its restart", REJOIN, || async {
        let status = lbctl_on_node_1(c, &["status"]).await?;
        ensure!(status.contains("node 1: drained"), "{status}");
        Ok(())
    })
    .await?;

    let out = lbctl_on_node_1(c, &["undrain-node"]).await?;
    ensure!(out.starts_with("node 1 is undrained"), "{out}");
    wait_announced(c, &all, REJOIN).await?;
    spread_over(&all).await?;
    println!("drain-node: node 1's next hop withdrawn after {}; back after undrain-node", ms(took));
    Ok(())
}

async fn blocking(c: &Compose, f: fn(&Compose, &str) -> Result<()>, service: String) -> Result<()> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c, &service)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_spreads_over_the_nodes_and_leaves_a_failed_or_stopping_node_at_once() -> Result<()> {
    if !compose::docker_available() {
        println!("NOTICE: no docker engine or docker-compose here; skipping the compose front test");
        return Ok(());
    }
    compose::build_image(compose::profile())?;
    let c = Compose::new("docker/compose-3.yml", PROJECT);
    c.up()?;
    let down = Down(c.clone());
    let _route = Route::add()?;
    let all = [1, 2, 3];
    wait_announced(&c, &all, Duration::from_secs(120)).await.map_err(|e| {
        e.context(format!("router log:\n{}\nlbnode-1 log:\n{}", c.logs("router", 30), c.logs("lbnode-1", 30)))
    })?;
    spread_over(&all).await?;
    // The demo config is applied by then, its UDP listener with it.
    wait_until("a UDP reply through the VIP", Duration::from_secs(30), || udp_through_vip(0)).await?;
    udp_all_answered(20).await?;
    prometheus_scrapes_every_node(3).await?;

    let (mut kills, mut pauses, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs() {
        let node = 1 + run % 3;
        let service = format!("lbnode-{node}");
        let alive: Vec<usize> = all.iter().copied().filter(|n| *n != node).collect();

        // SIGKILL: the node's BIRD dies with it, the BGP session drops.
        let t0 = Instant::now();
        blocking(&c, Compose::kill, service.clone()).await?;
        kills.push(time_to_withdraw(&c, node, t0).await?);
        all_succeed(10, &alive).await.context("requests through the VIP after a kill")?;
        udp_all_answered(10).await.context("datagrams through the VIP after a kill")?;
        blocking(&c, Compose::start, service.clone()).await?;
        wait_announced(&c, &all, REJOIN).await?;

        // Frozen: the BGP session stays open, BFD notices.
        let t0 = Instant::now();
        blocking(&c, Compose::pause, service.clone()).await?;
        pauses.push(time_to_withdraw(&c, node, t0).await?);
        all_succeed(10, &alive).await.context("requests through the VIP while a node is paused")?;
        blocking(&c, Compose::unpause, service.clone()).await?;
        wait_announced(&c, &all, REJOIN).await?;

        // SIGTERM: withdrawn first, then the grace, then the listeners stop; a request loop sees no
        // failure.
        let stop = {
            let (c, service) = (c.clone(), service.clone());
            tokio::task::spawn_blocking(move || c.stop(&service))
        };
        let t0 = Instant::now();
        let loop_task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.is_finished() {
                let started = Instant::now();
                match through_vip().await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push((started, Instant::now(), format!("{e:#}"))),
                }
            }
            stop.await??;
            anyhow::Ok((ok, failed))
        });
        let (took, flip_after, flip_before) = withdraw_window(&c, node, t0).await?;
        stops.push(took);
        let (ok, failed) = loop_task.await??;
        let total = ok + failed.len();
        ensure!(ok > 0, "no request ran during the graceful stop");
        // One connection at a time: at most one was open when the route changed.
        ensure!(
            failed.len() <= 1,
            "{} of {total} requests failed during a graceful stop: {:?}",
            failed.len(),
            failed.iter().map(|f| &f.2).collect::<Vec<_>>()
        );
        for (started, ended, e) in &failed {
            ensure!(
                *started <= flip_before && *ended >= flip_after,
                "a request failed during a graceful stop away from the route change ({} ms to {} ms after \
                 SIGTERM; the route changed between {} ms and {} ms): {e}",
                started.duration_since(t0).as_millis(),
                ended.duration_since(t0).as_millis(),
                flip_after.duration_since(t0).as_millis(),
                flip_before.duration_since(t0).as_millis()
            );
        }
        println!(
            "run {run}: node {node}: {total} requests during its graceful stop, {} failed at the route change",
            failed.len()
        );
        blocking(&c, Compose::start, service.clone()).await?;
        wait_announced(&c, &all, REJOIN).await?;
        spread_over(&all).await?;
    }
    println!(
        "router next hop withdrawn after (median of {}): kill {}, pause {}, stop {}",
        kills.len(),
        ms(median(&mut kills)),
        ms(median(&mut pauses)),
        ms(median(&mut stops))
    );
    println!("kill: {kills:?}\npause: {pauses:?}\nstop: {stops:?}");
    drain_node(&c).await?;
    drop(down);

    // Five nodes: five next hops, and every node answers through the VIP.
    let c5 = Compose::new("docker/compose-5.yml", PROJECT);
    c5.up()?;
    let _down5 = Down(c5.clone());
    let _route = Route::add()?;
    let five = [1, 2, 3, 4, 5];
    wait_announced(&c5, &five, Duration::from_secs(120)).await?;
    spread_over(&five).await?;
    prometheus_scrapes_every_node(5).await?;
    println!("compose-5: five next hops, every node answered through the VIP");
    Ok(())
}
