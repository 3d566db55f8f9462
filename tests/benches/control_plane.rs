//! Control-plane benchmark on a local 3-node cluster (real processes, release build):
//! config commit latency (p50/p99 over sequential writes, through the leader and through a follower),
//! the cost of a new gRPC channel (TCP + mutual-TLS handshake + first call, against a call on an open
//! channel), leader failover time after SIGKILL, and idle RSS of one node.
//!
//! Run: `cargo bench --workspace --bench control_plane` (about a minute). Environment:
//! - `FAILOVERS` (default 5): how many leader failovers to time;
//! - `LBF_BENCH_NODE_ARGS`: extra lbnode flags, split on whitespace (e.g. other Raft timings:
//!   `--heartbeat-ms 100 --election-min-ms 500 --election-max-ms 1000`).
//!
//! Each failover starts from a steady cluster (every node names the leader and has applied the same
//! index), kills the leader with SIGKILL, and polls the survivors' `LocalStatus` on open channels until
//! both name the same new leader. Per run it prints where the time went, read from the survivors' logs
//! (openraft logs "do trigger election" when a follower's election timer fires and "a quorum granted my
//! vote" when a candidate wins): kill → first election started, → election won, → every survivor
//! names the winner, and how many terms the failover took (1 = one vote round, more = split or refused
//! rounds).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use lbfleet_tests::{admin, marked_config, wait_until, Cluster};

const WRITES: usize = 500;
/// Failovers timed unless `FAILOVERS` says otherwise.
const DEFAULT_FAILOVERS: usize = 5;

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

/// One timed failover.
struct Failover {
    /// SIGKILL → every survivor names the same new leader.
    took: Duration,
    /// SIGKILL → the first survivor starts an election (from its log), if seen.
    first_election: Option<Duration>,
    /// SIGKILL → a candidate wins (from its log), if seen.
    won: Option<Duration>,
    /// Elections started by the survivors (log lines).
    elections: usize,
    /// Terms between the killed leader's and the new leader's (1: a single vote round).
    terms: u64,
}

/// Seconds since midnight UTC of a log line that starts with an RFC 3339 timestamp
/// (`2026-12-04T01:02:03.456789Z ...`).
fn line_time_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..)?;
    let end = t.find('Z')?;
    let mut parts = t[..end].split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn time_of_day(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Offsets after `since` (seconds of day) of the log lines of `path` that contain `what`.
fn events_after(path: &std::path::Path, since: f64, what: &str) -> Vec<Duration> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(what))
        .filter_map(line_time_of_day)
        .filter(|t| *t >= since)
        .map(|t| Duration::from_secs_f64(t - since))
        .collect()
}

/// Wait until every node names the same leader and has applied the same index: a steady cluster.
async fn wait_steady(c: &mut Cluster) -> Result<u64> {
    let leader = c.wait_for_leader(Duration::from_secs(30)).await?;
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr()).collect();
    wait_until("every node to apply the same index under one leader", Duration::from_secs(30), || {
        let addrs = addrs.clone();
        async move {
            let mut seen = Vec::new();
            for a in &addrs {
                let s = admin::local_status(a).await?;
                seen.push((s.leader, s.term, s.applied_index));
            }
            anyhow::ensure!(
                seen.iter().all(|x| *x == seen[0] && x.0 == Some(leader)),
                "(leader, term, applied) per node: {seen:?}"
            );
            Ok(())
        }
    })
    .await?;
    Ok(leader)
}

/// Kill the leader of a steady cluster and time until every survivor names the same new leader; then
/// restart the killed node.
async fn failover(c: &mut Cluster) -> Result<Failover> {
    let old = wait_steady(c).await?;
    let old_term = admin::local_status(&c.node(old).grpc_addr()).await?.term;
    let mut survivors = Vec::new();
    for n in c.nodes.iter().filter(|n| n.id != old) {
        survivors.push((
            n.log.clone(),
            admin::connect_with_timeout(&n.grpc_addr(), Duration::from_secs(1)).await?,
        ));
    }
    c.node(old).kill9();
    let t = Instant::now();
    let killed_at = time_of_day(SystemTime::now());
    let deadline = t + Duration::from_secs(30);
    let new_term = loop {
        let mut seen = Vec::new();
        for (_, client) in &mut survivors {
            let s = client
                .local_status(lbfleet_tests::pb::LocalStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner());
            seen.push(s.and_then(|s| s.leader.map(|l| (l, s.term))));
        }
        if let Some(Some((l, term))) = seen.first().copied() {
            if l != old && seen.iter().all(|x| x.map(|x| x.0) == Some(l)) {
                break term;
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!("no new leader within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let took = t.elapsed();
    let mut started = Vec::new();
    let mut won = Vec::new();
    for (log, _) in &survivors {
        started.extend(events_after(log, killed_at, "do trigger election"));
        won.extend(events_after(log, killed_at, "a quorum granted my vote"));
    }
    started.sort();
    won.sort();
    c.node(old).start()?;
    Ok(Failover {
        took,
        first_election: started.first().copied(),
        won: won.first().copied(),
        elections: started.len(),
        terms: new_term.saturating_sub(old_term),
    })
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "?".to_string(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Criterion-style filters passed by `cargo bench` are ignored; this bench has one scenario.
    let failovers_wanted: usize = match std::env::var("FAILOVERS") {
        Ok(v) => v.parse().map_err(|e| anyhow!("FAILOVERS={v}: {e}"))?,
        Err(_) => DEFAULT_FAILOVERS,
    };
    let node_args = std::env::var("LBF_BENCH_NODE_ARGS").unwrap_or_default();
    let node_args: Vec<&str> = node_args.split_whitespace().collect();
    let mut c = Cluster::start(41, 3, &node_args)?;
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

    let mut runs = Vec::new();
    for i in 0..failovers_wanted {
        let f = failover(&mut c).await?;
        println!(
            "failover {}: {:.0} ms; first election at {} ms, won at {} ms; {} election(s), {} term(s)",
            i + 1,
            f.took.as_secs_f64() * 1000.0,
            opt_ms(f.first_election),
            opt_ms(f.won),
            f.elections,
            f.terms
        );
        runs.push(f);
    }
    let mut failovers: Vec<Duration> = runs.iter().map(|f| f.took).collect();
    failovers.sort();
    let mut detect: Vec<Duration> = runs.iter().filter_map(|f| f.first_election).collect();
    detect.sort();
    let after_win: Vec<Duration> =
        runs.iter().filter_map(|f| f.won.map(|w| f.took.saturating_sub(w))).collect();
    let mut after_win = after_win;
    after_win.sort();
    let single_round = runs.iter().filter(|f| f.terms == 1).count();

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
    if !failovers.is_empty() {
        let n = failovers.len();
        println!(
            "leader failover after SIGKILL ({n} runs{}): median {}  max {}",
            if node_args.is_empty() { String::new() } else { format!(", lbnode {}", node_args.join(" ")) },
            ms(percentile(&failovers, 0.5)),
            ms(*failovers.last().unwrap())
        );
        if !detect.is_empty() && !after_win.is_empty() {
            println!(
                "  kill -> first election: median {}  max {}; election won -> all survivors name it: median {}  \
                 max {}; one vote round in {single_round} of {n}",
                ms(percentile(&detect, 0.5)),
                ms(*detect.last().unwrap()),
                ms(percentile(&after_win, 0.5)),
                ms(*after_win.last().unwrap())
            );
        }
    }
    println!("idle RSS per node: {:?} KiB (max {} MiB)", rss, rss.iter().max().copied().unwrap_or(0) / 1024);
    Ok(())
}
