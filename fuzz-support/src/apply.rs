//! Target `apply`: the state machine over random logs.
//!
//! The input is read with `arbitrary` into a sequence of [`Step`]s: commands (configs that need not
//! be valid, since `apply` must put any committed config in force, health votes, drains, standby
//! changes, retired tags, leader decisions with terms that go back and forth) and membership
//! entries. Names are drawn mostly from a small set so that commands hit the pools, backends and
//! nodes a config or a membership created. After each step the invariants of `ClusterState` hold;
//! after each config and at the end the state survives postcard (what snapshots carry) and the
//! views every surface shows build; a replay of the same steps on a fresh state gives the same
//! results and the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use lbfleet_api::command::{Command, CommandResult, LeaderAction};
use lbfleet_api::config::{
    Autoscale, Backend, ClusterConfig, HashKey, HealthCheck, HealthKind, Listener, OutlierDetection, Policy,
    Pool, Protocol, Route, Timeouts,
};
use lbfleet_api::state::{ClusterState, LbNode};
use lbfleet_api::view::{backend_views, EventView};
use lbfleet_api::NodeId;

/// Longest log one input drives (a longer input only adds steps the fuzzer cannot steer).
pub const MAX_STEPS: usize = 64;

/// One entry of the log: a command at the next index, or a membership entry.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    Config(GenConfig),
    Vote {
        node: GenNode,
        pool: GenPool,
        backend: GenBackendKey,
        healthy: bool,
        observed_at_ms: u64,
    },
    Drain {
        pool: GenPool,
        backend: GenBackendKey,
        draining: bool,
    },
    Standby {
        pool: GenPool,
        backend: GenBackendKey,
        active: bool,
    },
    Retired {
        tag5: bool,
    },
    Leader {
        term: u8,
        leader: GenNode,
        at_ms: u64,
        action: GenAction,
        why: String,
    },
    /// Voters and learners as bit sets over nodes 1..=8 (voters are always members too).
    Membership {
        voters: u8,
        learners: u8,
    },
    /// Entries this state machine does not see (blank entries, other commands): a gap in the index.
    Gap(u8),
}

/// A node id: mostly 0..=8 (0 is never a member), sometimes any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum GenNode {
    Small(u8),
    Any(u64),
}

/// A pool name: mostly one of a few, sometimes any string.
#[derive(Debug, Clone, Arbitrary)]
pub enum GenPool {
    Known(u8),
    Any(String),
}

/// A backend address: mostly one of a few, sometimes any.
#[derive(Debug, Clone, Arbitrary)]
pub enum GenAddr {
    Known(u8),
    V4(u32, u16),
    V6(u128, u16, u32),
}

/// A backend key as commands name it: a known address's key, or any string.
#[derive(Debug, Clone, Arbitrary)]
pub enum GenBackendKey {
    Addr(GenAddr),
    Any(String),
}

#[derive(Debug, Clone, Arbitrary)]
pub enum GenAction {
    SetStandby {
        pool: GenPool,
        backend: GenBackendKey,
        active: bool,
    },
    SetNodeDown {
        id: GenNode,
        down: bool,
    },
    HookResult {
        pool: GenPool,
        backend: GenBackendKey,
        command: String,
        exit_code: Option<i32>,
        output: String,
    },
}

