//! The replicated state and its deterministic `apply`.
//!
//! `ClusterState` is plain data in ordered maps, so the same log gives every node the same state,
//! byte for byte (its postcard encoding is what snapshots carry). `apply` never reads a clock, a random
//! number or anything outside its arguments.
//!
//! Fleet-wide health: each member node votes on *changes* of its own view of a backend. A backend is
//! down fleet-wide when at least a majority of the current voting members have a "down" vote on record;
//! votes of nodes that left the membership are dropped. No single node's partial view can eject a backend
//! for everyone. The quorum counts only *live* voters: a node the leader marked down (it stopped
//! answering) has its votes dropped until it is marked up again and votes anew. A pool may set its own
//! quorum (`health.quorum`, a number of down votes).
//!
//! Invariants (stable across releases; changing one is a change of the log format):
//! - `apply` reads nothing but the state, the command and the log index: no clock, no random number,
//!   no validation rule of the running binary. The same log gives the same state on every version.
//! - `ApplyConfig` always puts the config in force. What it may contain was decided once, when the
//!   proposing node validated it; the data plane treats anything it cannot build (a pool whose table it
//!   cannot make, a listener it cannot bind) as a local error of that pool or listener, not as a
//!   different replicated state.
//! - Backend runtime state (drain, standby activation, votes) is keyed by pool name and backend
//!   address and survives a config that keeps both; duplicate keys collapse into one state.
//! - A command naming a pool, backend or node that the state does not have is refused and changes
//!   nothing; the refusal is part of the replicated outcome.
//!
//! [`ClusterState::check_invariants`] checks what of this a state shows by itself (backend state
//! matches the config, health follows the live voters' votes, non-standby backends are active, the
//! event log is bounded); the `apply` fuzz target (`fuzz/`) runs it after every step.
//!
//! Leader decisions (`Command::Leader`) are fenced by term: once a decision of term T is applied, any
//! decision of an earlier term is refused, so a deposed leader cannot repeat or contradict its
//! successor. Accepted decisions and fleet-wide health changes go to a bounded event log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, LeaderAction};
use crate::config::{Backend, ClusterConfig};
use crate::NodeId;

/// The state every node holds, identical on every node at the same applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The config in force; `None` until the first one is applied.
    pub config: Option<ClusterConfig>,
    /// Incremented on every accepted config.
    pub config_version: u64,
    /// Runtime state of each backend, by pool name then backend key (its address).
    pub backends: BTreeMap<String, BTreeMap<String, BackendState>>,
    /// Voting members of the Raft group, as of the last membership entry applied.
    pub voters: BTreeSet<NodeId>,
    /// Every member (voter or learner) with its addresses.
    pub nodes: BTreeMap<NodeId, LbNode>,
    /// Members the leader marked down (stopped answering); their health votes do not count.
    pub down_nodes: BTreeSet<NodeId>,
    /// Highest term of an applied leader decision (fencing for `Command::Leader`).
    pub leader_term: u64,
    /// The most recent events, oldest first, at most [`MAX_EVENTS`].
    pub events: VecDeque<Event>,
}

/// The committed model as the rest of a node sees it: the state, shared, and the log index of the
/// entry that last changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub state: std::sync::Arc<ClusterState>,
}

/// How many events the replicated log keeps.
pub const MAX_EVENTS: usize = 1000;

/// One entry of the replicated event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Log index of the entry that produced it.
    pub index: u64,
    /// Milliseconds since the Unix epoch, as stamped by the proposer (0 when unknown).
    pub at_ms: u64,
    /// Leader that decided, if the event is a leader decision.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub what: String,
    pub why: String,
}

/// Runtime state of one backend, kept across config changes while the backend stays in its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    pub draining: bool,
    /// For standby backends: whether the autoscaler has activated it. Always true for others.
    pub active: bool,
    /// Latest vote of each member node.
    pub votes: BTreeMap<NodeId, HealthVote>,
    /// Fleet-wide health, derived from `votes` and the voter set.
    pub healthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthVote {
    pub healthy: bool,
    pub observed_at_ms: u64,
    /// Log index of the entry that recorded the vote.
    pub index: u64,
}

