//! [`PoolSelector`]: the immutable per-pool snapshot the proxies hold in an `Arc` and swap atomically
//! when the pool's eligible set changes, and [`Picks`], its ordered fallback sequence of backends.
//!
//! Data enters as a [`Pool`] of the committed config plus that pool's [`BackendState`]s from
//! `ClusterState::backends`; it leaves as an ordered fallback sequence of [`BackendHandle`]s per request.
//! Nothing here opens a socket, reads a clock or waits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use lbfleet_api::config::{Policy, Pool};
use lbfleet_api::state::{BackendState, ClusterState};

use super::eligible::{EligibleSet, Tier};
use super::policy::{BackendHandle, BuildError, BuildParams, PolicyPick, PolicySelector};

/// A pool whose selector cannot be built (not expected for a validated config).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool \"{pool}\": {source}")]
pub struct PoolError {
    pub pool: String,
    pub source: BuildError,
}

/// The immutable selection snapshot of one pool. Proxies hold it in an `Arc` (e.g. in an `ArcSwap`) and
/// replace it when [`PoolSelector::refresh`] returns a new one; picking needs only `&self`.
#[derive(Debug)]
pub struct PoolSelector {
    pool: String,
    set: EligibleSet,
    /// The eligible backends, sorted by key; picks index this list.
    backends: Vec<Arc<BackendHandle>>,
    /// In-flight counters of every configured backend of the pool (eligible or not), carried into the
    /// next build so that requests already open stay counted.
    counters: BTreeMap<String, Arc<AtomicU64>>,
    selector: PolicySelector,
    digest: String,
}

impl PoolSelector {
    /// Build the selector of `pool` from its committed backend states, reusing the in-flight counters of
    /// `previous` (the selector being replaced, if any).
    pub fn build(
        pool: &Pool,
        states: Option<&BTreeMap<String, BackendState>>,
        previous: Option<&PoolSelector>,
    ) -> Result<PoolSelector, PoolError> {
        Self::from_set(pool, EligibleSet::compute(pool, states), previous)
    }

    /// [`PoolSelector::build`] from a [`ClusterState`].
    pub fn from_state(
        pool: &Pool,
        state: &ClusterState,
        previous: Option<&PoolSelector>,
    ) -> Result<PoolSelector, PoolError> {
        Self::build(pool, state.backends.get(&pool.name), previous)
    }

    /// A new selector if the eligible set of `pool` differs from this one's, `None` if it is the same
    /// (then keep using `self`: the Maglev table is not rebuilt).
    pub fn refresh(
        &self,
        pool: &Pool,
        states: Option<&BTreeMap<String, BackendState>>,
    ) -> Result<Option<PoolSelector>, PoolError> {
        let set = EligibleSet::compute(pool, states);
        if set == self.set && pool.name == self.pool {
            return Ok(None);
        }
        Self::from_set(pool, set, Some(self)).map(Some)
    }

    /// Build from an already computed eligible set of `pool`.
    pub fn from_set(
        pool: &Pool,
        set: EligibleSet,
        previous: Option<&PoolSelector>,
    ) -> Result<PoolSelector, PoolError> {
        let mut counters = BTreeMap::new();
        for b in &pool.backend {
            let key = b.key();
            let c = previous
                .and_then(|p| p.counters.get(&key))
                .cloned()
                .unwrap_or_else(|| Arc::new(AtomicU64::new(0)));
            counters.insert(key, c);
        }
        let backends: Vec<Arc<BackendHandle>> = set
            .backends
            .iter()
            .map(|b| {
                let c = counters.entry(b.key.clone()).or_insert_with(|| Arc::new(AtomicU64::new(0)));
                Arc::new(BackendHandle::with_counter(b.addr, b.weight, Arc::clone(c)))
            })
            .collect();
        let params = BuildParams { table_size: set.table_size };
        let selector = PolicySelector::build(set.policy, &backends, &params)
            .map_err(|source| PoolError { pool: pool.name.clone(), source })?;
        let digest = selector.structure_digest().map(str::to_string).unwrap_or_else(|| set.digest());
        Ok(PoolSelector { pool: pool.name.clone(), set, backends, counters, selector, digest })
    }

    pub fn name(&self) -> &str {
        &self.pool
    }

    pub fn policy(&self) -> Policy {
        self.set.policy
    }

