//! The one write path of a node: [`Proposer::propose`] puts a [`Command`] into the Raft log and
//! [`Proposer::read_linearizable`] makes a read linearizable, from whichever node they are called on.
//!
//! Every writer uses it: the admin handlers (`ApplyConfig`, `SetDrain`), the health task (votes), the
//! leader's duties ([`Proposer::propose_local`], which never forwards: a deposed leader must not act
//! through its successor) and the load reporter ([`Proposer::leader_channel`]).
//!
//! On the leader a proposal is a bounded `client_write`. On a follower it is forwarded to the leader's
//! `Raft.Propose` RPC (postcard payloads, over the cached channel to that peer), never through this
//! node's own gRPC server. While no leader is known, or leadership moves, a proposal waits and retries
//! for at most [`LEADER_WAIT`]; it is retried on another node only when the failed attempt cannot have
//! reached a leader's log (no leader, the leader's socket refused us, the leader said it is not the
//! leader any more). An attempt whose answer was lost after it was sent is reported as
//! [`ProposeError::Unknown`]: it may have been applied.
//!
//! A linearizable read on the leader confirms leadership with a quorum (`ensure_linearizable`,
//! retried within the write timeout, since one heartbeat round can fail on a loaded machine) and
//! waits until the read index is applied. On a follower it asks the leader's `Raft.ReadIndex` RPC for
//! the read index the leader confirmed, then waits until this node has applied up to it: the state it
//! then reads is at least as new as any write acknowledged before the read began.

use std::time::Duration;

use lbfleet_api::command::{Command, CommandResult};
use lbfleet_api::pb::{raft_client::RaftClient, RaftPayload};
use lbfleet_api::NodeId;
use lbfleet_raft_store::{LbNode, Raft, RaftMetrics};
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::channels::{is_transport_failure, ChannelCache};
use crate::raft::MAX_RAFT_MESSAGE_BYTES;

/// How long a proposal waits for a leader to be known (or for leadership to settle) before it fails.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// A proposal is forwarded at most this many times (a leader that just lost leadership forwards once).
pub const MAX_HOPS: u32 = 2;
/// A linearizable read retries its leadership confirmation at most this often.
const CONFIRM_RETRY: Duration = Duration::from_millis(50);

/// A committed proposal: what `apply` answered, and the log index of the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    pub result: CommandResult,
    pub log_index: u64,
}

/// Why a proposal or a read produced no answer. Each variant says whether the write may have happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// This node does not lead (only from [`Proposer::propose_local`]); nothing was written.
    #[error("node {node} is not the leader (leader: {})", show(*leader))]
    NotLeader { node: NodeId, leader: Option<NodeId> },
    /// No leader could be found or reached in time; nothing was written.
    #[error("{0}")]
    NoLeader(String),
    /// The leader took the entry but no quorum committed it in time: it may still commit later.
    #[error(
        "no quorum: {what} not committed within {} (leader {leader}, term {term}); fewer than a majority \
         of voters are answering; it may still be applied",
        humantime::format_duration(*waited)
    )]
    NoQuorum { what: String, waited: Duration, leader: NodeId, term: u64 },
    /// The leader could not confirm its leadership with a quorum in time (a read; nothing was written).
    #[error(
        "no quorum: leadership of node {leader} in term {term} not confirmed within {}",
        humantime::format_duration(*waited)
    )]
    NotConfirmed { waited: Duration, leader: NodeId, term: u64 },
    /// This node had not applied up to the leader's read index in time.
    #[error("node {node} has applied up to {applied}, the read needs {needed}; not caught up within {}", humantime::format_duration(*waited))]
    Lagging { node: NodeId, applied: u64, needed: u64, waited: Duration },
    /// The proposal reached the leader, but its answer was lost: it may have been applied.
    #[error("outcome unknown: {what} was sent to leader {leader} but its answer was lost ({message}); it may have been applied")]
    Unknown { what: String, leader: NodeId, message: String },
    /// The leader refused the forwarded request before proposing anything (nothing was written).
    #[error("leader {leader} refused {what}: {message}")]
    Refused { what: String, leader: NodeId, message: String },
    /// The node is shutting down.
    #[error("node {0} is shutting down")]
    ShuttingDown(NodeId),
    /// Raft stopped on the node that answered.
    #[error("Raft stopped on node {node}: {message}")]
    Fatal { node: NodeId, message: String },
}

