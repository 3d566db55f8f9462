//! The cluster dashboard's data: `GET /api/v1/cluster` on any node's admin HTTP port.
//!
//! The node asked builds its own [`LocalDashboardReport`](pb::LocalDashboardReport) ([`local_report`])
//! and asks every other member for theirs over the admin gRPC `LocalDashboard` call, each bounded by
//! [`STATUS_TIMEOUT`] and all at once ([`gather`]): a member that does not answer in time is shown
//! unreachable and never holds the page up. [`assemble`] (pure) turns the reports and this node's
//! committed state into the document:
//!
//! - `nodes`: every member with role, term, applied index, reachability (and why not), ring digest,
//!   and `ring_agrees` (its digest is the one most reachable members have);
//! - `pools[].backends[]`: the committed fleet-wide state (`committed`: healthy, draining, active,
//!   and `state`, one word) and each node's local view (`local`: node id → `usable`, `ejected`,
//!   `draining`, `standby`, or `null` when the node did not answer);
//! - `traffic` of each backend and listener, summed over the nodes that answered: requests and
//!   errors per second over the recent window, latency `p50_ms` / `p99_ms` from the merged duration
//!   buckets (`null` when no node reports durations or nothing was observed), and one rate point per
//!   second (`history`, oldest first, summed position by position);
//! - `events`: the newest [`MAX_EVENTS`] of the replicated event log's entries and of the elections and
//!   drains the nodes saw ([`crate::observed`]; those merged over the nodes), newest first.
//!
//! Limits: at most [`MAX_EVENTS`] events; history points, tracked backends and listeners are those of
//! [`crate::traffic`] (the counts left out are in `omitted`).

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;
use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use lbfleet_api::state::ClusterState;
use lbfleet_api::view::{backend_views, BackendView, EventView, Member, NodeStatus};
use lbfleet_api::NodeId;
use serde_json::{json, Value};
use tonic::Request;

use super::STATUS_TIMEOUT;
use crate::cluster::Cluster;
use crate::traffic::{self, quantile, Key, MAX_TRACKED_BACKENDS, MAX_TRACKED_LISTENERS};

/// Most events in the document (the newest).
pub const MAX_EVENTS: usize = 50;

/// This node's report: status, local view of every backend, recent traffic of the tracked ones.
pub fn local_report(cluster: &Cluster) -> pb::LocalDashboardReport {
    let model = cluster.raft.model();
    let backends = backend_views(&model)
        .iter()
        .map(|b| pb::BackendLocalState {
            pool: b.pool.clone(),
            backend: b.addr.clone(),
            state: local_state(b, |pool, addr| {
                addr.parse().map_or(true, |a| cluster.dataplane.outlier.is_usable(pool, a))
            })
            .into(),
        })
        .collect();
    let book = cluster.traffic.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let traffic = book
        .windows()
        .into_iter()
        .map(|(key, w)| {
            let (pool, backend, listener) = match key {
                Key::Backend { pool, backend } => (pool, backend, String::new()),
                Key::Listener(l) => (String::new(), String::new(), l),
            };
            pb::TrafficWindow {
                pool,
                backend,
                listener,
                requests_per_s: w.requests_per_s,
                errors_per_s: w.errors_per_s,
                bucket_le: w.buckets.iter().map(|(le, _)| *le).collect(),
                bucket_count: w.buckets.iter().map(|(_, c)| *c).collect(),
                requests_history: w.requests_history,
                errors_history: w.errors_history,
            }
        })
        .collect();
    let mut status = pb::NodeStatus::from(&cluster.local_view());
    status.reachable = true;
    pb::LocalDashboardReport {
        status: Some(status),
        backends,
        traffic,
        window_ms: (traffic::SAMPLE_INTERVAL * traffic::WINDOW_POINTS as u32).as_millis() as u32,
        sample_interval_ms: traffic::SAMPLE_INTERVAL.as_millis() as u32,
        traffic_ready: book.ready(),
        latency_available: book.has_latency(),
        observed: cluster
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .events()
            .map(|e| pb::EventRecord {
                index: e.index,
                at_ms: e.at_ms,
                leader: e.leader,
                term: e.term,
                what: e.what.clone(),
                why: e.kind.to_string(),
            })
            .collect(),
    }
}

/// Two nodes' sightings of one drain are at most this far apart.
const SAME_DRAIN_MS: u64 = 10_000;

