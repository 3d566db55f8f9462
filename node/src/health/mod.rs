//! Health of the backends: active checks from every node and fleet-wide votes.
//!
//! Layout:
//! - [`checker`]: the probes (TCP connect, HTTP GET) and one task per (pool, backend, settings).
//! - [`vote`]: which votes to send and when (pure), and the proposal that sends one.
//! - this file: [`run`], the node's health task: it follows the committed model (starting, stopping
//!   and retuning checkers, updating the usability tracker), collects the checkers' transitions and
//!   sends votes.
//!
//! The pure parts they use live in [`crate::balance`]: the rise/fall state machine of one check
//! ([`crate::balance::local_check`]), passive ejection from live traffic ([`crate::balance::ejection`])
//! and the shared usability tracker the proxies consult ([`crate::balance::usability`]).
//!
//! Data enters as the committed config (what to check, how) and probe results; it leaves as health
//! votes (Raft log entries through the node's proposer) and as the node-local usability
//! the proxies read on every pick.
//!
//! # How local and fleet-wide health interact
//!
//! Every node probes every backend itself, from its own IP. Its *local view* of a backend (unknown,
//! up, down; see [`crate::balance::local_check`]) changes after `rise` successes or `fall` failures in a row.
//!
//! - **Fleet-wide health** is what the Raft log says: each node votes on changes of its local view,
//!   and `apply` marks a backend down when the down votes of live voting nodes reach the pool's
//!   `health.quorum` (default: a majority). It decides the *eligible set* of a pool, which is the same
//!   on every node, so every node builds the same Maglev table and a key maps to the same backend
//!   everywhere. One node's partial view (a broken link between that node and a backend) cannot eject
//!   a backend for the fleet.
//! - **Local usability** is decided on each node alone and applied at pick time
//!   (`PoolSelector::pick_usable` with `OutlierTracker::is_usable`): a backend is skipped on this node
//!   when its own active check sees it down (at once, before the fleet-wide vote commits, and even if
//!   the fleet never agrees), or when passive outlier detection ejected it here after consecutive
//!   connect failures or 5xx responses. Skipping moves only the keys of that backend, and only on this
//!   node, to their next fallback in the table; every other key keeps its backend.
//! - So a backend that is really down is skipped by each node as soon as that node sees it, then leaves
//!   every table once a quorum of nodes has voted; a backend that only one node cannot reach stays in
//!   every table, and only that node routes around it.
//! - When every backend of a pool is unusable locally, a proxy may fall back to the fleet-wide
//!   eligible set (`PoolSelector::pick`) rather than fail.
//! - With no quorum, votes are retried with backoff; the data plane keeps routing on the last
//!   committed state plus the current local view.

pub mod checker;
pub mod vote;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::balance::LocalState;
use crate::proxy::ProxyContext;
use crate::raft::RaftNode;
use crate::shutdown::Shutdown;
use checker::{CheckEnv, Checkers, Transition, MAX_CONCURRENT_PROBES};
use vote::{BackendKey, VotePlan};

/// How often the vote loop looks again when nothing else wakes it (a safety net for the reconcile).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// The committed health votes of every backend, for `/api/v1/state` (`health_votes`): pool, backend,
/// fleet-wide health and each node's recorded vote (`healthy`, and the log `index` that recorded it).
pub fn committed_votes_json(state: &lbfleet_api::state::ClusterState) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = state
        .backends
        .iter()
        .flat_map(|(pool, backends)| {
            backends.iter().map(move |(backend, st)| {
                let votes: serde_json::Map<String, serde_json::Value> = st
                    .votes
                    .iter()
                    .map(|(n, v)| {
                        (n.to_string(), serde_json::json!({ "healthy": v.healthy, "index": v.index }))
                    })
                    .collect();
                serde_json::json!({ "pool": pool, "backend": backend, "healthy": st.healthy, "votes": votes })
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// The node's health task: runs until the node shuts down.
pub async fn run(raft: RaftNode, dataplane: Arc<ProxyContext>, mut stop: Shutdown) {
    let mut applied = raft.watch_model();
    let tracker = Arc::clone(&dataplane.outlier);
    let (events_tx, mut events) = mpsc::unbounded_channel::<Transition>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<(BackendKey, Result<u64, String>)>();
    let mut checkers = Checkers::new(CheckEnv {
        bind_ip: dataplane.bind_ip,
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        tracker: Arc::clone(&tracker),
        events: events_tx,
        tls: Arc::clone(&dataplane.tls),
    });
    let mut views: BTreeMap<BackendKey, LocalState> = BTreeMap::new();
    let mut plan = VotePlan::default();
    let mut config_version = None;

    loop {
        let current = applied.borrow_and_update().clone();
        if config_version != Some(current.state.config_version) {
            config_version = Some(current.state.config_version);
            let config = current.state.config.as_ref();
            tracker.update(config);
            for (pool, addr) in checkers.reconcile(config) {
                views.remove(&(pool, addr.to_string()));
            }
            // Views of backends that left the config go too.
            views.retain(|(pool, backend), _| current.state.backend(pool, backend).is_some());
            plan.retain(|(pool, backend)| current.state.backend(pool, backend).is_some());
        }

        let wanted = vote::wanted_votes(raft.id, &views, &current.state);
        for (key, healthy) in plan.due(wanted, Instant::now()) {
            let (proposer, id, tx) = (raft.proposer().clone(), raft.id, done_tx.clone());
            tracing::info!(pool = %key.0, backend = %key.1, healthy, "sending health vote");
            tokio::spawn(async move {
                let r = vote::submit(&proposer, id, &key, healthy).await;
                let _ = tx.send((key, r));
            });
        }
        let now = Instant::now();
        let wake = plan.next_wakeup(now).unwrap_or(now + RECONCILE_EVERY).min(now + RECONCILE_EVERY);

        tokio::select! {
            changed = applied.changed() => if changed.is_err() { break },
            Some(t) = events.recv() => {
                // Known limit: a transition a checker queued just before it was restarted may land
                // after the restart; the new checker's first transition corrects the view.
                views.insert((t.pool, t.addr.to_string()), t.state);
            }
            Some((key, result)) = done.recv() => {
                match &result {
                    Ok(index) => tracing::debug!(pool = %key.0, backend = %key.1, index, "health vote committed"),
                    Err(e) => tracing::warn!(pool = %key.0, backend = %key.1, "health vote not accepted (will retry): {e}"),
                }
                plan.finished(&key, result.is_ok(), Instant::now());
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait() => break,
        }
    }
    checkers.shutdown();
}
