//! The routing snapshot: what every proxy reads for every new connection, request or flow.
//!
//! A [`Routing`] is immutable and built from the committed [`ClusterState`] after each applied change;
//! the data plane swaps it atomically ([`SharedRouting`]) and never waits for Raft. Pools whose eligible
//! backend set did not change keep their `Arc<PoolSelector>` (the Maglev table is not rebuilt), so a
//! health vote on one pool costs the others nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use lbfleet_api::config::{Listener, Pool};
use lbfleet_api::state::ClusterState;

use super::hash::Digest;
use super::PoolSelector;

/// The routing snapshot the proxies share; replaced as a whole on every applied change.
pub type SharedRouting = Arc<ArcSwap<Routing>>;

/// One immutable view of pools, their selectors and the listeners, at one applied index.
#[derive(Debug, Default)]
pub struct Routing {
    applied_index: u64,
    config_version: u64,
    pools: HashMap<String, Arc<PoolSelector>>,
    pool_configs: HashMap<String, Arc<Pool>>,
    /// Each configured pool's name, shared: the `pool` label of the request counters.
    pool_labels: HashMap<String, Arc<str>>,
    listeners: BTreeMap<String, Arc<Listener>>,
    /// Pools whose selector could not be built, with the reason (not expected for a validated config).
    errors: BTreeMap<String, String>,
    digest: String,
    /// Live nodes of the committed membership (see [`live_nodes`]): what a fleet-wide rate limit is
    /// divided by.
    live_nodes: u32,
}

impl Routing {
    /// No pools, no listeners.
    pub fn empty() -> Routing {
        let mut r = Routing::default();
        r.digest = r.compute_digest();
        r
    }

    /// A new snapshot for `state` at `applied_index`. Pools whose eligible set is unchanged since `prev`
    /// keep their selector (and its Maglev table); listeners equal to `prev`'s keep their `Arc`.
    pub fn build(state: &ClusterState, applied_index: u64, prev: &Routing) -> Routing {
        let mut next = Routing {
            applied_index,
            config_version: state.config_version,
            live_nodes: live_nodes(state),
            ..Routing::default()
        };
        if let Some(config) = &state.config {
            for pool in &config.pool {
                let states = state.backends.get(&pool.name);
                let built = match prev.pools.get(&pool.name) {
                    Some(old) => old.refresh(pool, states).map(|r| match r {
                        Some(new) => Arc::new(new),
                        None => Arc::clone(old),
                    }),
                    None => PoolSelector::build(pool, states, None).map(Arc::new),
                };
                match built {
                    Ok(sel) => {
                        next.pools.insert(pool.name.clone(), sel);
                    }
                    Err(e) => {
                        tracing::error!(pool = %pool.name, "cannot build the pool's selector: {e}");
                        next.errors.insert(pool.name.clone(), e.to_string());
                    }
                }
                let pc = match prev.pool_configs.get(&pool.name) {
                    Some(old) if **old == *pool => Arc::clone(old),
                    _ => Arc::new(pool.clone()),
                };
                next.pool_configs.insert(pool.name.clone(), pc);
                let label =
                    prev.pool_labels.get(&pool.name).cloned().unwrap_or_else(|| Arc::from(&*pool.name));
                next.pool_labels.insert(pool.name.clone(), label);
            }
            for l in &config.listener {
                let arc = match prev.listeners.get(&l.name) {
                    Some(old) if **old == *l => Arc::clone(old),
                    _ => Arc::new(l.clone()),
                };
                next.listeners.insert(l.name.clone(), arc);
            }
        }
        next.digest = next.compute_digest();
        next
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<PoolSelector>> {
        self.pools.get(name)
    }

    pub fn pool_config(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pool_configs.get(name)
    }

    /// `name`, shared, for a label: the snapshot's copy when `name` is a configured pool (no allocation).
    pub fn pool_label(&self, name: &str) -> Arc<str> {
        self.pool_labels.get(name).cloned().unwrap_or_else(|| Arc::from(name))
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// Every listener, by name.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.listeners.values()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Live nodes of the committed membership, at least 1 (see [`live_nodes`]).
    pub fn live_nodes(&self) -> u32 {
        self.live_nodes.max(1)
    }

    pub fn config_version(&self) -> u64 {
        self.config_version
    }

    /// Digest of each pool's table (Maglev / ring) or eligible set, by pool name.
    pub fn pool_digests(&self) -> BTreeMap<&str, &str> {
        self.pools.iter().map(|(n, p)| (n.as_str(), p.digest())).collect()
    }

    /// Pools whose selector could not be built, with the reason.
    pub fn errors(&self) -> &BTreeMap<String, String> {
        &self.errors
    }

    /// One digest over every pool's digest: equal on two nodes exactly when they route every key of
    /// every hash pool to the same backends (and hold the same eligible sets for the others).
    pub fn ring_digest(&self) -> &str {
        &self.digest
    }

    fn compute_digest(&self) -> String {
        let mut d = Digest::new("routing-v1");
        let digests = self.pool_digests();
        d.u64(digests.len() as u64);
        for (name, digest) in digests {
            d.bytes(name.as_bytes());
            d.bytes(digest.as_bytes());
        }
        d.finish()
    }
}

/// The members of the committed membership (voters and learners) that the leader has not marked
/// down, at least 1: every one of them runs the data plane, so a fleet-wide rate limit is shared
/// among them ([`super::rate::share`]).
pub fn live_nodes(state: &ClusterState) -> u32 {
    let live = state
        .voters
        .iter()
        .chain(state.nodes.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|n| !state.down_nodes.contains(n))
        .count();
    u32::try_from(live).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};

    fn state(backends: &[&str], extra_pool: bool) -> ClusterState {
        let mut t = String::from("[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n");
        for b in backends {
            t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
        }
        if extra_pool {
            t += "[[pool]]\nname = \"api\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"127.0.0.1:7001\"\n";
        }
        t += "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 8080\npool = \"web\"\n";
        let mut s = ClusterState::default();
        let nodes = (1..=3).map(|i| (i, Default::default())).collect();
        s.apply_membership([1, 2, 3].into(), nodes);
        s.apply(&Command::ApplyConfig { config: parse(&t, Format::Toml).unwrap() }, 1);
        s
    }

    #[test]
    fn empty_state_routes_nothing() {
        let r = Routing::build(&ClusterState::default(), 0, &Routing::empty());
        assert!(r.pool("web").is_none());
        assert_eq!(r.listeners().count(), 0);
        assert_eq!(r.ring_digest(), Routing::empty().ring_digest());
    }

    #[test]
    fn unchanged_pools_keep_their_selector_and_a_change_rebuilds_only_that_pool() {
        let s1 = state(&["127.0.0.1:9001", "127.0.0.1:9002"], true);
        let r1 = Routing::build(&s1, 1, &Routing::empty());
        let r2 = Routing::build(&s1, 2, &r1);
        assert!(Arc::ptr_eq(r1.pool("web").unwrap(), r2.pool("web").unwrap()));
        assert!(Arc::ptr_eq(r1.listener("web").unwrap(), r2.listener("web").unwrap()));
        assert_eq!(r1.ring_digest(), r2.ring_digest());

        // Drain one web backend: web is rebuilt, api is not.
        let mut s2 = s1.clone();
        s2.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9002".into(), draining: true },
            3,
        );
        let r3 = Routing::build(&s2, 3, &r2);
        assert!(!Arc::ptr_eq(r2.pool("web").unwrap(), r3.pool("web").unwrap()));
        assert!(Arc::ptr_eq(r2.pool("api").unwrap(), r3.pool("api").unwrap()));
        assert_eq!(r3.pool("web").unwrap().len(), 1);
        assert_ne!(r2.ring_digest(), r3.ring_digest());
    }

