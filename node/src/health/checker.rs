//! Active health checks of this node: one task per (pool, backend, check settings).
//!
//! Each task probes its backend every `interval` (±10% jitter, the first probe at a random point of
//! the first interval so that checks of many backends do not fire together), feeds the result to its
//! [`RiseFall`] and, on a transition, records the new local view in the [`OutlierTracker`] (so this
//! node's proxies skip a backend it sees down at once) and reports a [`Transition`] to the vote loop.
//!
//! A probe is a TCP connect (`kind = "tcp"`) or an HTTP/1.1 `GET path` whose status must be inside
//! `expect_status` (`kind = "http"`), bounded by `timeout` as a whole. Probe sockets are bound to the
//! node's own IP (port 0), so a problem between this node and a backend shows up as this node's view.
//! At most [`MAX_CONCURRENT_PROBES`] probes run at once on a node.
//!
//! [`Checkers::reconcile`] starts, stops and retunes the tasks when the committed config changes: a
//! task is keyed by (pool, backend address) and restarted when the pool's `health` section changes.
//!
//! A pool with `[pool.tls]` is probed over TLS (verified like its traffic, see
//! [`crate::proxy::tls::store`]): a `tcp` check then passes once the TLS handshake does, an `http`
//! check sends its request over TLS.
//!
//! Known limit: HTTP probes speak HTTP/1.1 only and read nothing past the status line (no body match). A backend that accepts connections and closes them at once passes a TCP
//! check; only an HTTP check sees it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lbfleet_api::config::{ClusterConfig, HealthCheck, HealthKind, MAX_HEALTH_INTERVAL};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::balance::local_check::{LocalState, RiseFall};
use crate::balance::OutlierTracker;
use crate::net::connect_tcp;
use crate::proxy::tls::store::PoolClient;
use crate::proxy::tls::TlsStore;

/// Probes running at once on one node, over every pool.
pub const MAX_CONCURRENT_PROBES: usize = 64;
/// Most bytes of an HTTP probe's answer read to find the status line.
const MAX_STATUS_LINE: usize = 1024;

