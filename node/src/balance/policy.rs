//! Backend selection policies.
//!
//! One small trait, [`Selection`], in the manner of Pingora's `BackendSelection`: a selector is built
//! once from a backend set ([`Selection::build`]) and then answers [`Selection::pick`] with an ordered
//! fallback sequence of backend positions (indices into the slice it was built from), each backend at
//! most once. The first is the choice; the others are where a proxy goes when it cannot reach the ones
//! before (connect failure, local ejection). Building is the expensive part (a Maglev table, a ring) and
//! happens only when the set changes; picking never allocates on the path to the first backend.
//!
//! Policies ([`lbfleet_api::config::Policy`]):
//!
//! | policy | choice | fallback after the choice | state |
//! |---|---|---|---|
//! | `round_robin` | next backend in key order, weights ignored | the following ones in key order | per node: a counter |
//! | `weighted_round_robin` | NGINX's smooth weighted round robin | the following ones in key order | per node: current weights |
//! | `least_conn` | least in-flight / weight; ties rotate | the others, least loaded first | per node: in-flight counts |
//! | `p2c` | of two random distinct backends, the less loaded (in-flight / weight) | the other one, then the rest in key order | per node: in-flight counts, randomness |
//! | `random` | random, in proportion to weight | the following ones in key order | per node: randomness |
//! | `source_hash` | `key % Σweight` over the backends' cumulative weights (HAProxy's map-based hash) | the rest in key order from a key-derived offset | none: same on every node |
//! | `ring_hash` | Ketama-style ring ([`HashRing`]) | clockwise on the ring | none: same on every node |
//! | `maglev` | Maglev table ([`Maglev`]) | onward through the table | none: same on every node |
//!
//! Only the three hash policies give the same answer on every node. The others keep per-node state by
//! nature: two nodes reached by the same client may pick different backends, and `least_conn`/`p2c` only
//! see the connections of their own node.
//!
//! In-flight counts live in [`BackendHandle`]s; a proxy calls [`BackendHandle::track`] when it starts
//! using a backend and drops the returned [`InFlight`] guard when done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lbfleet_api::config::{Policy, DEFAULT_TABLE_SIZE};
use rand::Rng;

pub use super::backend::{BackendHandle, InFlight};
use super::backend_set::RingError;
use super::ketama::{HashRing, RingFallback};
use super::maglev::{Maglev, MaglevFallback};

// ---------------------------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------------------------

/// Parameters of a build beyond the backend set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildParams {
    /// Maglev table size (a prime).
    pub table_size: u64,
}

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams { table_size: DEFAULT_TABLE_SIZE }
    }
}

/// A backend set a selector cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("backend \"{0}\" has weight 0")]
    ZeroWeight(String),
    #[error("backend \"{0}\" is listed twice")]
    DuplicateKey(String),
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// A backend selection policy: built once per backend set, then picked from on every request.
pub trait Selection: Sized + Send + Sync {
    /// The fallback sequence of one pick.
    type Pick<'a>: Iterator<Item = usize>
    where
        Self: 'a;

    /// Build from a backend set. Hash policies do not depend on the order of `backends`; the others
    /// use it as their "key order", so callers should pass backends sorted by key (as `PoolSelector`
    /// does).
    fn build(backends: &[Arc<BackendHandle>], params: &BuildParams) -> Result<Self, BuildError>;

    /// Ordered fallback sequence of positions in the slice given to `build`, each at most once (every
    /// backend exactly once, for the policies here). `key` is the request's hash
    /// ([`super::hash::hash_key_bytes`] and friends); policies that are not hash policies ignore it.
    fn pick(&self, key: u64) -> Self::Pick<'_>;
}

