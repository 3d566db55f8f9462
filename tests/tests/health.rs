//! Health checking, end to end: real lbnode processes probing real demo backends, votes through Raft.
//!
//! Every test uses its own 127.0.<net>.0/24 (81..=89) so tests may run at the same time. Nodes are
//! 127.0.<net>.1N; backends listen on 127.0.<net>.1 and .2.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, http_get, wait_until, BackendProc, Cluster};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(20);
const INTERVAL_MS: u64 = 500;
const RISE: u64 = 2;
const FALL: u64 = 2;

fn config(backends: &[&str]) -> String {
    let mut t = String::from("[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n");
    for b in backends {
        t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
    }
    t += &format!(
        "[pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"{INTERVAL_MS}ms\"\n\
         timeout = \"400ms\"\nrise = {RISE}\nfall = {FALL}\n"
    );
    t
}

async fn state(http_addr: &str) -> Result<Value> {
    let (status, _, body) =
        http_get(http_addr, "/api/v1/state", &[("authorization", &lbfleet_tests::creds().read_bearer())])
            .await?;
    ensure!(status == 200, "GET /api/v1/state on {http_addr}: status {status}");
    serde_json::from_slice(&body).context("state JSON")
}

/// The committed fleet-wide health of `backend`, as one node's applied state has it.
fn committed_healthy(st: &Value, backend: &str) -> Result<bool> {
    st["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["addr"] == backend))
        .and_then(|b| b["healthy"].as_bool())
        .ok_or_else(|| anyhow!("no backend {backend} in the state"))
}

/// The committed vote of `node` for `backend` (`None` when it has none on record).
fn committed_vote(st: &Value, backend: &str, node: u64) -> Option<bool> {
    st["health_votes"].as_array()?.iter().find(|v| v["backend"] == backend)?["votes"][node.to_string()]
        ["healthy"]
        .as_bool()
}

/// The log indexes of every committed vote, by (backend, node), as one node's state has them.
fn vote_indexes(st: &Value) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for v in st["health_votes"].as_array().into_iter().flatten() {
        let backend = v["backend"].as_str().unwrap_or("").to_string();
        for (node, vote) in v["votes"].as_object().into_iter().flatten() {
            out.push((backend.clone(), node.clone(), vote["index"].as_u64().unwrap_or(0)));
        }
    }
    out
}

/// This node's local view of `backend`: (active check view, usable here).
fn local(st: &Value, backend: &str) -> Result<(String, bool)> {
    let b = st["local_health"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["addr"] == backend))
        .ok_or_else(|| anyhow!("no local_health entry for {backend}: {}", st["local_health"]))?;
    Ok((b["active"].as_str().unwrap_or("").to_string(), b["usable"].as_bool().unwrap_or(false)))
}

/// Wait until every node's local view and committed vote say `healthy` for `backend`, and every node's
/// committed state agrees on the fleet-wide health.
async fn wait_fleet(c: &Cluster, backend: &str, healthy: bool, timeout: Duration) -> Result<()> {
    let addrs: Vec<(u64, String)> = c.nodes.iter().map(|n| (n.id, n.http_addr())).collect();
    wait_until(&format!("{backend} {} on every node", if healthy { "up" } else { "down" }), timeout, || {
        let addrs = addrs.clone();
        async move {
            for (id, a) in &addrs {
                let st = state(a).await?;
                ensure!(
                    committed_healthy(&st, backend)? == healthy,
                    "node {id} has fleet-wide health {}",
                    !healthy
                );
            }
            Ok(())
        }
    })
    .await
}

/// Two demo backends on 127.0.<net>.1:19001 and .2:19002, three nodes on 127.0.<net>.1N with a leader,
/// and the health-checked pool over both backends applied.
struct Setup {
    b1: String,
    b2: String,
    backend1: BackendProc,
    _backend2: BackendProc,
    c: Cluster,
    leader: u64,
}

