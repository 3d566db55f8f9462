//! In-process tests of the TCP proxy: a real `Routing` built from a real `ClusterState`, real backends
//! and clients on loopback sockets (the shared kit is [`crate::proxy::testkit`]; `config` and the
//! backends here are shared with the UDP tests).
//!
//! Addresses: proxies on 127.0.71.x, backends on 127.0.72.x, clients on 127.0.73.x (UDP tests use
//! 127.0.74–77.x).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::*;
use crate::balance::routing::SharedRouting;
use crate::proxy::counters::{counters_text, value_of};
use crate::proxy::testkit::proc_status_kib;
use crate::proxy::testkit::{context, ip, reconfigure, routing_for, wait_for, WAIT};
use crate::shutdown::Trigger;

/// A pool named `p` with `policy`/`hash_key` over `backends`, and a listener `l` on `port` of `protocol`.
pub(crate) fn config(
    protocol: &str,
    port: u16,
    policy: &str,
    hash_key: &str,
    backends: &[SocketAddr],
    listener_extra: &str,
) -> String {
    let mut t = format!(
        "[[pool]]\nname = \"p\"\npolicy = \"{policy}\"\nhash_key = \"{hash_key}\"\ntable_size = 1009\n\
         [pool.health]\nkind = \"none\"\n"
    );
    for b in backends {
        t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
    }
    t += &format!("\n[[listener]]\nname = \"l\"\nprotocol = \"{protocol}\"\nport = {port}\npool = \"p\"\n{listener_extra}\n");
    t
}

