//! The leader loop in one real lbnode (in-process: Raft, sled store, gRPC, the reporter and the
//! duties all run), with load put on the data plane's own in-flight counters, as a proxy does for each
//! request. Uses 127.0.94.0/24.

use std::time::Duration;

use clap::Parser;
use lbfleet_api::command::Command;
use lbfleet_api::config::{parse, Format};
use tokio::time::Instant;

use crate::config::{Cli, NodeConfig};
use crate::node::Node;

const P1: &str = "127.0.94.200:9001";
const P2: &str = "127.0.94.200:9002";
const S1: &str = "127.0.94.200:9101";
const S2: &str = "127.0.94.200:9102";

/// Poll `f` until it is true, or panic after `timeout` naming `what`.
async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let probe = || std::future::ready(if f() { Ok(()) } else { Err(anyhow::anyhow!("not yet")) });
    lbfleet_tests::wait_until(what, timeout, probe).await.unwrap_or_else(|e| panic!("{e:#}"));
}

fn active(node: &Node, backend: &str) -> bool {
    node.model().backend("web", backend).is_some_and(|b| b.active)
}

fn events(node: &Node) -> Vec<String> {
    node.model().events.iter().map(|e| format!("{} | {}", e.what, e.why)).collect()
}

#[test]
fn only_the_leader_of_the_same_term_acts() {
    let mut m = crate::raft::RaftMetrics::new_initial(1);
    m.current_term = 4;
    for state in
        [openraft::ServerState::Follower, openraft::ServerState::Candidate, openraft::ServerState::Learner]
    {
        m.state = state;
        assert!(!super::leads(&m, 4), "{state:?}");
    }
    m.state = openraft::ServerState::Leader;
    assert!(super::leads(&m, 4));
    assert!(!super::leads(&m, 3), "a leader of term 3 that is now leader of term 4 starts over");
    m.current_term = 5;
    assert!(!super::leads(&m, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_activates_a_standby_under_load_runs_the_hook_and_deactivates_it_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-1");
    let hook_log = dir.path().join("hooks.log");
    // The hooks live in the node's local config; the replicated config names them.
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        format!(
            "[hooks.web-out]\ncommand = [\"/bin/sh\", \"-c\", \"echo out $LBFLEET_POOL $LBFLEET_BACKEND >> {log}\"]\n\
             [hooks.web-in]\ncommand = [\"/bin/sh\", \"-c\", \"echo in $LBFLEET_POOL $LBFLEET_BACKEND >> {log}\"]\n\
             timeout = \"10s\"\n",
            log = hook_log.display()
        ),
    )
    .unwrap();
    let mut args: Vec<String> = [
        "lbnode",
        "--config",
        node_toml.to_str().unwrap(),
        "--id",
        "1",
        "--bind",
        "127.0.94.11",
        "--data-dir",
        data.to_str().unwrap(),
        "--peers",
        "1=127.0.94.11:7400",
    ]
    .map(String::from)
    .to_vec();
    args.extend(lbfleet_tests::creds().node_args(1));
    let cli = Cli::parse_from(args);
    let node = Node::start(NodeConfig::load(&cli).unwrap()).await.unwrap();
    let raft = node.raft().clone();
    wait_for("leadership", Duration::from_secs(20), || {
        raft.metrics().borrow().state == openraft::ServerState::Leader
    })
    .await;

    let config = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
         [[pool.backend]]\naddr = \"{P1}\"\n[[pool.backend]]\naddr = \"{P2}\"\n\
         [[pool.backend]]\naddr = \"{S2}\"\nstandby = true\n[[pool.backend]]\naddr = \"{S1}\"\nstandby = true\n\
         [pool.health]\nkind = \"none\"\n\
         [pool.scale]\nmin_active = 2\nmax_active = 3\nhigh_watermark = 2\nlow_watermark = 1\nwindow = \"2s\"\n\
         scale_out_hook = \"web-out\"\nscale_in_hook = \"web-in\"\n"
    );
    let config = parse(&config, Format::Toml).unwrap();
    raft.client_write(Command::ApplyConfig { config }).await.unwrap();
    let routing = node.cluster().dataplane.routing.clone();
    wait_for("the pool in the routing snapshot", Duration::from_secs(10), || {
        routing.load().pool("web").is_some()
    })
    .await;

    // Three requests in flight on each primary: average 3 > high watermark 2.
    let pool = routing.load().pool("web").cloned().unwrap();
    let guards: Vec<_> = pool.backends().iter().flat_map(|b| (0..3).map(|_| b.track())).collect();
    assert_eq!(guards.len(), 6);
    wait_for("S1 activated", Duration::from_secs(20), || active(&node, S1)).await;
    assert!(!active(&node, S2), "the lowest key goes first");
    let evs = events(&node);
    assert!(
        evs.iter().any(|e| e.starts_with(&format!(
            "activated standby backend {S1} of pool \"web\" | avg load 3.0 > high watermark 2 for 2s"
        ))),
        "{evs:#?}"
    );
    wait_for("the scale-out hook's result", Duration::from_secs(20), || {
        events(&node).iter().any(|e| e.contains("hook `web-out`") && e.contains("exited with 0"))
    })
    .await;
    let log = std::fs::read_to_string(&hook_log).unwrap();
    assert_eq!(log, format!("out web {S1}\n"));

    // Still loaded (6 over 3 active = 2.0, not above 2): and max_active is 3 anyway. Two more windows
    // bring no second activation.
    let t = Instant::now();
    wait_for("two more windows", Duration::from_secs(10), || t.elapsed() >= Duration::from_secs(4)).await;
    assert!(!active(&node, S2), "{:#?}", events(&node));

    // Idle: average 0 < low watermark 1 for a window → S1 goes back to standby.
    drop(guards);
    wait_for("S1 deactivated", Duration::from_secs(20), || !active(&node, S1)).await;
    wait_for("the scale-in hook's output", Duration::from_secs(20), || {
        std::fs::read_to_string(&hook_log).is_ok_and(|l| l.ends_with(&format!("in web {S1}\n")))
    })
    .await;
    let evs = events(&node);
    let decisions: Vec<&String> = evs.iter().filter(|e| e.contains("standby backend")).collect();
    assert_eq!(decisions.len(), 2, "one activation, one deactivation: {evs:#?}");
    assert!(decisions[1].contains("< low watermark 1 for 2s"), "{decisions:?}");
    node.shutdown().await.unwrap();
}

