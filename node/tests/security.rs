//! The trust boundary with real processes: mutual TLS between nodes, operators' tokens and roles,
//! node identities taken from certificates. Clusters on 127.0.70.1x and 127.0.71.1x.

use std::time::Duration;

use anyhow::{ensure, Context};
use lbfleet_api::command::Command;
use lbfleet_api::pb::{self, admin_client::AdminClient, raft_client::RaftClient};
use lbfleet_node::raft::proposer::Forwarded;
use lbfleet_tests::admin::{self, Bearer};
use lbfleet_tests::creds::{creds, foreign};
use lbfleet_tests::{lbctl, lbctl_bare, wait_until, Cluster};

const CONFIG: &str = r#"
[[pool]]
name = "web"
policy = "round_robin"
  [[pool.backend]]
  addr = "127.0.0.1:9"
  [pool.health]
  kind = "none"

[[listener]]
name = "web"
protocol = "http"
port = 18080
pool = "web"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn config_version(addr: &str) -> anyhow::Result<u64> {
    Ok(admin::get_config(addr, false).await?.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_a_token_with_the_role_and_plaintext_gets_nothing() {
    let mut c = Cluster::start(70, 3, &[]).expect("start nodes");
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    let ep = c.grpc_addr(leader);
    admin::apply_toml(&ep, CONFIG).await.expect("apply with the admin token");
    let version = config_version(&ep).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, CONFIG.replace("18080", "18081")).unwrap();
    let file = file.to_str().unwrap();
    let ca = creds().ca();
    let ca = ca.to_str().unwrap();
    let t = Duration::from_secs(30);

    // No CA, no token, a wrong token: exit 4, each naming what is missing.
    let out = lbctl_bare(&["--endpoint", &ep, "status"], t).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("LBCTL_CA"), "{}", text(&out.stderr));
    let out = lbctl_bare(&["--endpoint", &ep, "--ca", ca, "status"], t).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("LBCTL_TOKEN"), "{}", text(&out.stderr));
    let out =
        lbctl_bare(&["--endpoint", &ep, "--ca", ca, "--token", "lbf_wrong", "status"], t).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not valid"), "{}", text(&out.stderr));

    // Another cluster's CA does not verify this cluster's nodes.
    let fca = foreign().ca();
    let args = ["--endpoint", &ep, "--ca", fca.to_str().unwrap(), "--token", &creds().admin_token, "status"];
    let out = lbctl_bare(&args, t).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("certificate"), "{}", text(&out.stderr));

    // The read token reads, and cannot apply, drain or remove a node.
    let read = creds().read_token.as_str();
    let out = lbctl(&["--endpoint", &ep, "--token", read, "status"], t).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for cmd in [
        vec!["apply", "-f", file],
        vec!["nodes", "remove", "--id", "3"],
        vec!["drain", "web", "127.0.0.1:9"],
        vec!["drain-node"],
        vec!["undrain-node"],
    ] {
        let mut args = vec!["--endpoint", ep.as_str(), "--token", read];
        args.extend(cmd.iter().copied());
        let out = lbctl(&args, t).await.unwrap();
        assert_eq!(out.status.code(), Some(4), "{cmd:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("needs the admin role"), "{cmd:?}: {}", text(&out.stderr));
    }
    // Nothing changed: same config, three members; and the admin token can.
    assert_eq!(config_version(&ep).await.unwrap(), version);
    let nodes = admin::connect(&ep).await.unwrap().list_nodes(pb::ListNodesRequest {}).await.unwrap();
    assert_eq!(nodes.into_inner().nodes.len(), 3);
    let out = lbctl(&["--endpoint", &ep, "apply", "-f", file], t).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Plaintext gRPC to the port gets no answer from either service.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let err = AdminClient::new(plain.clone()).local_status(pb::LocalStatusRequest {}).await;
    assert!(err.is_err(), "plaintext admin call answered: {err:?}");
    let err = RaftClient::new(plain).vote(pb::RaftPayload { data: vec![] }).await;
    assert!(err.is_err(), "plaintext Raft call answered: {err:?}");
    admin::local_status(&ep).await.expect("the node still serves TLS clients");
}

/// A Raft/admin channel presenting node `as_node`'s certificate.
async fn as_node(c: &Cluster, target: u64, as_node: u64) -> tonic::transport::Channel {
    admin::node_channel(&c.grpc_addr(target), Duration::from_secs(10), as_node).await.expect("node channel")
}

fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied || s.code() == tonic::Code::Unauthenticated => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identities_and_a_node_of_another_ca_are_refused() {
    // Nodes 1 and 2 of this cluster's CA, node 3 with a certificate of another CA.
    let mut c = Cluster::builder(71).nodes(2).founders(3).log_filter("info,openraft=warn").start().unwrap();
    let peers = (1..=3).map(|i| format!("{i}={}", c.grpc_addr(i))).collect::<Vec<_>>().join(",");
    let mut stranger = c.make_node(3, Some(&peers));
    let at = stranger.args.iter().position(|a| a == "--ca-file").expect("credential flags");
    stranger.args.splice(at..at + 8, foreign().node_args(3));
    stranger.start().unwrap();
    c.nodes.push(stranger);

    let leader = c.wait_for_leader_among(&[1, 2], WAIT).await.unwrap();
    let ep = c.grpc_addr(leader);
    admin::apply_toml(&ep, CONFIG).await.expect("a majority of two commits");
    let version = config_version(&ep).await.unwrap();
    let term = admin::local_status(&ep).await.unwrap().term;

    // The stranger never gets the config, and the leader sees it as unreachable.
    let stranger_status = || async {
        let ch =
            admin::channel_with(&c.grpc_addr(3), Duration::from_secs(5), foreign().operator_tls()).await?;
        let mut a = AdminClient::with_interceptor(ch, Bearer::of(&foreign().admin_token));
        Ok::<_, anyhow::Error>(a.local_status(pb::LocalStatusRequest {}).await?.into_inner())
    };
    wait_until("the leader reports node 3 unreachable", WAIT, || async {
        let s = admin::status(&ep).await?;
        let n3 = s.nodes.iter().find(|n| n.id == 3).context("node 3 listed")?;
        ensure!(!n3.reachable, "node 3 reachable: {n3:?}");
        Ok(())
    })
    .await
    .unwrap();
    let s3 = stranger_status().await.expect("the stranger answers its own CA's clients");
    assert_eq!((s3.config_version, s3.leader), (0, None), "{s3:?}");

    // A client certificate of another CA does not even finish the handshake.
    let foreign_ch = admin::channel_with(&ep, Duration::from_secs(5), foreign().node_tls(2)).await;
    if let Ok(ch) = foreign_ch {
        let r = RaftClient::new(ch).vote(pb::RaftPayload { data: vec![] }).await;
        assert!(r.is_err(), "a foreign node certificate was answered: {r:?}");
    }

    // Node 2 may speak only for itself.
    let other = if leader == 1 { 2 } else { 1 };
    let vote = pb::HealthVoteRequest {
        node: leader,
        pool: "web".into(),
        backend: "127.0.0.1:9".into(),
        healthy: false,
        observed_at_ms: 0,
    };
    let mut forger = AdminClient::new(as_node(&c, leader, other).await);
    denied(forger.submit_health_vote(vote.clone()).await, "a health vote as another node");
    let report = pb::LoadReport { node: leader, at_ms: 1, backends: vec![] };
    denied(forger.report_load(report).await, "a load report as another node");
    let mut raft = RaftClient::new(as_node(&c, leader, other).await);
    let fwd = Forwarded {
        command: Command::HealthVote {
            node: leader,
            pool: "web".into(),
            backend: "127.0.0.1:9".into(),
            healthy: false,
            observed_at_ms: 0,
        },
        hops: 0,
    };
    let data = postcard::to_allocvec(&fwd).unwrap();
    denied(raft.propose(pb::RaftPayload { data }).await, "a forwarded vote as another node");
    let ballot = openraft::raft::VoteRequest::new(openraft::Vote::new(term + 5, leader), None);
    let data = postcard::to_allocvec(&ballot).unwrap();
    denied(raft.vote(pb::RaftPayload { data }).await, "a Raft vote request naming another candidate");

    // An operator, even with the admin token, is not a node.
    let mut operator = admin::connect(&ep).await.unwrap();
    denied(operator.submit_health_vote(vote).await, "a health vote with the admin token");
    let ch = admin::channel(&ep, Duration::from_secs(5)).await.unwrap();
    let mut raft_op = RaftClient::with_interceptor(ch, Bearer::of(&creds().admin_token));
    denied(raft_op.append_entries(pb::RaftPayload { data: vec![] }).await, "AppendEntries with a token");

    // Nothing moved: same leader and term, no vote recorded, same config.
    let after = admin::local_status(&ep).await.unwrap();
    assert_eq!((after.leader, after.term), (Some(leader), term), "{after:?}");
    assert_eq!(config_version(&ep).await.unwrap(), version);
    let bearer = creds().read_bearer();
    let (_, _, body) =
        lbfleet_tests::http_get(&c.http_addr(leader), "/api/v1/state", &[("authorization", &bearer)])
            .await
            .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let backends = state["health_votes"].as_array().expect("health_votes").clone();
    assert!(
        backends.iter().all(|b| b["votes"].as_object().is_some_and(|v| v.is_empty())),
        "a forged vote was recorded: {backends:?}"
    );
}