fn show(leader: Option<NodeId>) -> String {
    leader.map_or_else(|| "unknown".to_string(), |l| l.to_string())
}

/// What a follower forwards to the leader's `Raft.Propose`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub command: Command,
    pub hops: u32,
}

/// Where a request should run.
pub enum Leader {
    /// This node leads.
    Me,
    /// Another node leads; `channel` reaches its gRPC server.
    Other { id: NodeId, channel: Channel },
}

/// Proposes commands and makes reads linearizable; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    id: NodeId,
    raft: Raft,
    write_timeout: Duration,
    channels: ChannelCache,
}

impl Proposer {
    pub fn new(id: NodeId, raft: Raft, write_timeout: Duration, channels: ChannelCache) -> Self {
        Proposer { id, raft, write_timeout, channels }
    }

    /// Bound on how long a write (or a leadership confirmation) waits for a quorum.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// How long a forwarded request may take on the leader: its own bounds (an `AddNode` waits up to
    /// three write timeouts) plus its leader wait.
    pub fn forward_timeout(&self) -> Duration {
        self.write_timeout * 3 + LEADER_WAIT
    }

    /// Put `command` in the log, on the leader wherever it is. See the module documentation.
    pub async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        self.propose_hops(command, 0).await
    }

    /// [`Proposer::propose`] of a request already forwarded `hops` times.
    pub async fn propose_hops(&self, command: Command, hops: u32) -> Result<Proposed, ProposeError> {
        let what = command.kind();
        let deadline = Instant::now() + LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            let retry_because = match self.leader(&mut metrics, deadline).await? {
                Leader::Me => match self.propose_local(command.clone()).await {
                    Err(ProposeError::NotLeader { leader, .. }) => {
                        format!("node {} lost leadership (new leader: {})", self.id, show(leader))
                    }
                    other => return other,
                },
                Leader::Other { id, .. } if hops >= MAX_HOPS => {
                    return Err(ProposeError::NoLeader(format!(
                    "leadership is moving: {what} forwarded {hops} times without reaching leader {id}; retry"
                )))
                }
                Leader::Other { id, channel } => {
                    let fwd = Forwarded { command: command.clone(), hops: hops + 1 };
                    match self.forward(id, channel, Rpc::Propose, &fwd).await {
                        Ok(answer) => match answer {
                            Err(ProposeError::NotLeader { leader, .. }) => {
                                format!("node {id} is no longer the leader (new leader: {})", show(leader))
                            }
                            other => return other,
                        },
                        Err(Sent::No(why)) => why,
                        Err(Sent::Maybe(message)) => {
                            return Err(ProposeError::Unknown { what: what.into(), leader: id, message })
                        }
                        Err(Sent::Refused(status)) => {
                            return Err(ProposeError::Refused {
                                what: what.into(),
                                leader: id,
                                message: status.message().to_string(),
                            })
                        }
                    }
                }
            };
            tracing::debug!("retrying {what} on the leader: {retry_because}");
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(format!("no leader reachable: {retry_because}")));
            }
            settle(&mut metrics, deadline).await;
        }
    }

    /// Propose `command` on this node only: [`ProposeError::NotLeader`] if it does not lead.
    pub async fn propose_local(&self, command: Command) -> Result<Proposed, ProposeError> {
        let what = command.kind();
        match tokio::time::timeout(self.write_timeout, self.raft.client_write(command)).await {
            Err(_) => Err(self.no_quorum(what)),
            Ok(Ok(resp)) => Ok(Proposed { result: resp.data, log_index: resp.log_id.index }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader { node: self.id, leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ProposeError::Fatal {
                    node: self.id,
                    message: format!("unexpected membership error: {e}"),
                })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(self.fatal(&f)),
        }
    }

    /// Make a read linearizable: on return, this node has applied every write acknowledged before the
    /// call began (see the module documentation).
    pub async fn read_linearizable(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            let retry_because = match self.leader(&mut metrics, deadline).await? {
                Leader::Me => match self.read_index_local().await {
                    Ok(_) => return Ok(()),
                    Err(ProposeError::NotLeader { leader, .. }) => {
                        format!("node {} lost leadership (new leader: {})", self.id, show(leader))
                    }
                    Err(e) => return Err(e),
                },
                Leader::Other { id, channel } => match self.forward(id, channel, Rpc::ReadIndex, &()).await {
                    Ok(Ok(index)) => return self.wait_applied(index).await,
                    Ok(Err(ProposeError::NotLeader { leader, .. })) => {
                        format!("node {id} is no longer the leader (new leader: {})", show(leader))
                    }
                    Ok(Err(e)) => return Err(e),
                    // A read changes nothing: retrying it is always safe.
                    Err(Sent::No(why) | Sent::Maybe(why)) => why,
                    Err(Sent::Refused(status)) => {
                        return Err(ProposeError::Refused {
                            what: "read index".into(),
                            leader: id,
                            message: status.message().to_string(),
                        })
                    }
                },
            };
            tracing::debug!("retrying a linearizable read: {retry_because}");
            if Instant::now() >= deadline {
                return Err(ProposeError::NoLeader(format!("no leader reachable: {retry_because}")));
            }
            settle(&mut metrics, deadline).await;
        }
    }

    /// On the leader: confirm leadership with a quorum, retrying within the write timeout, and return
    /// the read index (applied here once this returns).
    pub async fn read_index_local(&self) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + self.write_timeout;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await;
            match attempt {
                Ok(Ok(read)) => return Ok(read.map_or(0, |l| l.index)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(ProposeError::NotLeader { node: self.id, leader: f.leader_id })
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(self.fatal(&f)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    tracing::debug!("leadership not confirmed yet, retrying: {q}");
                }
                Err(_) => {}
            }
            if Instant::now() + CONFIRM_RETRY >= deadline {
                return Err(ProposeError::NotConfirmed {
                    waited: self.write_timeout,
                    leader: self.id,
                    term: self.metrics().current_term,
                });
            }
            tokio::time::sleep(CONFIRM_RETRY).await;
        }
    }

    /// A channel to the current leader's gRPC server (`None` when this node leads), waiting up to
    /// [`LEADER_WAIT`] for one to be known. For calls to the leader that are not log entries (load
    /// reports, membership changes).
    pub async fn leader_channel(&self) -> Result<Leader, ProposeError> {
        let mut metrics = self.raft.metrics();
        self.leader(&mut metrics, Instant::now() + LEADER_WAIT).await
    }

    /// Wait until some leader is known, at most until `deadline`, and say where it is.
    pub async fn leader(
        &self,
        metrics: &mut tokio::sync::watch::Receiver<RaftMetrics>,
        deadline: Instant,
    ) -> Result<Leader, ProposeError> {
        loop {
            let (leader, why) = {
                let m = metrics.borrow_and_update();
                if m.state == ServerState::Shutdown {
                    return Err(ProposeError::ShuttingDown(self.id));
                }
                let why = if m.membership_config.membership().nodes().next().is_none() {
                    format!(
                        "node {} is not a member of a cluster yet (start the lowest node with --peers, or add \
                         this one with `lbctl nodes add`)",
                        self.id
                    )
                } else {
                    format!("node {} sees no leader in term {} ({:?})", self.id, m.current_term, m.state)
                };
                let leader =
                    m.current_leader.map(|l| (l, m.membership_config.membership().get_node(&l).cloned()));
                (leader, why)
            };
            match leader {
                Some((l, _)) if l == self.id => return Ok(Leader::Me),
                Some((l, Some(node))) => match self.channel_to(l, &node) {
                    Ok(channel) => return Ok(Leader::Other { id: l, channel }),
                    Err(e) => return Err(ProposeError::NoLeader(e)),
                },
                // E.g. the leader known here was just removed: wait for the next one.
                Some((_, None)) | None => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ProposeError::ShuttingDown(self.id)),
                Err(_) => {
                    return Err(ProposeError::NoLeader(format!(
                        "no leader yet: {why}; waited {}",
                        humantime::format_duration(LEADER_WAIT)
                    )))
                }
            }
        }
    }

    fn channel_to(&self, leader: NodeId, node: &LbNode) -> Result<Channel, String> {
        self.channels.get(&node.addr).map_err(|e| format!("cannot reach leader {leader}: {e}"))
    }

    /// Send `request` to `rpc` of the leader's Raft service and decode its answer.
    async fn forward<Q: Serialize, A: serde::de::DeserializeOwned>(
        &self,
        leader: NodeId,
        channel: Channel,
        rpc: Rpc,
        request: &Q,
    ) -> Result<Result<A, ProposeError>, Sent> {
        let data = postcard::to_allocvec(request)
            .map_err(|e| Sent::No(format!("cannot encode the {rpc:?} request: {e}")))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(self.forward_timeout());
        let sent = match rpc {
            Rpc::Propose => client.propose(req).await,
            Rpc::ReadIndex => client.read_index(req).await,
        };
        match sent {
            Ok(resp) => postcard::from_bytes(&resp.into_inner().data)
                .map_err(|e| Sent::Maybe(format!("leader {leader} sent an unreadable {rpc:?} answer: {e}"))),
            Err(s) if is_transport_failure(&s) && !crate::channels::is_deadline_expired(&s) => {
                Err(Sent::No(format!("leader {leader} is unreachable: {}", s.message())))
            }
            // The leader's gate or decoder answered: nothing was proposed.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                ) =>
            {
                Err(Sent::Refused(s))
            }
            Err(s) => Err(Sent::Maybe(format!("{:?}: {}", s.code(), s.message()))),
        }
    }

    /// Wait until this node has applied `index`, bounded by the write timeout.
    async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let mut metrics = self.raft.metrics();
        let applied = |m: &RaftMetrics| m.last_applied.map_or(0, |l| l.index);
        let wait = async {
            let m = metrics.wait_for(|m| applied(m) >= index || m.state == ServerState::Shutdown).await;
            m.map(|m| m.state != ServerState::Shutdown).unwrap_or(false)
        };
        match tokio::time::timeout(self.write_timeout, wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProposeError::ShuttingDown(self.id)),
            Err(_) => Err(ProposeError::Lagging {
                node: self.id,
                applied: applied(&self.metrics()),
                needed: index,
                waited: self.write_timeout,
            }),
        }
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    fn no_quorum(&self, what: &str) -> ProposeError {
        ProposeError::NoQuorum {
            what: what.into(),
            waited: self.write_timeout,
            leader: self.id,
            term: self.metrics().current_term,
        }
    }

    fn fatal(&self, f: &Fatal<NodeId>) -> ProposeError {
        match f {
            Fatal::Stopped => ProposeError::ShuttingDown(self.id),
            other => ProposeError::Fatal { node: self.id, message: other.to_string() },
        }
    }
}

