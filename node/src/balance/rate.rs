//! Rate limits, pure: the token bucket, the table of per-source buckets with its memory bound, and
//! the share of a fleet-wide budget that one node enforces. The caller passes the time.
//!
//! A bucket holds at most `burst` tokens and gains `rate` per second; each HTTP request (or new TCP
//! connection) takes one. A bucket that cannot give a token says how long until it can
//! ([`Refused::wait`]); the HTTP proxy sends that, rounded up to whole seconds and at least 1, as
//! `Retry-After` ([`retry_after_secs`]).
//!
//! Fleet-wide budgets ([`share`]): with `scope = "fleet"` each node enforces `rate / N` tokens per
//! second (exact, fractional) and `ceil(burst / N)` tokens of burst (at least 1), N being the number of
//! live nodes of the committed membership ([`super::Routing::live_nodes`]). The sum over the nodes is
//! the budget only when the keyed traffic is spread evenly over them (ECMP over many flows); a client
//! whose flows all reach one node gets that node's share only.
//!
//! Memory: a [`Buckets`] table keyed by source IP holds at most [`MAX_RATE_SOURCES`] buckets. When a
//! new source arrives at a full table, the buckets that have refilled to `burst` are dropped first (a
//! full bucket is the same as no bucket, so nothing is lost); if none has, the least recently used
//! sixteenth of the table is dropped (those sources start again with a full burst).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lbfleet_api::config::{RateKey, RateLimit, RateScope};

/// Most per-source buckets one rate limit (of a listener or a route) keeps on one node: 48 bytes an
/// entry, in a hash table of at most 131,072 slots when full (about 6.4 MiB).
pub const MAX_RATE_SOURCES: usize = 65_536;

/// The rate and burst one node enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Tokens per second (> 0).
    pub rate: f64,
    /// Most tokens a bucket holds (≥ 1).
    pub burst: f64,
}

