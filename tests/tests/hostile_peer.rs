//! A hostile peer's Raft messages (a huge snapshot offset, a huge term), sent with a raw Raft gRPC
//! client as a peer would send them: each is refused with `invalid_argument` naming the field, the
//! node stays up, the cluster keeps its leader and term and keeps committing.
//!
//! Addresses: nodes on 127.0.141.1N.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_api::pb::raft_client::RaftClient;
use lbfleet_api::pb::RaftPayload;
use lbfleet_raft_store::{SnapshotMeta, StoredMembership, TypeConfig};
use lbfleet_tests::{admin, marked_config, marker_of, wait_until, Cluster};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, Vote};
use tonic::transport::Channel;

const NET: u8 = 141;
const ELECTION: Duration = Duration::from_secs(20);
/// Longer election timeouts than the default, so that a loaded machine does not hold a real
/// election in the middle of the check that the term did not move.
const TIMING: &[&str] = &["--heartbeat-ms", "150", "--election-min-ms", "1500", "--election-max-ms", "3000"];

/// A Raft client presenting node `as_node`'s certificate: a hostile peer is a node of the cluster
/// (a stolen or misbehaving node certificate), and it speaks as the node its certificate names.
async fn raft_client(addr: &str, as_node: u64) -> Result<RaftClient<Channel>> {
    let ch = admin::node_channel(addr, Duration::from_secs(5), as_node).await?;
    Ok(RaftClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

fn payload<T: serde::Serialize>(req: &T) -> RaftPayload {
    RaftPayload { data: postcard::to_allocvec(req).expect("encode") }
}

/// The status of a refused call; fails if the call was accepted.
fn refused(what: &str, r: Result<tonic::Response<RaftPayload>, tonic::Status>) -> Result<tonic::Status> {
    match r {
        Ok(_) => Err(anyhow!("{what} was accepted")),
        Err(s) => Ok(s),
    }
}

/// (leader, term) as every node sees it; fails if they disagree.
async fn leader_and_term(c: &Cluster) -> Result<(u64, u64)> {
    let mut seen = Vec::new();
    for n in &c.nodes {
        let st = admin::local_status(&n.grpc_addr()).await?;
        seen.push((st.leader.unwrap_or(0), st.term));
    }
    ensure!(seen.windows(2).all(|w| w[0] == w[1]), "nodes disagree on (leader, term): {seen:?}");
    Ok(seen[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_crash_a_node_or_move_the_term() -> Result<()> {
    let mut c = Cluster::start(NET, 3, TIMING)?;
    let leader = c.wait_for_leader(ELECTION).await?;
    admin::apply_toml(&c.grpc_addr(leader), &marked_config(1)).await?;
    let (l, term) =
        wait_until("every node to agree on leader and term", ELECTION, || leader_and_term(&c)).await?;
    ensure!(l == leader, "leader moved from {leader} to {l}");
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");

    for target in [follower, leader] {
        let other = (1..=3).find(|&i| i != target).expect("another node");

        // A snapshot transfer with the current term (from the real leader's id, when sent to a
        // follower): a first chunk at offset 0 opens the receiver's in-memory buffer, the next one
        // names an offset that would size it at 2^60 bytes.
        let sender = if target == leader { other } else { leader };
        let mut raft = raft_client(&c.grpc_addr(target), sender).await?;
        let mut install = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(term, sender),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(term, sender), 5)),
                last_membership: StoredMembership::default(),
                snapshot_id: format!("{term}-5-999"),
            },
            offset: 0,
            data: vec![0xAB; 16],
            done: false,
        };
        raft.install_snapshot(payload(&install)).await.context("a first snapshot chunk")?;
        install.offset = 1 << 60;
        let st = refused("a huge snapshot offset", raft.install_snapshot(payload(&install)).await)?;
        ensure!(st.code() == tonic::Code::InvalidArgument, "{st:?}");
        ensure!(st.message().contains("offset"), "the refusal names the field: {}", st.message());

        // AppendEntries and Vote with a term of 2^62: openraft would persist it, and later
        // elections would overflow `term + 1`.
        let mut raft = raft_client(&c.grpc_addr(target), other).await?;
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1 << 62, other),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let st = refused("a huge AppendEntries term", raft.append_entries(payload(&append)).await)?;
        ensure!(st.code() == tonic::Code::InvalidArgument, "{st:?}");
        ensure!(st.message().contains("vote.leader_id.term"), "{}", st.message());

        let vote = VoteRequest::new(Vote::new(1 << 62, other), None);
        let st = refused("a huge Vote term", raft.vote(payload(&vote)).await)?;
        ensure!(st.code() == tonic::Code::InvalidArgument, "{st:?}");
        ensure!(st.message().contains("vote.leader_id.term"), "{}", st.message());

        // Bytes that are no request at all.
        let st = refused("garbage", raft.vote(RaftPayload { data: vec![0xff; 7] }).await)?;
        ensure!(st.code() == tonic::Code::InvalidArgument, "{st:?}");
    }

    for n in &mut c.nodes {
        ensure!(n.is_running(), "node {} died:\n{}", n.id, n.log_tail(30));
    }
    let (l, t) = leader_and_term(&c).await?;
    ensure!((l, t) == (leader, term), "leader/term moved from ({leader}, {term}) to ({l}, {t})");

    // Still committing, through the follower that was attacked too.
    admin::apply_toml(&c.grpc_addr(follower), &marked_config(2)).await.context("apply after the attack")?;
    for id in 1..=3 {
        let addr = c.grpc_addr(id);
        wait_until(&format!("node {id} to apply the new config"), ELECTION, || async {
            let got = admin::get_config(&addr, true).await?;
            ensure!(marker_of(&got.config_json)? == 2, "still the old config");
            Ok(())
        })
        .await?;
    }
    let (l, t) = leader_and_term(&c).await?;
    ensure!((l, t) == (leader, term), "leader/term moved from ({leader}, {term}) to ({l}, {t})");
    ensure!(
        c.node(follower).log_tail(200).contains("refused a peer's"),
        "the refusals are logged:\n{}",
        c.node(follower).log_tail(30)
    );
    Ok(())
}
