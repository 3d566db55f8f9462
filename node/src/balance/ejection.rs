//! Passive outlier detection, the pure part: who is ejected on this node until when, how many times,
//! under the pool's `max_ejection_percent` cap ([`EjectionBook`], [`threshold_reached`],
//! [`ejection_time`], [`max_ejected`]). Time is an argument; nothing here reads a clock.
//!
//! Rules (the pool's `outlier` section; a threshold of 0 disables that detector):
//! - `consecutive_connect_failures` failed connects in a row, or `consecutive_5xx` responses with a
//!   5xx status in a row, eject the backend *on this node* at once;
//! - the n-th ejection lasts `base_ejection × n`, capped at `max_ejection`; the count starts over when
//!   the backend has stayed in service for `max_ejection` since its last ejection ended;
//! - at most `max_ejection_percent` of the pool's configured backends are ejected at a time (rounded
//!   down, but at least one when the percentage is above 0), and never all of them: at least one backend
//!   always stays usable;
//! - an ejected backend returns by itself when its time is up, with its failure counts at zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbfleet_api::config::{OutlierDetection, MAX_EJECTION};

/// Whether a consecutive count `after` has reached `threshold` (0 disables).
pub fn threshold_reached(after: u32, threshold: u32) -> bool {
    threshold > 0 && after >= threshold
}

/// How long the `n`-th ejection (n ≥ 1) lasts: `base × n`, at most `max`, and never more than
/// [`MAX_EJECTION`] (validation refuses more; this holds for configs committed before it did).
pub fn ejection_time(cfg: &OutlierDetection, n: u32) -> Duration {
    cfg.base_ejection.saturating_mul(n.max(1)).min(cfg.max_ejection).min(MAX_EJECTION)
}