fn start_args(id: u64, dir: &std::path::Path, peers: &str) -> Cli {
    let data = dir.join(format!("node-{id}"));
    Cli::parse_from(
        [
            "lbnode".to_string(),
            "--id".into(),
            id.to_string(),
            "--bind".into(),
            format!("127.0.94.2{id}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--peers".into(),
            peers.to_string(),
        ]
        .into_iter()
        .chain(lbfleet_tests::creds().node_args(id)),
    )
}

fn leader_of(nodes: &[Option<Node>]) -> Option<(usize, u64)> {
    nodes.iter().enumerate().find_map(|(i, n)| {
        let n = n.as_ref()?;
        let m = n.raft().metrics().borrow().clone();
        (m.state == openraft::ServerState::Leader).then_some((i, m.current_term))
    })
}

/// Leader A activates S1 and is shut down; the new leader, seeing the same load on the two nodes
/// left, activates S2: S1 is activated once, and each step is recorded by the leader that took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_standby_is_activated_twice_across_a_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let peers = "1=127.0.94.21:7400,2=127.0.94.22:7400,3=127.0.94.23:7400";
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Some(
            Node::start(NodeConfig::load(&start_args(id, dir.path(), peers)).unwrap()).await.unwrap(),
        ));
    }
    let (a, term_a) = lbfleet_tests::wait_until("a leader", Duration::from_secs(20), || {
        std::future::ready(leader_of(&nodes).ok_or_else(|| anyhow::anyhow!("no leader yet")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let config = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
         [[pool.backend]]\naddr = \"{P1}\"\n[[pool.backend]]\naddr = \"{P2}\"\n\
         [[pool.backend]]\naddr = \"{S1}\"\nstandby = true\n[[pool.backend]]\naddr = \"{S2}\"\nstandby = true\n\
         [pool.health]\nkind = \"none\"\n\
         [pool.scale]\nmin_active = 2\nmax_active = 4\nhigh_watermark = 2\nlow_watermark = 1\nwindow = \"3s\"\n\
         scale_out_hook = \"web-out\"\n"
    );
    let leader = nodes[a].as_ref().unwrap();
    leader
        .raft()
        .client_write(Command::ApplyConfig { config: parse(&config, Format::Toml).unwrap() })
        .await
        .unwrap();

    // Three requests in flight to each primary on every node: 9 per primary fleet-wide.
    let mut guards = Vec::new();
    for n in nodes.iter().flatten() {
        let routing = n.cluster().dataplane.routing.clone();
        wait_for("the pool on every node", Duration::from_secs(10), || routing.load().pool("web").is_some())
            .await;
        let pool = routing.load().pool("web").cloned().unwrap();
        guards.push(pool.backends().iter().flat_map(|b| (0..3).map(|_| b.track())).collect::<Vec<_>>());
    }
    wait_for("S1 activated by the first leader", Duration::from_secs(20), || active(leader, S1)).await;
    assert!(!active(leader, S2));

    // Leader A goes away with its requests; 6 per primary stay: (6 + 6 + 0) / 3 = 4 > 2.
    guards.remove(a);
    nodes[a].take().unwrap().shutdown().await.unwrap();
    let survivor = nodes.iter().flatten().next().unwrap();
    wait_for("S2 activated by the next leader", Duration::from_secs(40), || active(survivor, S2)).await;
    let (_, term_b) = leader_of(&nodes).expect("a new leader");
    assert!(term_b > term_a);

    let state = lbfleet_api::state::ClusterState::clone(&survivor.model());
    let steps: Vec<_> = state.events.iter().filter(|e| e.what.starts_with("activated standby")).collect();
    assert_eq!(steps.len(), 2, "{:#?}", state.events);
    assert!(steps[0].what.contains(S1) && steps[0].term == term_a, "{steps:#?}");
    assert!(steps[1].what.contains(S2) && steps[1].term == term_b, "{steps:#?}");
    assert_ne!(steps[0].leader, steps[1].leader);
    // No node defines `web-out` (the config was written straight to the log, past the admin check):
    // each leader ran nothing and said so.
    wait_for("both missing hooks recorded", Duration::from_secs(20), || {
        survivor.model().events.iter().filter(|e| e.what.contains("did not run")).count() == 2
    })
    .await;
    let state = lbfleet_api::state::ClusterState::clone(&survivor.model());
    let missing: Vec<_> = state.events.iter().filter(|e| e.what.contains("did not run")).collect();
    assert!(missing[0].what.contains(S1) && missing[1].what.contains(S2), "{missing:#?}");
    assert!(missing[0].why.contains("has no [hooks.web-out] in its local config"), "{missing:#?}");
    drop(guards);
    for n in nodes.into_iter().flatten() {
        n.shutdown().await.unwrap();
    }
}