#[derive(Debug, Clone, Arbitrary)]
pub struct GenConfig {
    pub pools: Vec<GenPoolConfig>,
    pub listeners: Vec<GenListener>,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct GenPoolConfig {
    pub name: GenPool,
    pub policy: u8,
    pub hash_key: GenHashKey,
    pub table_size: u64,
    pub sticky_cookie: Option<String>,
    pub quorum: Option<u32>,
    pub health_kind: u8,
    pub health_path: String,
    pub durations: [GenDuration; 5],
    pub counts: [u32; 5],
    pub expect_status: [u16; 2],
    pub scale: Option<GenScale>,
    pub backends: Vec<GenBackend>,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum GenHashKey {
    Known(u8),
    /// Parsed as an operator would write it; falls back to `source_ip` when it does not parse.
    Text(String),
}

/// A duration: mostly small, sometimes any.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum GenDuration {
    Millis(u16),
    Any(u64, u32),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct GenScale {
    pub bounds: [u32; 4],
    pub window: GenDuration,
    pub scale_out_hook: Option<String>,
    pub scale_in_hook: Option<String>,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct GenBackend {
    pub addr: GenAddr,
    pub weight: u32,
    pub backup: bool,
    pub standby: bool,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct GenListener {
    pub name: String,
    pub protocol: u8,
    pub port: u16,
    pub pool: GenPool,
    pub redirect: bool,
    pub proxy_protocol: Option<u8>,
    pub timeouts: [GenDuration; 4],
    pub routes: Vec<(Option<String>, Option<String>, GenPool)>,
}

const POOLS: [&str; 3] = ["web", "api", "dns"];

fn known_addr(i: u8) -> SocketAddr {
    match i % 5 {
        0 => SocketAddr::from(([127, 0, 0, 1], 9001)),
        1 => SocketAddr::from(([127, 0, 0, 1], 9002)),
        2 => SocketAddr::from(([10, 0, 0, 7], 80)),
        3 => SocketAddr::from((Ipv6Addr::LOCALHOST, 9001)),
        _ => SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("an IPv6 address"), 8080, 0, 3)),
    }
}

impl GenNode {
    fn id(self) -> NodeId {
        match self {
            GenNode::Small(n) => NodeId::from(n % 9),
            GenNode::Any(n) => n,
        }
    }
}

impl GenPool {
    fn name(&self) -> String {
        match self {
            GenPool::Known(i) => POOLS[usize::from(*i) % POOLS.len()].to_string(),
            GenPool::Any(s) => s.clone(),
        }
    }
}

impl GenAddr {
    fn addr(&self) -> SocketAddr {
        match *self {
            GenAddr::Known(i) => known_addr(i),
            GenAddr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
            GenAddr::V6(ip, port, scope) => {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
            }
        }
    }
}

impl GenBackendKey {
    fn key(&self) -> String {
        match self {
            GenBackendKey::Addr(a) => a.addr().to_string(),
            GenBackendKey::Any(s) => s.clone(),
        }
    }
}

impl GenDuration {
    fn duration(self) -> Duration {
        match self {
            GenDuration::Millis(ms) => Duration::from_millis(u64::from(ms)),
            GenDuration::Any(secs, nanos) => Duration::new(secs, nanos % 1_000_000_000),
        }
    }
}

impl GenAction {
    fn action(&self) -> LeaderAction {
        match self {
            GenAction::SetStandby { pool, backend, active } => {
                LeaderAction::SetStandby { pool: pool.name(), backend: backend.key(), active: *active }
            }
            GenAction::SetNodeDown { id, down } => LeaderAction::SetNodeDown { id: id.id(), down: *down },
            GenAction::HookResult { pool, backend, command, exit_code, output } => LeaderAction::HookResult {
                pool: pool.name(),
                backend: backend.key(),
                command: command.clone(),
                exit_code: *exit_code,
                output: output.clone(),
            },
        }
    }
}

impl GenConfig {
    /// The config as a committed entry could hold it: typed, but not necessarily valid.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            pool: self.pools.iter().map(GenPoolConfig::pool).collect(),
            listener: self.listeners.iter().map(GenListener::listener).collect(),
        }
    }
}

impl GenPoolConfig {
    fn pool(&self) -> Pool {
        let [interval, timeout, base_ejection, max_ejection, _] = self.durations.map(GenDuration::duration);
        let [rise, fall, c5xx, cconnect, max_ejection_percent] = self.counts;
        Pool {
            name: self.name.name(),
            policy: Policy::ALL[usize::from(self.policy) % Policy::ALL.len()],
            hash_key: match &self.hash_key {
                GenHashKey::Known(i) => match i % 6 {
                    0 => HashKey::SourceIp,
                    1 => HashKey::SourceAddr,
                    2 => HashKey::Header("x-user".into()),
                    3 => HashKey::Cookie("Sid".into()),
                    4 => HashKey::Path,
                    _ => HashKey::Flow,
                },
                GenHashKey::Text(s) => s.parse().unwrap_or(HashKey::SourceIp),
            },
            table_size: self.table_size,
            sticky_cookie: self.sticky_cookie.clone(),
            health: HealthCheck {
                kind: [HealthKind::Http, HealthKind::Tcp, HealthKind::None]
                    [usize::from(self.health_kind % 3)],
                path: self.health_path.clone(),
                interval,
                timeout,
                rise,
                fall,
                expect_status: self.expect_status,
                quorum: self.quorum,
            },
            outlier: OutlierDetection {
                consecutive_5xx: c5xx,
                consecutive_connect_failures: cconnect,
                base_ejection,
                max_ejection,
                max_ejection_percent,
            },
            scale: self.scale.as_ref().map(|s| Autoscale {
                min_active: s.bounds[0],
                max_active: s.bounds[1],
                high_watermark: s.bounds[2],
                low_watermark: s.bounds[3],
                window: s.window.duration(),
                scale_out_hook: s.scale_out_hook.clone(),
                scale_in_hook: s.scale_in_hook.clone(),
            }),
            backend: self
                .backends
                .iter()
                .map(|b| Backend {
                    addr: b.addr.addr(),
                    weight: b.weight,
                    backup: b.backup,
                    standby: b.standby,
                })
                .collect(),
            max_connections_per_backend: None,
            tls: None,
        }
    }
}

