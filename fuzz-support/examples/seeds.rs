//! Writes the seed inputs the fuzz corpora started from into `fuzz/corpus/<target>/seed-*`:
//! `cargo run -p lbfleet-fuzz-support --example seeds`. Run it again after adding a message kind
//! or a command, then minimize (README, Testing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use lbfleet_api::command::{Command, CommandResult, LeaderAction};
use lbfleet_api::config::{parse, Format};
use lbfleet_api::pb;
use lbfleet_api::state::{ClusterState, LbNode};
use lbfleet_fuzz_support::messages::KINDS;
use lbfleet_node::raft::proposer::{Forwarded, Proposed};
use lbfleet_raft_store::{AppliedState, TypeConfig};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use prost::Message;

const CONFIG: &str = r#"
[[pool]]
name = "web"
policy = "maglev"
hash_key = "header:x-user"
table_size = 65537
sticky_cookie = "lbsid"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  weight = 1
  [[pool.backend]]
  addr = "[::1]:9002"
  backup = true
  [[pool.backend]]
  addr = "127.0.0.1:9003"
  standby = true
  [pool.health]
  kind = "http"
  path = "/health"
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 2
  expect_status = [200, 399]
  quorum = 2
  [pool.outlier]
  consecutive_5xx = 5
  base_ejection = "30s"
  max_ejection = "300s"
  [pool.scale]
  min_active = 1
  max_active = 2
  high_watermark = 20
  low_watermark = 5
  window = "30s"
  scale_out_hook = "provision"

[[pool]]
name = "dns"
policy = "source_hash"
hash_key = "source_ip"
  [[pool.backend]]
  addr = "10.0.0.7:53"

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
redirect = false
  [listener.timeouts]
  connect = "2s"
  request_header = "10s"
  idle = "60s"
  upstream_response = "30s"
  [[listener.route]]
  host = "api.example.com"
  path_prefix = "/v1"
  pool = "web"

[[listener]]
name = "tcp"
protocol = "tcp"
port = 8081
pool = "dns"
proxy_protocol = 2

[[listener]]
name = "dns"
protocol = "udp"
port = 5353
pool = "dns"
"#;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
}

fn kind(name: &str) -> u8 {
    KINDS.iter().position(|(k, _)| *k == name).unwrap_or_else(|| panic!("no kind {name}")) as u8
}

fn message(name: &str, payload: Vec<u8>) {
    let mut data = vec![kind(name)];
    data.extend(payload);
    write("raft_messages", &name.replace(' ', "-"), &data);
}

