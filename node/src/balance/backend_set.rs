//! Backend sets as both consistent-hash structures take them: keys checked distinct and weights
//! non-zero, sorted by key (so a structure depends on the set, not the input order), the error both
//! report, and the small seen-set their fallback iterators use.

use lbfleet_api::config::MAX_TABLE_SIZE;

/// A backend set that cannot be turned into a table or a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("table size {0} is not a prime (Maglev needs a prime table size)")]
    NotPrime(u64),
    #[error("table size {0} is above the maximum of {MAX_TABLE_SIZE}")]
    TooLarge(u64),
    #[error("{backends} backends do not fit a table of {table_size} slots")]
    TooManyBackends { backends: usize, table_size: u64 },
    #[error("backend \"{0}\" has weight 0")]
    ZeroWeight(String),
    #[error("backend \"{0}\" is listed twice")]
    DuplicateKey(String),
}

/// Positions of `backends` sorted by key, after checking keys are distinct and weights non-zero.
pub(crate) fn sorted_order<K: AsRef<str>>(backends: &[(K, u32)]) -> Result<Vec<usize>, RingError> {
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].0.as_ref().cmp(backends[b].0.as_ref()));
    for w in order.windows(2) {
        if backends[w[0]].0.as_ref() == backends[w[1]].0.as_ref() {
            return Err(RingError::DuplicateKey(backends[w[0]].0.as_ref().to_string()));
        }
    }
    if let Some((k, _)) = backends.iter().find(|(_, w)| *w == 0) {
        return Err(RingError::ZeroWeight(k.as_ref().to_string()));
    }
    Ok(order)
}

/// A set of small integers: inline for the first 256, on the heap beyond (allocated only if needed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    inline: [u64; 4],
    spill: Vec<u64>,
}

impl Seen {
    /// Insert `i`; true if it was not there yet.
    #[inline]
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let w = if word < 4 {
            &mut self.inline[word]
        } else {
            let j = word - 4;
            if j >= self.spill.len() {
                self.spill.resize(j + 1, 0);
            }
            &mut self.spill[j]
        };
        let fresh = *w & bit == 0;
        *w |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_spills_beyond_256() {
        let mut s = Seen::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.insert(999));
    }
}