impl GenListener {
    fn listener(&self) -> Listener {
        let [connect, request_header, idle, upstream_response] = self.timeouts.map(GenDuration::duration);
        Listener {
            name: self.name.clone(),
            protocol: [Protocol::Http, Protocol::Tcp, Protocol::Udp][usize::from(self.protocol % 3)],
            port: self.port,
            pool: self.pool.name(),
            redirect: self.redirect,
            proxy_protocol: self.proxy_protocol,
            // Opaque to `apply`; not generated, so the committed corpus keeps its meaning.
            accept_proxy_protocol: None,
            timeouts: Timeouts { connect, request_header, idle, upstream_response },
            limits: Default::default(),
            route: self
                .routes
                .iter()
                .map(|(host, path_prefix, pool)| Route {
                    host: host.clone(),
                    path_prefix: path_prefix.clone(),
                    pool: pool.name(),
                    rate_limit: None,
                })
                .collect(),
            admission: None,
            tls: None,
            sni_route: Vec::new(),
            access_log: false,
        }
    }
}

/// What one step does to the state machine.
#[derive(Debug, Clone)]
pub enum Entry {
    Command(u64, Command),
    Membership(BTreeSet<NodeId>, BTreeMap<NodeId, LbNode>),
}

/// The log an input describes: at most [`MAX_STEPS`] entries at increasing indexes from 1.
pub fn log(data: &[u8]) -> Vec<Entry> {
    let mut u = Unstructured::new(data);
    let mut index = 0u64;
    let mut entries = Vec::new();
    while entries.len() < MAX_STEPS && !u.is_empty() {
        let Ok(step) = Step::arbitrary(&mut u) else { break };
        index += 1;
        let command = match step {
            Step::Config(c) => Command::ApplyConfig { config: c.config() },
            Step::Vote { node, pool, backend, healthy, observed_at_ms } => Command::HealthVote {
                node: node.id(),
                pool: pool.name(),
                backend: backend.key(),
                healthy,
                observed_at_ms,
            },
            Step::Drain { pool, backend, draining } => {
                Command::SetDrain { pool: pool.name(), backend: backend.key(), draining }
            }
            Step::Standby { pool, backend, active } => {
                Command::SetStandby { pool: pool.name(), backend: backend.key(), active }
            }
            Step::Retired { tag5 } => {
                if tag5 {
                    Command::Retired5
                } else {
                    Command::Retired4
                }
            }
            Step::Leader { term, leader, at_ms, action, why } => Command::Leader {
                term: u64::from(term),
                leader: leader.id(),
                at_ms,
                action: action.action(),
                why,
            },
            Step::Membership { voters, learners } => {
                let ids = |bits: u8| (0..8u64).filter(move |i| bits & (1 << i) != 0).map(|i| i + 1);
                let nodes = ids(voters | learners)
                    .map(|id| (id, LbNode { addr: format!("127.0.0.{id}:7400"), http_addr: String::new() }))
                    .collect();
                entries.push(Entry::Membership(ids(voters).collect(), nodes));
                continue;
            }
            Step::Gap(n) => {
                index += u64::from(n);
                continue;
            }
        };
        entries.push(Entry::Command(index, through_the_log(&command)));
    }
    entries
}

/// A command as every node applies it: decoded from the postcard bytes the log stores. Whatever a
/// node can propose must come back out of the log.
fn through_the_log(command: &Command) -> Command {
    let bytes = postcard::to_allocvec(command).expect("a command encodes with postcard");
    postcard::from_bytes(&bytes).unwrap_or_else(|e| panic!("{command:?} does not decode from the log: {e}"))
}