/// A TCP backend that reads its whole request (until the client's FIN), then answers `"<name>:" +
/// request` and closes. It only answers if the half-close reached it.
pub(crate) async fn answer_after_eof_backend(name: &str, addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind(addr).await.expect("bind backend");
    let addr = l.local_addr().expect("backend addr");
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let name = name.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_err() {
                    return;
                }
                let mut resp = format!("{name}:").into_bytes();
                resp.extend_from_slice(&req);
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A TCP backend that echoes bytes as they come and closes after the client's FIN.
async fn streaming_echo_backend(addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind(addr).await.expect("bind backend");
    let addr = l.local_addr().expect("backend addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An address on `ip` where nothing listens (bound once, then released).
pub(crate) async fn closed_port(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.expect("bind");
    l.local_addr().expect("addr")
}

/// A running TCP proxy for listener `l`.
struct Proxy {
    addr: SocketAddr,
    stop: Trigger,
    task: JoinHandle<()>,
    ctx: Arc<ProxyContext>,
}

async fn start_proxy(addr: SocketAddr, routing: &SharedRouting, grace: Duration) -> Proxy {
    let listener = TcpListener::bind(addr).await.expect("bind proxy");
    let (stop, rx) = crate::shutdown::channel();
    let ctx = context(addr.ip(), routing);
    let task = tokio::spawn(serve_with("l".into(), listener, Arc::clone(&ctx), rx, grace));
    Proxy { addr, stop, task, ctx }
}

/// Connect to `to` from `from_ip` (any port), send `msg`, half-close, read the whole answer.
async fn request(from_ip: IpAddr, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from_ip, 0)).expect("bind client");
    let mut s = sock.connect(to).await.expect("connect to proxy");
    s.write_all(msg).await.expect("send");
    s.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("answer in time").expect("read answer");
    out
}

/// Whether the proxy closed a connection from `from_ip` without any answer (an EOF, or a reset since the
/// request it never read was still in its receive buffer).
async fn refused(from_ip: IpAddr, to: SocketAddr) -> bool {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from_ip, 0)).expect("bind client");
    let mut s = sock.connect(to).await.expect("connect to proxy");
    let _ = s.write_all(b"hello").await;
    let mut out = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("closed in time") {
        Ok(_) => out.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn backend_of(answer: &[u8]) -> String {
    let s = String::from_utf8_lossy(answer);
    s.split(':').next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn half_close_still_delivers_the_backends_whole_answer() {
    let (b, _t) = answer_after_eof_backend("b1", SocketAddr::new(ip(72, 1), 0)).await;
    let routing = routing_for(&config("tcp", 7101, "round_robin", "source_addr", &[b], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 1), 7101), &routing, SHUTDOWN_GRACE).await;

    // The backend answers only after it has seen the client's FIN through the proxy; the client must
    // still receive all of it after shutting down its own write half.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let answer = request(ip(73, 1), p.addr, &body).await;
    assert_eq!(&answer[..3], b"b1:");
    assert_eq!(answer.len(), 3 + body.len());
    assert!(answer[3..] == body[..], "answer differs from the request");

    // In flight while open, zero once closed.
    let inflight = || routing.load().pool("p").unwrap().backends()[0].inflight();
    wait_for("the closed connection to leave the in-flight count", WAIT, || async {
        (inflight() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn hash_pool_sends_the_same_source_to_the_same_backend() {
    let mut backends = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..=3u8 {
        let (a, t) = answer_after_eof_backend(&format!("b{i}"), SocketAddr::new(ip(72, 10 + i), 0)).await;
        backends.push(a);
        tasks.push(t);
    }
    let routing = routing_for(&config("tcp", 7102, "maglev", "source_ip", &backends, ""));
    let p1 = start_proxy(SocketAddr::new(ip(71, 2), 7102), &routing, SHUTDOWN_GRACE).await;
    // A second proxy on another IP with the same routing: another node of the fleet.
    let p2 = start_proxy(SocketAddr::new(ip(71, 3), 7102), &routing, SHUTDOWN_GRACE).await;

    let mut seen = std::collections::BTreeSet::new();
    for client in 1..=12u8 {
        let from = ip(73, client);
        let first = backend_of(&request(from, p1.addr, b"x").await);
        for _ in 0..4 {
            assert_eq!(
                backend_of(&request(from, p1.addr, b"x").await),
                first,
                "client {from} moved (same proxy)"
            );
            assert_eq!(
                backend_of(&request(from, p2.addr, b"x").await),
                first,
                "client {from} moved (other proxy)"
            );
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "12 client IPs all on one backend: {seen:?}");
}

#[tokio::test]
async fn closed_backend_port_falls_back_to_the_next_backend() {
    let (live, _t) = answer_after_eof_backend("live", SocketAddr::new(ip(72, 20), 0)).await;
    let dead1 = closed_port(ip(72, 21)).await;
    let dead2 = closed_port(ip(72, 22)).await;
    // Round robin starts each connection at a different backend, so the dead ones come first for two
    // connections out of three; the fallback sequence must reach the live one every time.
    let routing = routing_for(&config("tcp", 7103, "round_robin", "source_addr", &[dead1, dead2, live], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 4), 7103), &routing, SHUTDOWN_GRACE).await;
    for _ in 0..9 {
        let answer = request(ip(73, 20), p.addr, b"hello").await;
        assert_eq!(answer, b"live:hello");
    }
    let text = counters_text(&p.ctx.metrics);
    let live_series = format!("tcp_connections_total{{listener=\"l\",pool=\"p\",backend=\"{live}\"}}");
    assert_eq!(value_of(&text, &live_series), Some(9), "{text}");
    let failed = format!("upstream_connect_failures_total{{pool=\"p\",backend=\"{dead1}\"}}");
    assert!(value_of(&text, &failed).is_some_and(|n| n >= 1), "{text}");
    assert_eq!(text.matches("tcp_connections_total{").count(), 1, "only the live backend: {text}");
    let sel = Arc::clone(routing.load().pool("p").unwrap());
    wait_for("in-flight counts back to zero", WAIT, || async {
        sel.backends().iter().all(|b| b.inflight() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_backend_down_closes_the_client() {
    let dead = closed_port(ip(72, 25)).await;
    let routing = routing_for(&config("tcp", 7104, "round_robin", "source_addr", &[dead], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 5), 7104), &routing, SHUTDOWN_GRACE).await;
    assert!(refused(ip(73, 25), p.addr).await);
}

#[tokio::test]
async fn removed_listener_refuses_new_connections() {
    let (b, _t) = answer_after_eof_backend("b1", SocketAddr::new(ip(72, 26), 0)).await;
    let routing = routing_for(&config("tcp", 7105, "round_robin", "source_addr", &[b], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 6), 7105), &routing, SHUTDOWN_GRACE).await;
    assert_eq!(request(ip(73, 26), p.addr, b"a").await, b"b1:a");
    // The same config without the listener: the socket stays bound but new connections are closed.
    let without =
        "[[pool]]\nname = \"p\"\n[pool.health]\nkind = \"none\"\n[[pool.backend]]\naddr = \"127.0.0.1:9\"\n";
    reconfigure(&routing, without, 2);
    assert!(refused(ip(73, 26), p.addr).await);
}

#[tokio::test]
async fn idle_connection_is_closed_on_both_sides() {
    // A backend that tells the test when its side was closed.
    let bl = TcpListener::bind((ip(72, 30), 0)).await.unwrap();
    let baddr = bl.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let (mut s, _) = bl.accept().await.unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = s.write_all(&buf[..n]).await;
                }
            }
        }
        let _ = closed_tx.send(()).await;
    });
    let idle = "[listener.timeouts]\nidle = \"1s\"";
    let routing = routing_for(&config("tcp", 7106, "round_robin", "source_addr", &[baddr], idle));
    let p = start_proxy(SocketAddr::new(ip(71, 7), 7106), &routing, SHUTDOWN_GRACE).await;

    let mut c = TcpStream::connect(p.addr).await.unwrap();
    // Traffic more often than the idle timeout keeps the connection open past several timeouts.
    let mut buf = [0u8; 16];
    for i in 0..15u8 {
        c.write_all(&[i]).await.unwrap();
        let n = tokio::time::timeout(WAIT, c.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], &[i], "round trip {i} (the connection must still be open)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence: the proxy closes the client side (EOF) and the backend side.
    let n = tokio::time::timeout(WAIT, c.read(&mut buf)).await.expect("close within the wait").unwrap_or(0);
    assert_eq!(n, 0, "expected EOF after idle");
    tokio::time::timeout(WAIT, closed_rx.recv()).await.expect("backend side closed too");
}

/// Read the whole answer of a backend that prefixes what it got with its name, from a connection made
/// from `from`.
async fn request_from(from: SocketAddr, to: SocketAddr, msg: &[u8]) -> (SocketAddr, Vec<u8>) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(from).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.unwrap().unwrap();
    (local, out)
}

#[tokio::test]
async fn proxy_protocol_v1_header_reaches_the_backend_first() {
    let (b, _t) = answer_after_eof_backend("b", SocketAddr::new(ip(72, 40), 0)).await;
    let routing = routing_for(&config("tcp", 7107, "round_robin", "source_addr", &[b], "proxy_protocol = 1"));
    let p = start_proxy(SocketAddr::new(ip(71, 8), 7107), &routing, SHUTDOWN_GRACE).await;
    let (client, answer) = request_from(SocketAddr::new(ip(73, 40), 0), p.addr, b"payload").await;
    let want = format!("b:PROXY TCP4 127.0.73.40 127.0.71.8 {} 7107\r\npayload", client.port());
    assert_eq!(String::from_utf8_lossy(&answer), want);
}

#[tokio::test]
async fn proxy_protocol_v2_header_reaches_the_backend_first() {
    let (b, _t) = answer_after_eof_backend("b", SocketAddr::new(ip(72, 41), 0)).await;
    let routing = routing_for(&config("tcp", 7108, "round_robin", "source_addr", &[b], "proxy_protocol = 2"));
    let p = start_proxy(SocketAddr::new(ip(71, 9), 7108), &routing, SHUTDOWN_GRACE).await;
    let (client, answer) = request_from(SocketAddr::new(ip(73, 41), 0), p.addr, b"payload").await;
    let mut want = b"b:".to_vec();
    want.extend_from_slice(&[0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]);
    want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C, 127, 0, 73, 41, 127, 0, 71, 9]);
    want.extend_from_slice(&client.port().to_be_bytes());
    want.extend_from_slice(&7108u16.to_be_bytes());
    want.extend_from_slice(b"payload");
    assert_eq!(answer, want);
}

