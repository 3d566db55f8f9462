//! Client traffic through the data plane during a run: HTTP requests to the demo listener of random
//! nodes, each from one of [`KEYS`] source addresses (the demo pool hashes the source IP, so the source
//! is the key), on a new connection each, retried once on another node when the first try fails.
//!
//! Every request's result and the backend that answered (`x-backend`) are recorded; the verdicts are
//! the first-try and one-retry success rates, and that one key got one backend from every node (the
//! backend set does not change during a run: node faults only).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::run::Shared;

/// Source addresses used as keys: 127.0.2.1 ..= 127.0.2.KEYS.
pub const KEYS: u8 = 32;
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
    pub key: u8,
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
    /// Keys that got more than one backend, with the backends.
    pub split_keys: Vec<(u8, Vec<String>)>,
}

pub fn summarize(reqs: &[Request]) -> Summary {
    let n = reqs.len().max(1) as f64;
    let mut by_key: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for r in reqs {
        let answered = r.first.iter().chain(r.retry.iter().filter_map(|(_, b)| b.as_ref()));
        for b in answered {
            let seen = by_key.entry(r.key).or_default();
            if !seen.contains(b) {
                seen.push(b.clone());
            }
        }
    }
    Summary {
        requests: reqs.len(),
        first_try: reqs.iter().filter(|r| r.ok_first()).count() as f64 / n,
        one_retry: reqs.iter().filter(|r| r.ok_eventually()).count() as f64 / n,
        split_keys: by_key.into_iter().filter(|(_, b)| b.len() > 1).collect(),
    }
}

/// One HTTP/1.1 GET from `key`'s source address to `target`: the `x-backend` of a 200 answer.
async fn get(key: u8, target: SocketAddr) -> Option<String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 2, key)), 0)).ok()?;
        let mut stream = socket.connect(target).await.ok()?;
        stream.write_all(b"GET /chaos HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n").await.ok()?;
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

/// A traffic client: until the run stops, a request from a random key to a random node's `port`.
pub async fn client(shared: Arc<Shared>, ips: Vec<Ipv4Addr>, port: u16, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let key = rng.random_range(1..=KEYS);
        let node = rng.random_range(0..ips.len());
        let at_ms = shared.ms();
        let first = get(key, SocketAddr::new(ips[node].into(), port)).await;
        let retry = match first {
            Some(_) => None,
            None => {
                let other = (node + 1 + rng.random_range(0..ips.len() - 1)) % ips.len();
                Some((other, get(key, SocketAddr::new(ips[other].into(), port)).await))
            }
        };
        shared.requests.lock().unwrap_or_else(|p| p.into_inner()).push(Request { at_ms, key, first, retry });
        tokio::time::sleep(PACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: u8, first: Option<&str>, retry: Option<Option<&str>>) -> Request {
        Request {
            at_ms: 0,
            key,
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
        let s = summarize(&reqs);
        assert_eq!(s.requests, 5);
        assert!((s.first_try - 0.6).abs() < 1e-9);
        assert!((s.one_retry - 0.8).abs() < 1e-9);
        assert_eq!(s.split_keys, vec![(3, vec!["backend-2".to_string(), "backend-3".to_string()])]);
    }
}
