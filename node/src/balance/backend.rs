//! One backend as the data plane sees it ([`BackendHandle`]: address, key, weight, this node's
//! in-flight count) and the [`InFlight`] guard that keeps a request counted while it lives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One backend as the data plane sees it: where it is, its weight, and this node's in-flight count.
///
/// The in-flight counter is shared by every handle of the same backend across selector rebuilds (see
/// [`BackendHandle::with_counter`]), so requests started before a rebuild are still counted after it.
#[derive(Debug)]
pub struct BackendHandle {
    pub(super) addr: std::net::SocketAddr,
    pub(super) key: String,
    pub(super) weight: u32,
    pub(super) inflight: Arc<AtomicU64>,
}

impl BackendHandle {
    /// A handle with a fresh in-flight counter. The key is the address string, as `Backend::key()`.
    pub fn new(addr: std::net::SocketAddr, weight: u32) -> Self {
        Self::with_counter(addr, weight, Arc::new(AtomicU64::new(0)))
    }

    /// A handle sharing an existing in-flight counter (the same backend after a rebuild).
    pub fn with_counter(addr: std::net::SocketAddr, weight: u32, inflight: Arc<AtomicU64>) -> Self {
        BackendHandle { addr, key: addr.to_string(), weight, inflight }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The stable key that places the backend on hash tables (its address string).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests or connections this node has open to the backend.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The shared in-flight counter (to carry it into a rebuilt handle).
    pub fn counter(&self) -> &Arc<AtomicU64> {
        &self.inflight
    }

    /// Count one request or connection in flight until the guard is dropped.
    pub fn track(&self) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight { counter: Arc::clone(&self.inflight) }
    }

    /// [`BackendHandle::track`] unless `max` (a pool's `max_connections_per_backend`) are in flight
    /// already; `None` then. Check and count are one atomic step, so concurrent picks never exceed it.
    pub fn try_track(&self, max: Option<u32>) -> Option<InFlight> {
        let Some(max) = max else { return Some(self.track()) };
        self.inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < u64::from(max)).then_some(n + 1))
            .ok()?;
        Some(InFlight { counter: Arc::clone(&self.inflight) })
    }

    /// Whether another request or connection fits under `max` now (a hint for ordering candidates;
    /// [`BackendHandle::try_track`] decides).
    pub fn has_room(&self, max: Option<u32>) -> bool {
        max.is_none_or(|m| self.inflight() < u64::from(m))
    }
}

/// RAII guard of one in-flight request or connection; decrements the backend's count on drop. Owns its
/// counter, so it can move into a task and outlive the selector it came from.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    counter: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_track_never_goes_above_the_limit_and_frees_a_place_on_drop() {
        let b = BackendHandle::new("127.0.0.1:1".parse().unwrap(), 1);
        let g1 = b.try_track(Some(2)).unwrap();
        let g2 = b.try_track(Some(2)).unwrap();
        assert!(b.try_track(Some(2)).is_none());
        assert!(!b.has_room(Some(2)));
        assert_eq!(b.inflight(), 2);
        drop(g1);
        assert!(b.has_room(Some(2)));
        let _g3 = b.try_track(Some(2)).unwrap();
        // Unlimited: always counted.
        let _g4 = b.try_track(None).unwrap();
        assert_eq!(b.inflight(), 3);
        drop(g2);
        // Concurrent takers: never more than the limit at once.
        let b = Arc::new(BackendHandle::new("127.0.0.1:2".parse().unwrap(), 1));
        let held: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..100).filter_map(|_| b.try_track(Some(50))).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 50);
        assert_eq!(b.inflight(), 50);
    }
}