fn check(backends: &[Arc<BackendHandle>]) -> Result<(), BuildError> {
    if let Some(b) = backends.iter().find(|b| b.weight == 0) {
        return Err(BuildError::ZeroWeight(b.key.clone()));
    }
    let mut keys: Vec<&str> = backends.iter().map(|b| b.key.as_str()).collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(BuildError::DuplicateKey(w[0].to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fallback sequence shared by the non-ring policies
// ---------------------------------------------------------------------------------------------

/// Up to two chosen positions first, then every other position of `0..n` once, starting at `start` and
/// wrapping around.
#[derive(Debug, Clone)]
pub struct Rotation {
    n: usize,
    head: [usize; 2],
    head_len: u8,
    emitted: u8,
    start: usize,
    i: usize,
}

impl Rotation {
    fn empty() -> Self {
        Rotation { n: 0, head: [0; 2], head_len: 0, emitted: 0, start: 0, i: 0 }
    }

    fn new(n: usize, first: usize, start: usize) -> Self {
        Rotation { n, head: [first, 0], head_len: 1, emitted: 0, start: start % n, i: 0 }
    }

    fn two(n: usize, first: usize, second: usize, start: usize) -> Self {
        Rotation { n, head: [first, second], head_len: 2, emitted: 0, start: start % n, i: 0 }
    }
}

impl Iterator for Rotation {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.emitted < self.head_len {
            self.emitted += 1;
            return Some(self.head[usize::from(self.emitted - 1)]);
        }
        while self.i < self.n {
            let mut idx = self.start + self.i;
            if idx >= self.n {
                idx -= self.n;
            }
            self.i += 1;
            if !self.head[..usize::from(self.head_len)].contains(&idx) {
                return Some(idx);
            }
        }
        None
    }
}

/// splitmix64's finaliser: a second, independent-looking value from a key.
fn remix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cumulative weights; the position holding `r` in `0..total` is the first whose sum exceeds `r`.
fn cumulative(backends: &[Arc<BackendHandle>]) -> Vec<u64> {
    backends
        .iter()
        .scan(0u64, |acc, b| {
            *acc += u64::from(b.weight);
            Some(*acc)
        })
        .collect()
}

/// Whether load `a` (in-flight, weight) is strictly below load `b`.
#[inline]
fn less_loaded(a: (u64, u64), b: (u64, u64)) -> bool {
    u128::from(a.0) * u128::from(b.1) < u128::from(b.0) * u128::from(a.1)
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// Plain round robin in key order; weights ignored. Per-node state.
#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
    next: AtomicUsize,
}

impl Selection for RoundRobin {
    type Pick<'a> = Rotation;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        Ok(RoundRobin { n: backends.len(), next: AtomicUsize::new(0) })
    }

    fn pick(&self, _key: u64) -> Rotation {
        if self.n == 0 {
            return Rotation::empty();
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % self.n;
        Rotation::new(self.n, first, first + 1)
    }
}

/// NGINX's smooth weighted round robin: on each pick every backend's current weight grows by its
/// weight, the largest current weight wins (the first in key order on a tie) and loses the total.
/// Weights 5, 1, 1 give `a a b a c a a`. Per-node state behind a mutex held for one pass over the set.
#[derive(Debug)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    total: i64,
    current: Mutex<Vec<i64>>,
}

impl Selection for SmoothWeighted {
    type Pick<'a> = Rotation;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        let weights: Vec<i64> = backends.iter().map(|b| i64::from(b.weight)).collect();
        let total = weights.iter().sum();
        Ok(SmoothWeighted { current: Mutex::new(vec![0; weights.len()]), weights, total })
    }

    fn pick(&self, _key: u64) -> Rotation {
        let n = self.weights.len();
        if n == 0 {
            return Rotation::empty();
        }
        // A panic elsewhere cannot leave the weights inconsistent in a way that matters: keep going.
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (mut best, mut best_weight) = (0, i64::MIN);
        for (i, (c, w)) in cur.iter_mut().zip(&self.weights).enumerate() {
            *c += *w;
            if *c > best_weight {
                best = i;
                best_weight = *c;
            }
        }
        cur[best] -= self.total;
        Rotation::new(n, best, best + 1)
    }
}

/// Weighted least connections: the backend with the least in-flight / weight; among equals, the first
/// at or after a rotating start, so ties share the load. Per-node state.
#[derive(Debug)]
pub struct LeastConn {
    counters: Vec<Arc<AtomicU64>>,
    weights: Vec<u64>,
    rotor: AtomicUsize,
}

impl LeastConn {
    fn load(&self, i: usize) -> (u64, u64) {
        (self.counters[i].load(Ordering::Relaxed), self.weights[i])
    }
}