/// A change of this node's view of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub pool: String,
    pub addr: SocketAddr,
    pub state: LocalState,
    /// The last probe's outcome (`ok` or why it failed).
    pub detail: String,
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`), if `head` starts with one.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?.trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

/// One probe of `addr` according to `check`, from `bind_ip`. `Err` says why it failed.
pub async fn probe(check: &HealthCheck, addr: SocketAddr, bind_ip: IpAddr) -> Result<(), String> {
    probe_with(check, addr, bind_ip, None).await
}

/// [`probe`], over TLS when the pool has a usable `[pool.tls]` (`Some(Err)`: it has one that could not
/// be loaded, which fails the probe).
pub async fn probe_with(
    check: &HealthCheck,
    addr: SocketAddr,
    bind_ip: IpAddr,
    tls: Option<PoolClient>,
) -> Result<(), String> {
    let run = async {
        let stream = connect_tcp(bind_ip, addr).await.map_err(|e| format!("connect: {e}"))?;
        match tls {
            None => exchange(check, addr, stream).await,
            Some(Err(e)) => Err(format!("backend TLS not usable: {e}")),
            Some(Ok((cfg, name))) => {
                let s = crate::proxy::tls::connect(cfg, name.as_deref(), addr, stream)
                    .await
                    .map_err(|e| e.to_string())?;
                exchange(check, addr, s).await
            }
        }
    };
    match tokio::time::timeout(check.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}", humantime::format_duration(check.timeout))),
    }
}

/// The part of a probe after the connect: nothing for `tcp`, the request and status line for `http`.
async fn exchange<S>(check: &HealthCheck, addr: SocketAddr, mut stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    {
        if check.kind != HealthKind::Http {
            return Ok(());
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lbfleet-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| format!("read response: {e}"))?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            head.extend_from_slice(&buf[..n]);
            if head.contains(&b'\n') || head.len() >= MAX_STATUS_LINE {
                break;
            }
        }
        let status = parse_status_line(&head).ok_or_else(|| "not an HTTP/1.x response".to_string())?;
        let [lo, hi] = check.expect_status;
        if (lo..=hi).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status} outside {lo}..={hi}"))
        }
    }
}

/// `interval` with ±10% jitter. The interval is clamped to the config's bound first, so that the
/// multiplication cannot overflow (it panics if it does) whatever the committed config says.
fn jittered(interval: Duration) -> Duration {
    interval.min(MAX_HEALTH_INTERVAL).mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// What one checker task needs.
#[derive(Clone)]
pub struct CheckEnv {
    pub bind_ip: IpAddr,
    pub permits: Arc<Semaphore>,
    pub tracker: Arc<OutlierTracker>,
    pub events: mpsc::UnboundedSender<Transition>,
    /// The pools' backend TLS (`[pool.tls]`), looked up for every probe.
    pub tls: Arc<TlsStore>,
}

/// Probe `addr` of `pool` forever (until aborted).
async fn check_loop(pool: String, addr: SocketAddr, check: HealthCheck, env: CheckEnv) {
    let mut rf = RiseFall::new(check.rise, check.fall);
    let first = check.interval.min(MAX_HEALTH_INTERVAL).mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(first).await;
    loop {
        let result = match env.permits.acquire().await {
            Ok(_permit) => probe_with(&check, addr, env.bind_ip, env.tls.client(&pool)).await,
            Err(_) => return,
        };
        if let Err(e) = &result {
            tracing::debug!(pool = %pool, backend = %addr, "health probe failed: {e}");
        }
        if let Some(state) = rf.record(result.is_ok()) {
            env.tracker.set_active(&pool, addr, state);
            let detail = result.err().unwrap_or_else(|| "ok".to_string());
            tracing::info!(pool = %pool, backend = %addr, state = state.as_str(), "local health changed: {detail}");
            let t = Transition { pool: pool.clone(), addr, state, detail };
            if env.events.send(t).is_err() {
                return;
            }
        }
        tokio::time::sleep(jittered(check.interval)).await;
    }
}

struct Running {
    check: HealthCheck,
    task: JoinHandle<()>,
}

/// The checker tasks of this node.
pub struct Checkers {
    env: CheckEnv,
    running: BTreeMap<(String, SocketAddr), Running>,
}

impl Checkers {
    pub fn new(env: CheckEnv) -> Checkers {
        Checkers { env, running: BTreeMap::new() }
    }

    /// Start what `config` checks and this set lacks, restart what changed settings, stop the rest.
    /// Returns the (pool, backend) pairs whose checker stopped or restarted (their view is unknown again).
    pub fn reconcile(&mut self, config: Option<&ClusterConfig>) -> Vec<(String, SocketAddr)> {
        let mut wanted: BTreeMap<(String, SocketAddr), &HealthCheck> = BTreeMap::new();
        for pool in config.map(|c| c.pool.as_slice()).unwrap_or_default() {
            if pool.health.kind == HealthKind::None {
                continue;
            }
            for b in &pool.backend {
                wanted.insert((pool.name.clone(), b.addr), &pool.health);
            }
        }
        let mut reset = Vec::new();
        let stale: Vec<(String, SocketAddr)> = self
            .running
            .iter()
            .filter(|(k, r)| wanted.get(*k).is_none_or(|c| **c != r.check))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(r) = self.running.remove(&key) {
                r.task.abort();
                self.env.tracker.set_active(&key.0, key.1, LocalState::Unknown);
                reset.push(key);
            }
        }
        for (key, check) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(check_loop(key.0.clone(), key.1, check.clone(), self.env.clone()));
            self.running.insert(key, Running { check: check.clone(), task });
        }
        reset
    }

    /// How many checker tasks run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stop every task.
    pub fn shutdown(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.task.abort();
        }
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::config::{parse, Format};
    use tokio::net::TcpListener;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(1));
            assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100), "{d:?}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx: y\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None, "incomplete line");
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc OK\r\n"), None);
    }

    /// A tiny HTTP server answering every connection with `status`, recording the peer IP.
    async fn http_server(
        ip: [u8; 4],
        status: u16,
    ) -> (SocketAddr, JoinHandle<()>, mpsc::UnboundedReceiver<IpAddr>) {
        let l = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                let _ = tx.send(peer.ip());
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let resp =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, task, rx)
    }

    fn check(kind: &str, extra: &str) -> HealthCheck {
        let t = format!(
            "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
             [pool.health]\nkind = \"{kind}\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n{extra}\n"
        );
        parse(&t, Format::Toml).unwrap().pool.remove(0).health
    }

    #[tokio::test]
    async fn http_probe_checks_status_and_binds_the_node_ip() {
        let (addr, task, mut peers) = http_server([127, 0, 81, 1], 200).await;
        let from: IpAddr = "127.0.81.12".parse().unwrap();
        assert_eq!(probe(&check("http", ""), addr, from).await, Ok(()));
        assert_eq!(peers.recv().await, Some(from), "the probe comes from the node's IP");
        let err = probe(&check("http", "expect_status = [300, 399]"), addr, from).await.unwrap_err();
        assert!(err.contains("status 200 outside 300..=399"), "{err}");
        task.abort();

        let (addr, task, _) = http_server([127, 0, 81, 1], 503).await;
        assert!(probe(&check("http", ""), addr, from).await.unwrap_err().contains("503"));
        task.abort();
    }

    #[tokio::test]
    async fn probes_fail_on_refused_silent_and_closing_backends() {
        let from: IpAddr = "127.0.81.12".parse().unwrap();
        // Nothing listens.
        let free = {
            let l = std::net::TcpListener::bind("127.0.81.2:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(probe(&check("tcp", ""), free, from).await.unwrap_err().starts_with("connect"));
        // Accepts but never answers: the timeout bounds the probe.
        let silent = TcpListener::bind("127.0.81.3:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                kept.push(s);
            }
        });
        assert_eq!(probe(&check("tcp", ""), silent_addr, from).await, Ok(()), "TCP: connect is enough");
        let err = probe(&check("http", ""), silent_addr, from).await.unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        hold.abort();
        // Accepts and closes at once.
        let closing = TcpListener::bind("127.0.81.4:0").await.unwrap();
        let closing_addr = closing.local_addr().unwrap();
        let close = tokio::spawn(async move {
            while let Ok((s, _)) = closing.accept().await {
                drop(s);
            }
        });
        let err = probe(&check("http", ""), closing_addr, from).await.unwrap_err();
        assert!(err.contains("closed") || err.contains("reset"), "{err}");
        close.abort();
    }

    async fn next_transition(rx: &mut mpsc::UnboundedReceiver<Transition>) -> Transition {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a transition within 10 s")
            .expect("checker alive")
    }

    #[tokio::test]
    async fn checker_reports_down_after_fall_and_up_after_rise() {
        let (addr, task, _) = http_server([127, 0, 81, 5], 200).await;
        let config = parse(
            &format!(
                "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{addr}\"\n\
                 [pool.health]\nkind = \"http\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 3\n"
            ),
            Format::Toml,
        )
        .unwrap();
        let tracker = Arc::new(OutlierTracker::new());
        tracker.update(Some(&config));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let env = CheckEnv {
            bind_ip: "127.0.81.12".parse().unwrap(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            tracker: Arc::clone(&tracker),
            events: tx,
            tls: Default::default(),
        };
        let mut checkers = Checkers::new(env);
        assert!(checkers.reconcile(Some(&config)).is_empty());
        assert_eq!(checkers.len(), 1);

        let t = next_transition(&mut rx).await;
        assert_eq!((t.pool.as_str(), t.addr, t.state), ("web", addr, LocalState::Up));
        assert!(tracker.is_usable("web", addr));

        // Stop the backend: nothing listens any more.
        task.abort();
        let _ = task.await;
        let started = tokio::time::Instant::now();
        let t = next_transition(&mut rx).await;
        assert_eq!(t.state, LocalState::Down, "{t:?}");
        assert!(t.detail.starts_with("connect"), "{t:?}");
        assert!(!tracker.is_usable("web", addr), "this node skips a backend it sees down at once");
        eprintln!("down after {:?} (fall 3 × 200 ms)", started.elapsed());

        // Back on the same address.
        let l = TcpListener::bind(addr).await.unwrap();
        let back = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                });
            }
        });
        let t = next_transition(&mut rx).await;
        assert_eq!(t.state, LocalState::Up);
        assert!(tracker.is_usable("web", addr));

        // New settings restart the checker (its view starts over).
        let retuned = parse(
            &format!(
                "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{addr}\"\n\
                 [pool.health]\nkind = \"http\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 3\n"
            ),
            Format::Toml,
        )
        .unwrap();
        tracker.update(Some(&retuned));
        assert_eq!(checkers.reconcile(Some(&retuned)), vec![("web".to_string(), addr)]);
        assert_eq!(checkers.len(), 1);
        assert_eq!(tracker.active("web", addr), LocalState::Unknown);
        assert_eq!(next_transition(&mut rx).await.state, LocalState::Up, "rise 1");
        assert!(checkers.reconcile(Some(&retuned)).is_empty(), "same settings: left running");

        // kind = none stops the checker and forgets the view.
        let none = parse(
            &format!(
                "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{addr}\"\n\
                 [pool.health]\nkind = \"none\"\n"
            ),
            Format::Toml,
        )
        .unwrap();
        tracker.update(Some(&none));
        assert_eq!(checkers.reconcile(Some(&none)), vec![("web".to_string(), addr)]);
        assert!(checkers.is_empty());
        assert_eq!(tracker.active("web", addr), LocalState::Unknown);
        back.abort();
    }
}
