//! Load reporting: how busy each backend is, per node and fleet-wide.
//!
//! - [`local_report`] reads this node's in-flight counters from the routing snapshot (every configured
//!   backend of every pool, draining and inactive ones included). It answers the `LocalLoad` RPC and is
//!   what [`run_reporter`] sends.
//! - [`run_reporter`] sends this node's report every [`REPORT_INTERVAL`] to the current leader, found
//!   by the proposer, over the cached channel (`ReportLoad`; nothing goes through the Raft log). On the
//!   leader itself the report is recorded directly.
//! - [`LoadBoard`] is where the leader keeps the latest report of each node with the time it arrived;
//!   [`LoadBoard::fresh`] sums the reports younger than [`STALE_AFTER`] into a [`FleetLoad`].
//!
//! The numbers are one node's counters read one by one: good for averages over seconds, not a
//! consistent snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use lbfleet_api::NodeId;
use tokio::time::Instant;

use crate::balance::Routing;
use crate::proxy::ProxyContext;
use crate::raft::{Leader, RaftNode};
use crate::shutdown::Shutdown;

/// How often each node reports to the leader.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A report older than this (by its arrival on the leader) no longer counts.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// This node's in-flight count per (pool, backend), from the routing snapshot's counters, sorted by
/// pool then backend. Every configured backend of every pool with a selector is listed, idle ones at 0.
pub fn local_report(node: NodeId, routing: &Routing, at_ms: u64) -> pb::LoadReport {
    let mut backends = Vec::new();
    for pool in routing.pool_digests().keys() {
        let Some(selector) = routing.pool(pool) else { continue };
        for (backend, in_flight) in selector.in_flight() {
            backends.push(pb::BackendLoad {
                pool: pool.to_string(),
                backend: backend.to_string(),
                // One counter covers HTTP requests and TCP/UDP flows (`BackendHandle::track`).
                in_flight,
                connections: 0,
            });
        }
    }
    pb::LoadReport { node, at_ms, backends }
}

/// Load summed over the fresh reports of several nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetLoad {
    /// Nodes whose report counted.
    pub nodes: BTreeSet<NodeId>,
    /// In-flight requests plus connections, by pool then backend key, summed over `nodes`.
    pub per_backend: BTreeMap<String, BTreeMap<String, u64>>,
}

impl FleetLoad {
    /// Sum `reports`. Pure.
    pub fn sum<'a>(reports: impl IntoIterator<Item = &'a pb::LoadReport>) -> FleetLoad {
        let mut fleet = FleetLoad::default();
        for r in reports {
            fleet.nodes.insert(r.node);
            for b in &r.backends {
                *fleet
                    .per_backend
                    .entry(b.pool.clone())
                    .or_default()
                    .entry(b.backend.clone())
                    .or_default() += b.in_flight.saturating_add(b.connections);
            }
        }
        fleet
    }

    /// Fleet-wide load of one backend (0 when no fresh report lists it).
    pub fn backend(&self, pool: &str, backend: &str) -> u64 {
        self.per_backend.get(pool).and_then(|p| p.get(backend)).copied().unwrap_or(0)
    }

    /// Whether every node of `expected` has a fresh report here.
    pub fn covers(&self, expected: &BTreeSet<NodeId>) -> bool {
        expected.is_subset(&self.nodes)
    }
}

/// The leader's latest report of each node, with its arrival time. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct LoadBoard {
    reports: Arc<Mutex<BTreeMap<NodeId, (Instant, pb::LoadReport)>>>,
}

impl LoadBoard {
    /// Keep `report` as the latest of its node, received at `now`.
    pub fn record(&self, report: pb::LoadReport, now: Instant) {
        let mut map = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(report.node, (now, report));
    }

    /// The reports received within `max_age` before `now`, summed.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> FleetLoad {
        let map = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        FleetLoad::sum(
            map.values().filter(|(at, _)| now.saturating_duration_since(*at) <= max_age).map(|(_, r)| r),
        )
    }

    /// Forget every report (e.g. of nodes that left).
    pub fn retain(&self, members: &BTreeSet<NodeId>) {
        let mut map = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, _| members.contains(id));
    }
}

