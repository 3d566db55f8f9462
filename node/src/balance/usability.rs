//! The node-local usability of each backend that the proxies consult at pick time:
//! [`OutlierTracker`], held by every proxy through `ProxyContext::outlier`.
//!
//! It combines two node-local views: passive ejections decided by the pure [`super::ejection`] rules
//! from live traffic, and the active checks' local view ([`super::local_check::LocalState`]): a backend
//! this node's checker sees down is not usable on this node, whatever the fleet-wide vote says (see
//! `crate::health` for how the two interact). Its hot-path methods ([`OutlierTracker::is_usable`],
//! [`OutlierTracker::record_success`]) take no lock: one `ArcSwap` load, two hash lookups and a few
//! atomics. A lock (per pool) is taken only when a failure count reaches its threshold and an ejection
//! is decided.
//!
//! How a proxy uses it (`pool` is the pool's name, `ctx` the `ProxyContext`):
//! - pick: `selector.pick_usable(key, ctx.outlier.usable_in(pool))` (one snapshot load per request);
//!   when that yields nothing, fall back to `selector.pick(key)` rather than refuse;
//! - a connect attempt failed (refused, timed out): `ctx.outlier.record_connect_failure(pool, addr)`;
//! - HTTP: a response head arrived: `ctx.outlier.record_response(pool, addr, status)`; a backend
//!   that failed before answering or did not answer in time counts as the 502 / 504 the client gets;
//! - TCP: the connection to the backend was established: `ctx.outlier.record_success(pool, addr)`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use lbfleet_api::config::{ClusterConfig, OutlierDetection};
use serde::Serialize;

use super::backend::BackendHandle;
use super::ejection::{threshold_reached, EjectionBook};
use super::local_check::LocalState;

/// Hot-path state of one backend on this node.
#[derive(Debug, Default)]
struct BackendEntry {
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    /// End of the current ejection in ms since the tracker's epoch, plus one; 0 when never ejected.
    ejected_until_ms: AtomicU64,
    /// The active check's view ([`LocalState`] as 0 unknown, 1 up, 2 down).
    active: AtomicU8,
    /// Passive ejections on this node since the backend joined its pool's config (never reset).
    ejections_total: AtomicU64,
}

fn encode(s: LocalState) -> u8 {
    match s {
        LocalState::Unknown => 0,
        LocalState::Up => 1,
        LocalState::Down => 2,
    }
}

fn decode(v: u8) -> LocalState {
    match v {
        1 => LocalState::Up,
        2 => LocalState::Down,
        _ => LocalState::Unknown,
    }
}

#[derive(Debug)]
struct PoolEntry {
    cfg: OutlierDetection,
    size: usize,
    backends: HashMap<SocketAddr, Arc<BackendEntry>>,
    book: Arc<Mutex<EjectionBook>>,
}

/// What this node knows locally about one backend (for `/api/v1/state` under `local_health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalBackendHealth {
    pub pool: String,
    pub addr: String,
    /// The active check's view on this node.
    pub active: &'static str,
    /// Passively ejected on this node for this many more milliseconds.
    pub ejected_ms: Option<u64>,
    pub ejections: u32,
    /// Passive ejections on this node since the backend joined its pool (never reset).
    pub ejections_total: u64,
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    /// Whether this node's proxies pick it (given that it is eligible fleet-wide).
    pub usable: bool,
}

/// Node-local usability of every backend: passive ejections and the active checks' local view.
#[derive(Debug)]
pub struct OutlierTracker {
    pools: ArcSwap<HashMap<String, Arc<PoolEntry>>>,
    epoch: Instant,
}

impl Default for OutlierTracker {
    fn default() -> Self {
        OutlierTracker::new()
    }
}