/// Where an lbnode can be reached: the node type of the Raft membership, and the address record of
/// every member in [`ClusterState::nodes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbNode {
    /// gRPC address (Raft and admin), `host:port`.
    pub addr: String,
    /// Admin HTTP address, `host:port`.
    pub http_addr: String,
}

impl fmt::Display for LbNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl BackendState {
    fn new(b: &Backend) -> Self {
        BackendState { draining: false, active: !b.standby, votes: BTreeMap::new(), healthy: true }
    }
}

impl ClusterState {
    /// Apply one command at log index `index`. Deterministic: depends only on `self`, `cmd` and `index`.
    pub fn apply(&mut self, cmd: &Command, index: u64) -> CommandResult {
        match cmd {
            Command::ApplyConfig { config } => self.apply_config(config),
            Command::HealthVote { node, pool, backend, healthy, observed_at_ms } => {
                if !self.voters.contains(node) && !self.nodes.contains_key(node) {
                    return rejected(format!("node {node} is not a member; its health vote is ignored"));
                }
                if self.down_nodes.contains(node) {
                    return rejected(format!("node {node} is marked down; its health vote is ignored"));
                }
                let live = self.live_voters();
                let quorum = self.health_quorum(pool);
                let changed = match self.backend_mut(pool, backend) {
                    Err(e) => return e,
                    Ok(st) => {
                        st.votes.insert(
                            *node,
                            HealthVote { healthy: *healthy, observed_at_ms: *observed_at_ms, index },
                        );
                        let was = st.healthy;
                        st.healthy = fleet_healthy(&st.votes, &live, quorum);
                        (was != st.healthy).then_some(st.healthy)
                    }
                };
                if let Some(now) = changed {
                    let what = format!(
                        "backend {backend} of pool \"{pool}\" is {}",
                        if now { "up" } else { "down" }
                    );
                    let why =
                        format!("health vote of node {node} ({})", if *healthy { "up" } else { "down" });
                    self.record(index, *observed_at_ms, None, 0, what, why);
                }
                CommandResult::Ok
            }
            Command::SetDrain { pool, backend, draining } => match self.backend_mut(pool, backend) {
                Err(e) => e,
                Ok(st) => {
                    st.draining = *draining;
                    CommandResult::Ok
                }
            },
            Command::SetStandby { pool, backend, active } => {
                let is_standby = self
                    .config
                    .as_ref()
                    .and_then(|c| c.pool(pool))
                    .and_then(|p| p.backend.iter().find(|b| b.key() == *backend))
                    .map(|b| b.standby);
                if is_standby == Some(false) {
                    return rejected(format!(
                        "pool \"{pool}\" backend \"{backend}\" is not a standby backend"
                    ));
                }
                match self.backend_mut(pool, backend) {
                    Err(e) => e,
                    Ok(st) => {
                        st.active = *active;
                        CommandResult::Ok
                    }
                }
            }
            Command::Retired4 | Command::Retired5 => {
                rejected(format!("command {} is retired and changes nothing", cmd.kind()))
            }
            Command::Leader { term, leader, at_ms, action, why } => {
                if *term < self.leader_term {
                    return rejected(format!(
                        "decision of leader {leader} in term {term} refused: a leader of term {} has decided since",
                        self.leader_term
                    ));
                }
                let what = match self.apply_leader_action(action) {
                    Ok(what) => what,
                    Err(e) => return e,
                };
                self.leader_term = *term;
                self.record(index, *at_ms, Some(*leader), *term, what, why.clone());
                CommandResult::Ok
            }
        }
    }

