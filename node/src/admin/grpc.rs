//! The `Admin` gRPC service. Every node accepts every call:
//!
//! - writes of commands (`ApplyConfig`, `SetDrain`, `SubmitHealthVote`) go through the node's one
//!   write path, [`crate::raft::Proposer`], and linearizable reads (`GetConfig`, `ListBackends`,
//!   `Events` without `stale`) through its `read_linearizable`, then answer from this node's state;
//!   a client never sees "forward to leader". With no leader known a request waits up to
//!   [`LEADER_WAIT`] for one, then fails with `unavailable`.
//! - membership changes (`AddNode`, `RemoveNode`) are not log commands but openraft calls on the
//!   leader: a follower forwards them to the leader's `Admin` service (at most [`MAX_HOPS`] times).
//! - on the leader, each write waits at most `write_timeout` for a quorum; past it the answer is
//!   `deadline_exceeded("no quorum: …; it may still be applied")` (the entry may commit later if a
//!   quorum comes back: the outcome is unknown, not a failure).
//! - `stale` reads, `LocalStatus`, `ListNodes` and `Watch` answer from this node alone; `Status`
//!   asks every member for its `LocalStatus`, each bounded by [`STATUS_TIMEOUT`].

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::join_all;
use futures::Stream;
use lbfleet_api::command::{Command, CommandResult};
use lbfleet_api::config::{check_hooks, parse, Format};
use lbfleet_api::pb::admin_client::AdminClient;
use lbfleet_api::pb::admin_server::{Admin, AdminServer};
use lbfleet_api::pb::{self};
use lbfleet_api::state::LbNode;
use lbfleet_api::view::{backend_views, Member, NodeStatus};
use lbfleet_api::NodeId;
use openraft::ChangeMembers;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{
    no_quorum, propose_failure, rejected, validate_new_node, watch_event, write_failure, Failure, WatchKey,
    HOPS_HEADER, STATUS_TIMEOUT,
};
use crate::auth::calling_node;
use crate::channels::is_transport_failure;
use crate::cluster::Cluster;
use crate::raft::handle::{members, members_of};
use crate::raft::proposer::{settle, Leader, LEADER_WAIT, MAX_HOPS};
use crate::raft::Proposed;

/// The admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    cluster: Cluster,
    /// HTTP port assumed for an added node whose HTTP address is not given.
    default_http_port: u16,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// How many times a request was already forwarded (absent or unreadable → 0).