impl OutlierTracker {
    pub fn new() -> OutlierTracker {
        OutlierTracker { pools: ArcSwap::from_pointee(HashMap::new()), epoch: Instant::now() }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Follow a committed config: pools and backends appear and disappear; a backend that stays keeps
    /// its counts, its ejection and its active view.
    pub fn update(&self, config: Option<&ClusterConfig>) {
        let old = self.pools.load();
        let mut next = HashMap::new();
        for pool in config.map(|c| c.pool.as_slice()).unwrap_or_default() {
            let prev = old.get(&pool.name);
            let backends: HashMap<SocketAddr, Arc<BackendEntry>> = pool
                .backend
                .iter()
                .map(|b| {
                    let e = prev.and_then(|p| p.backends.get(&b.addr)).cloned().unwrap_or_default();
                    (b.addr, e)
                })
                .collect();
            let book = prev.map(|p| Arc::clone(&p.book)).unwrap_or_default();
            book.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|a| backends.contains_key(a));
            let entry = PoolEntry { cfg: pool.outlier.clone(), size: pool.backend.len(), backends, book };
            next.insert(pool.name.clone(), Arc::new(entry));
        }
        self.pools.store(Arc::new(next));
    }

    fn entry(&self, pool: &str, addr: SocketAddr) -> Option<(Arc<PoolEntry>, Arc<BackendEntry>)> {
        let pools = self.pools.load();
        let p = pools.get(pool)?;
        let b = p.backends.get(&addr)?;
        Some((Arc::clone(p), Arc::clone(b)))
    }

    /// Whether this node's proxies may pick `addr` of `pool` now: not passively ejected and not seen
    /// down by this node's active check. Unknown pools and backends are usable.
    #[inline]
    pub fn is_usable(&self, pool: &str, addr: SocketAddr) -> bool {
        let pools = self.pools.load();
        let Some(b) = pools.get(pool).and_then(|p| p.backends.get(&addr)) else {
            return true;
        };
        if b.active.load(Ordering::Relaxed) == encode(LocalState::Down) {
            return false;
        }
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms(Instant::now()) + 1 >= until
    }

    /// A predicate for `PoolSelector::pick_usable` over the backends of `pool`: the pool's entry is
    /// looked up once, each backend then costs one hash lookup and two atomic loads.
    pub fn usable_in(&self, pool: &str) -> impl FnMut(&BackendHandle) -> bool {
        let entry = self.pools.load().get(pool).cloned();
        let epoch = self.epoch;
        let mut now_ms = None;
        move |b: &BackendHandle| {
            let Some(e) = entry.as_ref().and_then(|p| p.backends.get(&b.addr())) else {
                return true;
            };
            if e.active.load(Ordering::Relaxed) == encode(LocalState::Down) {
                return false;
            }
            let until = e.ejected_until_ms.load(Ordering::Relaxed);
            if until == 0 {
                return true;
            }
            let now = *now_ms
                .get_or_insert_with(|| Instant::now().saturating_duration_since(epoch).as_millis() as u64);
            now + 1 >= until
        }
    }

    /// A connection to the backend could not be established.
    pub fn record_connect_failure(&self, pool: &str, addr: SocketAddr) {
        let Some((p, b)) = self.entry(pool, addr) else { return };
        let n = b.consecutive_connect_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if threshold_reached(n, p.cfg.consecutive_connect_failures) {
            self.eject(pool, &p, &b, addr, format!("{n} connect failures in a row"));
        }
    }

    /// The backend answered with `status`: a 5xx counts toward `consecutive_5xx`, anything else is a
    /// success. Either way the connect succeeded.
    pub fn record_response(&self, pool: &str, addr: SocketAddr, status: u16) {
        if !(500..=599).contains(&status) {
            return self.record_success(pool, addr);
        }
        let Some((p, b)) = self.entry(pool, addr) else { return };
        reset(&b.consecutive_connect_failures);
        let n = b.consecutive_5xx.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if threshold_reached(n, p.cfg.consecutive_5xx) {
            self.eject(pool, &p, &b, addr, format!("{n} responses with a 5xx status in a row"));
        }
    }