    fn apply_leader_action(&mut self, action: &LeaderAction) -> Result<String, CommandResult> {
        match action {
            LeaderAction::SetStandby { pool, backend, active } => {
                let cmd =
                    Command::SetStandby { pool: pool.clone(), backend: backend.clone(), active: *active };
                match self.apply(&cmd, 0) {
                    CommandResult::Ok => Ok(format!(
                        "{} standby backend {backend} of pool \"{pool}\"",
                        if *active { "activated" } else { "deactivated" }
                    )),
                    other => Err(other),
                }
            }
            LeaderAction::SetNodeDown { id, down } => {
                if !self.nodes.contains_key(id) && !self.voters.contains(id) {
                    return Err(rejected(format!("node {id} is not a member")));
                }
                if *down {
                    self.down_nodes.insert(*id);
                } else {
                    self.down_nodes.remove(id);
                }
                self.drop_votes_of_non_members();
                Ok(format!("node {id} marked {}", if *down { "down" } else { "up" }))
            }
            LeaderAction::HookResult { pool, backend, command, exit_code, .. } => Ok(format!(
                "hook `{command}` for backend {backend} of pool \"{pool}\" exited with {}",
                exit_code.map_or("a signal".to_string(), |c| c.to_string())
            )),
            LeaderAction::HookMissing { pool, backend, hook } => Ok(format!(
                "hook `{hook}` for backend {backend} of pool \"{pool}\" did not run: the leader does not define it"
            )),
        }
    }

