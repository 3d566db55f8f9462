//! [`Cluster`]: everything the entry points of one node (the admin gRPC and HTTP servers, the node's
//! start-up) share. The tasks below them (proxies, health, leader duties, load reports) take only the
//! parts they need, never this handle.

use std::sync::Arc;

use lbfleet_api::view::NodeStatus;

use crate::channels::ChannelCache;
use crate::config::Hooks;
use crate::load::LoadBoard;
use crate::observed::SharedObserver;
use crate::proxy::listeners::{ListenerStatus, ListenerStatuses};
use crate::proxy::ProxyContext;
use crate::raft::RaftNode;
use crate::shutdown::Shutdown;
use crate::traffic::SharedTrafficBook;

/// Everything the servers of one node share. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    /// The Raft member: metrics, the applied model, the one write path.
    pub raft: RaftNode,
    /// Channels to other nodes' admin services (status fan-out, membership changes on the leader).
    pub admin_channels: ChannelCache,
    /// Raised when the node shuts down; long-lived streams end on it.
    pub shutdown: Shutdown,
    /// The data plane's shared context (routing snapshot, outlier tracker, counters).
    pub dataplane: Arc<ProxyContext>,
    /// What the listener manager last reported about each listener.
    pub listeners: ListenerStatuses,
    /// On the leader: the latest load report of each node (see [`crate::load`]).
    pub loads: LoadBoard,
    /// The operators' tokens (hashed), for the admin HTTP pages that need a token.
    pub tokens: Arc<lbfleet_api::auth::TokenSet>,
    /// The scale hooks of this node's local config: a config naming another is refused here.
    pub hooks: Arc<Hooks>,
    /// This node's recent traffic, sampled from its counters (for the dashboard).
    pub traffic: SharedTrafficBook,
    /// The elections and drains this node saw (for the dashboard's events).
    pub observed: SharedObserver,
    /// The VIP this node announces over BGP (`vip` with a BGP speaker); `None`: it announces none.
    pub announced_vip: Option<std::net::IpAddr>,
    /// An operator's drain of this node (`lbctl drain-node`), which withdraws the VIP.
    pub drain: Arc<crate::front::NodeDrain>,
}

impl Cluster {
    pub fn id(&self) -> lbfleet_api::NodeId {
        self.raft.id
    }

    /// This node's view right now.
    pub fn local_view(&self) -> NodeStatus {
        let digest = self.dataplane.routing.load().ring_digest().to_string();
        let mut view = self.raft.local_view(digest);
        view.drained = self.drain.is_drained();
        view
    }

    /// The listeners as the listener manager last saw them.
    pub fn listener_statuses(&self) -> Vec<ListenerStatus> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