/// An event seen by nodes, and which.
struct Sighting {
    event: pb::EventRecord,
    by: Vec<NodeId>,
}

/// The replicated events and the nodes' sightings merged (an election is one event per term, a drain
/// one event when its sightings are within [`SAME_DRAIN_MS`]), newest first, at most [`MAX_EVENTS`].
/// A sighting has `source` "seen by node 1, 2"; a replicated event `source` "event log".
fn merged_events(model: &ClusterState, answered: &[(NodeId, &pb::LocalDashboardReport)]) -> Vec<Value> {
    let mut seen: Vec<Sighting> = Vec::new();
    for (id, r) in answered {
        for e in &r.observed {
            let same = |s: &&mut Sighting| {
                s.event.what == e.what
                    && (e.why == crate::observed::ELECTION
                        || s.event.at_ms.abs_diff(e.at_ms) <= SAME_DRAIN_MS)
            };
            match seen.iter_mut().find(same) {
                Some(s) => {
                    if e.at_ms < s.event.at_ms {
                        s.event = e.clone();
                    }
                    if !s.by.contains(id) {
                        s.by.push(*id);
                    }
                }
                None => seen.push(Sighting { event: e.clone(), by: vec![*id] }),
            }
        }
    }
    let mut all: Vec<(u64, u64, Value)> = model
        .events
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(EventView::from(e)).unwrap_or(Value::Null);
            v["source"] = json!("event log");
            (e.at_ms, e.index, v)
        })
        .collect();
    for mut s in seen {
        s.by.sort_unstable();
        let by: Vec<String> = s.by.iter().map(|id| id.to_string()).collect();
        let kind = std::mem::take(&mut s.event.why);
        let mut v = serde_json::to_value(EventView::from(&s.event)).unwrap_or(Value::Null);
        v["kind"] = json!(kind);
        v["source"] = json!(format!("seen by node {}", by.join(", ")));
        all.push((s.event.at_ms, s.event.index, v));
    }
    all.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    all.into_iter().take(MAX_EVENTS).map(|(_, _, v)| v).collect()
}

/// One node's view of a backend in one word.
fn local_state(b: &BackendView, usable: impl Fn(&str, &str) -> bool) -> &'static str {
    if !b.active {
        "standby"
    } else if b.draining {
        "draining"
    } else if usable(&b.pool, &b.addr) {
        "usable"
    } else {
        "ejected"
    }
}

/// The committed fleet-wide state of a backend in one word.
fn committed_state(b: &BackendView) -> &'static str {
    if !b.active {
        "standby"
    } else if b.draining {
        "draining"
    } else if b.healthy {
        "healthy"
    } else {
        "down"
    }
}

/// Every member's report (this node's own without a call), or why it has none.
pub async fn gather(cluster: &Cluster) -> Vec<(Member, Result<pb::LocalDashboardReport, String>)> {
    let me = cluster.id();
    let mut all = cluster.raft.members();
    if !all.iter().any(|m| m.id == me) {
        let n = &cluster.raft.me;
        all.insert(0, Member { id: me, addr: n.addr.clone(), http_addr: n.http_addr.clone(), voter: false });
    }
    let ask = |m: Member| async move {
        if m.id == me {
            return (m, Ok(local_report(cluster)));
        }
        let channel = match cluster.admin_channels.get(&m.addr) {
            Ok(c) => c,
            Err(e) => return (m, Err(e)),
        };
        let mut request = Request::new(pb::LocalDashboardRequest {});
        request.set_timeout(STATUS_TIMEOUT);
        let answer =
            tokio::time::timeout(STATUS_TIMEOUT, AdminClient::new(channel).local_dashboard(request)).await;
        let r = match answer {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(STATUS_TIMEOUT))),
        };
        (m, r)
    };
    join_all(all.into_iter().map(ask)).await
}

/// Traffic of one key summed over the nodes.
#[derive(Default)]
struct Sum {
    requests: f64,
    errors: f64,
    /// Bucket counts by the bits of the upper bound.
    buckets: BTreeMap<u64, (f64, u64)>,
    requests_history: Vec<f64>,
    errors_history: Vec<f64>,
}

/// Add `from` to `into` position by position, aligned at the newest point.
fn add_aligned(into: &mut Vec<f64>, from: &[f32]) {
    if from.len() > into.len() {
        let pad = from.len() - into.len();
        into.splice(0..0, std::iter::repeat_n(0.0, pad));
    }
    let offset = into.len() - from.len();
    for (i, v) in from.iter().enumerate() {
        into[offset + i] += f64::from(*v);
    }
}

