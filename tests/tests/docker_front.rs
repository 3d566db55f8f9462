//! The compose front, for real: `docker/compose-3.yml` starts a `router` (BIRD, ECMP into its kernel
//! table) and three lbnodes, each with a BIRD of its own that announces the VIP 172.28.1.1 over BGP
//! with BFD. This host reaches the VIP through the router (`docker/front-route.sh add`).
//!
//! - Requests to the VIP spread over all three nodes (each response names its node).
//! - `docker kill` of a node (SIGKILL: its BIRD dies with it): the router's route loses that node's
//!   next hop within [`WITHDRAW_BOUND`], and requests to the VIP keep succeeding.
//! - `docker pause` of a node (frozen: only BFD notices): the same.
//! - `docker stop` (SIGTERM: the node withdraws the VIP, waits `bgp_withdraw_grace_ms`, then stops
//!   accepting): no request of a loop running meanwhile fails.
//!
//! Each is run [`runs`] times (`LBFLEET_FRONT_RUNS`, 1 by default so that CI stays short; the README figures are from 3) and the medians are printed.
//! Then `docker/compose-5.yml` starts, the router gets five next hops and every node answers through
//! the VIP. Skipped with a notice where no docker engine answers.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lbfleet_tests::compose::{self, Compose, Down, VIP};
use lbfleet_tests::{header, http_get, wait_until};

const PROJECT: &str = "lbfleet-front";
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
    let ip = node_ip(node);
    wait_until(&format!("node {node} withdrawn from the router"), WITHDRAW_BOUND, || async {
        let got = nexthops(c).await?;
        ensure!(!got.contains(&ip), "next hops {got:?}");
        Ok(())
    })
    .await?;
    Ok(since.elapsed())
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

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
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
                match through_vip().await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            stop.await??;
            anyhow::Ok((ok, failed))
        });
        stops.push(time_to_withdraw(&c, node, t0).await?);
        let (ok, failed) = loop_task.await??;
        ensure!(
            failed.is_empty(),
            "{} of {} requests failed during a graceful stop: {failed:?}",
            failed.len(),
            ok + failed.len()
        );
        ensure!(ok > 0, "no request ran during the graceful stop");
        println!("run {run}: node {node}: {ok} requests during its graceful stop, none failed");
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
    drop(down);

    // Five nodes: five next hops, and every node answers through the VIP.
    let c5 = Compose::new("docker/compose-5.yml", PROJECT);
    c5.up()?;
    let _down5 = Down(c5.clone());
    let _route = Route::add()?;
    let five = [1, 2, 3, 4, 5];
    wait_announced(&c5, &five, Duration::from_secs(120)).await?;
    spread_over(&five).await?;
    println!("compose-5: five next hops, every node answered through the VIP");
    Ok(())
}