impl Selection for LeastConn {
    type Pick<'a> = LeastConnPick<'a>;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        Ok(LeastConn {
            counters: backends.iter().map(|b| Arc::clone(&b.inflight)).collect(),
            weights: backends.iter().map(|b| u64::from(b.weight)).collect(),
            rotor: AtomicUsize::new(0),
        })
    }

    fn pick(&self, _key: u64) -> LeastConnPick<'_> {
        let n = self.counters.len();
        if n == 0 {
            return LeastConnPick { sel: self, chosen: 0, start: 0, state: LeastConnState::Done };
        }
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = self.load(start);
        for i in (start + 1..n).chain(0..start) {
            let l = self.load(i);
            if less_loaded(l, best_load) {
                best = i;
                best_load = l;
            }
        }
        LeastConnPick { sel: self, chosen: best, start, state: LeastConnState::First }
    }
}

#[derive(Debug)]
enum LeastConnState {
    First,
    Second,
    Rest(std::vec::IntoIter<usize>),
    Done,
}

/// Iterator of [`LeastConn::pick`]: the least loaded first; the others sorted by load, computed only
/// when the second is asked for.
#[derive(Debug)]
pub struct LeastConnPick<'a> {
    sel: &'a LeastConn,
    chosen: usize,
    start: usize,
    state: LeastConnState,
}

impl Iterator for LeastConnPick<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match &mut self.state {
            LeastConnState::First => {
                self.state = LeastConnState::Second;
                Some(self.chosen)
            }
            LeastConnState::Second => {
                let n = self.sel.counters.len();
                // Snapshot loads now; order by load, then by distance from the rotating start.
                let mut others: Vec<(usize, (u64, u64))> = (self.start..n)
                    .chain(0..self.start)
                    .filter(|&i| i != self.chosen)
                    .map(|i| (i, self.sel.load(i)))
                    .collect();
                others.sort_by(|a, b| {
                    let x = u128::from(a.1 .0) * u128::from(b.1 .1);
                    let y = u128::from(b.1 .0) * u128::from(a.1 .1);
                    x.cmp(&y)
                });
                let mut rest = others.into_iter().map(|(i, _)| i).collect::<Vec<_>>().into_iter();
                let next = rest.next();
                self.state = LeastConnState::Rest(rest);
                next
            }
            LeastConnState::Rest(rest) => rest.next(),
            LeastConnState::Done => None,
        }
    }
}

/// Power of two choices: two distinct random backends, the one with less in-flight / weight wins (the
/// first drawn on a tie). Per-node state.
#[derive(Debug)]
pub struct P2c {
    counters: Vec<Arc<AtomicU64>>,
    weights: Vec<u64>,
}

impl Selection for P2c {
    type Pick<'a> = Rotation;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        Ok(P2c {
            counters: backends.iter().map(|b| Arc::clone(&b.inflight)).collect(),
            weights: backends.iter().map(|b| u64::from(b.weight)).collect(),
        })
    }

    fn pick(&self, _key: u64) -> Rotation {
        let n = self.counters.len();
        match n {
            0 => Rotation::empty(),
            1 => Rotation::new(1, 0, 1),
            _ => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| (self.counters[i].load(Ordering::Relaxed), self.weights[i]);
                let (win, lose) = if less_loaded(load(b), load(a)) { (b, a) } else { (a, b) };
                Rotation::two(n, win, lose, win + 1)
            }
        }
    }
}

/// Random, in proportion to weight. Per-node state (randomness).
#[derive(Debug)]
pub struct WeightedRandom {
    cumulative: Vec<u64>,
}

impl Selection for WeightedRandom {
    type Pick<'a> = Rotation;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        Ok(WeightedRandom { cumulative: cumulative(backends) })
    }

    fn pick(&self, _key: u64) -> Rotation {
        let Some(&total) = self.cumulative.last() else { return Rotation::empty() };
        let r = rand::rng().random_range(0..total);
        let first = self.cumulative.partition_point(|&c| c <= r);
        Rotation::new(self.cumulative.len(), first, first + 1)
    }
}

/// HAProxy-style map-based source hash: `key % Σweight` over the cumulative weights in key order. The
/// fallback starts at a key-derived offset, so the keys of an unreachable backend spread over the others
/// instead of all landing on its neighbour. Same answer on every node; no state.
#[derive(Debug)]
pub struct SourceHash {
    cumulative: Vec<u64>,
}

impl Selection for SourceHash {
    type Pick<'a> = Rotation;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        Ok(SourceHash { cumulative: cumulative(backends) })
    }

    fn pick(&self, key: u64) -> Rotation {
        let Some(&total) = self.cumulative.last() else { return Rotation::empty() };
        let n = self.cumulative.len();
        let first = self.cumulative.partition_point(|&c| c <= key % total);
        let offset = if n > 1 { (remix(key) % (n as u64 - 1)) as usize } else { 0 };
        Rotation::new(n, first, first + 1 + offset)
    }
}