impl Sum {
    fn add(&mut self, w: &pb::TrafficWindow) {
        self.requests += w.requests_per_s;
        self.errors += w.errors_per_s;
        for (le, c) in w.bucket_le.iter().zip(&w.bucket_count) {
            self.buckets.entry(le.to_bits()).or_insert((*le, 0)).1 += c;
        }
        add_aligned(&mut self.requests_history, &w.requests_history);
        add_aligned(&mut self.errors_history, &w.errors_history);
    }

    fn json(&self, latency: bool) -> Value {
        let mut buckets: Vec<(f64, u64)> = self.buckets.values().copied().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ms = |q: f64| if latency { quantile(&buckets, q).map(|s| round(s * 1000.0, 3)) } else { None };
        let rounded = |v: &[f64]| v.iter().map(|x| round(*x, 2)).collect::<Vec<_>>();
        json!({
            "requests_per_s": round(self.requests, 2),
            "errors_per_s": round(self.errors, 2),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "history": {
                "requests_per_s": rounded(&self.requests_history),
                "errors_per_s": rounded(&self.errors_history),
            },
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The `/api/v1/cluster` document from this node's committed `model` and every member's report.
pub fn assemble(
    me: NodeId,
    leader: Option<NodeId>,
    term: u64,
    model: &ClusterState,
    reports: &[(Member, Result<pb::LocalDashboardReport, String>)],
    now_ms: u64,
) -> Value {
    let answered: Vec<(NodeId, &pb::LocalDashboardReport)> =
        reports.iter().filter_map(|(m, r)| r.as_ref().ok().map(|r| (m.id, r))).collect();
    let statuses: Vec<NodeStatus> = reports
        .iter()
        .map(|(m, r)| {
            let mut s = match r.as_ref().map(|r| r.status.as_ref()) {
                Ok(Some(s)) => {
                    let mut s = NodeStatus::from(s);
                    s.reachable = true;
                    s
                }
                Ok(None) => NodeStatus::unreachable(m, "the answer carried no status".into()),
                Err(e) => NodeStatus::unreachable(m, e.clone()),
            };
            s.voter = m.voter;
            s.down = model.down_nodes.contains(&m.id);
            s
        })
        .collect();
    // The digest most reachable members have; a member with another one disagrees.
    let mut digests: HashMap<&str, usize> = HashMap::new();
    for s in statuses.iter().filter(|s| s.reachable) {
        *digests.entry(s.ring_digest.as_str()).or_default() += 1;
    }
    let majority = digests.iter().max_by_key(|(d, n)| (**n, std::cmp::Reverse(**d))).map(|(d, _)| *d);
    let nodes: Vec<Value> = statuses
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            v["ring_agrees"] = json!(s.reachable && Some(s.ring_digest.as_str()) == majority);
            v
        })
        .collect();

    let latency = answered.iter().any(|(_, r)| r.latency_available);
    let mut sums: HashMap<Key, Sum> = HashMap::new();
    for (_, r) in &answered {
        for w in &r.traffic {
            let key = if w.listener.is_empty() {
                Key::Backend { pool: w.pool.clone(), backend: w.backend.clone() }
            } else {
                Key::Listener(w.listener.clone())
            };
            sums.entry(key).or_default().add(w);
        }
    }
    // A tracked key that no node saw traffic for shows zero rates once the nodes have rates at all.
    let ready = answered.iter().any(|(_, r)| r.traffic_ready);
    let traffic_of = |key: &Key| match sums.get(key) {
        Some(s) => Some(s.json(latency)),
        None => ready.then(|| Sum::default().json(latency)),
    };
    let local_of = |pool: &str, backend: &str| -> Value {
        let mut m = serde_json::Map::new();
        for (m_, r) in reports {
            let state = r.as_ref().ok().and_then(|r| {
                r.backends.iter().find(|b| b.pool == pool && b.backend == backend).map(|b| b.state.clone())
            });
            m.insert(m_.id.to_string(), json!(state));
        }
        Value::Object(m)
    };

    let views = backend_views(model);
    let config = model.config.as_ref();
    let pools: Vec<Value> = config
        .map(|c| c.pool.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let backends: Vec<Value> = views
                .iter()
                .filter(|b| b.pool == p.name)
                .map(|b| {
                    json!({
                        "addr": b.addr,
                        "weight": b.weight,
                        "backup": b.backup,
                        "standby": b.standby,
                        "committed": {
                            "state": committed_state(b),
                            "healthy": b.healthy,
                            "draining": b.draining,
                            "active": b.active,
                        },
                        "local": local_of(&p.name, &b.addr),
                        "traffic": traffic_of(&Key::Backend { pool: p.name.clone(), backend: b.addr.clone() }),
                    })
                })
                .collect();
            json!({ "name": p.name, "policy": p.policy.as_str(), "backends": backends })
        })
        .collect();
    let listeners: Vec<Value> = config
        .map(|c| c.listener.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "protocol": l.protocol,
                "port": l.port,
                "pool": l.pool,
                "traffic": traffic_of(&Key::Listener(l.name.clone())),
            })
        })
        .collect();
    let events = merged_events(model, &answered);
    let first = answered.first().map(|(_, r)| *r);
    json!({
        "answered_by": me,
        "generated_at_ms": now_ms,
        "leader": leader,
        "term": term,
        "config_version": model.config_version,
        "ring_agreement": digests.len() <= 1,
        "nodes": nodes,
        "pools": pools,
        "listeners": listeners,
        "events": events,
        "traffic": {
            "ready": ready,
            "latency_available": latency,
            "window_ms": first.map_or(0, |r| r.window_ms),
            "sample_interval_ms": first.map_or(0, |r| r.sample_interval_ms),
            "nodes_counted": answered.len(),
        },
        "limits": {
            "events": MAX_EVENTS,
            "history_points": traffic::HISTORY_POINTS,
            "tracked_backends": MAX_TRACKED_BACKENDS,
            "tracked_listeners": MAX_TRACKED_LISTENERS,
        },
        "omitted": {
            "backends_without_traffic": views.len().saturating_sub(MAX_TRACKED_BACKENDS),
            "listeners_without_traffic": config.map_or(0, |c| c.listener.len().saturating_sub(MAX_TRACKED_LISTENERS)),
        },
    })
}