/// Every [`REPORT_INTERVAL`], send this node's load to the leader it knows (or record it locally when
/// it leads), until shutdown. Failures are logged at debug level and retried on the next tick.
pub async fn run_reporter(
    raft: RaftNode,
    dataplane: Arc<ProxyContext>,
    board: LoadBoard,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        if raft.metrics().current_leader.is_none() {
            continue;
        }
        let report = local_report(raft.id, &dataplane.routing.load(), now_ms());
        let (leader, channel) =
            match tokio::time::timeout(REPORT_INTERVAL, raft.proposer().leader_channel()).await {
                Ok(Ok(Leader::Me)) => {
                    board.record(report, Instant::now());
                    continue;
                }
                Ok(Ok(Leader::Other { id, channel })) => (id, channel),
                Ok(Err(e)) => {
                    tracing::debug!("cannot report load: {e}");
                    continue;
                }
                Err(_) => continue,
            };
        let mut request = tonic::Request::new(report);
        request.set_timeout(REPORT_INTERVAL);
        match tokio::time::timeout(REPORT_INTERVAL, AdminClient::new(channel).report_load(request)).await {
            Ok(Ok(r)) if r.get_ref().accepted => {}
            Ok(Ok(_)) => tracing::debug!("node {leader} refused the load report: it is not the leader"),
            Ok(Err(s)) => tracing::debug!("load report to leader {leader} failed: {}", s.message()),
            Err(_) => tracing::debug!("load report to leader {leader} timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};
    use lbfleet_api::state::ClusterState;

    fn report(node: NodeId, loads: &[(&str, &str, u64)]) -> pb::LoadReport {
        pb::LoadReport {
            node,
            at_ms: 0,
            backends: loads
                .iter()
                .map(|(p, b, n)| pb::BackendLoad {
                    pool: p.to_string(),
                    backend: b.to_string(),
                    in_flight: *n,
                    connections: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn the_local_report_lists_every_configured_backend_with_its_counter() {
        let t = "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
                 [[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
                 [[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
                 [[pool.backend]]\naddr = \"127.0.0.1:9100\"\nstandby = true\n";
        let mut s = ClusterState::default();
        s.apply_membership([1].into(), [(1, Default::default())].into());
        s.apply(&Command::ApplyConfig { config: parse(t, Format::Toml).unwrap() }, 1);
        let routing = Routing::build(&s, 1, &Routing::empty());
        let pool = routing.pool("web").unwrap();
        let _a = pool.backends()[0].track();
        let _b = pool.backends()[0].track();
        let r = local_report(7, &routing, 42);
        assert_eq!((r.node, r.at_ms), (7, 42));
        let got: Vec<(&str, u64)> = r.backends.iter().map(|b| (b.backend.as_str(), b.in_flight)).collect();
        assert_eq!(got, vec![("127.0.0.1:9001", 2), ("127.0.0.1:9002", 0), ("127.0.0.1:9100", 0)]);
        drop(_a);
        let r = local_report(7, &routing, 43);
        assert_eq!(r.backends[0].in_flight, 1);
    }

    #[test]
    fn fleet_load_sums_nodes_and_counts_connections() {
        let f =
            FleetLoad::sum(&[report(1, &[("web", "a", 3)]), report(2, &[("web", "a", 4), ("web", "b", 0)])]);
        assert_eq!(f.backend("web", "a"), 3 + 1 + 4 + 1);
        assert_eq!(f.backend("web", "b"), 1);
        assert_eq!(f.backend("web", "zzz"), 0);
        assert!(f.covers(&[1, 2].into()));
        assert!(!f.covers(&[1, 2, 3].into()));
    }

    #[test]
    fn stale_reports_stop_counting_and_a_new_report_replaces_the_old() {
        let board = LoadBoard::default();
        let t0 = Instant::now();
        board.record(report(1, &[("web", "a", 10)]), t0);
        board.record(report(2, &[("web", "a", 5)]), t0 + Duration::from_secs(2));
        let f = board.fresh(t0 + Duration::from_secs(2), STALE_AFTER);
        assert_eq!(f.nodes, [1, 2].into());
        assert_eq!(f.backend("web", "a"), 17);
        let f = board.fresh(t0 + Duration::from_secs(4), STALE_AFTER);
        assert_eq!(f.nodes, [2].into(), "node 1's report is 4 s old");
        board.record(report(2, &[("web", "a", 0)]), t0 + Duration::from_secs(4));
        assert_eq!(board.fresh(t0 + Duration::from_secs(4), STALE_AFTER).backend("web", "a"), 1);
        board.retain(&[1].into());
        assert!(board.fresh(t0 + Duration::from_secs(4), STALE_AFTER).nodes.is_empty());
    }
}
