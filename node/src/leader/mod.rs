//! Leader duties: what only the current leader does, once a second, for as long as it leads.
//!
//! Layout:
//! - [`liveness`]: pure bookkeeping of status probes; which members to mark down or up.
//! - [`autoscale`]: pure per-pool decision to activate or deactivate a standby backend.
//! - [`hooks`]: runs the hook a pool's `scale_out_hook` / `scale_in_hook` names, from this node's own
//!   local config, after a committed step (a hook this node does not define runs nothing: the event
//!   log says so).
//! - this file: the loop ([`run`] with its [`Duties`]). It watches the Raft metrics; when this node becomes leader of a term it starts
//!   the duties with empty memory, and drops them the moment the node stops leading that term.
//!
//! Each tick the leader probes every other member's `LocalStatus`, reads the committed state and the
//! fresh load reports ([`crate::load::LoadBoard`]), and proposes its decisions as
//! `Command::Leader { term, .. }`. Decisions are derived from the committed state (which standbys are
//! active, which nodes are down) plus this leader's own fresh observations, never from a predecessor's
//! memory. Before its first decision a new leader confirms its leadership and waits until everything
//! committed before it is applied (`Proposer::read_index_local`). Decisions are proposed with
//! `Proposer::propose_local`, which never forwards: a deposed leader cannot act through its successor. A deposed leader's late proposal is refused
//! by `apply` (term fence) once its successor has decided anything.

pub mod autoscale;
pub mod hooks;
pub mod liveness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use lbfleet_api::command::{Command, CommandResult, LeaderAction};
use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use lbfleet_api::state::BackendState;
use lbfleet_api::NodeId;
use openraft::ServerState;
use tokio::time::Instant;

use crate::channels::ChannelCache;
use crate::config::Hooks;
use crate::load::{now_ms, LoadBoard, STALE_AFTER};
use crate::raft::{leads, ProposeError, Proposed, RaftNode};
use crate::shutdown::Shutdown;
use autoscale::PoolTrack;
use liveness::Liveness;

/// How often the leader probes the members and looks at the load.
pub const TICK: Duration = Duration::from_secs(1);
/// How long one liveness probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// What the leader duties need.
#[derive(Clone)]
pub struct Duties {
    pub raft: RaftNode,
    /// Channels to the members' admin services (liveness probes).
    pub channels: ChannelCache,
    /// The latest load report of each node (recorded by the admin service and the load reporter).
    pub loads: LoadBoard,
    /// The scale hooks of this node's local config.
    pub hooks: Arc<Hooks>,
    pub shutdown: Shutdown,
}

/// Run the leader duties whenever this node leads, until shutdown.
pub async fn run(cluster: Duties) {
    let mut metrics = cluster.raft.watch_metrics();
    let mut shutdown = cluster.shutdown.clone();
    loop {
        let term = loop {
            let leading = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader).then_some(m.current_term)
            };
            if let Some(term) = leading {
                break term;
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = shutdown.wait() => return,
            }
        };
        tracing::info!(term, "leader duties start");
        let mut watch = metrics.clone();
        let lost = async move {
            let _ = watch.wait_for(|m| !leads(m, term)).await;
        };
        tokio::select! {
            _ = duties(&cluster, term) => {}
            _ = lost => {}
            _ = shutdown.wait() => return,
        }
        tracing::info!(term, "leader duties stop");
        // Duties may end on a refused write before the metrics show the change: give them a moment.
        tokio::select! {
            _ = tokio::time::timeout(TICK, metrics.changed()) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Why the duties of a term end.
struct NotLeader;

/// One term's duties; returns when this node is found not to lead `term` any more.
async fn duties(cluster: &Duties, term: u64) {
    let me = cluster.raft.id;
    let mut live = Liveness::default();
    let mut tracks: BTreeMap<String, PoolTrack> = BTreeMap::new();
    let mut caught_up = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !caught_up {
            match cluster.raft.proposer().read_index_local().await {
                Ok(_) => caught_up = true,
                Err(e) => {
                    tracing::debug!(term, "leadership not confirmed yet: {e}");
                    continue;
                }
            }
        }
        let metrics = cluster.raft.metrics();
        if !leads(&metrics, term) {
            return;
        }
        let members: BTreeMap<NodeId, String> =
            metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let ids: BTreeSet<NodeId> = members.keys().copied().collect();

        let probes = members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, addr)| async move { (*id, probe(cluster, addr).await) });
        for (id, outcome) in join_all(probes).await {
            live.observe(id, outcome);
        }
        live.retain(&ids);
        cluster.loads.retain(&ids);

        let applied = cluster.raft.model();
        let state = &*applied;
        let mut decisions: Vec<(LeaderAction, String, Option<String>)> = Vec::new();
        for d in live.decide(me, &ids, &state.down_nodes) {
            decisions.push((LeaderAction::SetNodeDown { id: d.id, down: d.down }, d.why, None));
        }

        let fleet = cluster.loads.fresh(Instant::now(), STALE_AFTER);
        let expected: BTreeSet<NodeId> = ids.difference(&state.down_nodes).copied().collect();
        let complete = fleet.covers(&expected);
        let no_load = BTreeMap::new();
        let no_states: BTreeMap<String, BackendState> = BTreeMap::new();
        let now = now_ms();
        if let Some(config) = &state.config {
            tracks.retain(|name, _| config.pool(name).is_some_and(|p| p.scale.is_some()));
            for pool in config.pool.iter().filter(|p| p.scale.is_some()) {
                let track = tracks.entry(pool.name.clone()).or_default();
                let load = complete.then(|| fleet.per_backend.get(&pool.name).unwrap_or(&no_load));
                let states = state.backends.get(&pool.name).unwrap_or(&no_states);
                if let Some(step) = autoscale::decide(pool, states, load, now, track) {
                    let hook = pool.scale.as_ref().and_then(|s| {
                        if step.active {
                            s.scale_out_hook.clone()
                        } else {
                            s.scale_in_hook.clone()
                        }
                    });
                    let action = LeaderAction::SetStandby {
                        pool: step.pool,
                        backend: step.backend,
                        active: step.active,
                    };
                    decisions.push((action, step.why, hook));
                }
            }
        }
        drop(applied);

        for (action, why, hook) in decisions {
            let standby = match &action {
                LeaderAction::SetStandby { pool, backend, .. } => Some((pool.clone(), backend.clone())),
                _ => None,
            };
            match propose(cluster, term, action, why).await {
                Err(NotLeader) => return,
                Ok(false) => {}
                Ok(true) => {
                    if let (Some(name), Some((pool, backend))) = (hook, standby) {
                        tokio::spawn(run_hook(cluster.clone(), term, name, pool, backend));
                    }
                }
            }
        }
    }
}