/// The whole document as this node serves it now.
pub async fn cluster_json(cluster: &Cluster) -> Value {
    let reports = gather(cluster).await;
    let metrics = cluster.raft.metrics();
    let model = cluster.raft.model();
    assemble(
        cluster.id(),
        metrics.current_leader,
        metrics.current_term,
        &model,
        &reports,
        crate::load::now_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};

    fn member(id: NodeId) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1{id}:7400"),
            http_addr: format!("127.0.0.1{id}:7401"),
            voter: true,
        }
    }

    fn report(
        id: NodeId,
        digest: &str,
        state: &str,
        rps: f64,
        history: Vec<f32>,
    ) -> pb::LocalDashboardReport {
        pb::LocalDashboardReport {
            status: Some(pb::NodeStatus {
                id,
                role: if id == 1 { "leader".into() } else { "follower".into() },
                ring_digest: digest.into(),
                applied_index: 9,
                term: 2,
                ..Default::default()
            }),
            backends: vec![pb::BackendLocalState {
                pool: "web".into(),
                backend: "127.0.0.1:9001".into(),
                state: state.into(),
            }],
            traffic: vec![pb::TrafficWindow {
                pool: "web".into(),
                backend: "127.0.0.1:9001".into(),
                requests_per_s: rps,
                errors_per_s: 1.0,
                bucket_le: vec![0.01, f64::INFINITY],
                bucket_count: vec![10, 0],
                requests_history: history,
                ..Default::default()
            }],
            window_ms: 10_000,
            sample_interval_ms: 1000,
            traffic_ready: true,
            latency_available: true,
            observed: vec![
                pb::EventRecord {
                    at_ms: 1000 + id,
                    term: 2,
                    leader: Some(1),
                    what: "node 1 is the leader of term 2".into(),
                    why: "election".into(),
                    ..Default::default()
                },
                pb::EventRecord {
                    at_ms: 5000 + id * 20_000,
                    what: "backend a of pool \"web\" is draining".into(),
                    why: "drain".into(),
                    ..Default::default()
                },
            ],
        }
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let toml =
            "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
                    [[listener]]\nname = \"front\"\nprotocol = \"http\"\nport = 8080\npool = \"web\"\n";
        s.apply(&Command::ApplyConfig { config: parse(toml, Format::Toml).unwrap() }, 1);
        s
    }

    #[test]
    fn the_document_shows_every_member_its_view_and_the_summed_traffic() {
        let reports = vec![
            (member(1), Ok(report(1, "aa", "usable", 3.0, vec![1.0, 2.0]))),
            (member(2), Ok(report(2, "aa", "ejected", 4.0, vec![5.0]))),
            (member(3), Err("no answer within 500ms".to_string())),
        ];
        let v = assemble(1, Some(1), 2, &state(), &reports, 0);
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["role"], "leader");
        assert_eq!(nodes[1]["ring_agrees"], true);
        assert_eq!(nodes[2]["reachable"], false);
        assert_eq!(nodes[2]["error"], "no answer within 500ms");
        assert_eq!(nodes[2]["ring_agrees"], false);
        assert_eq!(v["ring_agreement"], true, "an unreachable member does not count as a mismatch");
        let b = &v["pools"][0]["backends"][0];
        assert_eq!(b["committed"]["state"], "healthy");
        assert_eq!(b["local"]["1"], "usable");
        assert_eq!(b["local"]["2"], "ejected");
        assert_eq!(b["local"]["3"], Value::Null);
        assert_eq!(b["traffic"]["requests_per_s"], 7.0);
        assert_eq!(b["traffic"]["errors_per_s"], 2.0);
        assert_eq!(b["traffic"]["history"]["requests_per_s"], json!([1.0, 7.0]), "aligned at the newest");
        assert_eq!(b["traffic"]["p50_ms"], 5.0);
        assert_eq!(v["listeners"][0]["name"], "front");
        assert_eq!(v["listeners"][0]["traffic"]["requests_per_s"], 0.0, "no node saw traffic on it");
        assert_eq!(v["listeners"][0]["traffic"]["p50_ms"], Value::Null);
        let events = v["events"].as_array().unwrap();
        let whats: Vec<(&str, &str)> =
            events.iter().map(|e| (e["what"].as_str().unwrap(), e["source"].as_str().unwrap())).collect();
        assert_eq!(
            whats,
            [
                ("backend a of pool \"web\" is draining", "seen by node 2"),
                ("backend a of pool \"web\" is draining", "seen by node 1"),
                ("node 1 is the leader of term 2", "seen by node 1, 2"),
            ],
            "one election per term; sightings of a drain 20 s apart are two drains; newest first"
        );
        assert_eq!(events[2]["at_ms"], 1001, "the first sighting's time");
        assert_eq!(events[2]["kind"], "election");
    }

    #[test]
    fn a_different_ring_digest_breaks_agreement() {
        let reports = vec![
            (member(1), Ok(report(1, "aa", "usable", 0.0, vec![]))),
            (member(2), Ok(report(2, "aa", "usable", 0.0, vec![]))),
            (member(3), Ok(report(3, "bb", "usable", 0.0, vec![]))),
        ];
        let v = assemble(1, Some(1), 2, &state(), &reports, 0);
        assert_eq!(v["ring_agreement"], false);
        assert_eq!(v["nodes"][2]["ring_agrees"], false);
        assert_eq!(v["nodes"][0]["ring_agrees"], true);
    }

    #[test]
    fn latency_is_null_without_a_histogram() {
        let mut r = report(1, "aa", "usable", 1.0, vec![]);
        r.latency_available = false;
        let v = assemble(1, Some(1), 2, &state(), &[(member(1), Ok(r))], 0);
        assert_eq!(v["pools"][0]["backends"][0]["traffic"]["p99_ms"], Value::Null);
    }

    #[test]
    fn local_states_in_order_of_precedence() {
        let b = BackendView {
            pool: "web".into(),
            addr: "a".into(),
            weight: 1,
            healthy: true,
            draining: false,
            active: true,
            backup: false,
            standby: false,
        };
        assert_eq!(local_state(&b, |_, _| true), "usable");
        assert_eq!(local_state(&b, |_, _| false), "ejected");
        assert_eq!(local_state(&BackendView { draining: true, ..b.clone() }, |_, _| true), "draining");
        assert_eq!(
            local_state(&BackendView { active: false, draining: true, ..b.clone() }, |_, _| true),
            "standby"
        );
        assert_eq!(committed_state(&BackendView { healthy: false, ..b }), "down");
    }
}
