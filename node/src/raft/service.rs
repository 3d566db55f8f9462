//! The `Raft` gRPC service: the receiving end of [`super::network`].
//!
//! Each call decodes a postcard-encoded openraft request, checks it against [`super::bounds`]
//! (terms, indexes, snapshot offsets, memberships, the sender's id), hands it to the local `Raft`,
//! and returns the postcard encoding of its `Result`. Bytes that do not decode, and requests out of
//! bounds, are answered with `invalid_argument` naming the RPC (and the field); such a request never
//! reaches openraft, so nothing of it is persisted. Nothing a peer sends can panic this node.
//!
//! `Propose` and `ReadIndex` are the leader's end of [`super::proposer`]: a follower's proposal or
//! linearizable read, answered by this node's own [`Proposer`].
//!
//! Only cluster nodes reach this service ([`crate::auth`]), and a node speaks only for itself: the
//! node a Raft message's vote names (candidate or leader) and the voter of a forwarded health vote
//! must be the node whose certificate made the call.

use lbfleet_api::pb::{raft_server, RaftPayload};
use lbfleet_raft_store::{Raft, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::bounds::{self, Local, OutOfBounds};
use super::proposer::{Forwarded, Proposer};
use crate::auth::calling_node;
use crate::raft::MAX_RAFT_MESSAGE_BYTES;
use lbfleet_api::command::Command;
use lbfleet_api::NodeId;

/// Serves Raft RPCs from peers.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    proposer: Proposer,
}

impl RaftService {
    pub fn new(raft: Raft, proposer: Proposer) -> Self {
        RaftService { raft, proposer }
    }

    /// What the bounds checks need to know of this node, from its metrics.
    fn local(&self) -> Local {
        let metrics = self.raft.metrics().borrow().clone();
        let members = metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        let last_log_id = self.raft.data_metrics().borrow().last_log;
        Local { id: metrics.id, members, last_log_id }
    }

    /// The tonic server for this service, accepting messages up to [`MAX_RAFT_MESSAGE_BYTES`].
    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

/// Decode a request payload; malformed bytes become `invalid_argument`.
pub fn decode<T: DeserializeOwned>(rpc: &str, data: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(data)
        .map_err(|e| Status::invalid_argument(format!("malformed {rpc} payload ({} bytes): {e}", data.len())))
}

/// A request out of bounds: `invalid_argument` naming the RPC and the field.
pub fn refuse(rpc: &str, e: OutOfBounds) -> Status {
    tracing::warn!(rpc, field = %e.field, "refused a peer's {rpc}: {e}");
    Status::invalid_argument(format!("{rpc} refused: {e}"))
}

/// Encode a reply payload.
pub fn encode<T: Serialize>(rpc: &str, value: &T) -> Result<Response<RaftPayload>, Status> {
    postcard::to_allocvec(value)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode {rpc} reply: {e}")))
}

/// Refuse a message whose vote names another node than the caller's certificate.
fn speaks_for_itself(rpc: &str, caller: NodeId, vote: &openraft::Vote<NodeId>) -> Result<(), Status> {
    match vote.leader_id().voted_for() {
        Some(named) if named != caller => Err(Status::permission_denied(format!(
            "{rpc} from node {caller} names node {named} as its sender; a node speaks only for itself"
        ))),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = calling_node(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", &request.get_ref().data)?;
        speaks_for_itself("AppendEntries", caller, &rpc.vote)?;
        bounds::append_entries(&rpc, &self.local()).map_err(|e| refuse("AppendEntries", e))?;
        let result = self.raft.append_entries(rpc).await;
        encode("AppendEntries", &result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = calling_node(&request)?;
        let rpc: VoteRequest<lbfleet_api::NodeId> = decode("Vote", &request.get_ref().data)?;
        speaks_for_itself("Vote", caller, &rpc.vote)?;
        bounds::vote(&rpc, &self.local()).map_err(|e| refuse("Vote", e))?;
        let result = self.raft.vote(rpc).await;
        encode("Vote", &result)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = calling_node(&request)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode("InstallSnapshot", &request.get_ref().data)?;
        speaks_for_itself("InstallSnapshot", caller, &rpc.vote)?;
        bounds::install_snapshot(&rpc, &self.local()).map_err(|e| refuse("InstallSnapshot", e))?;
        let result = self.raft.install_snapshot(rpc).await;
        encode("InstallSnapshot", &result)
    }

    async fn propose(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let caller = calling_node(&request)?;
        let fwd: Forwarded = decode("Propose", &request.get_ref().data)?;
        if let Command::HealthVote { node, .. } = &fwd.command {
            if *node != caller {
                return Err(Status::permission_denied(format!(
                    "node {caller} cannot propose a health vote as node {node}"
                )));
            }
        }
        let result = self.proposer.propose_hops(fwd.command, fwd.hops).await;
        encode("Propose", &result)
    }

    async fn read_index(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let () = decode("ReadIndex", &request.get_ref().data)?;
        let result = self.proposer.read_index_local().await;
        encode("ReadIndex", &result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bytes_are_an_invalid_argument_naming_the_rpc() {
        let err =
            decode::<AppendEntriesRequest<TypeConfig>>("AppendEntries", &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("malformed AppendEntries payload"), "{}", err.message());
    }

    #[test]
    fn empty_bytes_are_refused_too() {
        let err = decode::<VoteRequest<u64>>("Vote", &[]).unwrap_err();
        assert!(err.message().contains("malformed Vote payload (0 bytes)"), "{}", err.message());
    }

    #[test]
    fn a_request_survives_the_round_trip() {
        let vote = VoteRequest::new(
            openraft::Vote::new(3, 2),
            Some(openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), 7)),
        );
        let bytes = postcard::to_allocvec(&vote).unwrap();
        let back: VoteRequest<u64> = decode("Vote", &bytes).unwrap();
        assert_eq!(back, vote);
    }
}