fn hops<T>(request: &Request<T>) -> u32 {
    request
        .metadata()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A request to the leader carrying the hop count and a deadline.
fn forwarded<T>(message: T, hops: u32, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(HOPS_HEADER, tonic::metadata::MetadataValue::from(hops + 1));
    request.set_timeout(timeout);
    request
}

impl AdminService {
    pub fn new(cluster: Cluster, default_http_port: u16) -> Self {
        AdminService { cluster, default_http_port }
    }

    /// The tonic server for this service, accepting messages up to
    /// [`crate::limits::ADMIN_MAX_MESSAGE_BYTES`] each way.
    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
            .max_decoding_message_size(crate::limits::ADMIN_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::limits::ADMIN_MAX_MESSAGE_BYTES)
    }

    fn id(&self) -> NodeId {
        self.cluster.id()
    }

    /// How long a forwarded request may take: the leader's own bounds (an `AddNode` waits up to
    /// three write timeouts: catch-up counts double, then the promotion) plus its leader wait.
    fn forward_timeout(&self) -> Duration {
        self.cluster.raft.proposer().forward_timeout()
    }

    fn write_timeout(&self) -> Duration {
        self.cluster.raft.proposer().write_timeout()
    }

    /// Run `local` if this node leads, else `remote` against the leader's `Admin` service (membership
    /// changes only; commands go through the proposer). Retries while leadership moves or the leader
    /// known here cannot be reached, until [`LEADER_WAIT`] has passed.
    async fn on_leader<T, L, LF, R, RF>(&self, hops: u32, local: L, remote: R) -> Result<T, Status>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, Failure>>,
        R: Fn(AdminClient<Channel>, Request<()>) -> RF,
        RF: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut metrics = self.cluster.raft.watch_metrics();
        loop {
            let leader =
                self.cluster.raft.proposer().leader(&mut metrics, deadline).await.map_err(propose_failure)?;
            let retry_because = match leader {
                Leader::Me => match local().await {
                    Ok(v) => return Ok(v),
                    Err(Failure::Status(s)) => return Err(s),
                    Err(Failure::NotLeader { leader }) => {
                        format!("node {} lost leadership (new leader: {leader:?})", self.id())
                    }
                },
                Leader::Other { .. } if hops >= MAX_HOPS => {
                    return Err(Status::unavailable(format!(
                        "leadership is moving: request forwarded {hops} times without reaching the leader; retry"
                    )));
                }
                Leader::Other { id: leader, channel } => {
                    match remote(AdminClient::new(channel), forwarded((), hops, self.forward_timeout())).await
                    {
                        Ok(v) => return Ok(v),
                        Err(s) if is_transport_failure(&s) => {
                            format!("leader {leader} is unreachable: {}", s.message())
                        }
                        Err(s) => return Err(s),
                    }
                }
            };
            tracing::debug!("retrying on the leader: {retry_because}");
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!("no leader reachable: {retry_because}")));
            }
            settle(&mut metrics, deadline).await;
        }
    }

    /// Propose `cmd` through the node's one write path (the caller turns a `Rejected` result into its
    /// status).
    async fn propose(&self, cmd: Command, hops: u32) -> Result<Proposed, Status> {
        self.cluster.raft.proposer().propose_hops(cmd, hops).await.map_err(propose_failure)
    }

    /// Make the next read of this node's state linearizable.
    async fn read_linearizable(&self) -> Result<(), Status> {
        self.cluster.raft.proposer().read_linearizable().await.map_err(propose_failure)
    }

    fn no_quorum(&self, what: &str) -> Status {
        no_quorum(what, self.write_timeout(), self.id(), self.cluster.raft.metrics().current_term)
    }

    fn config_response(&self) -> pb::GetConfigResponse {
        let model = self.cluster.raft.model();
        pb::GetConfigResponse {
            config_json: model.config.as_ref().map(|c| c.to_json()).unwrap_or_default(),
            version: model.config_version,
            applied_index: self.cluster.raft.applied_index(),
            answered_by: self.id(),
        }
    }

    fn events_response(&self, req: &pb::EventsRequest) -> pb::EventsResponse {
        let model = self.cluster.raft.model();
        let mut events: Vec<pb::EventRecord> =
            model.events.iter().filter(|e| e.index > req.since_index).map(pb::EventRecord::from).collect();
        if req.limit > 0 && events.len() > req.limit as usize {
            events.drain(..events.len() - req.limit as usize);
        }
        pb::EventsResponse { events }
    }

    fn backends_response(&self) -> pb::ListBackendsResponse {
        let model = self.cluster.raft.model();
        pb::ListBackendsResponse {
            backends: backend_views(&model).iter().map(pb::BackendStatus::from).collect(),
            applied_index: self.cluster.raft.applied_index(),
        }
    }

    /// Add `id` as a learner (waiting until it caught up) and, unless `learner_only`, promote it.
    async fn add_node_local(
        &self,
        id: NodeId,
        node: LbNode,
        learner_only: bool,
    ) -> Result<pb::MembershipResponse, Failure> {
        let raft = self.cluster.raft.raft();
        let metrics = self.cluster.raft.metrics();
        if metrics.current_leader != Some(self.id()) {
            return Err(Failure::NotLeader { leader: metrics.current_leader });
        }
        let membership = metrics.membership_config.membership().clone();
        let mut last = None;
        match membership.get_node(&id) {
            Some(existing) if *existing != node => {
                return Err(Status::already_exists(format!(
                    "node {id} is already a member at {} (HTTP {}); remove it first to change its address",
                    existing.addr, existing.http_addr
                ))
                .into())
            }
            Some(_) => {}
            None => {
                let catch_up = self.write_timeout() * 2;
                match tokio::time::timeout(catch_up, raft.add_learner(id, node.clone(), true)).await {
                    Ok(Ok(resp)) => last = Some(resp),
                    Ok(Err(e)) => return Err(write_failure(e)),
                    Err(_) => {
                        let added = self
                            .cluster
                            .raft
                            .metrics()
                            .membership_config
                            .membership()
                            .get_node(&id)
                            .is_some();
                        return Err(if added {
                            Status::deadline_exceeded(format!(
                                "node {id} was added as a learner but has not caught up within {}; is lbnode \
                                 running at {}? Repeat the request to promote it once it has",
                                humantime::format_duration(catch_up),
                                node.addr
                            ))
                        } else {
                            self.no_quorum("add learner")
                        }
                        .into());
                    }
                }
            }
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if !learner_only && !is_voter {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            match tokio::time::timeout(self.write_timeout(), raft.change_membership(change, false)).await {
                Ok(Ok(resp)) => last = Some(resp),
                Ok(Err(e)) => return Err(write_failure(e)),
                Err(_) => return Err(self.no_quorum("promote to voter").into()),
            }
        }
        Ok(self.membership_response(last))
    }

    async fn remove_node_local(&self, id: NodeId) -> Result<pb::MembershipResponse, Failure> {
        let raft = self.cluster.raft.raft();
        let metrics = self.cluster.raft.metrics();
        if metrics.current_leader != Some(self.id()) {
            return Err(Failure::NotLeader { leader: metrics.current_leader });
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member of the cluster")).into());
        }
        let change = if membership.voter_ids().any(|v| v == id) {
            // retain = false: the removed voter is not kept as a learner either.
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match tokio::time::timeout(self.write_timeout(), raft.change_membership(change, false)).await {
            Ok(Ok(resp)) => Ok(self.membership_response(Some(resp))),
            Ok(Err(e)) => Err(write_failure(e)),
            Err(_) => Err(self.no_quorum("remove node").into()),
        }
    }

    fn membership_response(&self, resp: Option<crate::raft::ClientWriteResponse>) -> pb::MembershipResponse {
        let (nodes, log_index) = match resp {
            Some(r) => {
                let nodes = match &r.membership {
                    Some(m) => members_of(m),
                    None => members(&self.cluster.raft.metrics().membership_config),
                };
                (nodes, r.log_id.index)
            }
            None => {
                let m = self.cluster.raft.metrics();
                (members(&m.membership_config), m.membership_config.log_id().map(|l| l.index).unwrap_or(0))
            }
        };
        pb::MembershipResponse { nodes: nodes.iter().map(pb::NodeInfo::from).collect(), log_index }
    }

    async fn member_status(&self, member: &Member) -> pb::NodeStatus {
        if member.id == self.id() {
            return pb::NodeStatus::from(&self.cluster.local_view());
        }
        let channel = match self.cluster.admin_channels.get(&member.addr) {
            Ok(c) => c,
            Err(e) => return unreachable(member, e),
        };
        let mut request = Request::new(pb::LocalStatusRequest {});
        request.set_timeout(STATUS_TIMEOUT);
        match tokio::time::timeout(STATUS_TIMEOUT, AdminClient::new(channel).local_status(request)).await {
            Ok(Ok(r)) => {
                let mut s = r.into_inner();
                s.reachable = true;
                s
            }
            Ok(Err(status)) => unreachable(member, format!("{:?}: {}", status.code(), status.message())),
            Err(_) => unreachable(
                member,
                format!("no answer within {}", humantime::format_duration(STATUS_TIMEOUT)),
            ),
        }
    }
}

fn unreachable(member: &Member, error: String) -> pb::NodeStatus {
    pb::NodeStatus::from(&NodeStatus::unreachable(member, error))
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.cluster.raft.metrics();
        let mut all = members(&metrics.membership_config);
        if !all.iter().any(|m| m.id == self.id()) {
            let me = &self.cluster.raft.me;
            all.insert(
                0,
                Member {
                    id: self.id(),
                    addr: me.addr.clone(),
                    http_addr: me.http_addr.clone(),
                    voter: false,
                },
            );
        }
        let mut nodes = join_all(all.iter().map(|m| self.member_status(m))).await;
        // Down is the leader's committed verdict, shown also for the nodes that cannot answer.
        let model = self.cluster.raft.model();
        let down = &model.down_nodes;
        for n in &mut nodes {
            n.down = down.contains(&n.id);
        }
        Ok(Response::new(pb::StatusResponse {
            leader: metrics.current_leader,
            term: metrics.current_term,
            answered_by: self.id(),
            nodes,
            config_version: model.config_version,
        }))
    }

    async fn local_status(
        &self,
        _request: Request<pb::LocalStatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(pb::NodeStatus::from(&self.cluster.local_view())))
    }

    async fn set_node_drain(
        &self,
        request: Request<pb::SetNodeDrainRequest>,
    ) -> Result<Response<pb::SetNodeDrainResponse>, Status> {
        let drained = request.into_inner().drained;
        let node = self.id();
        let Some(vip) = self.cluster.announced_vip else {
            return Err(Status::failed_precondition(format!(
                "node {node} announces no VIP (its config sets no `vip` with a `bgp_speaker`), so there is \
                 nothing to withdraw; take it out of the front that sends it traffic instead"
            )));
        };
        let was_drained = self.cluster.drain.set(drained).map_err(|e| {
            Status::internal(format!(
                "node {node} cannot record its drain in {}: {e}; nothing was changed",
                self.cluster.drain.file().display()
            ))
        })?;
        if was_drained != drained {
            if drained {
                tracing::warn!(%vip, "drained by an operator: withdrawing the VIP, still serving");
            } else {
                tracing::info!(%vip, "undrained by an operator: announcing the VIP again once it can serve");
            }
        }
        Ok(Response::new(pb::SetNodeDrainResponse { node, drained, was_drained, vip: vip.to_string() }))
    }

    async fn apply_config(
        &self,
        request: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let format: Format = req.format.parse().map_err(|e: String| invalid(format!("format: {e}")))?;
        let config = parse(&req.body, format).map_err(|e| invalid(e.to_string()))?;
        // Hooks are named in the replicated config but defined in each node's local config: one this
        // node does not define is refused before anything is proposed (and so nothing can run).
        check_hooks(&config, self.id(), &self.cluster.hooks.names()).map_err(|e| invalid(e.to_string()))?;
        if req.dry_run {
            // Everything above is what a real apply checks; the state machine refuses no config. The
            // committed config is read linearizably, as `get config` does, so the answer compares
            // against what the next apply would replace.
            self.read_linearizable().await?;
            let model = self.cluster.raft.model();
            return Ok(Response::new(pb::ApplyConfigResponse {
                version: model.config_version + 1,
                log_index: self.cluster.raft.applied_index(),
                dry_run: true,
                config_json: config.to_json(),
                current_json: model.config.as_ref().map(|c| c.to_json()).unwrap_or_default(),
                current_version: model.config_version,
                answered_by: self.id(),
            }));
        }
        let version = |p: Proposed| match p.result {
            CommandResult::ConfigApplied { version } => {
                Ok(pb::ApplyConfigResponse { version, log_index: p.log_index, ..Default::default() })
            }
            CommandResult::Rejected { errors } => Err(rejected(&errors)),
            other => Err(Status::internal(format!("unexpected apply result {other:?}"))),
        };
        let _ = &req;
        Ok(Response::new(version(self.propose(Command::ApplyConfig { config }, hops).await?)?))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let req = request.into_inner();
        if req.stale {
            return Ok(Response::new(self.config_response()));
        }
        self.read_linearizable().await?;
        Ok(Response::new(self.config_response()))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let metrics = self.cluster.raft.metrics();
        Ok(Response::new(pb::ListNodesResponse {
            nodes: members(&metrics.membership_config).iter().map(pb::NodeInfo::from).collect(),
            leader: metrics.current_leader,
        }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let node = validate_new_node(req.id, &req.addr, &req.http_addr, self.default_http_port)?;
        let (req, node) = (&req, &node);
        let resp = self
            .on_leader(
                hops,
                || self.add_node_local(req.id, node.clone(), req.learner_only),
                |mut client, fwd| async move {
                    client.add_node(fwd.map(|()| req.clone())).await.map(Response::into_inner)
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        if req.id == 0 {
            return Err(invalid("id: node id must be at least 1"));
        }
        let resp = self
            .on_leader(
                hops,
                || self.remove_node_local(req.id),
                |mut client, fwd| async move {
                    client.remove_node(fwd.map(|()| req)).await.map(Response::into_inner)
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let req = request.into_inner();
        if req.stale {
            return Ok(Response::new(self.backends_response()));
        }
        self.read_linearizable().await?;
        Ok(Response::new(self.backends_response()))
    }

    async fn set_drain(
        &self,
        request: Request<pb::SetDrainRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        if req.pool.trim().is_empty() {
            return Err(invalid("pool: empty pool name"));
        }
        if req.backend.trim().is_empty() {
            return Err(invalid("backend: empty backend address"));
        }
        let cmd = Command::SetDrain { pool: req.pool, backend: req.backend, draining: req.draining };
        match self.propose(cmd, hops).await? {
            Proposed { result: CommandResult::Rejected { errors }, .. } => Err(rejected(&errors)),
            Proposed { log_index, .. } => Ok(Response::new(pb::WriteResponse { log_index })),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut applied = self.cluster.raft.watch_model();
        let mut metrics = self.cluster.raft.watch_metrics();
        let mut shutdown = self.cluster.shutdown.clone();
        tokio::spawn(async move {
            let mut last: Option<WatchKey> = None;
            loop {
                let key = {
                    let a = applied.borrow_and_update();
                    let m = metrics.borrow_and_update();
                    WatchKey {
                        // The model channel can run ahead of the metrics, and the metrics also count
                        // entries that changed no state (blank, refused).
                        applied_index: a.index.max(m.last_applied.map_or(0, |l| l.index)),
                        config_version: a.state.config_version,
                        leader: m.current_leader,
                        term: m.current_term,
                    }
                };
                if let Some(event) = watch_event(last.as_ref(), &key) {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    last = Some(key);
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    r = metrics.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        let req = request.into_inner();
        if req.stale {
            return Ok(Response::new(self.events_response(&req)));
        }
        self.read_linearizable().await?;
        Ok(Response::new(self.events_response(&req)))
    }

    async fn local_load(
        &self,
        _request: Request<pb::LocalLoadRequest>,
    ) -> Result<Response<pb::LoadReport>, Status> {
        let routing = self.cluster.dataplane.routing.load();
        Ok(Response::new(crate::load::local_report(self.id(), &routing, crate::load::now_ms())))
    }

    async fn local_dashboard(
        &self,
        _request: Request<pb::LocalDashboardRequest>,
    ) -> Result<Response<pb::LocalDashboardReport>, Status> {
        Ok(Response::new(super::dashboard::local_report(&self.cluster)))
    }

    async fn report_load(
        &self,
        request: Request<pb::LoadReport>,
    ) -> Result<Response<pb::ReportLoadResponse>, Status> {
        let caller = calling_node(&request)?;
        let report = request.into_inner();
        if report.node != caller {
            return Err(Status::permission_denied(format!(
                "node {caller} cannot report load as node {}",
                report.node
            )));
        }
        let metrics = self.cluster.raft.metrics();
        if metrics.state != openraft::ServerState::Leader {
            return Ok(Response::new(pb::ReportLoadResponse { accepted: false }));
        }
        if metrics.membership_config.membership().get_node(&report.node).is_none() {
            return Err(invalid(format!(
                "node: load report from node {} refused: it is not a member of the cluster",
                report.node
            )));
        }
        self.cluster.loads.record(report, Instant::now());
        Ok(Response::new(pb::ReportLoadResponse { accepted: true }))
    }

    async fn submit_health_vote(
        &self,
        request: Request<pb::HealthVoteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let hops = hops(&request);
        let caller = calling_node(&request)?;
        let req = request.into_inner();
        if req.node != caller {
            return Err(Status::permission_denied(format!(
                "node {caller} cannot vote as node {}: a node's votes carry its own certificate's id",
                req.node
            )));
        }
        if req.pool.trim().is_empty() {
            return Err(invalid("pool: empty pool name"));
        }
        if req.backend.trim().is_empty() {
            return Err(invalid("backend: empty backend address"));
        }
        {
            let state = self.cluster.raft.model();
            if !state.backends.contains_key(&req.pool) {
                return Err(Status::not_found(format!("no pool named \"{}\"", req.pool)));
            }
            if state.backend(&req.pool, &req.backend).is_none() {
                return Err(Status::not_found(format!(
                    "pool \"{}\" has no backend \"{}\"",
                    req.pool, req.backend
                )));
            }
        }
        // A forwarded proposal carries this node's certificate, so the leader would refuse another
        // node's vote: only the leader takes votes from other nodes.
        let metrics = self.cluster.raft.metrics();
        if caller != self.id() && metrics.state != openraft::ServerState::Leader {
            return Err(Status::failed_precondition(format!(
                "node {} is not the leader: send node {caller}'s health vote to the leader (node {})",
                self.id(),
                metrics.current_leader.map_or_else(|| "unknown".to_string(), |l| l.to_string())
            )));
        }
        let cmd = Command::HealthVote {
            node: req.node,
            pool: req.pool,
            backend: req.backend,
            healthy: req.healthy,
            observed_at_ms: req.observed_at_ms,
        };
        match self.propose(cmd, hops).await? {
            Proposed { result: CommandResult::Rejected { errors }, .. } => {
                Err(Status::failed_precondition(errors.join("; ")))
            }
            Proposed { log_index, .. } => Ok(Response::new(pb::WriteResponse { log_index })),
        }
    }
}
