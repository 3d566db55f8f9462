//! The replicated state and its deterministic `apply`.
//!
//! `ClusterState` is plain data in ordered maps, so the same log gives every node the same state,
//! byte for byte (its postcard encoding is what snapshots carry). `apply` never reads a clock, a random
//! number or anything outside its arguments.
//!
//! Fleet-wide health: each member node votes on *changes* of its own view of a backend. A backend is
//! down fleet-wide when at least a majority of the current voting members have a "down" vote on record;
//! votes of nodes that left the membership are dropped. No single node's partial view can eject a backend
//! for everyone.

use std::collections::{BTreeMap, BTreeSet};

use lbfleet_api::command::{Command, CommandResult};
use lbfleet_api::config::{Backend, ClusterConfig};
use lbfleet_api::NodeId;
use serde::{Deserialize, Serialize};

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
    pub nodes: BTreeMap<NodeId, NodeRecord>,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub addr: String,
    pub http_addr: String,
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
                let voters = self.voters.clone();
                match self.backend_mut(pool, backend) {
                    Err(e) => e,
                    Ok(st) => {
                        st.votes.insert(
                            *node,
                            HealthVote { healthy: *healthy, observed_at_ms: *observed_at_ms, index },
                        );
                        st.healthy = fleet_healthy(&st.votes, &voters);
                        CommandResult::Ok
                    }
                }
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
            Command::NodeJoined { id, addr, http_addr } => {
                self.nodes.insert(*id, NodeRecord { addr: addr.clone(), http_addr: http_addr.clone() });
                CommandResult::Ok
            }
            Command::NodeLeft { id } => {
                self.nodes.remove(id);
                self.voters.remove(id);
                self.drop_votes_of_non_members();
                CommandResult::Ok
            }
        }
    }

    /// Record a membership entry: `voters` vote on health, `nodes` are all members with addresses.
    pub fn apply_membership(&mut self, voters: BTreeSet<NodeId>, nodes: BTreeMap<NodeId, NodeRecord>) {
        self.voters = voters;
        self.nodes = nodes;
        self.drop_votes_of_non_members();
    }

    fn drop_votes_of_non_members(&mut self) {
        let voters = self.voters.clone();
        for pool in self.backends.values_mut() {
            for st in pool.values_mut() {
                st.votes.retain(|n, _| voters.contains(n));
                st.healthy = fleet_healthy(&st.votes, &voters);
            }
        }
    }

    fn apply_config(&mut self, config: &ClusterConfig) -> CommandResult {
        if let Err(errs) = config.validate() {
            return CommandResult::Rejected { errors: errs.messages() };
        }
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
}

/// Down when at least a majority of the voters have a "down" vote on record.
pub fn fleet_healthy(votes: &BTreeMap<NodeId, HealthVote>, voters: &BTreeSet<NodeId>) -> bool {
    if voters.is_empty() {
        return true;
    }
    let down = votes.iter().filter(|(n, v)| voters.contains(n) && !v.healthy).count();
    down < voters.len() / 2 + 1
}

fn rejected(msg: String) -> CommandResult {
    CommandResult::Rejected { errors: vec![msg] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::config::{parse, Format};

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
        let nodes = (1..=3).map(|i| (i, NodeRecord::default())).collect();
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
    fn config_versions_count_up_and_rejection_keeps_the_old_config() {
        let mut s = three_voters();
        let c = config(&["127.0.0.1:9001"]);
        assert_eq!(
            s.apply(&Command::ApplyConfig { config: c.clone() }, 1),
            CommandResult::ConfigApplied { version: 1 }
        );
        let mut bad = c.clone();
        bad.pool[0].table_size = 65536;
        let r = s.apply(&Command::ApplyConfig { config: bad }, 2);
        assert!(
            matches!(r, CommandResult::Rejected { ref errors } if errors[0].contains("not prime")),
            "{r:?}"
        );
        assert_eq!(s.config.as_ref(), Some(&c));
        assert_eq!(s.config_version, 1);
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
        let nodes = [1, 3].into_iter().map(|i| (i, NodeRecord::default())).collect();
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