/// This node's part of `limit`, with `live_nodes` live nodes in the membership (0 counts as 1):
/// the whole of it for `scope = "node"`, `rate / N` and `ceil(burst / N)` (at least 1) for
/// `scope = "fleet"`.
pub fn share(limit: &RateLimit, live_nodes: u32) -> Params {
    let rate = f64::from(limit.rate.max(1));
    let burst = limit.burst.max(1);
    match limit.scope {
        RateScope::Node => Params { rate, burst: f64::from(burst) },
        RateScope::Fleet => {
            let n = live_nodes.max(1);
            Params { rate: rate / f64::from(n), burst: f64::from(burst.div_ceil(n).max(1)) }
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// No token now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refused {
    /// Until the bucket has one token again.
    pub wait: Duration,
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket holding a full burst at `now`.
    pub fn full(p: Params, now: Instant) -> Bucket {
        Bucket { tokens: p.burst, last: now }
    }

    fn refill(&mut self, p: Params, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * p.rate).min(p.burst);
        self.last = self.last.max(now);
    }

    /// Take one token at `now`, or say how long until one is there.
    pub fn take(&mut self, p: Params, now: Instant) -> Result<(), Refused> {
        self.refill(p, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            // Never zero: a wait of 0 would tell the client to retry at once and fail again.
            let wait = Duration::from_secs_f64((missing / p.rate).min(1e9)).max(Duration::from_nanos(1));
            Err(Refused { wait })
        }
    }

    /// Whether the bucket has refilled to its burst by `now` (then it is the same as a new one).
    pub fn is_full(&self, p: Params, now: Instant) -> bool {
        let mut b = *self;
        b.refill(p, now);
        b.tokens >= p.burst
    }

    /// Tokens in the bucket at `now`.
    pub fn tokens(&self, p: Params, now: Instant) -> f64 {
        let mut b = *self;
        b.refill(p, now);
        b.tokens
    }
}

/// The buckets of one rate limit: one for everybody (`per = "listener"`) or one per source IP.
#[derive(Debug, Clone)]
pub struct Buckets {
    per: RateKey,
    one: Option<Bucket>,
    by_source: HashMap<IpAddr, Bucket>,
    max_sources: usize,
}

impl Buckets {
    pub fn new(per: RateKey) -> Buckets {
        Buckets::with_capacity(per, MAX_RATE_SOURCES)
    }

    /// [`Buckets::new`] with another bound on the per-source table (tests).
    pub fn with_capacity(per: RateKey, max_sources: usize) -> Buckets {
        Buckets { per, one: None, by_source: HashMap::new(), max_sources: max_sources.max(1) }
    }

    pub fn per(&self) -> RateKey {
        self.per
    }

    /// Per-source buckets held now.
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }

    /// Take a token for a request or connection from `source` at `now`.
    pub fn take(&mut self, source: IpAddr, p: Params, now: Instant) -> Result<(), Refused> {
        match self.per {
            RateKey::Listener => self.one.get_or_insert_with(|| Bucket::full(p, now)).take(p, now),
            RateKey::SourceIp => {
                if !self.by_source.contains_key(&source) && self.by_source.len() >= self.max_sources {
                    self.make_room(p, now);
                }
                self.by_source.entry(source).or_insert_with(|| Bucket::full(p, now)).take(p, now)
            }
        }
    }

    /// Drop the full buckets; if none is, the least recently used sixteenth (at least one).
    fn make_room(&mut self, p: Params, now: Instant) {
        self.by_source.retain(|_, b| !b.is_full(p, now));
        if self.by_source.len() < self.max_sources {
            return;
        }
        let drop = (self.max_sources / 16).max(1);
        let mut ages: Vec<Instant> = self.by_source.values().map(|b| b.last).collect();
        let (_, cut, _) = ages.select_nth_unstable(drop - 1);
        let cut = *cut;
        let mut left = drop;
        self.by_source.retain(|_, b| {
            if left > 0 && b.last <= cut {
                left -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MS: Duration = Duration::from_millis(1);

    fn limit(rate: u32, burst: u32, scope: RateScope) -> RateLimit {
        RateLimit { rate, burst, per: RateKey::SourceIp, scope }
    }

    fn src(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        let p = share(&limit(10, 3, RateScope::Node), 1);
        let t0 = Instant::now();
        let mut b = Bucket::full(p, t0);
        for _ in 0..3 {
            assert_eq!(b.take(p, t0), Ok(()));
        }
        // Empty: one token comes after 1/10 s.
        let Err(r) = b.take(p, t0) else { panic!("a fourth token out of a burst of 3") };
        assert!((r.wait.as_secs_f64() - 0.1).abs() < 1e-9, "{r:?}");
        assert!(b.take(p, t0 + 99 * MS).is_err());
        assert_eq!(b.take(p, t0 + 100 * MS), Ok(()));
        // Half a token saved: the wait is the missing half.
        let Err(r) = b.take(p, t0 + 150 * MS) else { panic!("token out of half a token") };
        assert!((r.wait.as_secs_f64() - 0.05).abs() < 1e-9, "{r:?}");
        // Never more than the burst, however long it rested.
        assert!(b.is_full(p, t0 + Duration::from_secs(3600)));
        assert_eq!(b.tokens(p, t0 + Duration::from_secs(3600)), 3.0);
        // Time going backwards (two threads with slightly different `now`) takes nothing away.
        let mut c = Bucket::full(p, t0 + Duration::from_secs(1));
        assert_eq!(c.take(p, t0), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        // A rate of 1 per 10 s is not expressible; a rate of 1/s with an empty bucket waits 1 s.
        let p = share(&limit(1, 1, RateScope::Node), 1);
        let t0 = Instant::now();
        let mut b = Bucket::full(p, t0);
        b.take(p, t0).unwrap();
        assert_eq!(retry_after_secs(b.take(p, t0).unwrap_err().wait), 1);
    }

    #[test]
    fn a_fleet_budget_is_divided_by_the_live_nodes_and_the_burst_rounded_up() {
        let fleet = limit(90, 10, RateScope::Fleet);
        assert_eq!(share(&fleet, 1), Params { rate: 90.0, burst: 10.0 });
        assert_eq!(share(&fleet, 3), Params { rate: 30.0, burst: 4.0 });
        assert_eq!(share(&fleet, 2), Params { rate: 45.0, burst: 5.0 });
        // No live node known yet: the whole budget, not a division by zero.
        assert_eq!(share(&fleet, 0), share(&fleet, 1));
        // More nodes than tokens: each keeps at least one token of burst; the rate stays exact.
        assert_eq!(share(&limit(2, 2, RateScope::Fleet), 5), Params { rate: 0.4, burst: 1.0 });
        // Per node: the whole of it whatever N is.
        assert_eq!(share(&limit(90, 10, RateScope::Node), 3), Params { rate: 90.0, burst: 10.0 });
    }

    #[test]
    fn a_table_entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<(IpAddr, Bucket)>(), 48);
    }

    #[test]
    fn buckets_are_per_source_or_one_for_everybody() {
        let p = share(&limit(1, 2, RateScope::Node), 1);
        let t0 = Instant::now();
        let mut per_source = Buckets::new(RateKey::SourceIp);
        assert!(per_source.take(src(1), p, t0).is_ok());
        assert!(per_source.take(src(1), p, t0).is_ok());
        assert!(per_source.take(src(1), p, t0).is_err());
        assert!(per_source.take(src(2), p, t0).is_ok(), "another source has its own bucket");
        assert_eq!(per_source.sources(), 2);
        let mut one = Buckets::new(RateKey::Listener);
        assert!(one.take(src(1), p, t0).is_ok());
        assert!(one.take(src(2), p, t0).is_ok());
        assert!(one.take(src(3), p, t0).is_err(), "one bucket for all");
        assert_eq!(one.sources(), 0);
    }

    #[test]
    fn the_source_table_is_bounded_dropping_full_buckets_first_then_the_oldest() {
        let p = share(&limit(1, 5, RateScope::Node), 1);
        let t0 = Instant::now();
        let mut t = Buckets::with_capacity(RateKey::SourceIp, 32);
        // 32 sources each take a token at t0 + i ms: none is full (each is 1 s from refilled).
        for i in 0..32u8 {
            t.take(src(i), p, t0 + u32::from(i) * MS).unwrap();
        }
        assert_eq!(t.sources(), 32);
        // A 33rd: nothing full, the oldest 32/16 = 2 go.
        t.take(src(100), p, t0 + 40 * MS).unwrap();
        assert_eq!(t.sources(), 31);
        assert!(!t.by_source.contains_key(&src(0)) && !t.by_source.contains_key(&src(1)));
        assert!(t.by_source.contains_key(&src(2)));
        // Source 0 starts again with a full burst (what eviction costs).
        assert_eq!(t.take(src(0), p, t0 + 41 * MS), Ok(()));
        // Later, every bucket has refilled: one new source clears all the full ones, losing nothing.
        let later = t0 + Duration::from_secs(10);
        for i in 200..=201u8 {
            t.take(src(i), p, later).unwrap();
        }
        assert_eq!(t.sources(), 2, "the full buckets were dropped when room was needed");
    }
}
