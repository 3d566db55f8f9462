//! Admission on one data-plane listener: its connection caps and rate limits, as the routing snapshot
//! current at each connection or request says. One [`Admission`] lives as long as the listener task,
//! so counts and buckets carry over config changes that keep the listener bound.
//!
//! - Caps ([`crate::accept::ConnCaps`]): `admission.max_connections` and
//!   `admission.max_connections_per_source`, counted at accept. HTTP and TCP listeners refuse a
//!   connection over a cap at once (HTTP with a `503`, TCP by closing it); UDP counts flows.
//! - Rate limits ([`crate::balance::rate`]): the listener's `admission.rate_limit` (HTTP: every request;
//!   TCP: every new connection) and each HTTP route's `rate_limit` (the requests that route takes), a
//!   token bucket per source IP or one for the listener (or route), this node's share of it when
//!   `scope = "fleet"`. A bucket set keeps its tokens when the config changes its rate or burst, and
//!   starts afresh when `per` changes; a limit removed from the config frees its buckets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lbfleet_api::config::{RateKey, RateLimit, RateScope};

use crate::accept::ConnCaps;
use crate::balance::rate::{share, Buckets, Params};

/// The caps and rate-limit buckets of one listener.
#[derive(Debug, Default)]
pub struct Admission {
    pub caps: Arc<ConnCaps>,
    listener: Mutex<Option<Limiter>>,
    routes: Mutex<HashMap<usize, Limiter>>,
    /// Whether `listener` holds a limiter, and how many `routes` holds: a listener without rate
    /// limits takes no lock per request.
    listener_active: AtomicBool,
    routes_active: AtomicUsize,
}

#[derive(Debug)]
struct Limiter {
    limit: RateLimit,
    buckets: Buckets,
}

/// A request or connection over a rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub limit: RateLimit,
    /// What this node enforces of it.
    pub params: Params,
    pub live_nodes: u32,
    /// Until the bucket has a token again.
    pub wait: Duration,
}

impl Limited {
    /// The reason named in a 429 or in the log, e.g. `rate limit of listener "web" exceeded (100 per
    /// second, burst 200, per client address, this node's share of a fleet-wide budget of 300 per
    /// second, burst 600, over 3 live nodes)`; `what` names the listener or route.
    pub fn reason(&self, what: &str) -> String {
        let per = match self.limit.per {
            RateKey::SourceIp => "per client address",
            RateKey::Listener => "for all clients",
        };
        let rate = fmt_rate(self.params.rate);
        let burst = self.params.burst;
        match self.limit.scope {
            RateScope::Node => format!("rate limit of {what} exceeded ({rate} per second, burst {burst}, {per})"),
            RateScope::Fleet => format!(
                "rate limit of {what} exceeded ({rate} per second, burst {burst}, {per}: this node's share of \
                 a fleet-wide {} per second, burst {}, over {} live node{})",
                self.limit.rate,
                self.limit.burst,
                self.live_nodes,
                if self.live_nodes == 1 { "" } else { "s" }
            ),
        }
    }
}

/// A rate as shown: whole numbers without decimals, others with up to two.
fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        let s = format!("{r:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Bucket updates are plain arithmetic: a panic cannot leave one half changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn take(
    slot: &mut Option<Limiter>,
    limit: Option<&RateLimit>,
    live_nodes: u32,
    source: IpAddr,
    now: Instant,
) -> Result<(), Limited> {
    let Some(limit) = limit else {
        *slot = None;
        return Ok(());
    };
    let limiter = match slot {
        Some(l) if l.limit.per == limit.per => {
            l.limit = *limit;
            l
        }
        _ => slot.insert(Limiter { limit: *limit, buckets: Buckets::new(limit.per) }),
    };
    let params = share(limit, live_nodes);
    limiter.buckets.take(source, params, now).map_err(|r| Limited {
        limit: *limit,
        params,
        live_nodes: live_nodes.max(1),
        wait: r.wait,
    })
}

