use std::collections::{BTreeMap, BTreeSet};

use lbfleet_api::state::LbNode;
use lbfleet_raft_store::StoredMembership;
use openraft::{CommittedLeaderId, Vote};

use super::*;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn local() -> Local {
    Local { id: 3, members: BTreeSet::from([1, 2, 3]), last_log_id: Some(log_id(2, 10)) }
}

fn membership(voters: &[u64], nodes: &[u64]) -> Membership {
    let nodes: BTreeMap<u64, LbNode> = nodes
        .iter()
        .map(|&i| (i, LbNode { addr: format!("127.0.0.1{i}:7400"), http_addr: format!("127.0.0.1{i}:7401") }))
        .collect();
    raw(vec![voters.iter().copied().collect()], nodes)
}

/// `Membership::new` adds every voter to the nodes; this keeps exactly what is given, as a hostile
/// peer's bytes would.
fn raw(configs: Vec<BTreeSet<u64>>, nodes: BTreeMap<u64, LbNode>) -> Membership {
    #[derive(serde::Serialize)]
    struct Raw {
        configs: Vec<BTreeSet<u64>>,
        nodes: BTreeMap<u64, LbNode>,
    }
    postcard::from_bytes(&postcard::to_allocvec(&Raw { configs, nodes }).unwrap()).unwrap()
}

fn entry(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

fn append(term: u64, prev: Option<LogId>, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, 1),
        prev_log_id: prev,
        entries,
        leader_commit: prev,
    }
}

fn field(r: Result<(), OutOfBounds>) -> String {
    r.expect_err("refused").field
}

#[test]
fn an_ordinary_append_entries_passes() {
    let req = append(3, Some(log_id(2, 10)), vec![entry(2, 11), entry(3, 12)]);
    assert_eq!(append_entries(&req, &local()), Ok(()));
    // The very first entries of a cluster start at index 0, with no previous log id.
    assert_eq!(append_entries(&append(1, None, vec![entry(0, 0), entry(1, 1)]), &Local::default()), Ok(()));
}

#[test]
fn a_huge_term_is_refused_naming_the_field() {
    let req = append(u64::MAX, None, vec![]);
    let err = append_entries(&req, &local()).unwrap_err();
    assert_eq!(err.field, "vote.leader_id.term");
    assert!(err.problem.contains(&MAX_TERM.to_string()), "{err}");
    assert_eq!(append_entries(&append(MAX_TERM, None, vec![]), &local()), Ok(()));
    assert_eq!(field(append_entries(&append(MAX_TERM + 1, None, vec![]), &local())), "vote.leader_id.term");
}

#[test]
fn log_ids_newer_than_the_vote_or_beyond_the_index_cap_are_refused() {
    assert_eq!(
        field(append_entries(&append(3, Some(log_id(4, 10)), vec![]), &local())),
        "prev_log_id.leader_id.term"
    );
    assert_eq!(
        field(append_entries(&append(3, Some(log_id(3, MAX_LOG_INDEX + 1)), vec![]), &local())),
        "prev_log_id.index"
    );
    let req = append(3, Some(log_id(2, 10)), vec![entry(2, 11), entry(9, 12)]);
    assert_eq!(field(append_entries(&req, &local())), "entries[1].log_id.leader_id.term");
    let mut req = append(3, Some(log_id(2, 10)), vec![]);
    req.leader_commit = Some(log_id(3, u64::MAX));
    assert_eq!(field(append_entries(&req, &local())), "leader_commit.index");
}

#[test]
fn entries_must_follow_each_other() {
    let gap = append(3, Some(log_id(2, 10)), vec![entry(2, 12)]);
    assert_eq!(field(append_entries(&gap, &local())), "entries[0].log_id.index");
    let back = append(3, Some(log_id(2, 10)), vec![entry(2, 11), entry(2, 11)]);
    assert_eq!(field(append_entries(&back, &local())), "entries[1].log_id.index");
    let older = append(3, Some(log_id(2, 10)), vec![entry(1, 11)]);
    assert_eq!(field(append_entries(&older, &local())), "entries[0].log_id.leader_id.term");
}

#[test]
fn a_peer_cannot_speak_as_this_node_or_as_node_zero() {
    let mut req = append(3, None, vec![]);
    req.vote = Vote::new_committed(3, 3);
    assert_eq!(field(append_entries(&req, &local())), "vote.leader_id.node_id");
    req.vote = Vote::new_committed(3, 0);
    assert_eq!(field(append_entries(&req, &local())), "vote.leader_id.node_id");
}

