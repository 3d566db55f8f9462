//! Cluster core, end to end: real lbnode processes on loopback, real gRPC, real sled on disk.
//!
//! Every test uses its own 127.0.<net>.0/24 so tests may run at the same time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use lbfleet_tests::{admin, marked_config, marker_of, wait_until, Cluster};

const ELECTION: Duration = Duration::from_secs(20);

async fn follower_of(c: &mut Cluster, leader: u64) -> String {
    c.nodes.iter().find(|n| n.id != leader).expect("a follower").grpc_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_forms_and_every_node_agrees() -> Result<()> {
    let mut c = Cluster::start(31, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let want: BTreeSet<u64> = [1, 2, 3].into();
    for n in &c.nodes {
        let st = wait_until("a full status with every member reachable", ELECTION, || async {
            let st = admin::status(&n.grpc_addr()).await?;
            ensure!(st.nodes.iter().all(|m| m.reachable), "not all reachable: {:?}", st.nodes);
            Ok(st)
        })
        .await?;
        assert_eq!(st.leader, Some(leader), "node {} sees another leader", n.id);
        let ids: BTreeSet<u64> = st.nodes.iter().map(|m| m.id).collect();
        assert_eq!(ids, want, "node {} sees another membership", n.id);
        let roles: Vec<&str> = st.nodes.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{roles:?}");
        assert_eq!(roles.iter().filter(|r| **r == "follower").count(), 2, "{roles:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_applied_through_a_follower_is_read_linearizably_from_every_node() -> Result<()> {
    let mut c = Cluster::start(32, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let follower = follower_of(&mut c, leader).await;
    let r = admin::apply_toml(&follower, &marked_config(7)).await?;
    assert_eq!(r.version, 1);
    for n in &c.nodes {
        // Linearizable: no waiting needed, the answer must already include the write.
        let got = admin::get_config(&n.grpc_addr(), false).await?;
        assert_eq!(got.version, 1, "node {}", n.id);
        assert_eq!(marker_of(&got.config_json)?, 7, "node {}", n.id);
    }
    Ok(())
}

/// Write `count` marked configs through `addr`; returns the last (version, marker) acknowledged.
async fn write_configs(addr: &str, first_marker: u32, count: u32) -> Result<(u64, u32)> {
    let mut last = (0, 0);
    for m in first_marker..first_marker + count {
        let r = admin::apply_toml(addr, &marked_config(m)).await?;
        last = (r.version, m);
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_elects_a_new_leader_and_the_old_one_catches_up() -> Result<()> {
    let mut c = Cluster::start(33, 3, &[])?;
    let old = c.wait_for_leader(ELECTION).await?;
    let via = follower_of(&mut c, old).await;
    let acked = write_configs(&via, 1, 5).await?;

    c.node(old).kill9();
    let killed_at = Instant::now();
    let new = c.wait_for_leader(ELECTION).await?;
    let failover = killed_at.elapsed();
    assert_ne!(new, old, "the killed node cannot still be leader");
    eprintln!("failover after SIGKILL of leader {old}: new leader {new} in {failover:?}");

    let survivor = c.node(new).grpc_addr();
    let got = admin::get_config(&survivor, false).await?;
    assert_eq!((got.version, marker_of(&got.config_json)?), acked, "an acknowledged write was lost");
    let acked = write_configs(&survivor, 100, 3).await?;

    c.node(old).start()?;
    let old_addr = c.node(old).grpc_addr();
    wait_until("the restarted old leader to catch up", ELECTION, || async {
        let got = admin::get_config(&old_addr, true).await?;
        ensure!(got.version == acked.0, "at version {} of {}", got.version, acked.0);
        ensure!(marker_of(&got.config_json)? == acked.1);
        Ok(())
    })
    .await?;
    let st = admin::local_status(&old_addr).await?;
    assert_eq!(st.leader, Some(new), "rejoined node follows the new leader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_every_node_mid_write_stream_loses_no_acknowledged_write() -> Result<()> {
    let mut c = Cluster::start(34, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr()).collect();

    let acked: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), addrs[1].clone());
        tokio::spawn(async move {
            // Bounded: at most 10_000 writes; stops at the first failure (the kill).
            for m in 1..10_000u32 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match admin::apply_toml(&addr, &marked_config(m)).await {
                    Ok(r) => acked.lock().unwrap().push((r.version, m)),
                    Err(_) => break,
                }
            }
        })
    };
    wait_until("20 acknowledged writes", Duration::from_secs(60), || async {
        let n = acked.lock().unwrap().len();
        ensure!(n >= 20, "{n} so far");
        Ok(())
    })
    .await?;
    // Power-loss style: every process dies at once, mid-stream, with no chance to flush.
    for n in &mut c.nodes {
        n.kill9();
    }
    stop.store(true, Ordering::SeqCst);
    writer.await?;
    let acked = acked.lock().unwrap().clone();
    let &(last_version, last_marker) = acked.last().expect("writes were acknowledged");
    for (i, (v, _)) in acked.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "versions are consecutive for one sequential writer");
    }

    for n in &mut c.nodes {
        n.start()?;
    }
    c.wait_for_leader(ELECTION).await?;
    for addr in &addrs {
        let got = admin::get_config(addr, false).await?;
        assert!(
            got.version >= last_version,
            "acknowledged version {last_version} lost: node {addr} has version {}",
            got.version
        );
        if got.version == last_version {
            assert_eq!(marker_of(&got.config_json)?, last_marker);
        }
    }
    eprintln!("{} writes acknowledged before the kill; all present", acked.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_losses_and_fail_clearly_without_quorum() -> Result<()> {
    let mut c = Cluster::start(35, 5, &["--write-timeout-ms", "3000"])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let first = c.nodes.iter().find(|n| n.id != leader).unwrap().grpc_addr();
    let acked = write_configs(&first, 1, 2).await?;

    // Lose two: the leader and one follower.
    let other = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    c.node(leader).kill9();
    c.node(other).kill9();
    let new = c.wait_for_leader(ELECTION).await?;
    let survivor = c.node(new).grpc_addr();
    let acked2 = write_configs(&survivor, 50, 2).await?;
    assert!(acked2.0 > acked.0);

    // Lose a third: two of five remain, no quorum.
    let third = c.nodes.iter().find(|n| n.id != new && n.pid().is_some()).unwrap().id;
    c.node(third).kill9();
    let started = Instant::now();
    let err = admin::apply_toml(&survivor, &marked_config(999))
        .await
        .expect_err("a write without quorum must fail");
    let took = started.elapsed();
    // The leader took the entry: it may commit once a quorum is back, so the outcome is unknown.
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("no quorum"), "unclear error: {}", err.message());
    assert!(err.message().contains("may still be applied"), "unclear error: {}", err.message());
    assert!(took < Duration::from_secs(15), "the failure took {took:?}");
    // Through the other survivor (a follower) too.
    let other_survivor = c.nodes.iter().find(|n| n.id != new && n.pid().is_some()).unwrap().grpc_addr();
    let err = admin::apply_toml(&other_survivor, &marked_config(998)).await.expect_err("no quorum");
    assert!(err.message().contains("no quorum"), "unclear error: {}", err.message());

    // Stale reads still answer from local state.
    for addr in [&survivor, &other_survivor] {
        let got = admin::get_config(addr, true).await?;
        assert_eq!((got.version, marker_of(&got.config_json)?), acked2, "stale read on {addr}");
    }
    // Status still answers, naming the three dead nodes unreachable, each with the reason.
    let status = admin::status(&other_survivor).await?;
    let dead: Vec<_> = status.nodes.iter().filter(|n| !n.reachable).collect();
    assert_eq!(dead.len(), 3, "{:?}", status.nodes);
    assert!(dead.iter().all(|n| !n.error.is_empty()), "{dead:?}");

    // With the leader gone too, the last node refuses writes for want of a leader, still bounded.
    c.node(new).kill9();
    let started = Instant::now();
    let err = admin::apply_toml(&other_survivor, &marked_config(997)).await.expect_err("no leader");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("no leader"), "unclear error: {}", err.message());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_with_every_error_and_the_old_one_stays() -> Result<()> {
    let mut c = Cluster::start(36, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let via = follower_of(&mut c, leader).await;
    admin::apply_toml(&via, &marked_config(5)).await?;

    let bad = r#"
[[pool]]
name = "web"
policy = "fastest"
table_size = 1000
  [[pool.backend]]
  addr = "10.0.0.1:99999"
[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "missing"
"#;
    let err = admin::apply_toml(&via, bad).await.expect_err("invalid config must be rejected");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for want in [
        "pool \"web\": unknown policy \"fastest\"",
        "pool \"web\": table_size 1000 is not prime",
        "pool \"web\" backend 1: invalid address \"10.0.0.1:99999\"",
        "listener \"web\": pool \"missing\" does not exist",
    ] {
        assert!(err.message().contains(want), "missing {want:?} in:\n{}", err.message());
    }
    for n in &c.nodes {
        let got = admin::get_config(&n.grpc_addr(), false).await?;
        assert_eq!((got.version, marker_of(&got.config_json)?), (1, 5), "node {}", n.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joining_after_the_log_was_purged_receives_a_snapshot() -> Result<()> {
    let mut c = Cluster::start(37, 3, &["--snapshot-logs", "20"])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let leader_addr = c.node(leader).grpc_addr();
    let acked = write_configs(&leader_addr, 1, 120).await?;
    let purged = wait_until("the leader to purge its log", ELECTION, || async {
        let st = admin::local_status(&leader_addr).await?;
        match st.purged_index {
            Some(p) if p > 10 => Ok(p),
            other => bail!("purged index {other:?}"),
        }
    })
    .await?;

    let mut late = c.make_node(4, None);
    late.start()?;
    let late_addr = late.grpc_addr();
    c.nodes.push(late);
    let via = follower_of(&mut c, leader).await;
    let mut client = admin::connect(&via).await?;
    client
        .add_node(lbfleet_tests::pb::AddNodeRequest {
            id: 4,
            addr: late_addr.clone(),
            http_addr: c.node(4).http_addr(),
            learner_only: false,
        })
        .await?;
    wait_until("the late joiner to hold the same state", ELECTION, || async {
        let got = admin::get_config(&late_addr, true).await?;
        ensure!(got.version == acked.0, "version {} of {}", got.version, acked.0);
        ensure!(marker_of(&got.config_json)? == acked.1);
        Ok(())
    })
    .await?;
    let st = admin::local_status(&late_addr).await?;
    let snap = st.snapshot_index.unwrap_or(0);
    assert!(snap >= purged, "node 4 should hold a snapshot covering the purged log ({snap} < {purged})");
    assert!(st.voter, "node 4 was promoted to voter");
    let status = admin::status(&leader_addr).await?;
    assert_eq!(status.nodes.len(), 4);
    Ok(())
}