fn main() {
    let config = parse(CONFIG, Format::Toml).expect("the seed config is valid");
    write("config", "full.toml", CONFIG.as_bytes());
    write("config", "full.json", config.to_json().as_bytes());
    write("config", "rejected.toml", b"[[pool]]\nname = \"web\"\npolicy = \"fastest\"\ntable_size = 65536\n");

    let log_id = |term, index| LogId::new(CommittedLeaderId::new(term, 1), index);
    let nodes: BTreeMap<u64, LbNode> = (1..=3)
        .map(|i| (i, LbNode { addr: format!("127.0.0.1{i}:7400"), http_addr: String::new() }))
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes.clone());
    let vote = Command::HealthVote {
        node: 2,
        pool: "web".into(),
        backend: "127.0.0.1:9001".into(),
        healthy: false,
        observed_at_ms: 1_700_000_000_000,
    };
    let leader = Command::Leader {
        term: 3,
        leader: 1,
        at_ms: 1_700_000_000_000,
        action: LeaderAction::SetStandby {
            pool: "web".into(),
            backend: "127.0.0.1:9003".into(),
            active: true,
        },
        why: "load".into(),
    };
    let entries: Vec<Entry<TypeConfig>> = vec![
        Entry { log_id: log_id(3, 1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(3, 2), payload: EntryPayload::Membership(membership.clone()) },
        Entry {
            log_id: log_id(3, 3),
            payload: EntryPayload::Normal(Command::ApplyConfig { config: config.clone() }),
        },
        Entry { log_id: log_id(3, 4), payload: EntryPayload::Normal(vote.clone()) },
        Entry { log_id: log_id(3, 5), payload: EntryPayload::Normal(leader) },
    ];
    let v = Vote::new_committed(3, 1);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: v,
        prev_log_id: Some(log_id(2, 9)),
        entries,
        leader_commit: Some(log_id(2, 9)),
    };
    message("raft AppendEntries request", enc(&append));
    message("raft Vote request", enc(&VoteRequest::new(v, Some(log_id(2, 9)))));
    let mut state = ClusterState::default();
    state.apply_membership([1, 2, 3].into(), nodes);
    state.apply(&Command::ApplyConfig { config }, 3);
    state.apply(&vote, 4);
    let applied = AppliedState {
        state: Arc::new(state),
        last_applied: Some(log_id(3, 4)),
        membership: StoredMembership::new(Some(log_id(3, 2)), membership.clone()),
    };
    let data = enc(&applied);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 4)),
        last_membership: StoredMembership::new(Some(log_id(3, 2)), membership),
        snapshot_id: "3-4-1".into(),
    };
    let snapshot =
        InstallSnapshotRequest::<TypeConfig> { vote: v, meta, offset: 0, data: data.clone(), done: true };
    message("raft InstallSnapshot request", enc(&snapshot));
    message("snapshot data", data);
    message("raft Propose request", enc(&Forwarded { command: vote, hops: 1 }));
    message("raft ReadIndex request", enc(&()));
    message(
        "raft AppendEntries reply",
        enc(&Ok::<_, openraft::error::RaftError<u64>>(AppendEntriesResponse::<u64>::Success)),
    );
    message(
        "raft Vote reply",
        enc(&Ok::<_, openraft::error::RaftError<u64>>(VoteResponse::new(v, Some(log_id(3, 4)), true))),
    );
    message(
        "raft InstallSnapshot reply",
        enc(&Ok::<_, openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>>(
            InstallSnapshotResponse { vote: v },
        )),
    );
    let proposed = Proposed { result: CommandResult::ConfigApplied { version: 2 }, log_index: 7 };
    message("raft Propose reply", enc(&Ok::<_, lbfleet_node::raft::proposer::ProposeError>(proposed)));
    message("raft ReadIndex reply", enc(&Ok::<u64, lbfleet_node::raft::proposer::ProposeError>(7)));

    let node_status = pb::NodeStatus {
        id: 2,
        addr: "127.0.0.12:7400".into(),
        role: "follower".into(),
        reachable: true,
        applied_index: 9,
        leader: Some(1),
        snapshot_index: Some(4),
        ..Default::default()
    };
    let event = pb::EventRecord {
        index: 4,
        at_ms: 1_700_000_000_000,
        leader: Some(1),
        term: 3,
        what: "w".into(),
        why: "y".into(),
    };
    let backend = pb::BackendStatus {
        pool: "web".into(),
        addr: "127.0.0.1:9001".into(),
        weight: 1,
        ..Default::default()
    };
    let info = pb::NodeInfo {
        id: 1,
        addr: "127.0.0.11:7400".into(),
        http_addr: "127.0.0.11:7401".into(),
        voter: true,
    };
    message("pb NodeStatus", node_status.encode_to_vec());
    message(
        "pb StatusResponse",
        pb::StatusResponse {
            leader: Some(1),
            term: 3,
            answered_by: 2,
            nodes: vec![node_status],
            config_version: 2,
        }
        .encode_to_vec(),
    );
    message("pb EventsResponse", pb::EventsResponse { events: vec![event] }.encode_to_vec());
    message(
        "pb ListBackendsResponse",
        pb::ListBackendsResponse { backends: vec![backend], applied_index: 9 }.encode_to_vec(),
    );
    message(
        "pb ListNodesResponse",
        pb::ListNodesResponse { nodes: vec![info], leader: Some(1) }.encode_to_vec(),
    );
    message(
        "pb ApplyConfigRequest",
        pb::ApplyConfigRequest { format: "toml".into(), body: CONFIG.into() }.encode_to_vec(),
    );
    message(
        "pb LoadReport",
        pb::LoadReport {
            node: 1,
            at_ms: 1,
            backends: vec![pb::BackendLoad {
                pool: "web".into(),
                backend: "b".into(),
                in_flight: 3,
                connections: 1,
            }],
        }
        .encode_to_vec(),
    );

    // apply: arbitrary-driven, so any bytes make a log; a few lengths from a fixed generator.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, len) in [16usize, 64, 256, 1024, 4096].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write("apply", &format!("random-{i}"), &bytes);
    }
}

fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("a seed encodes")
}