/// Run the log an input describes and check every step; see the module doc.
pub fn check(data: &[u8]) {
    let log = log(data);
    let (results, bytes) = run(&log, true);
    let state: ClusterState = postcard::from_bytes(&bytes).expect("the final state decodes");
    survives_a_snapshot(&state);
    let (again, again_bytes) = run(&log, false);
    assert_eq!(results, again, "the same log gave other results on replay");
    assert!(bytes == again_bytes, "the same log gave other state bytes on replay");
}

/// Apply `log` to a fresh state; with `checked`, check every step. The results and the final bytes.
pub fn run(log: &[Entry], checked: bool) -> (Vec<CommandResult>, Vec<u8>) {
    let mut state = ClusterState::default();
    let mut results = Vec::with_capacity(log.len());
    for entry in log {
        let before = checked.then(|| state.clone());
        let result = match entry {
            Entry::Command(index, cmd) => state.apply(cmd, *index),
            Entry::Membership(voters, nodes) => {
                state.apply_membership(voters.clone(), nodes.clone());
                CommandResult::Ok
            }
        };
        if let Some(before) = before {
            check_step(&before, entry, &result, &state);
        }
        results.push(result);
    }
    let bytes = postcard::to_allocvec(&state).expect("a state encodes with postcard");
    (results, bytes)
}

/// The properties of one step, from the state before it to the state after it.
fn check_step(before: &ClusterState, entry: &Entry, result: &CommandResult, after: &ClusterState) {
    if let Err(e) = after.check_invariants() {
        panic!("after {entry:?}: {e}");
    }
    match result {
        CommandResult::Rejected { errors } => {
            assert!(!errors.is_empty(), "a refusal names its reason");
            assert_eq!(before, after, "a refused {entry:?} changed the state");
        }
        CommandResult::ConfigApplied { version } => {
            let Entry::Command(_, Command::ApplyConfig { config }) = entry else {
                panic!("{entry:?} answered ConfigApplied")
            };
            assert_eq!(*version, before.config_version + 1);
            assert_eq!(after.config_version, *version);
            assert_eq!(after.config.as_ref(), Some(config), "a committed config is in force as committed");
        }
        CommandResult::Ok => {
            assert!(
                !matches!(entry, Entry::Command(_, Command::ApplyConfig { .. })),
                "ApplyConfig answered Ok"
            );
        }
    }
    match entry {
        Entry::Command(_, Command::ApplyConfig { .. }) => {
            assert!(matches!(result, CommandResult::ConfigApplied { .. }), "every committed config applies")
        }
        Entry::Command(_, Command::Retired4 | Command::Retired5) => {
            assert!(matches!(result, CommandResult::Rejected { .. }), "retired commands are refused")
        }
        Entry::Command(_, Command::Leader { term, .. }) if *term < before.leader_term => {
            assert!(matches!(result, CommandResult::Rejected { .. }), "a deposed leader's decision applied")
        }
        _ => {}
    }
    assert!(after.leader_term >= before.leader_term, "the leader fence went back");
    // Backend state survives a config that keeps the backend (in a pool whose name is unique, see
    // `ClusterState::check_invariants`).
    if let Entry::Command(_, Command::ApplyConfig { config }) = entry {
        for (pool, states) in &after.backends {
            if config.pool.iter().filter(|p| p.name == *pool).count() != 1 {
                continue;
            }
            for (key, st) in states {
                if let Some(prev) = before.backend(pool, key) {
                    assert_eq!(st.draining, prev.draining, "pool \"{pool}\" backend {key} lost its drain");
                }
            }
        }
    }
    // A config brings the only field types beyond numbers, strings and flags into the state.
    if let Entry::Command(_, Command::ApplyConfig { .. }) = entry {
        survives_a_snapshot(after);
    }
}

/// What snapshots carry (the state's postcard bytes) gives the same state back, and what every
/// surface shows of it builds.
fn survives_a_snapshot(state: &ClusterState) {
    let bytes = postcard::to_allocvec(state).expect("a state encodes with postcard");
    match postcard::from_bytes::<ClusterState>(&bytes) {
        Ok(back) => assert_eq!(&back, state, "the state changed through postcard"),
        Err(e) => panic!("the state does not decode from its own bytes: {e}"),
    }
    let _ = backend_views(state);
    for event in &state.events {
        let _ = EventView::from(event);
    }
}
