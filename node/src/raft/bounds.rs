//! Bounds on what a peer's Raft message may carry, checked before openraft sees it (pure).
//!
//! openraft trusts its peers: it persists any vote that is newer than its own (a term of 2^63 makes
//! every later election overflow `term + 1`), and its snapshot receiver seeks the in-memory
//! snapshot buffer (`Cursor<Vec<u8>>`) to whatever offset a chunk names before writing, so one
//! chunk with a huge offset makes the node allocate until it aborts. These checks refuse such a
//! message with `invalid_argument` naming the field; nothing of it reaches openraft or the store.
//!
//! | what | bound |
//! |---|---|
//! | every term (vote, log ids, entries, committed, snapshot meta) | at most [`MAX_TERM`] = 2^48, and no log id newer than the request's own vote term |
//! | every log index | at most [`MAX_LOG_INDEX`] = 2^48 |
//! | `AppendEntries` entries | consecutive indexes following `prev_log_id`, terms never decreasing |
//! | `InstallSnapshot` chunk | `offset` and `offset + data.len()` at most [`MAX_SNAPSHOT_BYTES`] = 128 MiB; snapshot id at most [`MAX_SNAPSHOT_ID_BYTES`] |
//! | membership (in entries and snapshot meta) | 1 or 2 configs, none empty, every voter listed among the nodes, at most [`MAX_MEMBERS`] nodes, ids from 1, addresses at most [`MAX_ADDR_BYTES`] |
//! | the sender's id (`vote.leader_id.node_id`) | from 1 and not this node's own id |
//! | a `Vote` from a node that is not a member here | refused unless its last log id is ahead of this node's (it may have been added by entries this node has not received yet); a removed node that keeps campaigning cannot disrupt the cluster |
//!
//! Real values are far below these caps: a term grows by one per election (2^48 elections take
//! millions of years at one a second), an index by one per entry, and a snapshot is the replicated
//! state (the config, within its own size bounds, backend states and the bounded event log): a few
//! MiB. The caps are absolute, not relative to this node's term, because a node that was
//! partitioned for a long time legitimately comes back with a much higher term.
//!
//! The leader of an `AppendEntries` or `InstallSnapshot` is *not* required to be a member known
//! here: a lagging follower must accept a leader that was added by entries it has not received yet,
//! or it could never catch up. Which peer may speak at all is the transport's to decide (the node's
//! certificate), not this module's.

use std::collections::BTreeSet;

use lbfleet_api::NodeId;
use lbfleet_raft_store::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::EntryPayload;

use super::handle::Membership;

/// Highest term a peer's message may carry.
pub const MAX_TERM: u64 = 1 << 48;
/// Highest log index a peer's message may carry.
pub const MAX_LOG_INDEX: u64 = 1 << 48;
/// Largest snapshot this node receives: the end of every chunk (`offset + data.len()`) stays within
/// it. The receiver buffers the snapshot in memory, so this is also the most a peer can make this
/// node allocate for one.
pub const MAX_SNAPSHOT_BYTES: u64 = 128 * 1024 * 1024;
/// Longest snapshot id.
pub const MAX_SNAPSHOT_ID_BYTES: usize = 256;
/// Most nodes in one membership.
pub const MAX_MEMBERS: usize = 1024;
/// Longest node address (gRPC or HTTP `host:port`) in a membership.
pub const MAX_ADDR_BYTES: usize = 256;

/// A field of a peer's message that is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct OutOfBounds {
    /// The field, as a path into the request (`entries[3].log_id.index`).
    pub field: String,
    pub problem: String,
}

fn bad<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, OutOfBounds> {
    Err(OutOfBounds { field: field.into(), problem: problem.into() })
}

/// What this node knows that the checks need.
#[derive(Debug, Clone, Default)]
pub struct Local {
    pub id: NodeId,
    /// Every node (voter or learner, in either half of a joint config) of this node's effective
    /// membership, the latest in its log; empty before it knows any.
    pub members: BTreeSet<NodeId>,
    /// This node's last log id.
    pub last_log_id: Option<LogId>,
}

fn check_vote(field: &str, vote: &Vote, local: &Local) -> Result<(), OutOfBounds> {
    let term = vote.leader_id.term;
    if term > MAX_TERM {
        return bad(format!("{field}.leader_id.term"), format!("{term} is above the cap {MAX_TERM}"));
    }
    let node = vote.leader_id.node_id;
    if node == 0 {
        return bad(format!("{field}.leader_id.node_id"), "0 is not a node id");
    }
    if node == local.id {
        return bad(
            format!("{field}.leader_id.node_id"),
            format!("{node} is this node's own id; a peer cannot speak as this node"),
        );
    }
    Ok(())
}

fn check_log_id(field: &str, log_id: &LogId, vote_term: u64) -> Result<(), OutOfBounds> {
    let term = log_id.leader_id.term;
    if term > vote_term {
        return bad(
            format!("{field}.leader_id.term"),
            format!("{term} is newer than the request's vote term {vote_term}"),
        );
    }
    if log_id.index > MAX_LOG_INDEX {
        return bad(format!("{field}.index"), format!("{} is above the cap {MAX_LOG_INDEX}", log_id.index));
    }
    Ok(())
}

