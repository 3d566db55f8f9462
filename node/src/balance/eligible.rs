//! Which backends of a pool are eligible, computed from the committed state alike on every node.
//!
//! Eligibility (the same on every node, since it reads only committed state):
//! - a backend *serves* when it is healthy fleet-wide, not draining, and active (a standby backend only
//!   once activated);
//! - `backup = true` backends serve only while no primary serves (HAProxy's `backup`; every serving
//!   backup is used then, like HAProxy's `option allbackups`).
//!
//! Node-local passive ejection (a backend this node just failed to reach) is *not* part of the eligible
//! set: a proxy skips such backends at pick time ([`super::PoolSelector::pick_usable`]), which moves
//! only the keys of the skipped backend, and only on this node, while every other key keeps its backend.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lbfleet_api::config::{Backend, Policy, Pool};
use lbfleet_api::state::{BackendState, ClusterState};

use super::hash;

/// Whether `backend` may take new requests according to its committed runtime state: healthy fleet-wide,
/// not draining, and active. With no state on record (not expected once a config is applied), a backend
/// counts as fresh: healthy, not draining, active unless it is a standby.
pub fn is_serving(backend: &Backend, state: Option<&BackendState>) -> bool {
    match state {
        Some(st) => st.healthy && !st.draining && st.active,
        None => !backend.standby,
    }
}

/// Which group of a pool's backends is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// At least one primary (non-backup) backend serves; only primaries are used.
    Primary,
    /// No primary serves; the serving backups are used.
    Backup,
    /// Nothing serves.
    Empty,
}

/// One backend of an [`EligibleSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibleBackend {
    pub addr: SocketAddr,
    /// `Backend::key()`: the address string.
    pub key: String,
    pub weight: u32,
}

/// Everything a pool's selector is built from: a pure function of the pool's config and its committed
/// backend states. Equal sets give equal selectors (and equal digests), so a caller compares the new set
/// with the current selector's and rebuilds only when they differ ([`PoolSelector::refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EligibleSet {
    pub policy: Policy,
    pub table_size: u64,
    pub tier: Tier,
    /// Sorted by key.
    pub backends: Vec<EligibleBackend>,
}

impl EligibleSet {
    /// The eligible set of `pool` given its backends' states (`ClusterState::backends[pool.name]`).
    pub fn compute(pool: &Pool, states: Option<&BTreeMap<String, BackendState>>) -> EligibleSet {
        let serving: Vec<(&Backend, String)> = pool
            .backend
            .iter()
            .map(|b| (b, b.key()))
            .filter(|(b, key)| is_serving(b, states.and_then(|s| s.get(key))))
            .collect();
        let primaries = serving.iter().filter(|(b, _)| !b.backup).count();
        let tier = if primaries > 0 {
            Tier::Primary
        } else if !serving.is_empty() {
            Tier::Backup
        } else {
            Tier::Empty
        };
        let mut backends: Vec<EligibleBackend> = serving
            .into_iter()
            .filter(|(b, _)| b.backup == (tier == Tier::Backup))
            .map(|(b, key)| EligibleBackend { addr: b.addr, key, weight: b.weight })
            .collect();
        backends.sort_by(|a, b| a.key.cmp(&b.key));
        EligibleSet { policy: pool.policy, table_size: pool.table_size, tier, backends }
    }

    /// The eligible set of `pool` in a committed [`ClusterState`].
    pub fn from_state(pool: &Pool, state: &ClusterState) -> EligibleSet {
        Self::compute(pool, state.backends.get(&pool.name))
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// 16 hex digits over the policy and the (key, weight) pairs.
    pub(crate) fn digest(&self) -> String {
        let mut d = hash::Digest::new("set-v1");
        d.bytes(self.policy.as_str().as_bytes());
        d.u64(self.backends.len() as u64);
        for b in &self.backends {
            d.bytes(b.key.as_bytes());
            d.u64(u64::from(b.weight));
        }
        d.finish()
    }
}
