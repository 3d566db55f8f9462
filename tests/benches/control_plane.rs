//! Control-plane benchmark on a local 3-node cluster (real processes, release build):
//! config commit latency (p50/p99 over sequential writes, through the leader and through a follower),
//! the cost of a new gRPC channel (TCP + mutual-TLS handshake + first call, against a call on an open
//! channel), leader failover time after SIGKILL, and idle RSS of one node.
//!
//! Run: `cargo bench -p lbfleet-tests --bench control_plane` (about a minute).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use lbfleet_tests::{admin, marked_config, Cluster};

const WRITES: usize = 500;
const FAILOVERS: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn commit_latencies(addr: &str, n: usize, base: u32) -> Result<Vec<Duration>> {
    let mut client = admin::connect(addr).await?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = marked_config(base + i as u32);
        let t = Instant::now();
        client
            .apply_config(lbfleet_tests::pb::ApplyConfigRequest {
                format: "toml".into(),
                body,
                dry_run: false,
            })
            .await
            .map_err(|e| anyhow!("write {i} failed: {e}"))?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

const CHANNELS: usize = 200;

/// Median of `LocalStatus` on a fresh channel (connect, TLS handshake, call) and on one open channel.
async fn channel_cost(addr: &str) -> Result<(Duration, Duration)> {
    let mut fresh = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let t = Instant::now();
        let mut c = admin::connect(addr).await?;
        c.local_status(lbfleet_tests::pb::LocalStatusRequest {}).await?;
        fresh.push(t.elapsed());
    }
    let mut c = admin::connect(addr).await?;
    let mut open = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        let t = Instant::now();
        c.local_status(lbfleet_tests::pb::LocalStatusRequest {}).await?;
        open.push(t.elapsed());
    }
    fresh.sort();
    open.sort();
    Ok((percentile(&fresh, 0.5), percentile(&open, 0.5)))
}

/// Time from SIGKILL of the leader until every survivor names the same new leader.
async fn failover(c: &mut Cluster) -> Result<Duration> {
    let old = c.wait_for_leader(Duration::from_secs(30)).await?;
    let survivors: Vec<String> = c.nodes.iter().filter(|n| n.id != old).map(|n| n.grpc_addr()).collect();
    c.node(old).kill9();
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for a in &survivors {
            leaders.push(admin::local_status(a).await.ok().and_then(|s| s.leader));
        }
        if let Some(Some(l)) = leaders.first() {
            if *l != old && leaders.iter().all(|x| *x == Some(*l)) {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!("no new leader within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    c.node(old).start()?;
    c.wait_for_leader(Duration::from_secs(30)).await?;
    Ok(took)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Criterion-style filters passed by `cargo bench` are ignored; this bench has one scenario.
    let mut c = Cluster::start(41, 3, &[])?;
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let leader_addr = c.node(leader).grpc_addr();
    let follower_addr = c.nodes.iter().find(|n| n.id != leader).unwrap().grpc_addr();

    // Idle RSS first, after the cluster has formed and applied one config.
    admin::apply_toml(&leader_addr, &marked_config(1)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<u64> = c.nodes.iter().filter_map(|n| n.pid().and_then(rss_kib)).collect();

    commit_latencies(&leader_addr, 50, 10).await?; // warm-up
    let via_leader = commit_latencies(&leader_addr, WRITES, 1000).await?;
    let via_follower = commit_latencies(&follower_addr, WRITES, 5000).await?;

    let (fresh, open) = channel_cost(&follower_addr).await?;

    let mut failovers = Vec::new();
    for _ in 0..FAILOVERS {
        failovers.push(failover(&mut c).await?);
    }
    failovers.sort();

    println!("lbfleet control plane, 3 nodes on loopback, release build");
    println!("config commit latency ({WRITES} sequential ApplyConfig calls each):");
    for (name, l) in [("via leader", &via_leader), ("via follower", &via_follower)] {
        println!(
            "  {name:<13} p50 {}  p99 {}  max {}",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.99)),
            ms(*l.last().unwrap())
        );
    }
    println!(
        "LocalStatus ({CHANNELS} calls): on a new channel (TCP + mTLS handshake) median {}, on an open \
         channel {}; a new channel costs {}",
        ms(fresh),
        ms(open),
        ms(fresh.saturating_sub(open))
    );
    println!(
        "leader failover after SIGKILL ({FAILOVERS} runs): median {}  max {}",
        ms(percentile(&failovers, 0.5)),
        ms(*failovers.last().unwrap())
    );
    println!("idle RSS per node: {:?} KiB (max {} MiB)", rss, rss.iter().max().copied().unwrap_or(0) / 1024);
    Ok(())
}
