//! A consistent-hash ring in the manner of libketama.
//!
//! [`HashRing`] is a consistent-hash ring in the manner of libketama: each backend places points on a
//! 64-bit circle, as many as its share of the total weight calls for (160 per unit of weight, the whole
//! ring capped at [`RING_MAX_POINTS`]); a key goes to the first point at or after its hash. Point `i` of a
//! backend sits at `xxh3(key ++ "#" ++ i as u32 LE, RING_SEED)`. Ties between points are broken by key
//! order. Fallback continues clockwise, each backend once.

use super::backend_set::{sorted_order, RingError, Seen};
use super::hash::{hash_with_seed, Digest, RING_SEED};

/// Points per unit of weight on the hash ring (libketama uses 160 per server), and the most points a
/// ring holds (beyond, point counts are scaled down in proportion to weight). Defined with the config,
/// whose validation bounds the points of every ring together.
pub use lbfleet_api::config::{RING_MAX_POINTS, RING_POINTS_PER_WEIGHT};

/// A consistent-hash ring with points in proportion to weight. See the module documentation.
#[derive(Debug, Clone)]
pub struct HashRing {
    keys: Vec<String>,
    to_input: Vec<usize>,
    /// Point positions, sorted.
    points: Vec<u64>,
    /// Owner of each point, indexing `keys`.
    owners: Vec<u32>,
    digest: String,
}

impl HashRing {
    /// Build the ring of `backends` (stable key, weight). Independent of the order of `backends`;
    /// answers with positions in `backends`.
    pub fn build<K: AsRef<str>>(backends: &[(K, u32)]) -> Result<HashRing, RingError> {
        let order = sorted_order(backends)?;
        let keys: Vec<String> = order.iter().map(|&i| backends[i].0.as_ref().to_string()).collect();
        let weights: Vec<u64> = order.iter().map(|&i| u64::from(backends[i].1)).collect();
        let total: u64 = weights.iter().sum();
        let budget = (total * RING_POINTS_PER_WEIGHT).min(RING_MAX_POINTS);
        let mut pts: Vec<(u64, u32)> = Vec::new();
        let mut buf = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            // round(w * budget / total), at least one point.
            let count = ((weights[i] * budget * 2 + total) / (2 * total)).max(1);
            for p in 0..count {
                buf.clear();
                buf.extend_from_slice(k.as_bytes());
                buf.push(b'#');
                buf.extend_from_slice(&(p as u32).to_le_bytes());
                pts.push((hash_with_seed(&buf, RING_SEED), i as u32));
            }
        }
        pts.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) = pts.into_iter().unzip();
        let mut d = Digest::new("ring-v1");
        d.u64(keys.len() as u64);
        for k in &keys {
            d.bytes(k.as_bytes());
        }
        for (p, o) in points.iter().zip(&owners) {
            d.u64(*p);
            d.u64(u64::from(*o));
        }
        Ok(HashRing { keys, to_input: order, points, owners, digest: d.finish() })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of points on the ring.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// Backend keys in sorted order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// 16 hex digits identifying the ring in terms of backend keys.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn start(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|&p| p < hash);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// The backend (position in the slice given to `build`) owning the first point at or after `hash`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        Some(self.to_input[self.owners[self.start(hash)] as usize])
    }

    /// The backend of [`HashRing::lookup`] first, then each other backend once, clockwise.
    pub fn fallback(&self, hash: u64) -> RingFallback<'_> {
        let pos = if self.points.is_empty() { 0 } else { self.start(hash) };
        RingFallback { ring: self, pos, probed: 0, remaining: self.keys.len(), seen: Seen::default() }
    }
}

/// Iterator of [`HashRing::fallback`].
#[derive(Debug, Clone)]
pub struct RingFallback<'a> {
    ring: &'a HashRing,
    pos: usize,
    probed: usize,
    remaining: usize,
    seen: Seen,
}

impl Iterator for RingFallback<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let owners = &self.ring.owners;
        while self.remaining > 0 && self.probed < owners.len() {
            let o = owners[self.pos] as usize;
            self.pos += 1;
            if self.pos == owners.len() {
                self.pos = 0;
            }
            self.probed += 1;
            if self.seen.insert(o) {
                self.remaining -= 1;
                return Some(self.ring.to_input[o]);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.remaining > 0), Some(self.remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash::hash_key_bytes;

    fn backends(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1)).collect()
    }

    #[test]
    fn ring_spreads_keys_by_weight_and_moves_few_on_removal() {
        let mut set = backends(10);
        set[0].1 = 3;
        let ring = HashRing::build(&set).unwrap();
        let mut counts = [0usize; 10];
        let keys = 200_000u64;
        for i in 0..keys {
            counts[ring.lookup(hash_key_bytes(&i.to_le_bytes())).unwrap()] += 1;
        }
        let share = |c: usize| c as f64 / keys as f64;
        // Ideal: 3/12 for the heavy one, 1/12 for the others; 160 points per unit keep it within ~25%.
        assert!((share(counts[0]) - 0.25).abs() < 0.05, "{counts:?}");
        for c in &counts[1..] {
            assert!((share(*c) - 1.0 / 12.0).abs() < 0.025, "{counts:?}");
        }
        let mut less = set.clone();
        less.remove(5);
        let smaller = HashRing::build(&less).unwrap();
        let moved = (0..keys)
            .map(|i| hash_key_bytes(&i.to_le_bytes()))
            .filter(|&h| set[ring.lookup(h).unwrap()].0 != less[smaller.lookup(h).unwrap()].0)
            .count();
        // Only the removed backend's keys move.
        assert_eq!(moved, counts[5]);
    }
}
