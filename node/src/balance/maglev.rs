//! The Maglev lookup table.
//!
//! [`Maglev`] is the lookup table of Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4). The table has `M` slots, `M` prime. Each
//! backend has a preference list, a permutation of `0..M`, given by two hashes of its stable key
//! (`Backend::key()`, the address string):
//!
//! ```text
//! offset = xxh3(key, OFFSET_SEED) % M
//! skip   = xxh3(key, SKIP_SEED) % (M - 1) + 1
//! permutation[j] = (offset + j * skip) % M
//! ```
//!
//! Backends take turns; on its turn a backend takes the next slot of its preference list that is still
//! empty, until the table is full. The seeds are fixed ([`super::hash`]) and the backends are sorted by
//! key before the turns start, so the table depends only on the *set* of (key, weight) pairs and `M`:
//! every node, and every restart, builds the identical table, whatever order the backends came in.
//!
//! A request key (a `u64` from [`super::hash`]) maps to slot `hash % M`.
//!
//! ## Weights
//!
//! The paper gives every backend one turn per round. Weights use the turn-skipping scheme of Envoy's
//! Maglev load balancer, in integer arithmetic: with `w_max` the largest weight, a backend of weight `w`
//! keeps a `target` (starting at 0) and takes its turn in round `r` only if `r * w >= target`; each turn
//! adds `w_max` to its target. A backend of the largest weight thus takes a turn every round, one of half
//! that weight every second round, and so on. Its slot count is within about one slot of
//! `M * w / Σw`, every backend takes a turn in round 1 (so each one has at least one slot), and with equal
//! weights the scheme is exactly the paper's (slot counts differ by at most one).
//!
//! With unequal weights the turns are taken in the order of a priority queue keyed by (round, position
//! in key order), which yields the same sequence as scanning every backend in every round but skips the
//! backends that sit a round out.
//!
//! ## Fallback
//!
//! [`Maglev::fallback`] yields the backend of the key's slot first, then every other backend once, in the
//! order first met when reading the table onward from that slot (wrapping around). The order depends only
//! on the table and the key, so a connect failure moves on to the same next backend on every node; since
//! each backend owns at least one slot, reading the whole table meets every backend.
//!
//! ## Digest
//!
//! [`Maglev::digest`] is 16 hex digits of XXH3 over `M`, the sorted backend keys and the table entries
//! (which index that sorted list): the table expressed in backend keys. Two nodes with the same table
//! print the same digest.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lbfleet_api::config::{is_prime, MAX_TABLE_SIZE};

use super::backend_set::{sorted_order, RingError, Seen};
use super::hash::{hash_with_seed, Digest, OFFSET_SEED, SKIP_SEED};

const EMPTY: u32 = u32::MAX;

/// The Maglev lookup table of one backend set. See the module documentation.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// Backend keys in sorted order; table entries index this list.
    keys: Vec<String>,
    /// `to_input[i]`: position in the slice given to [`Maglev::build`] of `keys[i]`.
    to_input: Vec<usize>,
    table: Vec<u32>,
    digest: String,
}

impl Maglev {
    /// Build the table of `backends` (stable key, weight) with `table_size` slots.
    ///
    /// The result does not depend on the order of `backends`; [`Maglev::lookup`] and
    /// [`Maglev::fallback`] answer with positions in `backends`. An empty set gives an empty table.
    pub fn build<K: AsRef<str>>(backends: &[(K, u32)], table_size: u64) -> Result<Maglev, RingError> {
        Self::build_with(backends, table_size, false)
    }

    fn build_with<K: AsRef<str>>(
        backends: &[(K, u32)],
        table_size: u64,
        force_queue: bool,
    ) -> Result<Maglev, RingError> {
        if table_size > MAX_TABLE_SIZE {
            return Err(RingError::TooLarge(table_size));
        }
        if !is_prime(table_size) {
            return Err(RingError::NotPrime(table_size));
        }
        if backends.len() as u64 > table_size {
            return Err(RingError::TooManyBackends { backends: backends.len(), table_size });
        }
        let order = sorted_order(backends)?;
        let keys: Vec<String> = order.iter().map(|&i| backends[i].0.as_ref().to_string()).collect();
        let weights: Vec<u64> = order.iter().map(|&i| u64::from(backends[i].1)).collect();
        let table =
            if keys.is_empty() { Vec::new() } else { populate(&keys, &weights, table_size, force_queue) };
        let mut d = Digest::new("maglev-v1");
        d.u64(table_size);
        d.u64(keys.len() as u64);
        for k in &keys {
            d.bytes(k.as_bytes());
        }
        d.u32s(&table);
        Ok(Maglev { keys, to_input: order, table, digest: d.finish() })
    }