/// Ask one member for its `LocalStatus`: `Ok` if it answered at all.
async fn probe(cluster: &Duties, addr: &str) -> Result<(), String> {
    let channel = cluster.channels.get(addr)?;
    let mut request = tonic::Request::new(pb::LocalStatusRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    match tokio::time::timeout(PROBE_TIMEOUT, AdminClient::new(channel).local_status(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(PROBE_TIMEOUT))),
    }
}

/// Propose one decision of this leader in `term`. `Ok(true)` when it was applied, `Ok(false)` when it
/// was refused or not committed in time, `Err` when this node does not lead `term` any more.
async fn propose(cluster: &Duties, term: u64, action: LeaderAction, why: String) -> Result<bool, NotLeader> {
    if !cluster.raft.leads(term) {
        return Err(NotLeader);
    }
    let cmd = Command::Leader {
        term,
        leader: cluster.raft.id,
        at_ms: now_ms(),
        action: action.clone(),
        why: why.clone(),
    };
    match cluster.raft.proposer().propose_local(cmd).await {
        Ok(Proposed { result: CommandResult::Rejected { errors }, .. }) => {
            tracing::warn!(term, ?action, "leader decision refused: {}", errors.join("; "));
            Ok(false)
        }
        Ok(p) => {
            tracing::info!(term, ?action, index = p.log_index, "leader decision: {why}");
            Ok(true)
        }
        Err(ProposeError::NotLeader { .. } | ProposeError::ShuttingDown(_) | ProposeError::Fatal { .. }) => {
            Err(NotLeader)
        }
        Err(e) => {
            tracing::warn!(term, ?action, "leader decision failed: {e}");
            Ok(false)
        }
    }
}

/// Run the scale hook `name` of this node's local config and record its outcome as a decision of
/// `term` (refused if a later leader has decided since). A hook this node does not define runs nothing;
/// that is recorded too.
async fn run_hook(cluster: Duties, term: u64, name: String, pool: String, backend: String) {
    let Some(hook) = cluster.hooks.get(&name) else {
        tracing::warn!(
            term,
            pool,
            backend,
            "scale hook `{name}` is not defined in this node's local config: nothing runs"
        );
        let why = format!("node {} has no [hooks.{name}] in its local config", cluster.raft.id);
        let action = LeaderAction::HookMissing { pool, backend, hook: name };
        let _ = propose(&cluster, term, action, why).await;
        return;
    };
    let outcome = hooks::run(hook, &pool, &backend).await;
    let why = if outcome.output.is_empty() { "(no output)".to_string() } else { outcome.output.clone() };
    let action = LeaderAction::HookResult {
        pool,
        backend,
        command: name,
        exit_code: outcome.exit_code,
        output: outcome.output,
    };
    if propose(&cluster, term, action, why).await.is_err() {
        tracing::warn!(
            term,
            "hook finished after this node stopped leading term {term}; its result is not recorded"
        );
    }
}

#[cfg(test)]
mod tests;