/// The leader's Raft-service RPCs a follower forwards to.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Propose,
    ReadIndex,
}

/// Whether a failed forward may have reached the leader's log.
enum Sent {
    /// It cannot have: safe to retry.
    No(String),
    /// It may have: the outcome is unknown.
    Maybe(String),
    /// The leader refused it before proposing anything (credentials, identity, malformed request).
    Refused(tonic::Status),
}

/// Give leadership a moment to settle: wake on the next metrics change or after 100 ms.
pub async fn settle(metrics: &mut tokio::sync::watch::Receiver<RaftMetrics>, deadline: Instant) {
    let pause = (Instant::now() + Duration::from_millis(100)).min(deadline);
    let _ = tokio::time::timeout_at(pause, metrics.changed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_the_write_may_have_happened() {
        let e = ProposeError::NoQuorum {
            what: "set_drain".into(),
            waited: Duration::from_secs(2),
            leader: 1,
            term: 3,
        };
        assert_eq!(
            e.to_string(),
            "no quorum: set_drain not committed within 2s (leader 1, term 3); fewer than a majority of \
             voters are answering; it may still be applied"
        );
        let u =
            ProposeError::Unknown { what: "apply_config".into(), leader: 2, message: "Cancelled: x".into() };
        assert!(u.to_string().contains("may have been applied"), "{u}");
    }

    #[test]
    fn answers_survive_the_wire() {
        let answers: Vec<Result<Proposed, ProposeError>> = vec![
            Ok(Proposed { result: CommandResult::ConfigApplied { version: 4 }, log_index: 9 }),
            Err(ProposeError::NotLeader { node: 1, leader: Some(2) }),
            Err(ProposeError::NoQuorum {
                what: "x".into(),
                waited: Duration::from_millis(1500),
                leader: 1,
                term: 2,
            }),
        ];
        for a in answers {
            let bytes = postcard::to_allocvec(&a).unwrap();
            assert_eq!(postcard::from_bytes::<Result<Proposed, ProposeError>>(&bytes).unwrap(), a);
        }
    }
}