/// Ketama-style consistent hash ring ([`HashRing`]). Same answer on every node; no state.
#[derive(Debug)]
pub struct RingHash {
    ring: HashRing,
}

impl RingHash {
    pub fn ring(&self) -> &HashRing {
        &self.ring
    }
}

impl Selection for RingHash {
    type Pick<'a> = RingFallback<'a>;

    fn build(backends: &[Arc<BackendHandle>], _: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        let set: Vec<(&str, u32)> = backends.iter().map(|b| (b.key.as_str(), b.weight)).collect();
        Ok(RingHash { ring: HashRing::build(&set)? })
    }

    fn pick(&self, key: u64) -> RingFallback<'_> {
        self.ring.fallback(key)
    }
}

/// Maglev hashing ([`Maglev`]). Same answer on every node; no state.
#[derive(Debug)]
pub struct MaglevHash {
    table: Maglev,
}

impl MaglevHash {
    pub fn table(&self) -> &Maglev {
        &self.table
    }
}

impl Selection for MaglevHash {
    type Pick<'a> = MaglevFallback<'a>;

    fn build(backends: &[Arc<BackendHandle>], params: &BuildParams) -> Result<Self, BuildError> {
        check(backends)?;
        let set: Vec<(&str, u32)> = backends.iter().map(|b| (b.key.as_str(), b.weight)).collect();
        Ok(MaglevHash { table: Maglev::build(&set, params.table_size)? })
    }

    fn pick(&self, key: u64) -> MaglevFallback<'_> {
        self.table.fallback(key)
    }
}

// ---------------------------------------------------------------------------------------------
// Any policy, chosen at run time
// ---------------------------------------------------------------------------------------------

/// A selector of any [`Policy`], dispatched without boxing.
#[derive(Debug)]
pub enum PolicySelector {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(SmoothWeighted),
    LeastConn(LeastConn),
    P2c(P2c),
    Random(WeightedRandom),
    SourceHash(SourceHash),
    RingHash(RingHash),
    Maglev(MaglevHash),
}

impl PolicySelector {
    /// Build the selector of `policy` from `backends` (see [`Selection::build`]).
    pub fn build(
        policy: Policy,
        backends: &[Arc<BackendHandle>],
        params: &BuildParams,
    ) -> Result<PolicySelector, BuildError> {
        Ok(match policy {
            Policy::RoundRobin => PolicySelector::RoundRobin(RoundRobin::build(backends, params)?),
            Policy::WeightedRoundRobin => {
                PolicySelector::WeightedRoundRobin(SmoothWeighted::build(backends, params)?)
            }
            Policy::LeastConn => PolicySelector::LeastConn(LeastConn::build(backends, params)?),
            Policy::P2c => PolicySelector::P2c(P2c::build(backends, params)?),
            Policy::Random => PolicySelector::Random(WeightedRandom::build(backends, params)?),
            Policy::SourceHash => PolicySelector::SourceHash(SourceHash::build(backends, params)?),
            Policy::RingHash => PolicySelector::RingHash(RingHash::build(backends, params)?),
            Policy::Maglev => PolicySelector::Maglev(MaglevHash::build(backends, params)?),
        })
    }

    pub fn policy(&self) -> Policy {
        match self {
            PolicySelector::RoundRobin(_) => Policy::RoundRobin,
            PolicySelector::WeightedRoundRobin(_) => Policy::WeightedRoundRobin,
            PolicySelector::LeastConn(_) => Policy::LeastConn,
            PolicySelector::P2c(_) => Policy::P2c,
            PolicySelector::Random(_) => Policy::Random,
            PolicySelector::SourceHash(_) => Policy::SourceHash,
            PolicySelector::RingHash(_) => Policy::RingHash,
            PolicySelector::Maglev(_) => Policy::Maglev,
        }
    }

    /// Digest of the built structure, for the policies that have one (Maglev table, hash ring).
    pub fn structure_digest(&self) -> Option<&str> {
        match self {
            PolicySelector::Maglev(m) => Some(m.table.digest()),
            PolicySelector::RingHash(r) => Some(r.ring.digest()),
            _ => None,
        }
    }

