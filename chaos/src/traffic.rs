//! Client traffic through the data plane during a run: HTTP requests to the demo listener of random
//! nodes, each from one of [`KEYS`] source addresses (the demo pool hashes the source IP, so the source
//! is the key), on a new connection each, retried once on another node when the first try fails.
//! Through a front's VIP ([`Front::Vip`], the compose target) every request comes from the host's one
//! address: the key is the header [`KEY_HEADER`] (the run's pool hashes it), and the retry goes to the
//! VIP again on a new connection, which the router may hash to another node.
//!
//! Every request's result and the backend that answered (`x-backend`) are recorded; the verdicts are
//! the first-try and one-retry success rates, and that one key got one backend from every node while
//! the backend set was unchanged. A `backend-kill` fault changes the set: the run counts *backend
//! epochs* (even: the set is stable; odd: a backend is being ejected or coming back, and nodes may
//! disagree), and a request is checked for its key's backend only when it started and ended in one
//! stable epoch, against the other requests of that epoch. [`Request`] and [`summarize`] serve the
//! UDP flows of [`crate::udp`] too (there the key is the flow's source port).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::run::{epoch_of, Shared};

/// Source addresses used as keys: 127.0.2.1 ..= 127.0.2.KEYS (or values of [`KEY_HEADER`]).
pub const KEYS: u8 = 32;
/// The request header that carries the key through a VIP.
pub const KEY_HEADER: &str = "x-chaos-key";

/// Where the requests go.
#[derive(Debug, Clone)]
pub enum Front {
    /// A random node's address and the port of its demo listener; the source address is the key.
    Nodes(Vec<Ipv4Addr>, u16),
    /// One virtual IP and port in front of every node; the key is a header.
    Vip(SocketAddr),
}
/// Deadline of one request (connect, send, whole answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes read of one answer.
const MAX_ANSWER: usize = 64 * 1024;
/// Most requests one traffic client sends in a run.
pub const MAX_REQUESTS_PER_CLIENT: usize = 50_000;
/// Pause between requests of one client.
const PACE: Duration = Duration::from_millis(10);

/// One request and what came of it.
#[derive(Debug, Clone)]
pub struct Request {
    pub at_ms: u64,
    /// HTTP: the last octet of the source address; UDP: the flow's source port.
    pub key: u32,
    /// The stable backend epoch the request started and ended in; `None` when the set changed meanwhile.
    pub epoch: Option<u64>,
    /// The backend that answered the first try, if it succeeded.
    pub first: Option<String>,
    /// The node and the backend of the retry, when the first try failed.
    pub retry: Option<(usize, Option<String>)>,
}

impl Request {
    pub fn ok_first(&self) -> bool {
        self.first.is_some()
    }
    pub fn ok_eventually(&self) -> bool {
        self.first.is_some() || self.retry.as_ref().is_some_and(|(_, b)| b.is_some())
    }
}

/// What the traffic verdicts found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub requests: usize,
    pub first_try: f64,
    pub one_retry: f64,
    /// Keys that got more than one backend within one stable epoch, with the backends.
    pub split_keys: Vec<(u32, Vec<String>)>,
    /// Requests that started or ended while the backend set changed (not in the same-key check).
    pub unstable: usize,
}

/// The rates over `reqs`; with `stable_only`, over the requests of stable epochs alone.
pub fn summarize(reqs: &[Request], stable_only: bool) -> Summary {
    let unstable = reqs.iter().filter(|r| r.epoch.is_none()).count();
    let rated: Vec<&Request> = reqs.iter().filter(|r| !stable_only || r.epoch.is_some()).collect();
    let n = rated.len().max(1) as f64;
    let mut by_key: BTreeMap<(u64, u32), Vec<String>> = BTreeMap::new();
    for r in reqs {
        let Some(epoch) = r.epoch else { continue };
        let answered = r.first.iter().chain(r.retry.iter().filter_map(|(_, b)| b.as_ref()));
        for b in answered {
            let seen = by_key.entry((epoch, r.key)).or_default();
            if !seen.contains(b) {
                seen.push(b.clone());
            }
        }
    }
    let mut split_keys: Vec<(u32, Vec<String>)> = Vec::new();
    for ((_, key), backends) in by_key.into_iter().filter(|(_, b)| b.len() > 1) {
        match split_keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, seen)) => {
                seen.extend(backends.into_iter().filter(|b| !seen.contains(b)).collect::<Vec<_>>())
            }
            None => split_keys.push((key, backends)),
        }
    }
    Summary {
        requests: rated.len(),
        first_try: rated.iter().filter(|r| r.ok_first()).count() as f64 / n,
        one_retry: rated.iter().filter(|r| r.ok_eventually()).count() as f64 / n,
        split_keys,
        unstable,
    }
}