async fn setup(net: u8) -> Result<Setup> {
    let (b1, b2) = (format!("127.0.{net}.1:19001"), format!("127.0.{net}.2:19002"));
    let backend1 = BackendProc::start("backend-1", &b1).await?;
    let _backend2 = BackendProc::start("backend-2", &b2).await?;
    let mut c = Cluster::start(net, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&[&b1, &b2])).await?;
    Ok(Setup { b1, b2, backend1, _backend2, c, leader })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_goes_down_fleet_wide_and_comes_back_after_rise_checks() -> Result<()> {
    let Setup { b1, b2, mut backend1, _backend2, c, leader: _ } = setup(81).await?;
    let (b1, b2) = (b1.as_str(), b2.as_str());

    // Every node sees both up and its up vote is committed.
    let nodes: Vec<(u64, String)> = c.nodes.iter().map(|n| (n.id, n.http_addr())).collect();
    wait_until("every node's up votes committed", ELECTION, || {
        let nodes = nodes.clone();
        async move {
            for (id, a) in &nodes {
                let st = state(a).await?;
                for b in [b1, b2] {
                    ensure!(local(&st, b)? == ("up".to_string(), true), "node {id} local view of {b}");
                    for (voter, _) in &nodes {
                        ensure!(committed_vote(&st, b, *voter) == Some(true), "node {voter}'s vote on {b}");
                    }
                }
            }
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;

    // Votes go out on changes only: with nothing changing, no vote is recorded again over several
    // probe intervals (every probe in that window succeeds).
    let before = vote_indexes(&state(&nodes[0].1).await?);
    let window = Instant::now() + Duration::from_millis(INTERVAL_MS * 6);
    while Instant::now() < window {
        let now = vote_indexes(&state(&nodes[0].1).await?);
        assert_eq!(now, before, "a vote was sent again although no view changed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    backend1.kill9();
    let killed = Instant::now();
    // Detection: up to one interval (+10% jitter) to the first failing probe, `fall` failures spaced
    // by one interval, then the vote's commit. The bound is generous for a loaded 2-core machine.
    let bound = Duration::from_millis(INTERVAL_MS * (FALL + 1) * 11 / 10) + Duration::from_secs(5);
    wait_fleet(&c, b1, false, bound).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let detected = killed.elapsed();
    eprintln!(
        "backend killed -> down fleet-wide on every node in {detected:?} (interval {INTERVAL_MS} ms, fall {FALL})"
    );
    // The fleet-wide decision needs only a quorum of down votes; every node's own checker follows
    // within the same bound.
    wait_until("every node's local view of the dead backend down", bound, || {
        let nodes = nodes.clone();
        async move {
            for (id, a) in &nodes {
                let st = state(a).await?;
                ensure!(local(&st, b1)? == ("down".to_string(), false), "node {id} local view of {b1}");
            }
            Ok(())
        }
    })
    .await?;
    eprintln!("every node's local view down after {:?}", killed.elapsed());
    for n in &c.nodes {
        let st = state(&n.http_addr()).await?;
        assert!(committed_healthy(&st, b2)?, "the other backend stays up");
        let eligible: Vec<&str> = st["pools"]["web"]["eligible"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(eligible, [b2], "node {}: the dead backend left the eligible set", n.id);
    }

    let _backend1 = BackendProc::start("backend-1", b1).await?;
    let restarted = Instant::now();
    let bound = Duration::from_millis(INTERVAL_MS * (RISE + 1) * 11 / 10) + Duration::from_secs(5);
    wait_fleet(&c, b1, true, bound).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("backend restarted -> up fleet-wide in {:?} (rise {RISE})", restarted.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_that_cannot_reach_a_backend_does_not_eject_it_for_the_fleet() -> Result<()> {
    let net = 82;
    let (b1, b2) = ("127.0.82.1:19001", "127.0.82.2:19002");
    let blind = 3u64;
    let blind_ip = Cluster::ip(net, blind).to_string();
    let _backend1 = BackendProc::start_with("backend-1", b1, &["--refuse-from", &blind_ip]).await?;
    let _backend2 = BackendProc::start("backend-2", b2).await?;
    let mut c = Cluster::start(net, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let listener = "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18080\npool = \"web\"\n";
    let toml = config(&[b1, b2]).replace("policy = \"maglev\"", "policy = \"round_robin\"") + listener;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &toml).await?;

    // Node 3's down vote reaches the committed state of every node; the others voted up.
    let nodes: Vec<(u64, String)> = c.nodes.iter().map(|n| (n.id, n.http_addr())).collect();
    wait_until("node 3's down vote and the others' up votes committed everywhere", ELECTION, || {
        let nodes = nodes.clone();
        async move {
            for (id, a) in &nodes {
                let st = state(a).await?;
                for (voter, _) in &nodes {
                    let want = *voter != blind;
                    ensure!(
                        committed_vote(&st, b1, *voter) == Some(want),
                        "node {id}: vote of node {voter} on {b1} is {:?}",
                        committed_vote(&st, b1, *voter)
                    );
                    ensure!(
                        committed_vote(&st, b2, *voter) == Some(true),
                        "node {id}: vote of {voter} on {b2}"
                    );
                }
            }
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;

    for (id, a) in &nodes {
        let st = state(a).await?;
        assert!(committed_healthy(&st, b1)?, "node {id}: one node's view must not eject {b1} for the fleet");
        let eligible: Vec<&str> = st["pools"]["web"]["eligible"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(eligible.contains(&b1), "node {id}: {b1} stays eligible: {eligible:?}");
        let want = if *id == blind { ("down".to_string(), false) } else { ("up".to_string(), true) };
        assert_eq!(local(&st, b1)?, want, "node {id}: local view of {b1}");
        assert_eq!(local(&st, b2)?, ("up".to_string(), true), "node {id}: local view of {b2}");
    }

    // The data plane: the blind node routes around backend-1 (its proxy could still connect to it: only
    // the probes come from the node's IP), the others keep using both.
    for n in &c.nodes {
        let front = format!("{}:18080", n.ip);
        let f = front.clone();
        wait_until(&format!("node {}'s listener", n.id), ELECTION, || {
            let f = f.clone();
            async move { http_get(&f, "/health", &[]).await.map(|_| ()) }
        })
        .await?;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let (status, headers, _) = http_get(&front, "/", &[]).await?;
            ensure!(status == 200, "node {}: status {status}", n.id);
            let by = lbfleet_tests::header(&headers, "x-backend");
            seen.insert(by);
        }
        let want: Vec<&str> = if n.id == blind { vec!["backend-2"] } else { vec!["backend-1", "backend-2"] };
        assert_eq!(seen.iter().map(String::as_str).collect::<Vec<_>>(), want, "node {} answered by", n.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_health_vote_validates_and_forwards_to_the_leader() -> Result<()> {
    let net = 84;
    let b1 = "127.0.84.1:19001";
    let mut c = Cluster::start(net, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    // No backend process: the checkers will vote it down, which this test does not wait for.
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&[b1])).await?;
    let follower_id = c.nodes.iter().find(|n| n.id != leader).expect("a follower").id;
    let follower = c.node(follower_id).grpc_addr();
    // The follower checks pool and backend against its own applied state: wait until it has the config.
    wait_until("the config applied on the follower", ELECTION, || async {
        ensure!(admin::get_config(&follower, true).await?.version >= 1, "no config yet");
        Ok(())
    })
    .await?;
    // Votes come from nodes: each client presents the certificate of the node it votes as.
    let as_node = |id: u64| {
        let follower = follower.clone();
        async move {
            anyhow::Ok(lbfleet_tests::pb::admin_client::AdminClient::new(
                admin::node_channel(&follower, Duration::from_secs(15), id).await?,
            ))
        }
    };
    let mut client = as_node(follower_id).await?;
    let vote = |node: u64, pool: &str, backend: &str| lbfleet_tests::pb::HealthVoteRequest {
        node,
        pool: pool.into(),
        backend: backend.into(),
        healthy: true,
        observed_at_ms: 1,
    };
    let code = |r: std::result::Result<tonic::Response<lbfleet_tests::pb::WriteResponse>, tonic::Status>| {
        r.err().map(|s| (s.code(), s.message().to_string()))
    };
    let me = follower_id;
    let other = (1..=3).find(|&i| i != me).unwrap();
    let (c1, m1) = code(client.submit_health_vote(vote(me, "nope", b1)).await).expect("refused");
    assert_eq!(c1, tonic::Code::NotFound, "{m1}");
    assert!(m1.contains("nope"), "{m1}");
    let (c2, m2) = code(client.submit_health_vote(vote(me, "web", "127.0.0.1:1")).await).expect("refused");
    assert_eq!(c2, tonic::Code::NotFound, "{m2}");
    let (c3, m3) = code(client.submit_health_vote(vote(other, "web", b1)).await).expect("refused");
    assert_eq!(c3, tonic::Code::PermissionDenied, "node {me} cannot vote as node {other}: {m3}");
    let (c4, m4) = code(as_node(9).await?.submit_health_vote(vote(9, "web", b1)).await).expect("refused");
    assert_eq!(c4, tonic::Code::FailedPrecondition, "{m4}");
    assert!(m4.contains("node 9"), "{m4}");
    // Another node's own vote is taken only by the leader (which checks the voter itself).
    assert!(m4.contains("not the leader"), "{m4}");
    // A follower's own vote, sent to it, is committed through the leader.
    let r = client.submit_health_vote(vote(me, "web", b1)).await?.into_inner();
    assert!(r.log_index > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_made_without_quorum_is_retried_until_it_commits() -> Result<()> {
    let net = 83;
    let Setup { b1, b2: _, mut backend1, _backend2, mut c, leader } = setup(net).await?;
    let b1 = b1.as_str();
    // A follower, so that without the others it knows no leader and its vote never reaches a log.
    let lone = c.nodes.iter().find(|n| n.id != leader).expect("a follower").id;
    let others: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|id| *id != lone).collect();
    let lone_http = c.node(lone).http_addr();
    wait_until("the lone node's up vote on backend-1 committed", ELECTION, || {
        let a = lone_http.clone();
        async move {
            let st = state(&a).await?;
            ensure!(committed_vote(&st, b1, lone) == Some(true), "no up vote yet");
            Ok(())
        }
    })
    .await?;

    // The other two nodes go away; then the lone node alone loses backend-1.
    for id in &others {
        c.node(*id).kill9();
    }
    backend1.kill9();
    let lone_ip = Cluster::ip(net, lone).to_string();
    let _backend1 = BackendProc::start_with("backend-1", b1, &["--refuse-from", &lone_ip]).await?;
    let a = lone_http.clone();
    wait_until("the lone node sees backend-1 down locally", ELECTION, || {
        let a = a.clone();
        async move {
            let st = state(&a).await?;
            ensure!(local(&st, b1)? == ("down".to_string(), false), "local view {:?}", local(&st, b1)?);
            Ok(())
        }
    })
    .await?;
    // Its first attempt fails for want of a leader (within the admin service's leader wait).
    let log = c.node(lone).log.clone();
    wait_until("a failed vote in the lone node's log", ELECTION, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            ensure!(text.contains("health vote not accepted (will retry)"), "not yet");
            Ok(())
        }
    })
    .await?;
    let st = state(&lone_http).await?;
    assert_eq!(committed_vote(&st, b1, lone), Some(true), "no quorum: the down vote cannot have committed");

    for id in &others {
        c.node(*id).start()?;
    }
    let back = Instant::now();
    let nodes: Vec<(u64, String)> = c.nodes.iter().map(|n| (n.id, n.http_addr())).collect();
    wait_until(
        "the lone node's down vote committed on every node after the quorum came back",
        ELECTION * 2,
        || {
            let nodes = nodes.clone();
            async move {
                for (id, a) in &nodes {
                    let st = state(a).await?;
                    let v = committed_vote(&st, b1, lone);
                    ensure!(v == Some(false), "node {id} still has {v:?}");
                    ensure!(committed_healthy(&st, b1)?, "node {id}: one down vote of three must not eject");
                }
                Ok(())
            }
        },
    )
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("retried vote committed {:?} after the other nodes restarted", back.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_eject_a_backend_only_on_the_node_that_saw_them() -> Result<()> {
    let net = 85;
    let (b1, b2) = ("127.0.85.1:19001", "127.0.85.2:19002");
    // backend-1 is never started: every connect to it is refused.
    let _backend2 = BackendProc::start("backend-2", b2).await?;
    let mut c = Cluster::start(net, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let toml = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{b1}\"\n\
         [[pool.backend]]\naddr = \"{b2}\"\n[pool.health]\nkind = \"none\"\n\
         [pool.outlier]\nconsecutive_connect_failures = 2\nbase_ejection = \"60s\"\nmax_ejection_percent = 50\n\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18080\npool = \"web\"\n"
    );
    admin::apply_toml(&c.nodes[0].grpc_addr(), &toml).await?;
    let front = format!("{}:18080", Cluster::ip(net, 1));
    // Round robin sends every other request to backend-1 first; the proxy moves on to backend-2.
    let answered = std::sync::atomic::AtomicU32::new(0);
    wait_until("node 1 ejects backend-1 after two connect failures", ELECTION, || {
        let front = front.clone();
        let n1 = c.nodes[0].http_addr();
        let answered = &answered;
        async move {
            let (status, headers, _) = http_get(&front, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            ensure!(headers.get("x-backend").is_some_and(|v| v == "backend-2"), "{headers:?}");
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let st = state(&n1).await?;
            let b = st["local_health"].as_array().and_then(|a| a.iter().find(|b| b["addr"] == b1)).cloned();
            let b = b.ok_or_else(|| anyhow!("no local_health for {b1}"))?;
            ensure!(b["ejected_ms"].as_u64().is_some_and(|ms| ms > 30_000), "not ejected: {b}");
            ensure!(b["usable"] == false && b["ejections"] == 1, "{b}");
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let answered = answered.into_inner();
    eprintln!("ejected on node 1 after {answered} requests, each answered by backend-2");
    for n in &c.nodes[1..] {
        let st = state(&n.http_addr()).await?;
        assert_eq!(local(&st, b1)?, ("unknown".to_string(), true), "node {}: no traffic, no ejection", n.id);
        assert!(committed_healthy(&st, b1)?, "passive ejection is local: fleet-wide health untouched");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_replaces_its_stale_vote() -> Result<()> {
    let Setup { b1, b2: _, mut backend1, _backend2, mut c, leader: _ } = setup(86).await?;
    let b1 = b1.as_str();
    let n1 = c.node(1).http_addr();
    let votes_are = |want: [Option<bool>; 3]| {
        let n1 = n1.clone();
        move || {
            let n1 = n1.clone();
            async move {
                let st = state(&n1).await?;
                let got = [1, 2, 3].map(|id| committed_vote(&st, b1, id));
                ensure!(got == want, "votes on {b1}: {got:?}, want {want:?}");
                Ok(())
            }
        }
    };
    wait_until("every node's up vote", ELECTION, votes_are([Some(true); 3])).await?;
    backend1.kill9();
    wait_until("every node's down vote", ELECTION, votes_are([Some(false); 3])).await?;

    // Node 3 stops with a down vote on record; the backend comes back while it is away.
    c.node(3).kill9();
    let _backend1 = BackendProc::start("backend-1", b1).await?;
    wait_until("up votes of the running nodes", ELECTION, votes_are([Some(true), Some(true), Some(false)]))
        .await?;
    let st = state(&n1).await?;
    assert!(committed_healthy(&st, b1)?, "one stale down vote of three does not keep it down");

    c.node(3).start()?;
    wait_until("node 3's stale vote replaced after its restart", ELECTION, votes_are([Some(true); 3]))
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    Ok(())
}
