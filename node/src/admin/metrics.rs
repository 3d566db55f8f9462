//! Prometheus (OpenMetrics text) rendering of a node's Raft and config state.
//!
//! The registry is built per scrape from a [`LocalView`]: the values already live in openraft's
//! metrics and the applied state, so nothing is kept twice. The data plane's counters live in
//! [`crate::proxy::counters`] and are encoded together with these (one text, one `# EOF`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proxy::counters::{register_gauges, DataplaneMetrics, GaugeSources};
use lbfleet_api::view::NodeStatus as LocalView;

/// The data plane's part of the text: its counters and what its gauges are read from.
/// The figures of [`render`] that are not in the local view: Raft's, and this process's drain.
pub struct RaftExtra {
    pub voters: usize,
    /// Index of the latest committed log entry this node knows.
    pub committed_index: u64,
    /// An operator drained this node (`lbctl drain-node`).
    pub drained: bool,
}

pub struct Dataplane<'a> {
    pub counters: &'a DataplaneMetrics,
    pub gauges: GaugeSources<'a>,
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The metrics text of one node.
pub fn render(
    v: &LocalView,
    raft: &RaftExtra,
    backends: usize,
    healthy_backends: usize,
    dataplane: &Dataplane<'_>,
) -> String {
    let mut registry = Registry::with_prefix_and_labels(
        "lbfleet",
        [(std::borrow::Cow::Borrowed("node"), std::borrow::Cow::Owned(v.id.to_string()))].into_iter(),
    );
    gauge(&mut registry, "node_up", "1 while this lbnode process serves its admin API", 1);
    gauge(&mut registry, "raft_term", "Current Raft term seen by this node", v.term);
    gauge(
        &mut registry,
        "raft_is_leader",
        "1 if this node is the Raft leader",
        u64::from(v.role == "leader"),
    );
    gauge(&mut registry, "raft_is_voter", "1 if this node is a voting member", u64::from(v.voter));
    gauge(
        &mut registry,
        "raft_applied_index",
        "Index of the last log entry applied to the state machine",
        v.applied_index,
    );
    gauge(
        &mut registry,
        "raft_last_log_index",
        "Index of the last log entry stored on this node",
        v.last_log_index,
    );
    gauge(
        &mut registry,
        "raft_snapshot_index",
        "Last log index covered by this node's latest snapshot",
        v.snapshot_index,
    );
    gauge(&mut registry, "raft_purged_index", "Log entries up to this index are purged", v.purged_index);
    gauge(
        &mut registry,
        "raft_leader_id",
        "Node id of the leader this node knows (0 when none)",
        v.leader.unwrap_or(0),
    );
    gauge(&mut registry, "raft_voters", "Voting members in the current membership", raft.voters as u64);
    gauge(
        &mut registry,
        "raft_commit_index",
        "Index of the latest log entry this node knows to be committed",
        raft.committed_index,
    );
    gauge(
        &mut registry,
        "node_drained",
        "1 while an operator has drained this node (lbctl drain-node): it does not announce the VIP",
        u64::from(raft.drained),
    );
    gauge(&mut registry, "config_version", "Version of the cluster config in force", v.config_version);
    gauge(&mut registry, "backends", "Backends in the config, all pools", backends as u64);
    gauge(
        &mut registry,
        "backends_healthy",
        "Backends healthy fleet-wide, all pools",
        healthy_backends as u64,
    );
    dataplane.counters.register(&mut registry);
    register_gauges(&mut registry, &dataplane.gauges);
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        return format!("# cannot encode metrics: {e}\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::listeners::ListenerStatus;

    fn view() -> LocalView {
        LocalView {
            id: 2,
            addr: "127.0.0.12:7400".into(),
            http_addr: "127.0.0.12:7401".into(),
            role: "leader".into(),
            reachable: true,
            error: None,
            term: 7,
            leader: Some(2),
            applied_index: 42,
            last_log_index: 43,
            snapshot_index: 40,
            purged_index: 30,
            voter: true,
            config_version: 3,
            ring_digest: "x".into(),
            down: false,
            drained: false,
        }
    }

    #[test]
    fn renders_every_gauge_with_the_node_label() {
        let v = view();
        let routing = crate::balance::Routing::empty();
        let outlier = crate::balance::OutlierTracker::new();
        let counters = DataplaneMetrics::default();
        let dataplane = Dataplane {
            counters: &counters,
            gauges: GaugeSources { routing: &routing, backends: &[], outlier: &outlier, listeners: &[] },
        };
        let text =
            render(&v, &RaftExtra { voters: 3, committed_index: 44, drained: false }, 4, 3, &dataplane);
        for line in [
            "lbfleet_node_up{node=\"2\"} 1",
            "lbfleet_raft_term{node=\"2\"} 7",
            "lbfleet_raft_is_leader{node=\"2\"} 1",
            "lbfleet_raft_applied_index{node=\"2\"} 42",
            "lbfleet_raft_last_log_index{node=\"2\"} 43",
            "lbfleet_raft_snapshot_index{node=\"2\"} 40",
            "lbfleet_raft_purged_index{node=\"2\"} 30",
            "lbfleet_raft_commit_index{node=\"2\"} 44",
            "lbfleet_config_version{node=\"2\"} 3",
            "lbfleet_node_drained{node=\"2\"} 0",
            "lbfleet_backends_healthy{node=\"2\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn renders_dataplane_counters_and_gauges_with_their_labels() {
        use lbfleet_api::command::Command;
        use lbfleet_api::config::{parse, Format};
        use lbfleet_api::state::ClusterState;
        use std::sync::Arc;
        use std::time::Duration;

        use crate::proxy::counters::{AddrLabel, Name, OpenConnection, RequestLabels};

        let config = parse(
            "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
             [[listener]]\nname = \"front\"\nprotocol = \"http\"\nport = 8080\npool = \"web\"\n",
            Format::Toml,
        )
        .unwrap();
        let mut state = ClusterState::default();
        state.apply(&Command::ApplyConfig { config }, 1);
        let routing = crate::balance::Routing::build(&state, 1, &crate::balance::Routing::empty());
        let b1: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b2: std::net::SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let _busy = routing.pool("web").unwrap().backends().iter().find(|b| b.addr() == b1).unwrap().track();
        let counters = DataplaneMetrics::default();
        let to = |backend| RequestLabels {
            listener: Name(Arc::from("front")),
            pool: Some(Name(Arc::from("web"))),
            backend: AddrLabel(backend),
        };
        counters.http_response(&to(Some(b1)), 200, Duration::from_millis(3));
        counters.http_response(&to(Some(b1)), 204, Duration::from_micros(200));
        counters.http_response(&to(None), 503, Duration::from_secs(20));
        counters.traffic(&to(Some(b1)), 10, 2000);
        counters.traffic(&to(Some(b1)), 5, 0);
        counters.retry(&Name(Arc::from("front")), &Name(Arc::from("web")), "connect_failure");
        let open = counters.listener_connections("front");
        let _two = (OpenConnection::new(&open), OpenConnection::new(&open));
        drop(OpenConnection::new(&open));
        counters.access_log_dropped().inc();
        counters.connect_failure("web", b2);
        counters.tcp_connection("l4", "web", b2);
        counters.udp_flow("dns", "web", b1);
        counters.udp_drop_counter("dns", "table_full").inc();
        let outlier = crate::balance::OutlierTracker::new();
        outlier.update(state.config.as_ref());
        outlier.set_active("web", b1, crate::balance::LocalState::Up);
        let mut backends = lbfleet_api::view::backend_views(&state);
        backends[1].healthy = false;
        let listeners = [ListenerStatus {
            name: "front".into(),
            protocol: "http",
            addr: "127.0.0.1:8080".into(),
            bound: true,
            error: None,
        }];
        let dataplane = Dataplane {
            counters: &counters,
            gauges: GaugeSources {
                routing: &routing,
                backends: &backends,
                outlier: &outlier,
                listeners: &listeners,
            },
        };
        let text =
            render(&view(), &RaftExtra { voters: 3, committed_index: 42, drained: true }, 2, 1, &dataplane);
        for line in [
            "lbfleet_http_requests_total{node=\"2\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\",code_class=\"2xx\"} 2",
            "lbfleet_http_requests_total{node=\"2\",listener=\"front\",pool=\"web\",backend=\"\",code_class=\"5xx\"} 1",
            "lbfleet_upstream_connect_failures_total{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9002\"} 1",
            "lbfleet_tcp_connections_total{node=\"2\",listener=\"l4\",pool=\"web\",backend=\"127.0.0.1:9002\"} 1",
            "lbfleet_udp_flows_total{node=\"2\",listener=\"dns\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_udp_dropped_total{node=\"2\",listener=\"dns\",reason=\"table_full\"} 1",
            "lbfleet_backend_in_flight{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_backend_in_flight{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9002\"} 0",
            "lbfleet_backend_healthy{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_backend_healthy{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9002\"} 0",
            "lbfleet_backend_usable{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_listener_bound{node=\"2\",listener=\"front\"} 1",
            "lbfleet_raft_term{node=\"2\"} 7",
            "lbfleet_node_drained{node=\"2\"} 1",
            "lbfleet_received_bytes_total{node=\"2\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 15",
            "lbfleet_sent_bytes_total{node=\"2\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 2000",
            "lbfleet_retries_total{node=\"2\",listener=\"front\",pool=\"web\",reason=\"connect_failure\"} 1",
            "lbfleet_listener_connections{node=\"2\",listener=\"front\"} 2",
            "lbfleet_access_log_dropped_total{node=\"2\"} 1",
            "lbfleet_ring_info{node=\"2\",digest=\"DIGEST\"} 1",
            "lbfleet_backend_ejections_total{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 0",
            "lbfleet_backend_check_up{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_backend_ejected{node=\"2\",pool=\"web\",backend=\"127.0.0.1:9001\"} 0",
            "lbfleet_http_request_duration_seconds_count{node=\"2\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 2",
            "lbfleet_http_request_duration_seconds_bucket{node=\"2\",le=\"0.0005\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 1",
            "lbfleet_http_request_duration_seconds_bucket{node=\"2\",le=\"0.005\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 2",
            "lbfleet_http_request_duration_seconds_bucket{node=\"2\",le=\"10.0\",listener=\"front\",pool=\"web\",backend=\"\"} 0",
            "lbfleet_http_request_duration_seconds_bucket{node=\"2\",le=\"+Inf\",listener=\"front\",pool=\"web\",backend=\"\"} 1",
        ] {
            let line = line.replace("DIGEST", routing.ring_digest());
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(text.contains("# TYPE lbfleet_http_requests counter"), "{text}");
        assert!(text.contains("# UNIT lbfleet_received_bytes bytes"), "{text}");
        assert!(text.contains("# TYPE lbfleet_http_request_duration_seconds histogram"), "{text}");
        assert!(text.contains("# UNIT lbfleet_http_request_duration_seconds seconds"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }
}