impl Admission {
    /// Take a token of the listener's rate limit `limit` (none: always admitted) for `source`.
    pub fn take_listener(
        &self,
        limit: Option<&RateLimit>,
        live_nodes: u32,
        source: IpAddr,
        now: Instant,
    ) -> Result<(), Limited> {
        if limit.is_none() && !self.listener_active.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut slot = lock(&self.listener);
        let r = take(&mut slot, limit, live_nodes, source, now);
        self.listener_active.store(slot.is_some(), Ordering::Relaxed);
        r
    }

    /// Take a token of route `index`'s rate limit `limit` (none: always admitted) for `source`.
    pub fn take_route(
        &self,
        index: usize,
        limit: Option<&RateLimit>,
        live_nodes: u32,
        source: IpAddr,
        now: Instant,
    ) -> Result<(), Limited> {
        if limit.is_none() && self.routes_active.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let mut routes = lock(&self.routes);
        if limit.is_none() && !routes.contains_key(&index) {
            return Ok(());
        }
        let mut slot = routes.remove(&index);
        let r = take(&mut slot, limit, live_nodes, source, now);
        if let Some(l) = slot {
            routes.insert(index, l);
        }
        self.routes_active.store(routes.len(), Ordering::Relaxed);
        r
    }

    /// Per-source buckets held now by the listener's limit and by every route's (tests, memory).
    pub fn rate_sources(&self) -> usize {
        let listener = lock(&self.listener).as_ref().map_or(0, |l| l.buckets.sources());
        listener + lock(&self.routes).values().map(|l| l.buckets.sources()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32, burst: u32, per: RateKey, scope: RateScope) -> RateLimit {
        RateLimit { rate, burst, per, scope }
    }

    #[test]
    fn buckets_follow_the_config_and_go_with_their_limit() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let one = limit(1, 1, RateKey::SourceIp, RateScope::Node);
        assert!(a.take_listener(Some(&one), 1, ip, t0).is_ok());
        let limited = a.take_listener(Some(&one), 1, ip, t0).unwrap_err();
        assert_eq!(limited.wait, Duration::from_secs(1));
        assert_eq!(
            limited.reason("listener \"web\""),
            "rate limit of listener \"web\" exceeded (1 per second, burst 1, per client address)"
        );
        // A higher burst keeps the (empty) bucket; a change of `per` starts afresh.
        let five = limit(1, 5, RateKey::SourceIp, RateScope::Node);
        assert!(a.take_listener(Some(&five), 1, ip, t0).is_err());
        let all = limit(1, 5, RateKey::Listener, RateScope::Node);
        assert!(a.take_listener(Some(&all), 1, ip, t0).is_ok());
        // Removed: admitted, and the buckets are gone.
        assert!(a.take_listener(None, 1, ip, t0).is_ok());
        assert_eq!(a.rate_sources(), 0);

        // Routes have their own buckets.
        assert!(a.take_route(0, Some(&one), 1, ip, t0).is_ok());
        assert!(a.take_route(0, Some(&one), 1, ip, t0).is_err());
        assert!(a.take_route(1, Some(&one), 1, ip, t0).is_ok());
        assert_eq!(a.rate_sources(), 2);
        assert!(a.take_route(0, None, 1, ip, t0).is_ok());
        assert_eq!(a.rate_sources(), 1);
    }

    #[test]
    fn a_fleet_limit_names_its_share() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let fleet = limit(10, 6, RateKey::Listener, RateScope::Fleet);
        for _ in 0..2 {
            assert!(a.take_listener(Some(&fleet), 3, ip, t0).is_ok());
        }
        let l = a.take_listener(Some(&fleet), 3, ip, t0).unwrap_err();
        assert_eq!(
            l.reason("listener \"web\""),
            "rate limit of listener \"web\" exceeded (3.33 per second, burst 2, for all clients: this \
             node's share of a fleet-wide 10 per second, burst 6, over 3 live nodes)"
        );
        assert!((l.wait.as_secs_f64() - 0.3).abs() < 1e-6, "{:?}", l.wait);
    }
}