    /// A connection (TCP) or an exchange (HTTP) with the backend succeeded.
    #[inline]
    pub fn record_success(&self, pool: &str, addr: SocketAddr) {
        let pools = self.pools.load();
        if let Some(b) = pools.get(pool).and_then(|p| p.backends.get(&addr)) {
            reset(&b.consecutive_5xx);
            reset(&b.consecutive_connect_failures);
        }
    }

    fn eject(&self, pool: &str, p: &PoolEntry, b: &BackendEntry, addr: SocketAddr, why: String) {
        let now = Instant::now();
        // A poisoned lock would turn ejection off for the pool for good: take the book back instead
        // (its bookkeeping stays consistent; nothing in it panics).
        let mut book = p.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match book.try_eject(addr, now, &p.cfg, p.size) {
            Some(until) => {
                b.ejected_until_ms.store(self.now_ms(until) + 1, Ordering::Relaxed);
                b.ejections_total.fetch_add(1, Ordering::Relaxed);
                reset(&b.consecutive_5xx);
                reset(&b.consecutive_connect_failures);
                tracing::warn!(
                    pool,
                    backend = %addr,
                    ejection = book.ejections(addr),
                    duration = %humantime::format_duration(until.saturating_duration_since(now)),
                    "backend ejected on this node: {why}"
                );
            }
            None if !book.is_ejected(addr, now) => {
                tracing::debug!(pool, backend = %addr, "not ejected ({why}): max_ejection_percent reached");
            }
            None => {}
        }
    }

    /// Record the active check's view of `addr` in `pool` (the checker calls this on every transition,
    /// and with `Unknown` when it stops).
    pub fn set_active(&self, pool: &str, addr: SocketAddr, state: LocalState) {
        if let Some((_, b)) = self.entry(pool, addr) {
            b.active.store(encode(state), Ordering::Relaxed);
        }
    }

    /// The active check's view of `addr` in `pool`.
    pub fn active(&self, pool: &str, addr: SocketAddr) -> LocalState {
        self.entry(pool, addr).map_or(LocalState::Unknown, |(_, b)| decode(b.active.load(Ordering::Relaxed)))
    }

    /// Every backend as this node sees it, by pool then address.
    pub fn snapshot(&self) -> Vec<LocalBackendHealth> {
        let now = Instant::now();
        let now_ms = self.now_ms(now);
        let pools = self.pools.load();
        let mut out = Vec::new();
        for (name, p) in pools.iter() {
            let book = p.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            for (addr, b) in &p.backends {
                let until = b.ejected_until_ms.load(Ordering::Relaxed);
                let ejected_ms = (until > now_ms + 1).then(|| until - now_ms - 1);
                out.push(LocalBackendHealth {
                    pool: name.clone(),
                    addr: addr.to_string(),
                    active: decode(b.active.load(Ordering::Relaxed)).as_str(),
                    ejected_ms,
                    ejections: book.ejections(*addr),
                    ejections_total: b.ejections_total.load(Ordering::Relaxed),
                    consecutive_5xx: b.consecutive_5xx.load(Ordering::Relaxed),
                    consecutive_connect_failures: b.consecutive_connect_failures.load(Ordering::Relaxed),
                    usable: self.is_usable(name, *addr),
                });
            }
        }
        out.sort_by(|a, b| (&a.pool, &a.addr).cmp(&(&b.pool, &b.addr)));
        out
    }
}