    #[test]
    fn live_nodes_are_the_members_not_marked_down() {
        use lbfleet_api::command::LeaderAction;
        let mut s = state(&["127.0.0.1:9001"], false);
        assert_eq!(live_nodes(&s), 3);
        assert_eq!(Routing::build(&s, 1, &Routing::empty()).live_nodes(), 3);
        let down = |id, down| Command::Leader {
            term: 1,
            leader: 1,
            at_ms: 0,
            action: LeaderAction::SetNodeDown { id, down },
            why: String::new(),
        };
        s.apply(&down(3, true), 2);
        assert_eq!(Routing::build(&s, 2, &Routing::empty()).live_nodes(), 2);
        s.apply(&down(3, false), 3);
        assert_eq!(live_nodes(&s), 3);
        // A learner serves traffic too; a node that left does not.
        let nodes = (1..=4).map(|i| (i, Default::default())).collect();
        s.apply_membership([1, 2].into(), nodes);
        assert_eq!(live_nodes(&s), 4);
        // Never 0, even before any membership is known.
        assert_eq!(live_nodes(&ClusterState::default()), 1);
        assert_eq!(Routing::empty().live_nodes(), 1);
    }

    #[test]
    fn two_nodes_building_from_the_same_state_agree() {
        let s = state(&["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"], true);
        let a = Routing::build(&s, 7, &Routing::empty());
        // The other node got there through an intermediate state.
        let mid = Routing::build(&state(&["127.0.0.1:9001"], false), 5, &Routing::empty());
        let b = Routing::build(&s, 7, &mid);
        assert_eq!(a.ring_digest(), b.ring_digest());
        assert_eq!(a.pool_digests(), b.pool_digests());
    }
}