    /// Whether picks depend on the request key (hash policies); if not, callers may pass any key.
    pub fn uses_key(&self) -> bool {
        self.set.policy.is_hash()
    }

    pub fn eligible(&self) -> &EligibleSet {
        &self.set
    }

    pub fn tier(&self) -> Tier {
        self.set.tier
    }

    /// 16 hex digits, equal on every node that built from the same eligible set: the Maglev table digest
    /// for `maglev`, the ring digest for `ring_hash`, a digest of the eligible set otherwise.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The eligible backends, sorted by key.
    pub fn backends(&self) -> &[Arc<BackendHandle>] {
        &self.backends
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Position of an eligible backend by address (e.g. the target of a sticky cookie).
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.backends.iter().position(|b| b.addr() == addr)
    }

    pub fn selector(&self) -> &PolicySelector {
        &self.selector
    }

    /// In-flight count (requests and connections tracked with [`BackendHandle::track`]) of every
    /// configured backend of the pool, eligible or not (draining and inactive backends too), by key.
    /// The counts are read one by one, not as one atomic snapshot.
    pub fn in_flight(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.counters.iter().map(|(k, c)| (k.as_str(), c.load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Ordered fallback sequence for the request key `key`: each eligible backend once, the choice first.
    #[inline]
    pub fn pick(&self, key: u64) -> Picks<'_> {
        Picks { inner: self.selector.pick(key), backends: &self.backends }
    }

    /// [`PoolSelector::pick`] without the backends for which `usable` is false (e.g. ejected on this node
    /// after failures). Keys whose backend is usable keep it; the others move to their next fallback.
    /// When every backend is unusable the sequence is empty; a caller may then fall back to
    /// [`PoolSelector::pick`] rather than fail (as Envoy's panic threshold does).
    #[inline]
    pub fn pick_usable<F>(&self, key: u64, mut usable: F) -> impl Iterator<Item = &Arc<BackendHandle>>
    where
        F: FnMut(&BackendHandle) -> bool,
    {
        self.pick(key).filter(move |b| usable(b))
    }
}

/// Iterator of [`PoolSelector::pick`].
#[derive(Debug)]
pub struct Picks<'a> {
    inner: PolicyPick<'a>,
    backends: &'a [Arc<BackendHandle>],
}

impl<'a> Iterator for Picks<'a> {
    type Item = &'a Arc<BackendHandle>;

    #[inline]
    fn next(&mut self) -> Option<&'a Arc<BackendHandle>> {
        self.inner.next().map(|i| &self.backends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{hash_key_bytes, InFlight};
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};
    use lbfleet_api::state::LbNode;

    fn pool(policy: &str, backends: &[(&str, u32, &str)]) -> Pool {
        let mut t = format!("[[pool]]\nname = \"web\"\npolicy = \"{policy}\"\ntable_size = 1009\n");
        for (addr, weight, extra) in backends {
            t += &format!("[[pool.backend]]\naddr = \"{addr}\"\nweight = {weight}\n{extra}\n");
        }
        parse(&t, Format::Toml).unwrap().pool.remove(0)
    }

    fn state(p: &Pool) -> ClusterState {
        let mut s = ClusterState::default();
        s.apply_membership([1, 2, 3].into(), (1..=3).map(|i| (i, LbNode::default())).collect());
        let config = lbfleet_api::config::ClusterConfig { pool: vec![p.clone()], listener: vec![] };
        s.apply(&Command::ApplyConfig { config }, 1);
        s
    }

    fn keys(set: &EligibleSet) -> Vec<&str> {
        set.backends.iter().map(|b| b.key.as_str()).collect()
    }

    fn down(s: &mut ClusterState, backend: &str) {
        for node in [1, 2] {
            s.apply(
                &Command::HealthVote {
                    node,
                    pool: "web".into(),
                    backend: backend.into(),
                    healthy: false,
                    observed_at_ms: 0,
                },
                10,
            );
        }
    }