    fn record(
        &mut self,
        index: u64,
        at_ms: u64,
        leader: Option<NodeId>,
        term: u64,
        what: String,
        why: String,
    ) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event { index, at_ms, leader, term, what, why });
    }

    /// Voters not marked down: the electorate of health votes.
    pub fn live_voters(&self) -> BTreeSet<NodeId> {
        self.voters.difference(&self.down_nodes).copied().collect()
    }

    fn health_quorum(&self, pool: &str) -> Option<u32> {
        self.config.as_ref().and_then(|c| c.pool(pool)).and_then(|p| p.health.quorum)
    }

    /// Record a membership entry: `voters` vote on health, `nodes` are all members with addresses.
    pub fn apply_membership(&mut self, voters: BTreeSet<NodeId>, nodes: BTreeMap<NodeId, LbNode>) {
        self.voters = voters;
        self.nodes = nodes;
        // A node that left is no longer "down": it is gone.
        let members = &self.nodes;
        self.down_nodes.retain(|n| members.contains_key(n));
        self.drop_votes_of_non_members();
    }

    /// Drop the votes of nodes that are no longer live voters (left, or marked down) and recompute.
    fn drop_votes_of_non_members(&mut self) {
        let live = self.live_voters();
        let quorums: BTreeMap<String, Option<u32>> =
            self.backends.keys().map(|p| (p.clone(), self.health_quorum(p))).collect();
        for (pool, states) in self.backends.iter_mut() {
            let quorum = quorums.get(pool).copied().flatten();
            for st in states.values_mut() {
                st.votes.retain(|n, _| live.contains(n));
                st.healthy = fleet_healthy(&st.votes, &live, quorum);
            }
        }
    }

    /// Put a config in force. The config was validated once, at the edge, by the node that proposed it
    /// (`config::parse`); `apply` does not re-run the validation rules of the binary that replays the
    /// entry, because a later release may tighten a rule, and a committed entry must apply the same way
    /// on every version (see the module doc, "Invariants").
    fn apply_config(&mut self, config: &ClusterConfig) -> CommandResult {
        let mut backends = BTreeMap::new();
        for pool in &config.pool {
            let old = self.backends.remove(&pool.name).unwrap_or_default();
            let mut states = BTreeMap::new();
            for b in &pool.backend {
                let key = b.key();
                let st = match old.get(&key) {
                    Some(prev) => {
                        let mut st = prev.clone();
                        if !b.standby {
                            st.active = true;
                        }
                        st
                    }
                    None => BackendState::new(b),
                };
                states.insert(key, st);
            }
            backends.insert(pool.name.clone(), states);
        }
        self.backends = backends;
        self.config = Some(config.clone());
        self.config_version += 1;
        // A pool's quorum may have changed.
        self.drop_votes_of_non_members();
        CommandResult::ConfigApplied { version: self.config_version }
    }

    fn backend_mut(&mut self, pool: &str, backend: &str) -> Result<&mut BackendState, CommandResult> {
        let Some(p) = self.backends.get_mut(pool) else {
            return Err(rejected(format!("no pool named \"{pool}\"")));
        };
        p.get_mut(backend).ok_or_else(|| rejected(format!("pool \"{pool}\" has no backend \"{backend}\"")))
    }

    /// State of one backend, if the pool has it.
    pub fn backend(&self, pool: &str, backend: &str) -> Option<&BackendState> {
        self.backends.get(pool)?.get(backend)
    }

    /// Check the invariants a state reached by `apply` and `apply_membership` must hold, whatever the
    /// log: the first one broken, named. Pure and linear in the size of the state; the fuzz targets
    /// and tests call it after every step.
    ///
    /// Pools whose name appears more than once in the config (validation has always refused that, so
    /// no committed config has it) are applied deterministically but are exempt from the per-pool
    /// checks.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let broken = |invariant: &'static str, detail: String| Err(InvariantViolation { invariant, detail });
        if self.events.len() > MAX_EVENTS {
            return broken("bounded events", format!("{} events kept", self.events.len()));
        }
        let members = |n: &NodeId| self.voters.contains(n) || self.nodes.contains_key(n);
        if let Some(n) = self.down_nodes.iter().find(|n| !members(n)) {
            return broken("down nodes are members", format!("node {n} is down but not a member"));
        }
        let Some(config) = &self.config else {
            if self.config_version != 0 || !self.backends.is_empty() {
                return broken(
                    "no config, no backends",
                    format!("version {}, {} pools of state", self.config_version, self.backends.len()),
                );
            }
            return Ok(());
        };
        if self.config_version == 0 {
            return broken("a config in force has a version", "version 0".to_string());
        }
        let names: BTreeSet<&str> = config.pool.iter().map(|p| p.name.as_str()).collect();
        let state_names: BTreeSet<&str> = self.backends.keys().map(String::as_str).collect();
        if names != state_names {
            return broken(
                "backend state per pool of the config",
                format!("config pools {names:?}, state pools {state_names:?}"),
            );
        }
        let live = self.live_voters();
        for (pool, states) in &self.backends {
            let mut same_name = config.pool.iter().filter(|p| p.name == *pool);
            let (Some(p), None) = (same_name.next(), same_name.next()) else { continue };
            let keys: BTreeSet<String> = p.backend.iter().map(Backend::key).collect();
            let state_keys: BTreeSet<String> = states.keys().cloned().collect();
            if keys != state_keys {
                return broken(
                    "backend state per backend of the pool",
                    format!("pool \"{pool}\": config backends {keys:?}, state backends {state_keys:?}"),
                );
            }
            for (key, st) in states {
                let standby = p.backend.iter().any(|b| b.key() == *key && b.standby);
                if !standby && !st.active {
                    return broken(
                        "non-standby backends are active",
                        format!("pool \"{pool}\" backend {key} is inactive"),
                    );
                }
                if let Some(n) = st.votes.keys().find(|n| !members(n) || self.down_nodes.contains(n)) {
                    return broken(
                        "only live members' votes are kept",
                        format!("pool \"{pool}\" backend {key} keeps a vote of node {n}"),
                    );
                }
                if st.healthy != fleet_healthy(&st.votes, &live, p.health.quorum) {
                    return broken(
                        "health follows the votes",
                        format!(
                            "pool \"{pool}\" backend {key}: healthy = {} disagrees with its votes",
                            st.healthy
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// An invariant of [`ClusterState`] that does not hold (see [`ClusterState::check_invariants`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant \"{invariant}\" broken: {detail}")]
pub struct InvariantViolation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Down when the "down" votes of live voters reach the quorum: `quorum` if the pool sets one, else a
/// majority of the live voters. With no live voter, nothing can be voted down.
pub fn fleet_healthy(
    votes: &BTreeMap<NodeId, HealthVote>,
    live: &BTreeSet<NodeId>,
    quorum: Option<u32>,
) -> bool {
    if live.is_empty() {
        return true;
    }
    let down = votes.iter().filter(|(n, v)| live.contains(n) && !v.healthy).count();
    let need = quorum.map_or(live.len() / 2 + 1, |q| q.max(1) as usize);
    down < need
}

fn rejected(msg: String) -> CommandResult {
    CommandResult::Rejected { errors: vec![msg] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};

    fn config(backends: &[&str]) -> ClusterConfig {
        let mut t = String::from("[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n");
        for b in backends {
            t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
        }
        t += "[[pool.backend]]\naddr = \"127.0.0.1:9100\"\nstandby = true\n";
        parse(&t, Format::Toml).unwrap()
    }

    fn three_voters() -> ClusterState {
        let mut s = ClusterState::default();
        let nodes = (1..=3).map(|i| (i, LbNode::default())).collect();
        s.apply_membership([1, 2, 3].into(), nodes);
        s
    }

    fn vote(node: NodeId, healthy: bool) -> Command {
        Command::HealthVote {
            node,
            pool: "web".into(),
            backend: "127.0.0.1:9001".into(),
            healthy,
            observed_at_ms: 0,
        }
    }

    #[test]
    fn config_versions_count_up() {
        let mut s = three_voters();
        let c = config(&["127.0.0.1:9001"]);
        assert_eq!(
            s.apply(&Command::ApplyConfig { config: c.clone() }, 1),
            CommandResult::ConfigApplied { version: 1 }
        );
        assert_eq!(
            s.apply(&Command::ApplyConfig { config: c.clone() }, 2),
            CommandResult::ConfigApplied { version: 2 }
        );
        assert_eq!(s.config.as_ref(), Some(&c));
    }

    /// A committed entry applies the same way whatever validation rules the replaying binary has: here
    /// a config that today's rules refuse at the edge (a table size that is not prime) was committed
    /// under an older rule set that allowed it, and it still applies, with the same result on every
    /// replay.
    #[test]
    fn an_entry_committed_under_other_rules_applies_identically() {
        let mut strict = config(&["127.0.0.1:9001"]);
        strict.pool[0].table_size = 65536;
        assert!(
            parse(&strict.to_toml(), Format::Toml).is_err(),
            "the current rules refuse this config at the edge"
        );
        let log = [Command::ApplyConfig { config: strict.clone() }, vote(1, false), vote(2, false)];
        let replay = || {
            let mut s = three_voters();
            let results: Vec<CommandResult> =
                log.iter().enumerate().map(|(i, c)| s.apply(c, i as u64 + 1)).collect();
            (results, postcard::to_allocvec(&s).unwrap(), s)
        };
        let (results, bytes, s) = replay();
        assert_eq!(results[0], CommandResult::ConfigApplied { version: 1 });
        assert_eq!(s.config.as_ref(), Some(&strict));
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        assert_eq!(replay().1, bytes);
    }

    /// The postcard tag of each command is part of the stored log: variants keep their position, and
    /// the retired tags 4 and 5 stay reserved so that `Leader` keeps tag 6.
    #[test]
    fn command_tags_are_stable() {
        let tag = |c: &Command| postcard::to_allocvec(c).unwrap()[0];
        assert_eq!(tag(&Command::ApplyConfig { config: ClusterConfig::default() }), 0);
        assert_eq!(tag(&vote(1, true)), 1);
        assert_eq!(tag(&Command::SetDrain { pool: "p".into(), backend: "b".into(), draining: true }), 2);
        assert_eq!(tag(&Command::SetStandby { pool: "p".into(), backend: "b".into(), active: true }), 3);
        assert_eq!(tag(&Command::Retired4), 4);
        assert_eq!(tag(&Command::Retired5), 5);
        assert_eq!(tag(&leader(1, LeaderAction::SetNodeDown { id: 1, down: true })), 6);
        let mut s = three_voters();
        assert!(matches!(s.apply(&Command::Retired4, 1), CommandResult::Rejected { .. }));
        assert_eq!(s, three_voters());
    }

    #[test]
    fn one_node_alone_cannot_eject_a_backend() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001"]) }, 1);
        s.apply(&vote(1, false), 2);
        assert!(s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        s.apply(&vote(2, false), 3);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        s.apply(&vote(1, true), 4);
        assert!(s.backend("web", "127.0.0.1:9001").unwrap().healthy);
    }

    #[test]
    fn votes_of_departed_nodes_stop_counting() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001"]) }, 1);
        s.apply(&vote(1, false), 2);
        s.apply(&vote(2, false), 3);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        let nodes = [1, 3].into_iter().map(|i| (i, LbNode::default())).collect();
        s.apply_membership([1, 3].into(), nodes);
        // One of two voters says down: not a majority of two.
        assert!(s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        assert!(matches!(s.apply(&vote(2, false), 4), CommandResult::Rejected { .. }));
    }

    #[test]
    fn backend_state_survives_a_config_change_that_keeps_the_backend() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001", "127.0.0.1:9002"]) }, 1);
        let drain =
            Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9002".into(), draining: true };
        assert_eq!(s.apply(&drain, 2), CommandResult::Ok);
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9002", "127.0.0.1:9003"]) }, 3);
        assert!(s.backend("web", "127.0.0.1:9002").unwrap().draining);
        assert!(s.backend("web", "127.0.0.1:9001").is_none());
        assert!(!s.backend("web", "127.0.0.1:9003").unwrap().draining);
    }

    #[test]
    fn standby_backends_start_inactive_and_only_they_can_be_toggled() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001"]) }, 1);
        assert!(!s.backend("web", "127.0.0.1:9100").unwrap().active);
        let on = Command::SetStandby { pool: "web".into(), backend: "127.0.0.1:9100".into(), active: true };
        assert_eq!(s.apply(&on, 2), CommandResult::Ok);
        assert!(s.backend("web", "127.0.0.1:9100").unwrap().active);
        let bad = Command::SetStandby { pool: "web".into(), backend: "127.0.0.1:9001".into(), active: false };
        assert!(matches!(s.apply(&bad, 3), CommandResult::Rejected { .. }));
    }

    #[test]
    fn unknown_targets_are_rejected_with_names() {
        let mut s = three_voters();
        let r = s.apply(&Command::SetDrain { pool: "api".into(), backend: "x".into(), draining: true }, 1);
        assert_eq!(r, CommandResult::Rejected { errors: vec!["no pool named \"api\"".into()] });
    }

    fn leader(term: u64, action: LeaderAction) -> Command {
        Command::Leader { term, leader: 1, at_ms: 1000, action, why: "test".into() }
    }

    #[test]
    fn votes_of_a_node_marked_down_expire_and_count_again_after_it_returns() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001"]) }, 1);
        s.apply(&vote(1, false), 2);
        s.apply(&vote(2, false), 3);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        // Node 2 stops answering: its vote is dropped; 1 of 2 live voters is not a majority.
        assert_eq!(
            s.apply(&leader(2, LeaderAction::SetNodeDown { id: 2, down: true }), 4),
            CommandResult::Ok
        );
        assert!(s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        assert!(matches!(s.apply(&vote(2, false), 5), CommandResult::Rejected { .. }));
        s.apply(&leader(2, LeaderAction::SetNodeDown { id: 2, down: false }), 6);
        s.apply(&vote(2, false), 7);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        let whats: Vec<&str> = s.events.iter().map(|e| e.what.as_str()).collect();
        assert!(whats.contains(&"node 2 marked down"), "{whats:?}");
        assert!(whats.contains(&"backend 127.0.0.1:9001 of pool \"web\" is down"), "{whats:?}");
    }

    #[test]
    fn a_node_that_leaves_while_marked_down_is_forgotten() {
        let mut s = three_voters();
        s.apply(&leader(1, LeaderAction::SetNodeDown { id: 3, down: true }), 1);
        assert!(s.down_nodes.contains(&3));
        let nodes = [1, 2].into_iter().map(|i| (i, LbNode::default())).collect();
        s.apply_membership([1, 2].into(), nodes);
        assert!(s.down_nodes.is_empty());
    }

    #[test]
    fn a_pool_quorum_overrides_the_majority() {
        let mut s = three_voters();
        let mut c = config(&["127.0.0.1:9001"]);
        c.pool[0].health.quorum = Some(3);
        s.apply(&Command::ApplyConfig { config: c }, 1);
        s.apply(&vote(1, false), 2);
        s.apply(&vote(2, false), 3);
        assert!(s.backend("web", "127.0.0.1:9001").unwrap().healthy, "2 of 3 is below a quorum of 3");
        s.apply(&vote(3, false), 4);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
    }

    #[test]
    fn a_deposed_leader_cannot_decide_after_its_successor() {
        let mut s = three_voters();
        s.apply(&Command::ApplyConfig { config: config(&["127.0.0.1:9001"]) }, 1);
        let on = |term| {
            leader(
                term,
                LeaderAction::SetStandby {
                    pool: "web".into(),
                    backend: "127.0.0.1:9100".into(),
                    active: true,
                },
            )
        };
        assert_eq!(s.apply(&on(5), 2), CommandResult::Ok);
        assert!(matches!(s.apply(&on(4), 3), CommandResult::Rejected { .. }));
        assert_eq!(s.apply(&on(5), 4), CommandResult::Ok, "the same term may decide again");
        assert_eq!(s.events.iter().filter(|e| e.leader == Some(1)).count(), 2);
    }

    #[test]
    fn leader_action_tags_are_stable_and_a_missing_hook_is_recorded() {
        let tag = |a: &LeaderAction| postcard::to_allocvec(a).unwrap()[0];
        let (pool, backend) = ("web".to_string(), "127.0.0.1:9100".to_string());
        assert_eq!(
            tag(&LeaderAction::SetStandby { pool: pool.clone(), backend: backend.clone(), active: true }),
            0
        );
        assert_eq!(tag(&LeaderAction::SetNodeDown { id: 1, down: true }), 1);
        let ran = LeaderAction::HookResult {
            pool: pool.clone(),
            backend: backend.clone(),
            command: "add-web".into(),
            exit_code: Some(0),
            output: String::new(),
        };
        assert_eq!(tag(&ran), 2);
        let missing = LeaderAction::HookMissing { pool, backend, hook: "add-web".into() };
        assert_eq!(tag(&missing), 3);
        let mut s = three_voters();
        assert_eq!(s.apply(&leader(2, missing), 1), CommandResult::Ok);
        assert_eq!(
            s.events.back().map(|e| e.what.as_str()),
            Some("hook `add-web` for backend 127.0.0.1:9100 of pool \"web\" did not run: the leader does not define it")
        );
    }

    #[test]
    fn the_event_log_is_bounded() {
        let mut s = three_voters();
        for i in 0..(MAX_EVENTS as u64 + 10) {
            s.apply(&leader(1, LeaderAction::SetNodeDown { id: 3, down: i % 2 == 0 }), i + 1);
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.events.back().unwrap().index, MAX_EVENTS as u64 + 10);
    }

    #[test]
    fn the_invariants_hold_along_a_log_and_a_broken_state_is_named() {
        let mut s = three_voters();
        let log = [
            Command::ApplyConfig { config: config(&["127.0.0.1:9001", "127.0.0.1:9002"]) },
            vote(1, false),
            vote(2, false),
            leader(1, LeaderAction::SetNodeDown { id: 2, down: true }),
            Command::SetStandby { pool: "web".into(), backend: "127.0.0.1:9100".into(), active: true },
            Command::ApplyConfig { config: config(&["127.0.0.1:9002"]) },
        ];
        for (i, c) in log.iter().enumerate() {
            s.apply(c, i as u64 + 1);
            assert_eq!(s.check_invariants(), Ok(()), "after {c:?}");
        }
        let mut broken = s.clone();
        broken.backends.get_mut("web").unwrap().get_mut("127.0.0.1:9002").unwrap().healthy = false;
        assert_eq!(broken.check_invariants().unwrap_err().invariant, "health follows the votes");
        let mut broken = s.clone();
        broken.backends.get_mut("web").unwrap().remove("127.0.0.1:9002");
        assert_eq!(broken.check_invariants().unwrap_err().invariant, "backend state per backend of the pool");
        let mut broken = s;
        broken.down_nodes.insert(9);
        assert_eq!(broken.check_invariants().unwrap_err().invariant, "down nodes are members");
    }

    #[test]
    fn same_log_same_bytes() {
        let log = [
            Command::ApplyConfig { config: config(&["127.0.0.1:9001", "127.0.0.1:9002"]) },
            vote(1, false),
            vote(3, false),
            Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9002".into(), draining: true },
        ];
        let run = || {
            let mut s = three_voters();
            for (i, c) in log.iter().enumerate() {
                s.apply(c, i as u64 + 1);
            }
            postcard::to_allocvec(&s).unwrap()
        };
        assert_eq!(run(), run());
    }
}