#[tokio::test]
async fn stop_refuses_new_connections_and_lets_open_ones_finish() {
    let (b, _t) = streaming_echo_backend(SocketAddr::new(ip(72, 50), 0)).await;
    let routing = routing_for(&config("tcp", 7109, "round_robin", "source_addr", &[b], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 10), 7109), &routing, SHUTDOWN_GRACE).await;
    let mut open = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 8];
    open.write_all(b"one").await.unwrap();
    open.read_exact(&mut buf[..3]).await.unwrap();

    p.stop.trigger();
    wait_for("the listener to refuse new connections", WAIT, || async {
        TcpStream::connect(p.addr).await.is_err().then_some(())
    })
    .await;
    // The established connection still works both ways, half-close included.
    open.write_all(b"two").await.unwrap();
    open.read_exact(&mut buf[..3]).await.unwrap();
    assert_eq!(&buf[..3], b"two");
    assert!(!p.task.is_finished(), "serve returned while a connection was open");
    open.shutdown().await.unwrap();
    assert_eq!(open.read(&mut buf).await.unwrap(), 0);
    drop(open);
    tokio::time::timeout(WAIT, p.task).await.expect("serve returns once the last connection ended").unwrap();
}

#[tokio::test]
async fn stop_grace_bounds_how_long_open_connections_run() {
    let (b, _t) = streaming_echo_backend(SocketAddr::new(ip(72, 51), 0)).await;
    let routing = routing_for(&config("tcp", 7110, "round_robin", "source_addr", &[b], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 11), 7110), &routing, Duration::from_millis(300)).await;
    let mut open = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 8];
    open.write_all(b"one").await.unwrap();
    open.read_exact(&mut buf[..3]).await.unwrap();
    p.stop.trigger();
    tokio::time::timeout(WAIT, p.task).await.expect("serve returns after the grace").unwrap();
    let n = tokio::time::timeout(WAIT, open.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed after the grace");
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM")
}