    #[test]
    fn unhealthy_draining_and_inactive_standby_backends_are_skipped() {
        let p = pool(
            "maglev",
            &[
                ("127.0.0.1:9001", 1, ""),
                ("127.0.0.1:9002", 1, ""),
                ("127.0.0.1:9003", 1, ""),
                ("127.0.0.1:9004", 1, "standby = true"),
            ],
        );
        let mut s = state(&p);
        assert_eq!(
            keys(&EligibleSet::from_state(&p, &s)),
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        );
        down(&mut s, "127.0.0.1:9001");
        s.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9002".into(), draining: true },
            11,
        );
        assert_eq!(keys(&EligibleSet::from_state(&p, &s)), ["127.0.0.1:9003"]);
        s.apply(
            &Command::SetStandby { pool: "web".into(), backend: "127.0.0.1:9004".into(), active: true },
            12,
        );
        let set = EligibleSet::from_state(&p, &s);
        assert_eq!(keys(&set), ["127.0.0.1:9003", "127.0.0.1:9004"]);
        assert_eq!(set.tier, Tier::Primary);
    }

    #[test]
    fn backups_serve_only_while_no_primary_does() {
        let p = pool(
            "round_robin",
            &[
                ("127.0.0.1:9001", 1, ""),
                ("127.0.0.1:9101", 1, "backup = true"),
                ("127.0.0.1:9102", 1, "backup = true"),
            ],
        );
        let mut s = state(&p);
        let set = EligibleSet::from_state(&p, &s);
        assert_eq!((set.tier, keys(&set)), (Tier::Primary, vec!["127.0.0.1:9001"]));
        s.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9001".into(), draining: true },
            2,
        );
        let set = EligibleSet::from_state(&p, &s);
        assert_eq!((set.tier, keys(&set)), (Tier::Backup, vec!["127.0.0.1:9101", "127.0.0.1:9102"]));
        // A backup is subject to health like any other backend.
        down(&mut s, "127.0.0.1:9101");
        assert_eq!(keys(&EligibleSet::from_state(&p, &s)), ["127.0.0.1:9102"]);
        down(&mut s, "127.0.0.1:9102");
        let set = EligibleSet::from_state(&p, &s);
        assert_eq!(set.tier, Tier::Empty);
        let sel = PoolSelector::from_state(&p, &s, None).unwrap();
        assert!(sel.is_empty());
        assert_eq!(sel.pick(1).next().map(|b| b.addr()), None);
    }

    #[test]
    fn nodes_with_the_same_state_agree_whatever_the_config_order() {
        let backends: Vec<(String, u32)> =
            (1..=12).map(|i| (format!("127.0.0.1:{}", 9000 + i), i % 3 + 1)).collect();
        let forward = backends.clone();
        let mut backward = backends;
        backward.reverse();
        let mk = |v: &[(String, u32)]| {
            let b: Vec<(&str, u32, &str)> = v.iter().map(|(a, w)| (a.as_str(), *w, "")).collect();
            pool("maglev", &b)
        };
        let (pa, pb) = (mk(&forward), mk(&backward));
        let (sa, sb) = (state(&pa), state(&pb));
        let a = PoolSelector::from_state(&pa, &sa, None).unwrap();
        let b = PoolSelector::from_state(&pb, &sb, None).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 16);
        for k in 0..5000u64 {
            let k = hash_key_bytes(&k.to_le_bytes());
            let ka: Vec<SocketAddr> = a.pick(k).map(|h| h.addr()).collect();
            let kb: Vec<SocketAddr> = b.pick(k).map(|h| h.addr()).collect();
            assert_eq!(ka, kb);
        }
    }

    #[test]
    fn refresh_rebuilds_only_when_the_eligible_set_changes() {
        let p = pool(
            "maglev",
            &[("127.0.0.1:9001", 1, ""), ("127.0.0.1:9002", 2, ""), ("127.0.0.1:9003", 1, "")],
        );
        let mut s = state(&p);
        let sel = PoolSelector::from_state(&p, &s, None).unwrap();
        // One "down" vote out of three voters changes the state but not fleet-wide health.
        s.apply(
            &Command::HealthVote {
                node: 3,
                pool: "web".into(),
                backend: "127.0.0.1:9001".into(),
                healthy: false,
                observed_at_ms: 5,
            },
            2,
        );
        assert!(sel.refresh(&p, s.backends.get("web")).unwrap().is_none());
        down(&mut s, "127.0.0.1:9001");
        let next = sel.refresh(&p, s.backends.get("web")).unwrap().expect("set changed");
        assert_ne!(next.digest(), sel.digest());
        assert_eq!(next.len(), 2);
        // A weight change is a different set too.
        let mut heavier = p.clone();
        heavier.backend[0].weight = 5;
        assert!(next.refresh(&heavier, s.backends.get("web")).unwrap().is_none(), "9001 is down either way");
        let mut heavier = p.clone();
        heavier.backend[2].weight = 5;
        assert!(next.refresh(&heavier, s.backends.get("web")).unwrap().is_some());
    }

    #[test]
    fn in_flight_counts_survive_a_rebuild() {
        let p = pool(
            "least_conn",
            &[("127.0.0.1:9001", 1, ""), ("127.0.0.1:9002", 1, ""), ("127.0.0.1:9003", 1, "")],
        );
        let mut s = state(&p);
        let old = PoolSelector::from_state(&p, &s, None).unwrap();
        let b2 = old.position("127.0.0.1:9002".parse().unwrap()).unwrap();
        let _busy: Vec<InFlight> = (0..3).map(|_| old.backends()[b2].track()).collect();
        // Draining 9003 rebuilds; 9002's three open requests still count in the new selector.
        s.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9003".into(), draining: true },
            2,
        );
        let new = old.refresh(&p, s.backends.get("web")).unwrap().unwrap();
        let b2 = new.position("127.0.0.1:9002".parse().unwrap()).unwrap();
        assert_eq!(new.backends()[b2].inflight(), 3);
        for k in 0..4 {
            assert_eq!(new.pick(k).next().unwrap().addr(), "127.0.0.1:9001".parse::<SocketAddr>().unwrap());
        }
        // And a drained backend's count is kept for when it comes back.
        let g = old.backends()[old.position("127.0.0.1:9003".parse().unwrap()).unwrap()].track();
        s.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9003".into(), draining: false },
            3,
        );
        let back = new.refresh(&p, s.backends.get("web")).unwrap().unwrap();
        assert_eq!(back.backends()[back.position("127.0.0.1:9003".parse().unwrap()).unwrap()].inflight(), 1);
        drop(g);
        assert_eq!(back.backends()[back.position("127.0.0.1:9003".parse().unwrap()).unwrap()].inflight(), 0);
    }

    #[test]
    fn local_ejection_moves_only_the_ejected_backends_keys() {
        let addrs: Vec<String> = (1..=8).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        let b: Vec<(&str, u32, &str)> = addrs.iter().map(|a| (a.as_str(), 1, "")).collect();
        let p = pool("maglev", &b);
        let sel = PoolSelector::from_state(&p, &state(&p), None).unwrap();
        let ejected: SocketAddr = "127.0.0.1:9004".parse().unwrap();
        let mut moved = 0;
        for k in 0..20_000u64 {
            let k = hash_key_bytes(&k.to_le_bytes());
            let all: Vec<SocketAddr> = sel.pick(k).map(|h| h.addr()).collect();
            let usable: Vec<SocketAddr> =
                sel.pick_usable(k, |h| h.addr() != ejected).map(|h| h.addr()).collect();
            assert_eq!(usable.len(), 7);
            if all[0] == ejected {
                moved += 1;
                assert_eq!(usable[0], all[1], "an ejected backend's key goes to its next fallback");
            } else {
                assert_eq!(usable[0], all[0], "other keys keep their backend");
            }
        }
        assert!((2000..3000).contains(&moved), "about 1/8 of 20000 keys: {moved}");
        assert_eq!(sel.pick_usable(1, |_| false).next().map(|h| h.addr()), None);
    }

    #[test]
    fn digests_differ_by_policy_and_set() {
        let b = [("127.0.0.1:9001", 1, ""), ("127.0.0.1:9002", 1, "")];
        let digests: Vec<String> = Policy::ALL
            .iter()
            .map(|pol| {
                let p = pool(pol.as_str(), &b);
                PoolSelector::from_state(&p, &state(&p), None).unwrap().digest().to_string()
            })
            .collect();
        let mut unique = digests.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), digests.len(), "{digests:?}");
    }

    #[test]
    fn missing_state_counts_as_fresh() {
        let p = pool("random", &[("127.0.0.1:9001", 1, ""), ("127.0.0.1:9002", 1, "standby = true")]);
        assert_eq!(keys(&EligibleSet::compute(&p, None)), ["127.0.0.1:9001"]);
    }
}