    /// Number of slots `M` (0 for an empty backend set).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The table; entries index [`Maglev::keys`].
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Backend keys in sorted order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Slots owned by each backend, indexed like [`Maglev::keys`].
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.keys.len()];
        for &e in &self.table {
            counts[e as usize] += 1;
        }
        counts
    }

    /// 16 hex digits identifying the table in terms of backend keys.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The backend (position in the slice given to `build`) that serves `hash`; `None` when empty.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let e = self.table[(hash % self.table.len() as u64) as usize];
        Some(self.to_input[e as usize])
    }

    /// The ordered fallback sequence for `hash`: the backend of [`Maglev::lookup`] first, then each other
    /// backend once, as first met reading the table onward from the key's slot.
    pub fn fallback(&self, hash: u64) -> MaglevFallback<'_> {
        let m = self.table.len();
        let slot = if m == 0 { 0 } else { (hash % m as u64) as usize };
        MaglevFallback { maglev: self, slot, probed: 0, remaining: self.keys.len(), seen: Seen::default() }
    }
}

/// Fill the table: backends (sorted by key, with weights) take turns as described in the module doc.
fn populate(keys: &[String], weights: &[u64], m: u64, force_queue: bool) -> Vec<u32> {
    let n = keys.len();
    // Preference-list cursors: next slot to try and the step.
    let mut next: Vec<u64> = Vec::with_capacity(n);
    let mut skip: Vec<u64> = Vec::with_capacity(n);
    for k in keys {
        next.push(hash_with_seed(k.as_bytes(), OFFSET_SEED) % m);
        skip.push(if m > 1 { hash_with_seed(k.as_bytes(), SKIP_SEED) % (m - 1) + 1 } else { 1 });
    }
    let mut table = vec![EMPTY; m as usize];
    // Which slots are taken, a bit each: the probes of a build (about M ln M of them, mostly at taken
    // slots near the end) read this 8 KiB bitmap, which stays in L1, instead of the 256 KiB table.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let mut filled = 0u64;
    // Take the next empty slot of backend `i`'s preference list. Terminates: `skip` is coprime with the
    // prime `m`, so the list visits every slot, and the table is not full yet.
    let mut take = |i: usize, table: &mut [u32]| {
        let (mut c, s) = (next[i], skip[i]);
        loop {
            let (word, bit) = ((c / 64) as usize, 1u64 << (c % 64));
            let slot = c as usize;
            c += s;
            if c >= m {
                c -= m;
            }
            if taken[word] & bit == 0 {
                taken[word] |= bit;
                table[slot] = i as u32;
                break;
            }
        }
        next[i] = c;
    };

    let w_max = weights.iter().copied().max().unwrap_or(1);
    let equal = weights.iter().all(|&w| w == w_max);
    if equal && !force_queue {
        // The paper's loop: one turn per backend per round.
        'rounds: loop {
            for i in 0..n {
                take(i, &mut table);
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
    } else {
        // Turn skipping: backend i takes a turn in round r when r * w_i >= target_i. The queue holds each
        // backend's next round; ties go to key order, as a scan of every backend per round would.
        let mut target = vec![0u64; n];
        let mut queue: BinaryHeap<Reverse<(u64, u32)>> = (0..n).map(|i| Reverse((1u64, i as u32))).collect();
        while let Some(Reverse((round, i))) = queue.pop() {
            let i = i as usize;
            take(i, &mut table);
            filled += 1;
            if filled == m {
                break;
            }
            target[i] += w_max;
            // First round r > round with r * w >= target.
            let due = target[i].div_ceil(weights[i]).max(round + 1);
            queue.push(Reverse((due, i as u32)));
        }
    }
    table
}

/// Iterator of [`Maglev::fallback`].
#[derive(Debug, Clone)]
pub struct MaglevFallback<'a> {
    maglev: &'a Maglev,
    slot: usize,
    probed: usize,
    remaining: usize,
    seen: Seen,
}

impl Iterator for MaglevFallback<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        let table = &self.maglev.table;
        while self.remaining > 0 && self.probed < table.len() {
            let e = table[self.slot] as usize;
            self.slot += 1;
            if self.slot == table.len() {
                self.slot = 0;
            }
            self.probed += 1;
            if self.seen.insert(e) {
                self.remaining -= 1;
                return Some(self.maglev.to_input[e]);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.remaining > 0), Some(self.remaining))
    }
}