/// Deterministic test data: byte `i` of the stream.
fn pattern(offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)).wrapping_mul(31) as u8;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_exact_and_backpressured() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    // Backend: waits for `go`, then reads everything, checks it against the pattern and answers with
    // the byte count and whether it matched.
    let bl = TcpListener::bind((ip(72, 60), 0)).await.unwrap();
    let baddr = bl.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = bl.accept().await.unwrap();
        let _ = go_rx.await;
        let mut buf = vec![0u8; CHUNK];
        let mut want = vec![0u8; CHUNK];
        let (mut got, mut same) = (0u64, true);
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            pattern(got, &mut want[..n]);
            same &= buf[..n] == want[..n];
            got += n as u64;
        }
        s.write_all(format!("{got} {same}").as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let routing = routing_for(&config("tcp", 7111, "round_robin", "source_addr", &[baddr], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 12), 7111), &routing, SHUTDOWN_GRACE).await;

    let rss_before = peak_rss_kib();
    let c = TcpStream::connect(p.addr).await.unwrap();
    let (mut cr, mut cw) = c.into_split();
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < TOTAL {
            pattern(off, &mut chunk);
            cw.write_all(&chunk).await.unwrap();
            off += CHUNK as u64;
            w.store(off, Ordering::Relaxed);
        }
        cw.shutdown().await.unwrap();
    });

    // While the backend does not read, the client must stall: the proxy holds one buffer, not the data.
    let mut last = u64::MAX;
    let stalled = wait_for("the client's writes to stall", WAIT, || {
        let now = written.load(Ordering::Relaxed);
        let stable = now == last && now > 0;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stable.then_some(now)
        }
    })
    .await;
    eprintln!("client stalled after {} KiB with the backend not reading", stalled / 1024);
    assert!(stalled < TOTAL / 2, "the proxy took {stalled} of {TOTAL} bytes with a stalled backend");

    let started = std::time::Instant::now();
    go_tx.send(()).unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(120), cr.read_to_string(&mut answer)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert_eq!(answer, format!("{TOTAL} true"));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("100 MiB through the proxy in {secs:.2} s ({:.0} MiB/s)", 100.0 / secs);
    if let (Some(before), Some(after)) = (rss_before, peak_rss_kib()) {
        eprintln!(
            "peak RSS of the test process: {before} KiB before, {after} KiB after 100 MiB through the proxy"
        );
        assert!(after - before < 50 * 1024, "peak RSS grew by {} KiB", after - before);
    }
}

#[test]
fn refusal_warnings_are_rate_limited() {
    let log = RefusalLog::new();
    assert_eq!(log.should_log(), Some(0), "the first refusal is logged");
    assert_eq!(log.should_log(), None, "the next ones within the interval are counted");
    assert_eq!(log.should_log(), None);
    assert_eq!(log.suppressed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn backend_connections_leave_from_the_proxy_bind_ip() {
    // The backend answers with the peer address it sees.
    let l = TcpListener::bind(SocketAddr::new(ip(72, 70), 0)).await.expect("bind backend");
    let b = l.local_addr().expect("backend addr");
    let _backend = tokio::spawn(async move {
        loop {
            let Ok((mut s, peer)) = l.accept().await else { return };
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    let routing = routing_for(&config("tcp", 7112, "round_robin", "source_addr", &[b], ""));
    let p = start_proxy(SocketAddr::new(ip(71, 13), 7112), &routing, SHUTDOWN_GRACE).await;
    let answer = request(ip(73, 50), p.addr, b"who am i").await;
    assert_eq!(String::from_utf8_lossy(&answer), ip(71, 13).to_string());
}

/// A committed idle timeout past what `Instant` holds (validation refuses it now; an old log may still
/// hold one) waits forever instead of panicking every connection.
#[tokio::test(start_paused = true)]
async fn an_idle_timeout_past_what_an_instant_holds_never_panics() {
    let activity = Activity::new();
    activity.touch();
    let waited = tokio::time::timeout(Duration::from_secs(86_400), activity.idle_for(Duration::MAX)).await;
    assert!(waited.is_err(), "never idle");
    let clamped = lbfleet_api::config::Timeouts { idle: Duration::MAX, ..Default::default() }.clamped();
    assert_eq!(clamped.idle, lbfleet_api::config::MAX_IDLE_TIMEOUT);
}