/// How many of `pool_size` backends may be ejected at once.
pub fn max_ejected(pool_size: usize, max_percent: u32) -> usize {
    if pool_size <= 1 || max_percent == 0 {
        return 0;
    }
    let by_percent = (pool_size * max_percent.min(100) as usize / 100).max(1);
    by_percent.min(pool_size - 1)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ejections {
    /// Ejections so far (the multiplier of the next one, minus one).
    count: u32,
    /// End of the current (or last) ejection.
    until: Option<Instant>,
}

/// Pure ejection bookkeeping of one pool on one node.
#[derive(Debug, Clone, Default)]
pub struct EjectionBook {
    entries: BTreeMap<SocketAddr, Ejections>,
}

impl EjectionBook {
    /// Whether `addr` is ejected at `now`.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.entries.get(&addr).and_then(|e| e.until).is_some_and(|u| u > now)
    }

    /// How many backends are ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.until.is_some_and(|u| u > now)).count()
    }

    /// Ejections of `addr` so far.
    pub fn ejections(&self, addr: SocketAddr) -> u32 {
        self.entries.get(&addr).map_or(0, |e| e.count)
    }

    /// Eject `addr` at `now` if the pool's cap allows; returns the ejection's end. `None`: already
    /// ejected, or ejecting it would exceed `max_ejection_percent` (or leave no backend usable).
    pub fn try_eject(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        cfg: &OutlierDetection,
        pool_size: usize,
    ) -> Option<Instant> {
        if self.is_ejected(addr, now) {
            return None;
        }
        if self.ejected_count(now) >= max_ejected(pool_size, cfg.max_ejection_percent) {
            return None;
        }
        let e = self.entries.entry(addr).or_default();
        // A backend that stayed in service for `max_ejection` since its last ejection starts over.
        if e.until.is_some_and(|u| now.saturating_duration_since(u) >= cfg.max_ejection.min(MAX_EJECTION)) {
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        // Never panics (this runs under the pool's lock): an end past what `Instant` holds is not
        // reachable with a bounded duration, and falls back to the bound if it were.
        let time = ejection_time(cfg, e.count);
        let until = now.checked_add(time).or_else(|| now.checked_add(MAX_EJECTION)).unwrap_or(now);
        e.until = Some(until);
        Some(until)
    }

    /// Forget backends no longer in the pool.
    pub fn retain(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.entries.retain(|a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base: u64, max: u64, percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_connect_failures: 2,
            base_ejection: Duration::from_secs(base),
            max_ejection: Duration::from_secs(max),
            max_ejection_percent: percent,
        }
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9000 + i))
    }

    #[test]
    fn thresholds_and_zero_disables() {
        assert!(!threshold_reached(1, 2));
        assert!(threshold_reached(2, 2));
        assert!(threshold_reached(3, 2));
        assert!(!threshold_reached(1000, 0));
    }

    #[test]
    fn ejection_time_grows_linearly_up_to_the_cap() {
        let c = cfg(30, 100, 50);
        assert_eq!(ejection_time(&c, 1), Duration::from_secs(30));
        assert_eq!(ejection_time(&c, 3), Duration::from_secs(90));
        assert_eq!(ejection_time(&c, 4), Duration::from_secs(100));
        assert_eq!(ejection_time(&c, u32::MAX), Duration::from_secs(100));
    }

    #[test]
    fn a_huge_ejection_time_is_capped_and_never_overflows() {
        let huge = OutlierDetection {
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
            ..OutlierDetection::default()
        };
        assert_eq!(ejection_time(&huge, 1), MAX_EJECTION);
        let mut book = EjectionBook::default();
        let now = Instant::now();
        let until = book.try_eject(addr(1), now, &huge, 4).expect("ejected");
        assert_eq!(until, now + MAX_EJECTION);
        assert!(book.is_ejected(addr(1), now + Duration::from_secs(3600)));
        assert!(!book.is_ejected(addr(1), until));
        // A second backend still fits under the cap: ejection stays on.
        assert!(book.try_eject(addr(2), now, &huge, 4).is_some());
    }

    #[test]
    fn cap_never_ejects_the_last_backend() {
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 100), 1);
        assert_eq!(max_ejected(3, 10), 1, "at least one when the percentage is above zero");
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(10, 0), 0);
        assert_eq!(max_ejected(4, 250), 3);
    }

    #[test]
    fn ejection_expires_and_repeats_last_longer() {
        let c = cfg(10, 25, 50);
        let mut book = EjectionBook::default();
        let t0 = Instant::now();
        let until = book.try_eject(addr(1), t0, &c, 4).unwrap();
        assert_eq!(until - t0, Duration::from_secs(10));
        assert!(book.is_ejected(addr(1), t0 + Duration::from_secs(9)));
        assert_eq!(book.try_eject(addr(1), t0 + Duration::from_secs(1), &c, 4), None, "already ejected");
        let t1 = t0 + Duration::from_secs(10);
        assert!(!book.is_ejected(addr(1), t1), "back when its time is up");
        let until = book.try_eject(addr(1), t1, &c, 4).unwrap();
        assert_eq!(until - t1, Duration::from_secs(20), "second ejection: base × 2");
        let t2 = until;
        let until = book.try_eject(addr(1), t2, &c, 4).unwrap();
        assert_eq!(until - t2, Duration::from_secs(25), "capped at max_ejection");
        assert_eq!(book.ejections(addr(1)), 3);
        // In service for max_ejection since the last one ended: the count starts over.
        let t3 = until + Duration::from_secs(25);
        let until = book.try_eject(addr(1), t3, &c, 4).unwrap();
        assert_eq!(until - t3, Duration::from_secs(10));
        assert_eq!(book.ejections(addr(1)), 1);
    }

    #[test]
    fn max_ejection_percent_limits_concurrent_ejections() {
        let c = cfg(10, 100, 50);
        let mut book = EjectionBook::default();
        let t0 = Instant::now();
        assert!(book.try_eject(addr(1), t0, &c, 4).is_some());
        assert!(book.try_eject(addr(2), t0, &c, 4).is_some());
        assert_eq!(book.try_eject(addr(3), t0, &c, 4), None, "50% of 4 already ejected");
        assert_eq!(book.ejected_count(t0), 2);
        // Once one returns, another may go.
        let later = t0 + Duration::from_secs(11);
        assert!(book.try_eject(addr(3), later, &c, 4).is_some());
        // A pool of one never ejects.
        let mut solo = EjectionBook::default();
        assert_eq!(solo.try_eject(addr(1), t0, &cfg(10, 100, 100), 1), None);
    }
}
