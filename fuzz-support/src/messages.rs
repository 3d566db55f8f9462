//! Target `raft_messages`: what a peer or a client can send a node, decoded as the node decodes it.
//!
//! The first byte of the input picks the message kind ([`KINDS`]), the rest is the message. Raft
//! payloads go through the node's own decoders (`lbfleet_node::raft::service::decode` for requests,
//! `lbfleet_node::raft::network::decode_reply` for replies); snapshot data is decoded as the store
//! decodes it (postcard `AppliedState`); Admin messages go through prost. Decoding may fail; it may
//! not panic, and whatever decodes must re-encode to bytes that decode to the same value.

use std::fmt::Debug;

use lbfleet_api::config::{ClusterConfig, Format};
use lbfleet_api::pb;
use lbfleet_api::view::{BackendView, EventView, Member, NodeStatus};
use lbfleet_api::NodeId;
use lbfleet_node::raft::network::decode_reply;
use lbfleet_node::raft::proposer::{Forwarded, ProposeError, Proposed};
use lbfleet_node::raft::service::decode;
use lbfleet_raft_store::{AppliedState, TypeConfig};
use openraft::error::{Infallible, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Check;

/// The message kinds, in the order the first input byte picks them (`byte % KINDS.len()`).
/// Append new kinds at the end so that committed corpus files keep their meaning.
pub const KINDS: &[(&str, Check)] = &[
    ("raft AppendEntries request", |d| request::<AppendEntriesRequest<TypeConfig>>("AppendEntries", d)),
    ("raft Vote request", |d| request_eq::<VoteRequest<NodeId>>("Vote", d)),
    ("raft InstallSnapshot request", |d| {
        request_eq::<InstallSnapshotRequest<TypeConfig>>("InstallSnapshot", d)
    }),
    ("raft Propose request", |d| request::<Forwarded>("Propose", d)),
    ("raft ReadIndex request", |d| request_eq::<()>("ReadIndex", d)),
    ("raft AppendEntries reply", |d| {
        reply::<AppendEntriesResponse<NodeId>, Infallible>(RPCTypes::AppendEntries, d)
    }),
    ("raft Vote reply", |d| reply::<VoteResponse<NodeId>, Infallible>(RPCTypes::Vote, d)),
    ("raft InstallSnapshot reply", |d| {
        reply::<InstallSnapshotResponse<NodeId>, InstallSnapshotError>(RPCTypes::InstallSnapshot, d)
    }),
    ("raft Propose reply", |d| postcard_eq::<Result<Proposed, ProposeError>>("Propose reply", d)),
    ("raft ReadIndex reply", |d| postcard_eq::<Result<u64, ProposeError>>("ReadIndex reply", d)),
    ("snapshot data", |d| postcard_eq::<AppliedState>("snapshot data", d)),
    ("pb RaftPayload", pb::<pb::RaftPayload>),
    ("pb HealthVoteRequest", pb::<pb::HealthVoteRequest>),
    ("pb StatusRequest", pb::<pb::StatusRequest>),
    ("pb StatusResponse", |d| {
        if let Some(m) = prost_eq::<pb::StatusResponse>(d) {
            m.nodes.iter().for_each(node_status);
        }
    }),
    ("pb LocalStatusRequest", pb::<pb::LocalStatusRequest>),
    ("pb NodeStatus", |d| prost_eq::<pb::NodeStatus>(d).iter().for_each(node_status)),
    ("pb ApplyConfigRequest", |d| {
        // As the admin service takes it: the format word, then the body through parse.
        if let Some(m) = prost_eq::<pb::ApplyConfigRequest>(d) {
            if let Ok(format) = m.format.parse::<Format>() {
                let _ = lbfleet_api::config::parse(&m.body, format);
            }
        }
    }),
    ("pb ApplyConfigResponse", pb::<pb::ApplyConfigResponse>),
    ("pb GetConfigRequest", pb::<pb::GetConfigRequest>),
    ("pb GetConfigResponse", |d| {
        // As lbctl reads it: the JSON of a typed config (not validated again).
        if let Some(m) = prost_eq::<pb::GetConfigResponse>(d) {
            if let Ok(config) = serde_json::from_str::<ClusterConfig>(&m.config_json) {
                let back = serde_json::from_str::<ClusterConfig>(&config.to_json());
                assert_eq!(back.ok().as_ref(), Some(&config), "typed config changed through its JSON");
            }
        }
    }),
    ("pb ListNodesRequest", pb::<pb::ListNodesRequest>),
    ("pb NodeInfo", |d| prost_eq::<pb::NodeInfo>(d).iter().for_each(node_info)),
    ("pb ListNodesResponse", |d| {
        if let Some(m) = prost_eq::<pb::ListNodesResponse>(d) {
            m.nodes.iter().for_each(node_info);
        }
    }),
    ("pb AddNodeRequest", pb::<pb::AddNodeRequest>),
    ("pb RemoveNodeRequest", pb::<pb::RemoveNodeRequest>),
    ("pb MembershipResponse", |d| {
        if let Some(m) = prost_eq::<pb::MembershipResponse>(d) {
            m.nodes.iter().for_each(node_info);
        }
    }),
    ("pb ListBackendsRequest", pb::<pb::ListBackendsRequest>),
    ("pb BackendStatus", |d| prost_eq::<pb::BackendStatus>(d).iter().for_each(backend_status)),
    ("pb ListBackendsResponse", |d| {
        if let Some(m) = prost_eq::<pb::ListBackendsResponse>(d) {
            m.backends.iter().for_each(backend_status);
        }
    }),
    ("pb SetDrainRequest", pb::<pb::SetDrainRequest>),
    ("pb WriteResponse", pb::<pb::WriteResponse>),
    ("pb WatchRequest", pb::<pb::WatchRequest>),
    ("pb WatchEvent", pb::<pb::WatchEvent>),
    ("pb EventsRequest", pb::<pb::EventsRequest>),
    ("pb EventRecord", |d| prost_eq::<pb::EventRecord>(d).iter().for_each(event_record)),
    ("pb EventsResponse", |d| {
        if let Some(m) = prost_eq::<pb::EventsResponse>(d) {
            m.events.iter().for_each(event_record);
        }
    }),
    ("pb LocalLoadRequest", pb::<pb::LocalLoadRequest>),
    ("pb BackendLoad", pb::<pb::BackendLoad>),
    ("pb LoadReport", pb::<pb::LoadReport>),
    ("pb ReportLoadResponse", pb::<pb::ReportLoadResponse>),
];

/// Decode `data[1..]` as the kind `data[0]` picks.
pub fn check(data: &[u8]) {
    let Some((&pick, message)) = data.split_first() else { return };
    let (_, check) = KINDS[usize::from(pick) % KINDS.len()];
    check(message);
}

/// A Raft request as the node's Raft service decodes it; compared by its canonical bytes.
fn request<T: Serialize + DeserializeOwned>(rpc: &str, data: &[u8]) {
    if let Ok(value) = decode::<T>(rpc, data) {
        same_bytes_again(rpc, &value);
    }
}

fn request_eq<T: Serialize + DeserializeOwned + PartialEq + Debug>(rpc: &str, data: &[u8]) {
    if let Ok(value) = decode::<T>(rpc, data) {
        same_value_again(rpc, &value);
    }
}

/// A reply as the node's Raft client decodes it, then the full `Result` it carries.
fn reply<Resp, E>(rpc: RPCTypes, data: &[u8])
where
    Resp: Serialize + DeserializeOwned + PartialEq + Debug,
    E: std::error::Error + Serialize + DeserializeOwned + PartialEq + Debug,
{
    let _ = decode_reply::<Resp, E>(rpc, 1, data);
    postcard_eq::<Result<Resp, RaftError<NodeId, E>>>("reply", data);
}

fn postcard_eq<T: Serialize + DeserializeOwned + PartialEq + Debug>(what: &str, data: &[u8]) {
    if let Ok(value) = postcard::from_bytes::<T>(data) {
        same_value_again(what, &value);
    }
}

/// Encode, decode, encode: both encodings are the same bytes.
fn same_bytes_again<T: Serialize + DeserializeOwned>(what: &str, value: &T) -> T {
    let bytes =
        postcard::to_allocvec(value).unwrap_or_else(|e| panic!("decoded {what} does not encode: {e}"));
    let back: T = postcard::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {what} does not decode: {e} ({bytes:?})"));
    let again = postcard::to_allocvec(&back).expect("encodes");
    assert_eq!(again, bytes, "{what} changed through encode and decode");
    back
}

fn same_value_again<T: Serialize + DeserializeOwned + PartialEq + Debug>(what: &str, value: &T) {
    let back = same_bytes_again(what, value);
    assert_eq!(&back, value, "{what} changed through encode and decode");
}

/// A protobuf message decoded with nothing more done to it.
fn pb<M: Message + Default + PartialEq + Debug>(data: &[u8]) {
    prost_eq::<M>(data);
}

/// A protobuf message as tonic decodes it; re-encoded, it decodes to the same value.
fn prost_eq<M: Message + Default + PartialEq + Debug>(data: &[u8]) -> Option<M> {
    let m = M::decode(data).ok()?;
    let bytes = m.encode_to_vec();
    let back =
        M::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("re-encoded {m:?} does not decode: {e}"));
    assert_eq!(back, m, "protobuf message changed through encode and decode");
    Some(m)
}

// The conversions lbctl and the admin service apply to what they receive.

fn node_status(m: &pb::NodeStatus) {
    let view = NodeStatus::from(m);
    assert_eq!(NodeStatus::from(&pb::NodeStatus::from(&view)).id, view.id);
}

fn node_info(m: &pb::NodeInfo) {
    let member = Member::from(m);
    assert_eq!(&pb::NodeInfo::from(&member), m, "NodeInfo changed through Member");
}

fn backend_status(m: &pb::BackendStatus) {
    let view = BackendView::from(m);
    assert_eq!(&pb::BackendStatus::from(&view), m, "BackendStatus changed through BackendView");
}

fn event_record(m: &pb::EventRecord) {
    let _ = EventView::from(m);
}