#[test]
fn membership_entries_must_be_coherent() {
    let with = |m: Membership| {
        append(
            3,
            Some(log_id(2, 10)),
            vec![Entry { log_id: log_id(3, 11), payload: EntryPayload::Membership(m) }],
        )
    };
    assert_eq!(append_entries(&with(membership(&[1, 2], &[1, 2, 4])), &local()), Ok(()));
    let err = append_entries(&with(membership(&[1, 2], &[1])), &local()).unwrap_err();
    assert_eq!(err.field, "entries[0].membership.configs[0]");
    assert!(err.problem.contains("voter 2"), "{err}");
    assert_eq!(
        field(append_entries(&with(membership(&[], &[1])), &local())),
        "entries[0].membership.configs[0]"
    );
    assert_eq!(field(append_entries(&with(membership(&[0], &[0])), &local())), "entries[0].membership.nodes");
    let many: Vec<u64> = (1..=MAX_MEMBERS as u64 + 1).collect();
    assert_eq!(
        field(append_entries(&with(membership(&[1], &many)), &local())),
        "entries[0].membership.nodes"
    );
}

#[test]
fn a_vote_with_a_huge_term_is_refused() {
    let req = VoteRequest::new(Vote::new(u64::MAX, 2), Some(log_id(2, 10)));
    assert_eq!(field(vote(&req, &local())), "vote.leader_id.term");
    let req = VoteRequest::new(Vote::new(4, 2), Some(log_id(5, 10)));
    assert_eq!(field(vote(&req, &local())), "last_log_id.leader_id.term");
    assert_eq!(vote(&VoteRequest::new(Vote::new(4, 2), Some(log_id(2, 10))), &local()), Ok(()));
}

#[test]
fn a_stranger_may_campaign_only_with_a_log_ahead_of_ours() {
    // Node 9 is no member here: a removed node campaigning again, with a log no longer than ours.
    let stale = VoteRequest::new(Vote::new(4, 9), Some(log_id(2, 10)));
    let err = vote(&stale, &local()).unwrap_err();
    assert_eq!(err.field, "vote.leader_id.node_id");
    assert!(err.problem.contains("not a member"), "{err}");
    // Ahead of us: it may have been added by entries this node has not received.
    assert_eq!(vote(&VoteRequest::new(Vote::new(4, 9), Some(log_id(3, 11))), &local()), Ok(()));
    // A node that knows no membership yet cannot tell.
    assert_eq!(vote(&stale, &Local { id: 3, ..Local::default() }), Ok(()));
}

fn chunk(offset: u64, len: usize) -> InstallSnapshotRequest<TypeConfig> {
    let m = membership(&[1, 2, 3], &[1, 2, 3]);
    InstallSnapshotRequest {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3, 20)),
            last_membership: StoredMembership::new(Some(log_id(1, 1)), m),
            snapshot_id: "3-20-1".into(),
        },
        offset,
        data: vec![0; len],
        done: false,
    }
}

#[test]
fn snapshot_chunks_stay_within_the_largest_snapshot() {
    assert_eq!(install_snapshot(&chunk(0, 1024), &local()), Ok(()));
    assert_eq!(install_snapshot(&chunk(MAX_SNAPSHOT_BYTES - 10, 10), &local()), Ok(()));
    let err = install_snapshot(&chunk(u64::MAX - 1, 0), &local()).unwrap_err();
    assert_eq!(err.field, "offset");
    assert!(err.problem.contains("largest snapshot"), "{err}");
    assert_eq!(field(install_snapshot(&chunk(MAX_SNAPSHOT_BYTES - 10, 11), &local())), "data");
    assert_eq!(field(install_snapshot(&chunk(MAX_SNAPSHOT_BYTES + 1, 0), &local())), "offset");
}

#[test]
fn snapshot_meta_is_checked_too() {
    let mut req = chunk(0, 1);
    req.meta.last_log_id = Some(log_id(3, MAX_LOG_INDEX + 5));
    assert_eq!(field(install_snapshot(&req, &local())), "meta.last_log_id.index");
    let mut req = chunk(0, 1);
    req.meta.last_membership = StoredMembership::new(Some(log_id(3, 21)), membership(&[1], &[1]));
    assert_eq!(field(install_snapshot(&req, &local())), "meta.last_membership.log_id");
    let mut req = chunk(0, 1);
    req.meta.snapshot_id = "x".repeat(MAX_SNAPSHOT_ID_BYTES + 1);
    assert_eq!(field(install_snapshot(&req, &local())), "meta.snapshot_id");
    let mut req = chunk(0, 1);
    req.vote = Vote::new_committed(MAX_TERM + 1, 1);
    assert_eq!(field(install_snapshot(&req, &local())), "vote.leader_id.term");
}