fn check_membership(field: &str, m: &Membership) -> Result<(), OutOfBounds> {
    let configs = m.get_joint_config();
    if configs.is_empty() || configs.len() > 2 {
        return bad(
            format!("{field}.configs"),
            format!("{} configs (expected 1, or 2 while joint)", configs.len()),
        );
    }
    let nodes: Vec<(&NodeId, &lbfleet_api::state::LbNode)> = m.nodes().collect();
    if nodes.len() > MAX_MEMBERS {
        return bad(format!("{field}.nodes"), format!("{} nodes (at most {MAX_MEMBERS})", nodes.len()));
    }
    for (id, node) in &nodes {
        if **id == 0 {
            return bad(format!("{field}.nodes"), "0 is not a node id");
        }
        if node.addr.len() > MAX_ADDR_BYTES || node.http_addr.len() > MAX_ADDR_BYTES {
            return bad(
                format!("{field}.nodes[{id}]"),
                format!("address longer than {MAX_ADDR_BYTES} bytes"),
            );
        }
    }
    for (i, config) in configs.iter().enumerate() {
        if config.is_empty() {
            return bad(format!("{field}.configs[{i}]"), "no voter");
        }
        if let Some(v) = config.iter().find(|v| m.get_node(v).is_none()) {
            return bad(format!("{field}.configs[{i}]"), format!("voter {v} is not among the nodes"));
        }
    }
    Ok(())
}

fn check_entry(field: &str, entry: &Entry, vote_term: u64) -> Result<(), OutOfBounds> {
    check_log_id(&format!("{field}.log_id"), &entry.log_id, vote_term)?;
    if let EntryPayload::Membership(m) = &entry.payload {
        check_membership(&format!("{field}.membership"), m)?;
    }
    Ok(())
}

/// Check a peer's `AppendEntries`.
pub fn append_entries(req: &AppendEntriesRequest<TypeConfig>, local: &Local) -> Result<(), OutOfBounds> {
    check_vote("vote", &req.vote, local)?;
    let term = req.vote.leader_id.term;
    if let Some(prev) = &req.prev_log_id {
        check_log_id("prev_log_id", prev, term)?;
    }
    let mut last = req.prev_log_id;
    for (i, entry) in req.entries.iter().enumerate() {
        let field = format!("entries[{i}]");
        check_entry(&field, entry, term)?;
        let want = last.map_or(0, |l| l.index + 1);
        if entry.log_id.index != want {
            return bad(
                format!("{field}.log_id.index"),
                format!("{} does not follow {} (expected {want})", entry.log_id.index, show(last.as_ref())),
            );
        }
        if let Some(l) = &last {
            if entry.log_id.leader_id.term < l.leader_id.term {
                return bad(
                    format!("{field}.log_id.leader_id.term"),
                    format!(
                        "{} is older than the term {} before it",
                        entry.log_id.leader_id.term, l.leader_id.term
                    ),
                );
            }
        }
        last = Some(entry.log_id);
    }
    if let Some(c) = &req.leader_commit {
        check_log_id("leader_commit", c, term)?;
    }
    Ok(())
}

/// Check a peer's `Vote` request.
pub fn vote(req: &VoteRequest<NodeId>, local: &Local) -> Result<(), OutOfBounds> {
    check_vote("vote", &req.vote, local)?;
    if let Some(l) = &req.last_log_id {
        check_log_id("last_log_id", l, req.vote.leader_id.term)?;
    }
    let candidate = req.vote.leader_id.node_id;
    if !local.members.is_empty()
        && !local.members.contains(&candidate)
        && req.last_log_id <= local.last_log_id
    {
        return bad(
            "vote.leader_id.node_id",
            format!(
                "node {candidate} is not a member here ({:?}) and its log (last {}) is not ahead of this \
                 node's (last {})",
                local.members,
                show(req.last_log_id.as_ref()),
                show(local.last_log_id.as_ref())
            ),
        );
    }
    Ok(())
}

/// Check a peer's `InstallSnapshot` chunk.
pub fn install_snapshot(req: &InstallSnapshotRequest<TypeConfig>, local: &Local) -> Result<(), OutOfBounds> {
    check_vote("vote", &req.vote, local)?;
    snapshot_meta(&req.meta, req.vote.leader_id.term)?;
    if req.offset > MAX_SNAPSHOT_BYTES {
        return bad(
            "offset",
            format!("{} is beyond the largest snapshot ({MAX_SNAPSHOT_BYTES} bytes)", req.offset),
        );
    }
    let end = req.offset.checked_add(req.data.len() as u64);
    if end.is_none_or(|e| e > MAX_SNAPSHOT_BYTES) {
        return bad(
            "data",
            format!(
                "{} bytes at offset {} end beyond the largest snapshot ({MAX_SNAPSHOT_BYTES} bytes)",
                req.data.len(),
                req.offset
            ),
        );
    }
    Ok(())
}

fn snapshot_meta(meta: &SnapshotMeta, vote_term: u64) -> Result<(), OutOfBounds> {
    if meta.snapshot_id.len() > MAX_SNAPSHOT_ID_BYTES {
        return bad("meta.snapshot_id", format!("longer than {MAX_SNAPSHOT_ID_BYTES} bytes"));
    }
    if let Some(l) = &meta.last_log_id {
        check_log_id("meta.last_log_id", l, vote_term)?;
    }
    // A membership without a log id is the empty one of a store that never had any.
    if let Some(m) = meta.last_membership.log_id() {
        check_log_id("meta.last_membership.log_id", m, vote_term)?;
        if Some(*m) > meta.last_log_id {
            return bad(
                "meta.last_membership.log_id",
                format!("{m} is after the snapshot's last log id {}", show(meta.last_log_id.as_ref())),
            );
        }
        check_membership("meta.last_membership", meta.last_membership.membership())?;
    }
    Ok(())
}

fn show(l: Option<&LogId>) -> String {
    l.map_or_else(|| "none".to_string(), |l| format!("{}-{}", l.leader_id.term, l.index))
}

#[cfg(test)]
mod tests;