/// One HTTP/1.1 GET for `key` to `target`: the `x-backend` of a 200 answer. The key is the source
/// address, or with `by_header` the header [`KEY_HEADER`].
async fn get(key: u8, target: SocketAddr, by_header: bool) -> Option<String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        if !by_header {
            socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 2, key)), 0)).ok()?;
        }
        let mut stream = socket.connect(target).await.ok()?;
        let head =
            format!("GET /chaos HTTP/1.1\r\nHost: chaos\r\n{KEY_HEADER}: {key}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() + n > MAX_ANSWER {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&buf[..head_end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?;
        if status != "200" {
            return None;
        }
        lines.find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("x-backend").then(|| value.trim().to_string())
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt).await.ok().flatten()
}

/// Whether `vip` answers a request with 200 (the run's listener is up behind the front).
pub async fn probe(vip: SocketAddr) -> Option<()> {
    get(1, vip, true).await.map(|_| ())
}

/// A traffic client: until the run stops, a request from a random key to a random node (or the VIP).
pub async fn client(shared: Arc<Shared>, front: Front, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let key = rng.random_range(1..=KEYS);
        let at_ms = shared.ms();
        let before = shared.backend_epoch();
        let (first, retry) = match &front {
            Front::Nodes(ips, port) => {
                let node = rng.random_range(0..ips.len());
                let first = get(key, SocketAddr::new(ips[node].into(), *port), false).await;
                let retry = match first {
                    Some(_) => None,
                    None => {
                        let other = (node + 1 + rng.random_range(0..ips.len() - 1)) % ips.len();
                        Some((other, get(key, SocketAddr::new(ips[other].into(), *port), false).await))
                    }
                };
                (first, retry)
            }
            Front::Vip(vip) => {
                let first = get(key, *vip, true).await;
                let retry = match first {
                    Some(_) => None,
                    None => Some((0, get(key, *vip, true).await)),
                };
                (first, retry)
            }
        };
        let epoch = epoch_of(before, shared.backend_epoch());
        let r = Request { at_ms, key: u32::from(key), epoch, first, retry };
        shared.requests.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        tokio::time::sleep(PACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: u32, first: Option<&str>, retry: Option<Option<&str>>) -> Request {
        Request {
            at_ms: 0,
            key,
            epoch: Some(0),
            first: first.map(str::to_string),
            retry: retry.map(|b| (1, b.map(str::to_string))),
        }
    }

    #[test]
    fn rates_and_split_keys() {
        let reqs = [
            req(1, Some("backend-1"), None),
            req(1, None, Some(Some("backend-1"))),
            req(2, None, Some(None)),
            req(3, Some("backend-2"), None),
            req(3, Some("backend-3"), None),
        ];
        let s = summarize(&reqs, false);
        assert_eq!(s.requests, 5);
        assert!((s.first_try - 0.6).abs() < 1e-9);
        assert!((s.one_retry - 0.8).abs() < 1e-9);
        assert_eq!(s.split_keys, vec![(3, vec!["backend-2".to_string(), "backend-3".to_string()])]);
    }

    #[test]
    fn a_key_is_checked_within_each_stable_epoch_only() {
        let at = |epoch: Option<u64>, b: &str| Request { epoch, ..req(1, Some(b), None) };
        // backend-1 before the kill, backend-2 while it is out, back to backend-1: no violation.
        let reqs = [
            at(Some(0), "backend-1"),
            at(None, "backend-2"),
            at(Some(2), "backend-2"),
            at(Some(4), "backend-1"),
        ];
        let s = summarize(&reqs, false);
        assert!(s.split_keys.is_empty(), "{:?}", s.split_keys);
        assert_eq!(s.unstable, 1);
        // Two backends for one key in one epoch is one.
        let s = summarize(&[at(Some(2), "backend-2"), at(Some(2), "backend-3")], false);
        assert_eq!(s.split_keys.len(), 1);
        // Stable only: a failure while the set changed is left out of the rates.
        let reqs = [at(Some(0), "backend-1"), Request { epoch: None, ..req(1, None, Some(None)) }];
        assert_eq!((summarize(&reqs, true).first_try, summarize(&reqs, false).first_try), (1.0, 0.5));
    }
}
