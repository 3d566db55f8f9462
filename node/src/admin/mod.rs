//! The admin surfaces of a node: the gRPC `Admin` service that `lbctl` speaks ([`grpc`]) and the
//! admin HTTP server with health, state JSON, Prometheus metrics and the cluster dashboard ([`http`],
//! its data in [`dashboard`]).
//!
//! This module holds what both need and that has no I/O of its own: how proposal and Raft errors
//! become gRPC statuses ([`propose_failure`], [`write_failure`]) and the `Watch` events. The views
//! themselves and their protobuf conversions are `lbfleet_api::view`.
//!
//! Commands and linearizable reads go through the node's proposer (`crate::raft::proposer`), which
//! forwards to the leader itself. Membership changes are forwarded by the `Admin` service; the
//! forwarded request carries [`HOPS_HEADER`] so that a request cannot bounce between nodes while
//! leadership moves.

pub mod dashboard;
pub mod grpc;
pub mod http;
pub mod metrics;

use std::time::Duration;

use lbfleet_api::pb;
use lbfleet_api::state::LbNode;
use lbfleet_api::NodeId;
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use tonic::Status;

use crate::raft::ProposeError;

/// gRPC metadata key counting how many times a request was forwarded.
pub const HOPS_HEADER: &str = "lbfleet-forward-hops";
/// How long the cluster-wide status waits for each member's answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the leader-side part of a request did not produce an answer.
#[derive(Debug)]
pub enum Failure {
    /// This node is not (or no longer) the leader; the request should go to `leader`.
    NotLeader { leader: Option<NodeId> },
    /// A final answer for the client.
    Status(Status),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

/// Map a failed `change_membership` / `add_learner`.
pub fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, LbNode>>) -> Failure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Failure::NotLeader { leader: f.leader_id }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Failure::Status(match c {
            ChangeMembershipError::InProgress(p) => {
                Status::failed_precondition(format!("another membership change is still in progress: {p}"))
            }
            ChangeMembershipError::EmptyMembership(e) => {
                Status::invalid_argument(format!("the cluster would be left without voters: {e}"))
            }
            ChangeMembershipError::LearnerNotFound(l) => Status::failed_precondition(l.to_string()),
        }),
        RaftError::Fatal(f) => Failure::Status(fatal_status(&f)),
    }
}

/// How a failed proposal or linearizable read is told to a client. An outcome that is unknown (the
/// proposal reached the leader but its answer was lost; the leader took the entry but no quorum
/// committed it in time) is `deadline_exceeded` with a message saying it may have been applied; every
/// other failure means nothing was written.
pub fn propose_failure(e: ProposeError) -> Status {
    match e {
        ProposeError::Unknown { .. } | ProposeError::NoQuorum { .. } => {
            Status::deadline_exceeded(e.to_string())
        }
        ProposeError::Fatal { .. } => Status::internal(e.to_string()),
        ProposeError::Refused { .. } => Status::permission_denied(e.to_string()),
        ProposeError::ShuttingDown(_) => Status::unavailable("this node is shutting down"),
        ProposeError::NotLeader { .. }
        | ProposeError::NoLeader(_)
        | ProposeError::NotConfirmed { .. }
        | ProposeError::Lagging { .. } => Status::unavailable(e.to_string()),
    }
}

fn fatal_status(f: &Fatal<NodeId>) -> Status {
    match f {
        Fatal::Stopped => Status::unavailable("this node is shutting down"),
        other => Status::internal(format!("Raft stopped on this node: {other}")),
    }
}

/// The answer when a write is not committed in time: the entry may still commit later.
pub fn no_quorum(what: &str, timeout: Duration, id: NodeId, term: u64) -> Status {
    Status::deadline_exceeded(format!(
        "no quorum: {what} not committed within {} (leader {id}, term {term}); fewer than a majority \
         of voters are answering; it may still be applied",
        humantime::format_duration(timeout)
    ))
}

/// Rejections of `apply` become `invalid_argument` (or `not_found` for a missing pool or backend).
pub fn rejected(errors: &[String]) -> Status {
    let text = errors.join("; ");
    if errors.iter().all(|e| e.starts_with("no pool named") || e.contains("has no backend"))
        && !errors.is_empty()
    {
        Status::not_found(text)
    } else {
        Status::invalid_argument(format!("rejected: {text}"))
    }
}

/// Check an `AddNode` request; fills in the HTTP address (same host, `default_http_port`) when empty.
pub fn validate_new_node(
    id: NodeId,
    addr: &str,
    http_addr: &str,
    default_http_port: u16,
) -> Result<LbNode, Status> {
    if id == 0 {
        return Err(Status::invalid_argument("id: node id must be at least 1"));
    }
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(Status::invalid_argument(format!("addr: the gRPC address of node {id} is empty")));
    }
    let (host, _) = crate::config::split_host_port(addr)
        .map_err(|e| Status::invalid_argument(format!("addr: invalid gRPC address for node {id}: {e}")))?;
    let http_addr = match http_addr.trim() {
        "" => format!("{host}:{default_http_port}"),
        h => {
            crate::config::split_host_port(h).map_err(|e| {
                Status::invalid_argument(format!("http_addr: invalid HTTP address for node {id}: {e}"))
            })?;
            h.to_string()
        }
    };
    Ok(LbNode { addr: addr.to_string(), http_addr })
}

/// What a `Watch` stream reports; an event is sent whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchKey {
    pub applied_index: u64,
    pub config_version: u64,
    pub leader: Option<NodeId>,
    pub term: u64,
}

/// The event for `now`, or `None` when nothing reported changed since `prev`.
pub fn watch_event(prev: Option<&WatchKey>, now: &WatchKey) -> Option<pb::WatchEvent> {
    let show = |l: Option<NodeId>| l.map_or_else(|| "none".to_string(), |l| l.to_string());
    let summary = match prev {
        Some(p) if p == now => return None,
        None => format!(
            "current: applied index {}, config version {}, leader {}, term {}",
            now.applied_index,
            now.config_version,
            show(now.leader),
            now.term
        ),
        Some(p) => {
            let mut parts = Vec::new();
            if p.config_version != now.config_version {
                parts.push(format!("config version {} -> {}", p.config_version, now.config_version));
            }
            if p.leader != now.leader {
                parts.push(format!("leader {} -> {}", show(p.leader), show(now.leader)));
            }
            if p.term != now.term {
                parts.push(format!("term {} -> {}", p.term, now.term));
            }
            if p.applied_index != now.applied_index {
                parts.push(format!("applied index {} -> {}", p.applied_index, now.applied_index));
            }
            parts.join(", ")
        }
    };
    Some(pb::WatchEvent {
        applied_index: now.applied_index,
        config_version: now.config_version,
        leader: now.leader,
        term: now.term,
        summary,
    })
}

#[cfg(test)]
mod tests;