/// Set a counter to zero, writing only when it is not already zero (keeps the cache line shared).
#[inline]
fn reset(c: &AtomicU32) {
    if c.load(Ordering::Relaxed) != 0 {
        c.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::config::{parse, Format};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9000 + i))
    }

    fn tracker(outlier: &str) -> OutlierTracker {
        let text = format!(
            "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9001\"\n[[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9003\"\n[pool.outlier]\n{outlier}\n"
        );
        let config = parse(&text, Format::Toml).unwrap();
        let t = OutlierTracker::new();
        t.update(Some(&config));
        t
    }

    #[test]
    fn tracker_ejects_after_consecutive_connect_failures_only() {
        let t =
            tracker("consecutive_connect_failures = 3\nbase_ejection = \"30s\"\nmax_ejection_percent = 50");
        t.record_connect_failure("web", addr(1));
        t.record_connect_failure("web", addr(1));
        t.record_success("web", addr(1));
        t.record_connect_failure("web", addr(1));
        t.record_connect_failure("web", addr(1));
        assert!(t.is_usable("web", addr(1)), "a success in between resets the count");
        t.record_connect_failure("web", addr(1));
        assert!(!t.is_usable("web", addr(1)));
        assert!(t.is_usable("web", addr(2)));
        assert!(t.is_usable("other", addr(1)), "unknown pools are usable");
        let mut usable = t.usable_in("web");
        assert!(!usable(&BackendHandle::new(addr(1), 1)));
        assert!(usable(&BackendHandle::new(addr(2), 1)));
        assert!(t.usable_in("other")(&BackendHandle::new(addr(1), 1)));
        let snap = t.snapshot();
        let b1 = snap.iter().find(|b| b.addr == "127.0.0.1:9001").unwrap();
        assert!(!b1.usable && b1.ejections == 1 && b1.ejected_ms.is_some_and(|ms| ms > 20_000));
    }

    #[test]
    fn tracker_counts_5xx_and_respects_the_cap() {
        let t = tracker("consecutive_5xx = 2\nmax_ejection_percent = 34");
        for a in [addr(1), addr(2)] {
            t.record_response("web", a, 503);
            t.record_response("web", a, 200);
            t.record_response("web", a, 500);
            assert!(t.is_usable("web", a), "non-consecutive 5xx do not eject");
            t.record_response("web", a, 502);
        }
        assert!(!t.is_usable("web", addr(1)));
        assert!(t.is_usable("web", addr(2)), "34% of 3 backends is one ejection at a time");
    }

    #[test]
    fn disabled_detectors_never_eject_and_config_updates_keep_state() {
        let t = tracker("consecutive_5xx = 0\nconsecutive_connect_failures = 0");
        for _ in 0..100 {
            t.record_response("web", addr(1), 500);
            t.record_connect_failure("web", addr(1));
        }
        assert!(t.is_usable("web", addr(1)));

        let t = tracker("consecutive_connect_failures = 1");
        t.record_connect_failure("web", addr(2));
        t.set_active("web", addr(3), LocalState::Down);
        assert!(!t.is_usable("web", addr(3)), "seen down by this node's active check");
        let config = parse(
            "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9003\"\n[pool.outlier]\nconsecutive_connect_failures = 1\n",
            Format::Toml,
        )
        .unwrap();
        t.update(Some(&config));
        assert!(!t.is_usable("web", addr(2)), "ejection survives an unrelated config change");
        assert_eq!(t.active("web", addr(3)), LocalState::Down);
        t.set_active("web", addr(3), LocalState::Up);
        assert!(t.is_usable("web", addr(3)));
        t.update(None);
        assert!(t.snapshot().is_empty());
    }

    #[test]
    fn an_ejected_backend_moves_only_its_own_keys_on_this_node() {
        use crate::balance::PoolSelector;
        let text = "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\ntable_size = 1009\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9001\"\n[[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9003\"\n[pool.outlier]\nconsecutive_connect_failures = 1\n";
        let config = parse(text, Format::Toml).unwrap();
        let sel = PoolSelector::build(&config.pool[0], None, None).unwrap();
        let t = OutlierTracker::new();
        t.update(Some(&config));
        let before: Vec<SocketAddr> = (0..2000u64).map(|k| sel.pick(k).next().unwrap().addr()).collect();
        t.record_connect_failure("web", addr(2));
        let mut moved = 0;
        for (k, was) in before.iter().enumerate() {
            let now = sel.pick_usable(k as u64, t.usable_in("web")).next().unwrap().addr();
            if *was == addr(2) {
                assert_ne!(now, addr(2));
                moved += 1;
            } else {
                assert_eq!(now, *was, "key {k} kept its backend");
            }
        }
        assert!(moved > 400, "about a third of the keys were on the ejected backend: {moved}");
    }
}
