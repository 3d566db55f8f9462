//! Writes the seed inputs the fuzz corpora started from into `fuzz/corpus/<target>/seed-*`:
//! `cargo run -p lbfleet-fuzz-support --example seeds`. Run it again after adding a message kind
//! or a command, then minimize (README, Testing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use lbfleet_api::command::{Command, CommandResult, LeaderAction};
use lbfleet_api::config::{parse, Format};
use lbfleet_api::pb;
use lbfleet_api::state::{ClusterState, LbNode};
use lbfleet_fuzz_support::messages::KINDS;
use lbfleet_node::proxy::proxy_protocol::{encode, Version, V2_SIGNATURE};
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
        pb::ApplyConfigRequest { format: "toml".into(), body: CONFIG.into(), dry_run: false }.encode_to_vec(),
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

    // config: a listener that reads the PROXY protocol from trusted fronts.
    write(
        "config",
        "accept-proxy.toml",
        b"[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n[[listener]]\nname = \"l\"\n\
          protocol = \"tcp\"\nport = 8081\npool = \"p\"\nproxy_protocol = 2\n\
          accept_proxy_protocol = { from = [\"10.0.0.0/8\", \"2001:db8::1\"] }\n",
    );
    proxy_protocol_seeds();

    // http_headers: arbitrary-driven; request-like bytes and a few from the generator.
    write(
        "http_headers",
        "request",
        b"GET /static/a HTTP/1.1\r\nHost: API.example.com:8080\r\nConnection: x-a, te\r\n",
    );
    for (i, len) in [32usize, 256, 2048].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write("http_headers", &format!("random-{i}"), &bytes);
    }
}

/// Mode byte (see `lbfleet_fuzz_support::proxy_protocol`) and input.
fn proxy_protocol_seeds() {
    let seed = |name: &str, mode: u8, input: &[u8]| {
        let mut data = vec![mode];
        data.extend_from_slice(input);
        write("proxy_protocol", name, &data);
    };
    let (v4a, v4b): (SocketAddr, SocketAddr) =
        ("192.168.0.1:56324".parse().unwrap(), "192.168.0.11:443".parse().unwrap());
    let (v6a, v6b): (SocketAddr, SocketAddr) =
        ("[2001:db8::1]:40000".parse().unwrap(), "[fe80::a:b]:443".parse().unwrap());
    for (name, version) in [("v1", Version::V1), ("v2", Version::V2)] {
        let mut tcp4 = encode(version, v4a, v4b);
        tcp4.extend_from_slice(b"GET / HTTP/1.1\r\n");
        seed(&format!("{name}-tcp4"), 0, &tcp4);
        seed(&format!("{name}-tcp6"), 0, &encode(version, v6a, v6b));
        seed(&format!("{name}-mixed"), 0, &encode(version, v4a, v6b));
    }
    seed("v1-unknown", 0, b"PROXY UNKNOWN\r\n");
    seed("v1-unknown-long", 0, b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 65535 65535\r\n");
    seed("v1-mapped", 0, b"PROXY TCP6 ::ffff:10.0.0.7 2001:db8::1 5000 80\r\n");
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    seed("v2-local", 0, &local);
    // Framed v2: command byte, family byte, payload (addresses, then TLVs).
    let mut tlvs = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0x00, 0x50];
    tlvs.extend_from_slice(&[0x02, 0x00, 0x0b]);
    tlvs.extend_from_slice(b"example.com");
    tlvs.extend_from_slice(&[0x20, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00]);
    seed("framed-tcp4-tlvs", 1, &[&[0x21, 0x11][..], &tlvs].concat());
    seed("framed-udp6", 1, &[&[0x21, 0x22][..], &[7u8; 36][..]].concat());
    seed("framed-unix", 1, &[&[0x21, 0x31][..], &[b'/'; 216][..]].concat());
    seed("framed-unspec", 1, &[0x21, 0x00, 1, 2, 3]);
    // Addresses for the encoder: kinds byte, then addresses and ports.
    seed("encode-v4-v1", 2, &[0x00, 10, 0, 0, 1, 0x13, 0x88, 10, 0, 0, 2, 0, 80]);
    seed("encode-v6-v2", 2, &[0x85, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187]);
}

fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("a seed encodes")
}