    /// Ordered fallback sequence for `key` (see [`Selection::pick`]).
    #[inline]
    pub fn pick(&self, key: u64) -> PolicyPick<'_> {
        match self {
            PolicySelector::RoundRobin(s) => PolicyPick::Rotation(s.pick(key)),
            PolicySelector::WeightedRoundRobin(s) => PolicyPick::Rotation(s.pick(key)),
            PolicySelector::LeastConn(s) => PolicyPick::LeastConn(s.pick(key)),
            PolicySelector::P2c(s) => PolicyPick::Rotation(s.pick(key)),
            PolicySelector::Random(s) => PolicyPick::Rotation(s.pick(key)),
            PolicySelector::SourceHash(s) => PolicyPick::Rotation(s.pick(key)),
            PolicySelector::RingHash(s) => PolicyPick::Ring(s.pick(key)),
            PolicySelector::Maglev(s) => PolicyPick::Maglev(s.pick(key)),
        }
    }
}

/// Iterator of [`PolicySelector::pick`].
#[derive(Debug)]
pub enum PolicyPick<'a> {
    Rotation(Rotation),
    LeastConn(LeastConnPick<'a>),
    Ring(RingFallback<'a>),
    Maglev(MaglevFallback<'a>),
}

impl Iterator for PolicyPick<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        match self {
            PolicyPick::Rotation(r) => r.next(),
            PolicyPick::LeastConn(r) => r.next(),
            PolicyPick::Ring(r) => r.next(),
            PolicyPick::Maglev(r) => r.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn handles(weights: &[u32]) -> Vec<Arc<BackendHandle>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(BackendHandle::new(format!("10.9.0.{}:80", i + 1).parse().unwrap(), w)))
            .collect()
    }

    fn build(policy: Policy, hs: &[Arc<BackendHandle>]) -> PolicySelector {
        PolicySelector::build(policy, hs, &BuildParams { table_size: 1009 }).unwrap()
    }

    fn firsts(sel: &PolicySelector, picks: usize) -> Vec<usize> {
        (0..picks as u64).map(|k| sel.pick(k).next().unwrap()).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx() {
        // NGINX's documented sequence for weights a=5, b=1, c=1.
        let sel = build(Policy::WeightedRoundRobin, &handles(&[5, 1, 1]));
        let names: String = firsts(&sel, 14).iter().map(|&i| (b'a' + i as u8) as char).collect();
        assert_eq!(names, "aabacaaaabacaa");
    }

    #[test]
    fn round_robin_cycles_in_key_order_and_ignores_weights() {
        let sel = build(Policy::RoundRobin, &handles(&[1, 5, 1]));
        assert_eq!(firsts(&sel, 7), vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(sel.pick(0).collect::<Vec<_>>(), vec![1, 2, 0]);
    }

    #[test]
    fn least_conn_prefers_less_load_per_weight_and_rotates_ties() {
        let hs = handles(&[1, 2, 1]);
        let sel = build(Policy::LeastConn, &hs);
        // Idle: ties rotate over all three.
        let mut seen = firsts(&sel, 3);
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
        // Loads 2/1, 3/2, 1/1: backend 2 is least loaded.
        let guards: Vec<InFlight> = [0usize, 0, 1, 1, 1, 2].iter().map(|&i| hs[i].track()).collect();
        for _ in 0..5 {
            assert_eq!(sel.pick(0).collect::<Vec<_>>(), vec![2, 1, 0]);
        }
        drop(guards);
        assert!(hs.iter().all(|h| h.inflight() == 0));
    }

    #[test]
    fn p2c_never_picks_the_single_most_loaded() {
        let hs = handles(&[1, 1, 1, 1]);
        let sel = build(Policy::P2c, &hs);
        let _busy: Vec<InFlight> = (0..10).map(|_| hs[2].track()).collect();
        let mut counts = [0usize; 4];
        for k in 0..2000 {
            let seq: Vec<usize> = sel.pick(k).collect();
            assert_eq!(seq.len(), 4);
            counts[seq[0]] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        // The other three are drawn often (each is first with probability 1/3 here).
        assert!(counts.iter().enumerate().all(|(i, &c)| i == 2 || c > 400), "{counts:?}");
        // With two backends, p2c is exact.
        let two = handles(&[1, 1]);
        let sel = build(Policy::P2c, &two);
        let _g = two[0].track();
        assert!((0..100).all(|k| sel.pick(k).collect::<Vec<_>>() == vec![1, 0]));
    }

    #[test]
    fn random_follows_weights() {
        let sel = build(Policy::Random, &handles(&[1, 3]));
        let heavy = firsts(&sel, 20_000).iter().filter(|&&i| i == 1).count();
        // Expected 15000, standard deviation ~61: far outside this band only if weights are ignored.
        assert!((14_000..16_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn source_hash_is_deterministic_and_weighted() {
        let hs = handles(&[1, 2, 1]);
        let (a, b) = (build(Policy::SourceHash, &hs), build(Policy::SourceHash, &hs));
        let mut counts = [0usize; 3];
        for i in 0..40_000u64 {
            let k = super::super::hash::hash_key_bytes(&i.to_le_bytes());
            let seq: Vec<usize> = a.pick(k).collect();
            assert_eq!(seq, b.pick(k).collect::<Vec<_>>());
            counts[seq[0]] += 1;
        }
        assert!((19_000..21_000).contains(&counts[1]), "{counts:?}");
        // The fallback of backend 0's keys spreads over both others.
        let mut next_of_0 = [0usize; 3];
        for i in 0..4000u64 {
            let k = super::super::hash::hash_key_bytes(&i.to_le_bytes());
            let seq: Vec<usize> = a.pick(k).collect();
            if seq[0] == 0 {
                next_of_0[seq[1]] += 1;
            }
        }
        assert!(next_of_0[1] > 300 && next_of_0[2] > 300, "{next_of_0:?}");
    }

    #[test]
    fn hash_policies_ignore_input_order() {
        let hs = handles(&[1, 2, 3, 1, 1]);
        let mut rev = hs.clone();
        rev.reverse();
        for policy in [Policy::RingHash, Policy::Maglev] {
            let (a, b) = (build(policy, &hs), build(policy, &rev));
            assert_eq!(a.structure_digest(), b.structure_digest());
            for k in [0u64, 17, 1 << 40, u64::MAX] {
                let ka: Vec<&str> = a.pick(k).map(|i| hs[i].key()).collect();
                let kb: Vec<&str> = b.pick(k).map(|i| rev[i].key()).collect();
                assert_eq!(ka, kb, "{policy}");
            }
        }
    }

    #[test]
    fn in_flight_guard_counts_and_outlives_the_handle() {
        let h = Arc::new(BackendHandle::new("127.0.0.1:1".parse().unwrap(), 1));
        let g1 = h.track();
        let g2 = h.track();
        assert_eq!(h.inflight(), 2);
        let counter = Arc::clone(h.counter());
        drop(h);
        drop(g1);
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        drop(g2);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn bad_sets_are_named() {
        let hs = handles(&[1, 0]);
        assert_eq!(
            PolicySelector::build(Policy::RoundRobin, &hs, &BuildParams::default()).unwrap_err(),
            BuildError::ZeroWeight("10.9.0.2:80".into())
        );
        let mut hs = handles(&[1, 1]);
        hs.push(Arc::clone(&hs[0]));
        assert_eq!(
            PolicySelector::build(Policy::Maglev, &hs, &BuildParams::default()).unwrap_err(),
            BuildError::DuplicateKey("10.9.0.1:80".into())
        );
        let err = PolicySelector::build(Policy::Maglev, &handles(&[1]), &BuildParams { table_size: 100 })
            .unwrap_err();
        assert_eq!(err.to_string(), "table size 100 is not a prime (Maglev needs a prime table size)");
    }

    #[test]
    fn empty_sets_pick_nothing() {
        for policy in Policy::ALL {
            let sel = build(policy, &[]);
            assert_eq!(sel.pick(5).next(), None, "{policy}");
            assert_eq!(sel.policy(), policy);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn every_policy_yields_each_backend_exactly_once(
            weights in proptest::collection::vec(1u32..10, 1..40),
            loads in proptest::collection::vec(0usize..5, 40),
            key in any::<u64>(),
        ) {
            let hs = handles(&weights);
            let _guards: Vec<InFlight> =
                hs.iter().zip(&loads).flat_map(|(h, &l)| (0..l).map(|_| h.track())).collect();
            for policy in Policy::ALL {
                let sel = build(policy, &hs);
                for k in [key, key.wrapping_add(1)] {
                    let mut seq: Vec<usize> = sel.pick(k).collect();
                    seq.sort_unstable();
                    prop_assert_eq!(&seq, &(0..hs.len()).collect::<Vec<_>>(), "{}", policy);
                }
            }
        }
    }
}