/// Fraction of keys whose backend changed between two tables of the same size (for tests and reports);
/// `None` when the sizes differ.
pub fn moved_fraction(before: &Maglev, after: &Maglev) -> Option<f64> {
    if before.table.len() != after.table.len() || before.table.is_empty() {
        return None;
    }
    let moved = before
        .table
        .iter()
        .zip(&after.table)
        .filter(|(a, b)| before.keys[**a as usize] != after.keys[**b as usize])
        .count();
    Some(moved as f64 / before.table.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::ketama::HashRing;
    use proptest::prelude::*;

    const M: u64 = 65_537;

    fn backends(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1)).collect()
    }

    fn spread(counts: &[usize]) -> (usize, usize) {
        (*counts.iter().min().unwrap(), *counts.iter().max().unwrap())
    }

    #[test]
    fn equal_weights_give_slot_counts_within_one() {
        // The paper's population gives each backend floor(M/N) or ceil(M/N) slots.
        for n in [1, 3, 10, 100, 1000] {
            let t = Maglev::build(&backends(n), M).unwrap();
            let counts = t.slot_counts();
            let (min, max) = spread(&counts);
            eprintln!("N={n}: slots per backend min {min} max {max} (M/N = {:.1})", M as f64 / n as f64);
            assert!(max - min <= 1, "N={n}: min {min} max {max}");
            assert_eq!(counts.iter().sum::<usize>(), M as usize);
            if n <= 100 {
                assert!((max - min) as f64 / (M as f64 / n as f64) < 0.01, "N={n}");
            }
        }
    }

    #[test]
    fn weights_are_honoured() {
        let set: Vec<(String, u32)> =
            [1, 2, 3, 4, 10].iter().enumerate().map(|(i, &w)| (format!("10.1.0.{i}:80"), w)).collect();
        let total: u32 = set.iter().map(|b| b.1).sum();
        let t = Maglev::build(&set, M).unwrap();
        let counts = t.slot_counts();
        for (i, (k, w)) in set.iter().enumerate() {
            let want = M as f64 * f64::from(*w) / f64::from(total);
            let got = counts[t.keys().iter().position(|x| x == k).unwrap()] as f64;
            eprintln!("weight {w}: {got} slots, ideal {want:.1}");
            assert!((got - want).abs() <= 2.0, "backend {i} weight {w}: {got} slots, want {want:.1}");
        }
    }

    #[test]
    fn extreme_weights_still_give_every_backend_a_slot() {
        let mut set = backends(500);
        set[0].1 = 1000;
        let t = Maglev::build(&set, M).unwrap();
        let counts = t.slot_counts();
        assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
        let heavy = counts[t.keys().iter().position(|k| *k == set[0].0).unwrap()];
        let want = M as f64 * 1000.0 / 1499.0;
        assert!((heavy as f64 - want).abs() / want < 0.01, "heavy backend has {heavy} slots, want {want:.0}");
    }

    #[test]
    fn turn_queue_matches_the_papers_loop_for_equal_weights() {
        let set = backends(37);
        let a = Maglev::build_with(&set, 1009, false).unwrap();
        let b = Maglev::build_with(&set, 1009, true).unwrap();
        assert_eq!(a.table(), b.table());
    }

    #[test]
    fn table_and_digest_do_not_depend_on_input_order() {
        let mut set = backends(50);
        set[7].1 = 3;
        set[20].1 = 2;
        let a = Maglev::build(&set, M).unwrap();
        let mut rev = set.clone();
        rev.reverse();
        let b = Maglev::build(&rev, M).unwrap();
        let mut rot = set.clone();
        rot.rotate_left(17);
        let c = Maglev::build(&rot, M).unwrap();
        for other in [&b, &c] {
            assert_eq!(a.table(), other.table());
            assert_eq!(a.keys(), other.keys());
            assert_eq!(a.digest(), other.digest());
        }
        for h in (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            assert_eq!(set[a.lookup(h).unwrap()].0, rev[b.lookup(h).unwrap()].0);
            assert_eq!(set[a.lookup(h).unwrap()].0, rot[c.lookup(h).unwrap()].0);
        }
        // A different weight is a different table.
        let mut heavier = set.clone();
        heavier[0].1 = 2;
        assert_ne!(Maglev::build(&heavier, M).unwrap().digest(), a.digest());
    }

    #[test]
    fn digest_is_pinned() {
        // Nodes of different versions or CPUs must agree; a change here reshuffles the fleet's tables.
        // Both values agree with a separate implementation (the paper's loop, the ring points) over the C
        // XXH3 (libxxhash 0.8).
        let t = Maglev::build(&backends(3), M).unwrap();
        assert_eq!(t.digest(), "312c2c2668b51002", "table digest changed");
        let r = HashRing::build(&backends(3)).unwrap();
        assert_eq!(r.digest(), "2c8e8e510e928f2c", "ring digest changed");
    }

    /// Fraction of keys moved when backend `victim` of `n` is removed from a table of `m` slots, and the
    /// share of keys the removed backend held.
    fn removal(n: usize, m: u64, victim: usize) -> (f64, f64) {
        let set = backends(n);
        let before = Maglev::build(&set, m).unwrap();
        let mut less = set.clone();
        let gone = less.remove(victim).0;
        let after = Maglev::build(&less, m).unwrap();
        let pos = before.keys().iter().position(|k| *k == gone).unwrap();
        let share = before.slot_counts()[pos] as f64 / m as f64;
        (moved_fraction(&before, &after).unwrap(), share)
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_share() {
        // Ideal: only the removed backend's 1/N of the keys move. Maglev moves a little more, the more so
        // the fewer slots each backend has (the paper recommends M >= 100 N). `slack` bounds the extra
        // keys moved, as a fraction of all keys.
        for (n, m, slack) in [(10, M, 0.005), (100, M, 0.01), (1000, M, 0.01), (1000, 655_373, 0.006)] {
            let victims = [0, n / 3, n - 1];
            let (mut moved, mut share) = (0.0, 0.0);
            for v in victims {
                let (mv, sh) = removal(n, m, v);
                assert!(mv >= sh, "keys of the removed backend must move");
                moved += mv / victims.len() as f64;
                share += sh / victims.len() as f64;
            }
            eprintln!(
                "N={n}, M={m}: removing one backend moved {:.3}% of keys (mean of 3; its share {:.3}%, 1/N = {:.3}%)",
                moved * 100.0,
                share * 100.0,
                100.0 / n as f64
            );
            assert!(moved <= 1.0 / n as f64 + slack, "N={n} M={m}: moved {moved}");
        }
    }

    #[test]
    fn fallback_starts_with_lookup_and_meets_every_backend_once() {
        let mut set = backends(40);
        set[3].1 = 9;
        let t = Maglev::build(&set, 1009).unwrap();
        for h in (0..2000u64).map(|i| i.wrapping_mul(0xff51_afd7_ed55_8ccd)) {
            let seq: Vec<usize> = t.fallback(h).collect();
            assert_eq!(seq[0], t.lookup(h).unwrap());
            let mut sorted = seq.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..40).collect::<Vec<_>>());
        }
    }

    #[test]
    fn fallback_of_a_missing_backend_is_the_same_on_every_node() {
        // Two nodes, inputs in different orders: the sequences name the same keys.
        let set = backends(20);
        let mut rev = set.clone();
        rev.reverse();
        let (a, b) = (Maglev::build(&set, M).unwrap(), Maglev::build(&rev, M).unwrap());
        for h in [1u64, 99, 12345, u64::MAX] {
            let ka: Vec<&str> = a.fallback(h).map(|i| set[i].0.as_str()).collect();
            let kb: Vec<&str> = b.fallback(h).map(|i| rev[i].0.as_str()).collect();
            assert_eq!(ka, kb);
        }
    }

    #[test]
    fn empty_and_invalid_sets() {
        let none: Vec<(String, u32)> = Vec::new();
        let t = Maglev::build(&none, M).unwrap();
        assert_eq!(t.lookup(7), None);
        assert_eq!(t.fallback(7).next(), None);
        assert_eq!(Maglev::build(&backends(2), 65_536).unwrap_err(), RingError::NotPrime(65_536));
        assert_eq!(
            Maglev::build(&backends(12), 11).unwrap_err(),
            RingError::TooManyBackends { backends: 12, table_size: 11 }
        );
        let mut dup = backends(3);
        dup[2].0 = dup[0].0.clone();
        assert_eq!(Maglev::build(&dup, M).unwrap_err(), RingError::DuplicateKey(dup[0].0.clone()));
        let mut zero = backends(3);
        zero[1].1 = 0;
        assert_eq!(HashRing::build(&zero).unwrap_err(), RingError::ZeroWeight(zero[1].0.clone()));
        assert!(HashRing::build(&none).unwrap().lookup(3).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn any_set_fills_the_table_and_falls_back_through_all(
            weights in proptest::collection::vec(1u32..20, 1..30),
            hash in any::<u64>(),
        ) {
            let set: Vec<(String, u32)> =
                weights.iter().enumerate().map(|(i, &w)| (format!("192.168.1.{i}:9000"), w)).collect();
            let t = Maglev::build(&set, 1009).unwrap();
            let counts = t.slot_counts();
            prop_assert_eq!(counts.iter().sum::<usize>(), 1009);
            prop_assert!(counts.iter().all(|&c| c >= 1));
            let seq: Vec<usize> = t.fallback(hash).collect();
            prop_assert_eq!(seq[0], t.lookup(hash).unwrap());
            let mut sorted = seq.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..set.len()).collect::<Vec<_>>());
            let ring = HashRing::build(&set).unwrap();
            let mut rseq: Vec<usize> = ring.fallback(hash).collect();
            prop_assert_eq!(rseq[0], ring.lookup(hash).unwrap());
            rseq.sort_unstable();
            prop_assert_eq!(rseq, (0..set.len()).collect::<Vec<_>>());
        }
    }
}
