//! Scale benchmark on a local 3-node cluster (real `lbnode` processes, release build, loopback
//! 127.0.120.11–13):
//!
//! 1. two large configs, 100 pools × 100 backends (100 HTTP listeners) and 1,000 pools × 10 backends
//!    (1,000 HTTP listeners), each applied to a cluster serving the previous one, then the same config
//!    plus one pool (served by the last listener instead of the last pool): the commit time (the `ApplyConfig` call returns), the time until every node's data
//!    plane serves it (a request through the listener of the last pool answers from a backend of that
//!    pool on every node), the RSS of each node before and after, and a check that every listener of
//!    the config answers from its own pool on every node and that the nodes' ring digests agree;
//! 2. 10,000 idle client TCP connections to node 1's HTTP listener: RSS before, with them and after
//!    they close, the node's open-connection gauge, and a request on a fresh connection meanwhile;
//! 3. 100,000 UDP flows (one datagram from each of 100,000 source addresses) through node 1's UDP
//!    listener: the flows answered, the flows and drops the node counts
//!    (`lbfleet_udp_dropped_total{reason}`), RSS and open files, whether the node still answers
//!    on its other sockets while the flows are held, and how long until they expire.
//!
//! The backends are real: 10,000 HTTP/1.1 responders on 127.0.120.50:20000–29999 (and 10 more for the
//! added pool) in this process, each answering every request with `x-backend: <its port>`, and 10
//! UDP echo responders on 127.0.120.60:5000–5009. Health checks are off (`kind = "none"`), so what is
//! measured is the config's path (commit, apply, routing snapshot, listeners), not 10,000 probes.
//!
//! Run: `cargo bench --workspace --bench scale` (a few minutes). Every phase is bounded in count and in
//! time; the process needs about 10,200 open files (it raises its soft limit to the hard one).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use lbfleet_tests::{admin, header, http_get, pb, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const NET: u8 = 120;
const NODES: u64 = 3;
/// HTTP backends: `BACKEND_IP:BACKEND_PORT0 + i`.
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, NET, 50);
const BACKEND_PORT0: u16 = 20_000;
const BACKENDS: u16 = 10_000;
/// The backends of the pool added to each big config.
const EXTRA_PORT0: u16 = 30_000;
const EXTRA_BACKENDS: u16 = 10;
/// Listener ports: the 100-pool config, the 1,000-pool config, the small config.
const LISTENERS_100: u16 = 10_000;
const LISTENERS_1000: u16 = 11_000;
const IDLE_PORT: u16 = 12_000;
const UDP_PORT: u16 = 12_001;
/// UDP echo backends: `UDP_BACKEND_IP:UDP_BACKEND_PORT0 + i`.
const UDP_BACKEND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, NET, 60);
const UDP_BACKEND_PORT0: u16 = 5_000;
const UDP_BACKENDS: u16 = 10;

const IDLE_CONNECTIONS: usize = 10_000;
const UDP_FLOWS: usize = 100_000;
/// UDP flow sources: `127.0.120.(101 + k)`, ports 20000.. (25,000 per address).
const UDP_SOURCE_PORT0: u16 = 20_000;
const UDP_PORTS_PER_SOURCE: usize = 25_000;
const UDP_BATCH: usize = 1_000;
/// How long a batch of flows waits for its replies once the last datagram is sent.
const UDP_REPLY_WAIT: Duration = Duration::from_millis(200);
/// The UDP listener's idle timeout: how long the node keeps a flow after its last datagram (the
/// node's cap, longer than the flood takes, so no flow expires before the end).
const UDP_IDLE: Duration = Duration::from_secs(120);

/// Bounds of each wait.
const SERVE_DEADLINE: Duration = Duration::from_secs(180);
const APPLY_DEADLINE: Duration = Duration::from_secs(120);
const PHASE_DEADLINE: Duration = Duration::from_secs(240);
/// Interval of the serve probes (a new connection each).
const PROBE_EVERY: Duration = Duration::from_millis(5);

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) of process `pid` so far, in clock ticks turned into seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": utime and stime are fields 14 and 15, the 12th and 13th after the ')'.
    let mut after = stat[stat.rfind(')')? + 1..].split_whitespace();
    let utime: f64 = after.nth(11)?.parse().ok()?;
    let stime: f64 = after.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

fn cpu_all(c: &Cluster) -> Vec<f64> {
    c.nodes.iter().map(|n| n.pid().and_then(cpu_secs).unwrap_or(0.0)).collect()
}

fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// RSS of every node in KiB, in node order.
fn rss_all(c: &Cluster) -> Vec<u64> {
    c.nodes.iter().map(|n| n.pid().and_then(|p| status_kib(p, "VmRSS:")).unwrap_or(0)).collect()
}

fn hwm_all(c: &Cluster) -> Vec<u64> {
    c.nodes.iter().map(|n| n.pid().and_then(|p| status_kib(p, "VmHWM:")).unwrap_or(0)).collect()
}

fn list_mib(v: &[u64]) -> String {
    v.iter().map(|k| mib(*k)).collect::<Vec<_>>().join(" / ")
}

/// Raise the soft open-file limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

// ---------------------------------------------------------------------------------------------------
// Backends

/// An HTTP/1.1 responder on `port` of [`BACKEND_IP`]: every request (headers only) gets `200` with
/// `x-backend: <port>` and the port as the body, on a kept-alive connection.
async fn http_backend(port: u16) -> Result<JoinHandle<()>> {
    let addr = SocketAddr::new(IpAddr::V4(BACKEND_IP), port);
    let l = TcpListener::bind(addr).await.with_context(|| format!("bind backend {addr}"))?;
    let name: Arc<str> = Arc::from(port.to_string());
    Ok(tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(answer(s, Arc::clone(&name)));
        }
    }))
}

async fn answer(mut s: TcpStream, name: Arc<str>) {
    let reply =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{name}", name.len());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
}

/// A UDP responder that sends every datagram back to its sender.
async fn udp_echo(port: u16) -> Result<JoinHandle<()>> {
    let addr = SocketAddr::new(IpAddr::V4(UDP_BACKEND_IP), port);
    let s = UdpSocket::bind(addr).await.with_context(|| format!("bind udp backend {addr}"))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            if let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        }
    }))
}

// ---------------------------------------------------------------------------------------------------
// Configs

/// One big config: `pools` Maglev pools of `per_pool` backends each (the 10,000 backend ports split in
/// order), one HTTP listener per pool from `port0`, and with `extra` one more pool and listener.
struct Shape {
    tag: &'static str,
    pools: u16,
    per_pool: u16,
    port0: u16,
}

impl Shape {
    fn pool_name(&self, p: u16) -> String {
        format!("{}{p:04}", self.tag)
    }

    fn backend_ports(&self, p: u16) -> std::ops::Range<u16> {
        let first = BACKEND_PORT0 + p * self.per_pool;
        first..first + self.per_pool
    }

    /// With `extra`, one more pool, which the last listener serves instead of the last pool (the
    /// 1,000-pool config already has the most listeners a config may have).
    fn toml(&self, extra: bool) -> String {
        let mut t = String::with_capacity(1 << 20);
        let mut pools: Vec<(String, Vec<u16>)> =
            (0..self.pools).map(|p| (self.pool_name(p), self.backend_ports(p).collect())).collect();
        if extra {
            pools.push(("extra".into(), (EXTRA_PORT0..EXTRA_PORT0 + EXTRA_BACKENDS).collect()));
        }
        for (name, ports) in &pools {
            t += &format!(
                "[[pool]]\nname = \"{name}\"\npolicy = \"maglev\"\n[pool.health]\nkind = \"none\"\n"
            );
            for port in ports {
                t += &format!("[[pool.backend]]\naddr = \"{BACKEND_IP}:{port}\"\n");
            }
        }
        for p in 0..self.pools {
            let name = self.pool_name(p);
            let pool = if extra && p + 1 == self.pools { "extra".to_string() } else { name.clone() };
            let port = self.port0 + p;
            t += &format!(
                "[[listener]]\nname = \"{name}\"\nprotocol = \"http\"\nport = {port}\npool = \"{pool}\"\n"
            );
        }
        t
    }
}

/// The small config of phases 2 and 3: an HTTP listener that lets idle connections stay, and a UDP
/// listener over the echo backends.
fn small_toml() -> String {
    let mut t =
        String::from("[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[pool.health]\nkind = \"none\"\n");
    for port in BACKEND_PORT0..BACKEND_PORT0 + 10 {
        t += &format!("[[pool.backend]]\naddr = \"{BACKEND_IP}:{port}\"\n");
    }
    t += "[[pool]]\nname = \"udp\"\npolicy = \"maglev\"\nhash_key = \"flow\"\n[pool.health]\nkind = \"none\"\n";
    for port in UDP_BACKEND_PORT0..UDP_BACKEND_PORT0 + UDP_BACKENDS {
        t += &format!("[[pool.backend]]\naddr = \"{UDP_BACKEND_IP}:{port}\"\n");
    }
    t += &format!(
        "[[listener]]\nname = \"idle\"\nprotocol = \"http\"\nport = {IDLE_PORT}\npool = \"web\"\n\
         [listener.timeouts]\nrequest_header = \"10m\"\nidle = \"10m\"\n\
         [[listener]]\nname = \"udp\"\nprotocol = \"udp\"\nport = {UDP_PORT}\npool = \"udp\"\n\
         [listener.timeouts]\nidle = \"{}s\"\n",
        UDP_IDLE.as_secs()
    );
    t
}

// ---------------------------------------------------------------------------------------------------
// Phase 1: big configs

async fn apply(leader: &str, toml: &str) -> Result<pb::ApplyConfigResponse> {
    let mut c = admin::connect_with_timeout(leader, APPLY_DEADLINE).await?;
    let r = c
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: toml.into(), dry_run: false })
        .await
        .map_err(|e| anyhow!("apply ({} bytes): {e}", toml.len()))?;
    Ok(r.into_inner())
}

/// Whether a GET through `addr` answers 200 from a backend port in `ports`.
async fn answers_from(addr: &str, ports: &std::ops::Range<u16>) -> Result<()> {
    let (status, headers, _) = http_get(addr, "/", &[]).await?;
    let who = header(&headers, "x-backend");
    let port: u16 = who.parse().map_err(|_| anyhow!("status {status}, x-backend {who:?}"))?;
    ensure!(status == 200 && ports.contains(&port), "status {status} from backend {port}, not in {ports:?}");
    Ok(())
}

/// Probe `addr` every [`PROBE_EVERY`] until it answers from `ports`; the time since `t0`.
async fn served_at(addr: String, ports: std::ops::Range<u16>, t0: Instant) -> Result<Duration> {
    let deadline = t0 + SERVE_DEADLINE;
    loop {
        let probe = answers_from(&addr, &ports).await;
        if probe.is_ok() {
            return Ok(t0.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not serve within {SERVE_DEADLINE:?}: {:#}", probe.unwrap_err());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

struct ConfigRun {
    name: String,
    bytes: usize,
    commit: Duration,
    served: Vec<Duration>,
    rss_before: Vec<u64>,
    rss_after: Vec<u64>,
    hwm_after: Vec<u64>,
    /// CPU seconds each node spent from the apply until it served.
    cpu: Vec<f64>,
    checked: usize,
    digests_agree: bool,
}

/// Apply `toml` through `leader`, wait until the listener `last` on every node answers from `ports`,
/// then check every listener of `all` on every node.
async fn run_config(
    c: &Cluster,
    leader: &str,
    name: &str,
    toml: &str,
    last: (u16, std::ops::Range<u16>),
    all: &[(u16, std::ops::Range<u16>)],
) -> Result<ConfigRun> {
    let rss_before = rss_all(c);
    let cpu_before = cpu_all(c);
    let t0 = Instant::now();
    apply(leader, toml).await?;
    let commit = t0.elapsed();
    let probes: Vec<_> = c
        .nodes
        .iter()
        .map(|n| tokio::spawn(served_at(format!("{}:{}", n.ip, last.0), last.1.clone(), t0)))
        .collect();
    let mut served = Vec::new();
    for p in probes {
        served.push(p.await??);
    }
    let cpu = cpu_all(c).iter().zip(&cpu_before).map(|(a, b)| a - b).collect();
    // Every listener on every node, 32 requests at a time.
    let targets: Vec<(String, std::ops::Range<u16>)> = c
        .nodes
        .iter()
        .flat_map(|n| all.iter().map(move |(port, ports)| (format!("{}:{port}", n.ip), ports.clone())))
        .collect();
    let checked = targets.len();
    let failures: Vec<String> = futures::stream::iter(targets)
        .map(|(addr, ports)| async move {
            answers_from(&addr, &ports).await.err().map(|e| format!("{addr}: {e:#}"))
        })
        .buffer_unordered(32)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    ensure!(
        failures.is_empty(),
        "{} of {checked} listeners did not serve, e.g. {}",
        failures.len(),
        failures[0]
    );
    let mut digests = Vec::new();
    for n in &c.nodes {
        digests.push(admin::local_status(&n.grpc_addr()).await?.ring_digest);
    }
    let digests_agree = digests.iter().all(|d| *d == digests[0]);
    Ok(ConfigRun {
        name: name.into(),
        bytes: toml.len(),
        commit,
        served,
        rss_before,
        rss_after: rss_all(c),
        hwm_after: hwm_all(c),
        cpu,
        checked,
        digests_agree,
    })
}

async fn big_config(c: &Cluster, leader: &str, shape: &Shape) -> Result<Vec<ConfigRun>> {
    let listeners: Vec<(u16, std::ops::Range<u16>)> =
        (0..shape.pools).map(|p| (shape.port0 + p, shape.backend_ports(p))).collect();
    let last = listeners.last().cloned().expect("a pool");
    let label = format!("{} pools × {}", shape.pools, shape.per_pool);
    let first = run_config(c, leader, &label, &shape.toml(false), last.clone(), &listeners).await?;
    // One pool more, served by the last listener.
    let extra = (last.0, EXTRA_PORT0..EXTRA_PORT0 + EXTRA_BACKENDS);
    let mut all = listeners;
    all.pop();
    all.push(extra.clone());
    let plus = run_config(c, leader, &format!("{label}, + 1 pool"), &shape.toml(true), extra, &all).await?;
    Ok(vec![first, plus])
}

// ---------------------------------------------------------------------------------------------------
// Metrics

async fn scrape(http_addr: &str) -> Result<String> {
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(5), http_get(http_addr, "/metrics", &[]))
            .await
            .map_err(|_| anyhow!("GET {http_addr}/metrics timed out"))??;
    ensure!(status == 200, "GET {http_addr}/metrics: {status}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Sum of the series `name{...}` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (lab, value) = rest.split_once("} ")?;
            labels.iter().all(|want| lab.contains(want)).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// `lbfleet_udp_dropped_total` of listener `udp` by reason.
fn udp_drops(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("lbfleet_udp_dropped_total{")) {
        if !l.contains("listener=\"udp\"") {
            continue;
        }
        let reason = l.split("reason=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(reason.to_string()).or_insert(0.0) += v;
    }
    out
}

async fn gauge_is(http_addr: &str, listener: &str, want: usize, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    let what = format!("lbfleet_listener_connections{{listener=\"{listener}\"}} == {want}");
    wait_until(&what, timeout, || async move {
        let text = scrape(http_addr).await?;
        let n = sum(&text, "lbfleet_listener_connections", &[&format!("listener=\"{listener}\"")]);
        ensure!(n as usize == want, "{n}");
        Ok(())
    })
    .await?;
    Ok(t.elapsed())
}

// ---------------------------------------------------------------------------------------------------
// Phase 2: idle connections

struct IdleRun {
    opened: usize,
    failed: usize,
    took: Duration,
    rss: [u64; 3],
    files: [usize; 3],
    request: Result<Duration>,
}

async fn idle_connections(c: &Cluster) -> Result<IdleRun> {
    let node = &c.nodes[0];
    let pid = node.pid().ok_or_else(|| anyhow!("node 1 not running"))?;
    let http = node.http_addr();
    let addr = SocketAddr::new(IpAddr::V4(node.ip), IDLE_PORT);
    let rss0 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files0 = open_files(pid).unwrap_or(0);
    let t = Instant::now();
    let results: Vec<std::io::Result<TcpStream>> = futures::stream::iter(0..IDLE_CONNECTIONS)
        .map(|_| async move {
            match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let took = t.elapsed();
    let (held, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let held: Vec<TcpStream> = held.into_iter().map(|r| r.expect("ok")).collect();
    let opened = held.len();
    gauge_is(&http, "idle", opened, Duration::from_secs(60)).await.context("the node to count them")?;
    let rss1 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files1 = open_files(pid).unwrap_or(0);
    let t = Instant::now();
    let request =
        answers_from(&addr.to_string(), &(BACKEND_PORT0..BACKEND_PORT0 + 10)).await.map(|_| t.elapsed());
    drop(held);
    gauge_is(&http, "idle", 0, Duration::from_secs(60)).await.context("the node to close them")?;
    let rss2 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files2 = open_files(pid).unwrap_or(0);
    Ok(IdleRun {
        opened,
        failed: failed.len(),
        took,
        rss: [rss0, rss1, rss2],
        files: [files0, files1, files2],
        request,
    })
}

// ---------------------------------------------------------------------------------------------------
// Phase 3: UDP flows

struct UdpRun {
    sent: usize,
    bind_failed: usize,
    answered: usize,
    took: Duration,
    rss: [u64; 3],
    files: [usize; 3],
    /// While the flows are held: node 1's /metrics, an HTTP request through it, a new gRPC call.
    during: [Result<()>; 3],
    flows_open: Result<f64>,
    /// The first batch's flows asked again after the flood.
    kept_answered: usize,
    kept: usize,
    /// Time from the end of the flood until node 1 counts no flow (they expired).
    expired_after: Result<Duration>,
    drops: BTreeMap<String, f64>,
    flows_started: f64,
    connect_failures: f64,
}

fn udp_source(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, NET, 101 + (i / UDP_PORTS_PER_SOURCE) as u8);
    SocketAddr::new(IpAddr::V4(ip), UDP_SOURCE_PORT0 + (i % UDP_PORTS_PER_SOURCE) as u16)
}

/// Send one datagram from each socket to `to`; how many got their echo within [`UDP_REPLY_WAIT`].
async fn ask_all(socks: &[Arc<UdpSocket>], to: SocketAddr) -> usize {
    for (i, s) in socks.iter().enumerate() {
        let _ = s.send_to(format!("flow {i}").as_bytes(), to).await;
    }
    let deadline = tokio::time::Instant::now() + UDP_REPLY_WAIT;
    let mut waits = tokio::task::JoinSet::new();
    for s in socks {
        let s = Arc::clone(s);
        waits.spawn(async move {
            let mut buf = [0u8; 64];
            matches!(tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await, Ok(Ok((_, from))) if from == to)
        });
    }
    let mut n = 0;
    while let Some(r) = waits.join_next().await {
        n += usize::from(r.unwrap_or(false));
    }
    n
}

async fn udp_flows(c: &Cluster) -> Result<UdpRun> {
    let node = &c.nodes[0];
    let pid = node.pid().ok_or_else(|| anyhow!("node 1 not running"))?;
    let http = node.http_addr();
    let to = SocketAddr::new(IpAddr::V4(node.ip), UDP_PORT);
    let before = scrape(&http).await?;
    let rss0 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files0 = open_files(pid).unwrap_or(0);
    let t = Instant::now();
    let end = t + PHASE_DEADLINE;
    let (mut sent, mut bind_failed, mut answered) = (0, 0, 0);
    let mut kept: Vec<Arc<UdpSocket>> = Vec::new();
    let mut i = 0;
    while i < UDP_FLOWS && Instant::now() < end {
        let mut batch = Vec::with_capacity(UDP_BATCH);
        for j in i..(i + UDP_BATCH).min(UDP_FLOWS) {
            let s = std::net::UdpSocket::bind(udp_source(j)).and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            });
            match s {
                Ok(s) => batch.push(Arc::new(s)),
                Err(_) => bind_failed += 1,
            }
        }
        i += UDP_BATCH;
        sent += batch.len();
        answered += ask_all(&batch, to).await;
        if kept.is_empty() {
            kept = batch;
        }
    }
    let took = t.elapsed();
    let rss1 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files1 = open_files(pid).unwrap_or(0);
    let flood_end = Instant::now();
    let metrics = scrape(&http).await.map(|_| ());
    let via = format!("{}:{IDLE_PORT}", node.ip);
    let request = tokio::time::timeout(
        Duration::from_secs(5),
        answers_from(&via, &(BACKEND_PORT0..BACKEND_PORT0 + 10)),
    )
    .await
    .map_err(|_| anyhow!("timed out"))
    .and_then(|r| r);
    let grpc = tokio::time::timeout(Duration::from_secs(5), admin::local_status(&node.grpc_addr()))
        .await
        .map_err(|_| anyhow!("timed out"))
        .and_then(|r| r.map(|_| ()));
    let flows_open =
        scrape(&http).await.map(|text| sum(&text, "lbfleet_listener_connections", &["listener=\"udp\""]));
    let kept_answered = ask_all(&kept, to).await;
    let kept_n = kept.len();
    drop(kept);
    let expired_after =
        gauge_is(&http, "udp", 0, UDP_IDLE + Duration::from_secs(60)).await.map(|_| flood_end.elapsed());
    let rss2 = status_kib(pid, "VmRSS:").unwrap_or(0);
    let files2 = open_files(pid).unwrap_or(0);
    let after = wait_until("node 1's /metrics", Duration::from_secs(60), || scrape(&http))
        .await
        .context("node 1 after the udp flows")?;
    let mut drops = udp_drops(&after);
    for (reason, v) in udp_drops(&before) {
        *drops.entry(reason).or_insert(0.0) -= v;
    }
    let flows_started = sum(&after, "lbfleet_udp_flows_total", &["listener=\"udp\""])
        - sum(&before, "lbfleet_udp_flows_total", &["listener=\"udp\""]);
    let connect_failures = sum(&after, "lbfleet_upstream_connect_failures_total", &["pool=\"udp\""])
        - sum(&before, "lbfleet_upstream_connect_failures_total", &["pool=\"udp\""]);
    Ok(UdpRun {
        sent,
        bind_failed,
        answered,
        took,
        rss: [rss0, rss1, rss2],
        files: [files0, files1, files2],
        during: [metrics, request, grpc],
        flows_open,
        kept_answered,
        kept: kept_n,
        expired_after,
        drops,
        flows_started,
        connect_failures,
    })
}

fn outcome(r: &Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed ({e:#})").chars().take(120).collect(),
    }
}

// ---------------------------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Filters passed by `cargo bench` are ignored; this bench has one scenario.
    let nofile = raise_nofile();
    let started = Instant::now();
    let mut backends = Vec::new();
    for port in (BACKEND_PORT0..BACKEND_PORT0 + BACKENDS).chain(EXTRA_PORT0..EXTRA_PORT0 + EXTRA_BACKENDS) {
        backends.push((port, http_backend(port).await?));
    }
    let mut udp_backends = Vec::new();
    for port in UDP_BACKEND_PORT0..UDP_BACKEND_PORT0 + UDP_BACKENDS {
        udp_backends.push(udp_echo(port).await?);
    }
    let mut c = Cluster::start(NET, NODES, &[])?;
    let leader = c.wait_for_leader(Duration::from_secs(60)).await?;
    let leader_addr = c.node(leader).grpc_addr();
    // Idle RSS of the formed cluster before any config, once the first elections settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_all(&c);

    let mut runs = Vec::new();
    let hundred = Shape { tag: "a", pools: 100, per_pool: 100, port0: LISTENERS_100 };
    runs.extend(big_config(&c, &leader_addr, &hundred).await.context("100 pools × 100")?);
    let thousand = Shape { tag: "b", pools: 1_000, per_pool: 10, port0: LISTENERS_1000 };
    runs.extend(big_config(&c, &leader_addr, &thousand).await.context("1,000 pools × 10")?);

    // The small config replaces the big one; only the backends it names stay.
    let small = run_config(
        &c,
        &leader_addr,
        "back to 2 pools",
        &small_toml(),
        (IDLE_PORT, BACKEND_PORT0..BACKEND_PORT0 + 10),
        &[(IDLE_PORT, BACKEND_PORT0..BACKEND_PORT0 + 10)],
    )
    .await
    .context("the small config")?;
    runs.push(small);
    for (port, task) in &backends {
        if !(BACKEND_PORT0..BACKEND_PORT0 + 10).contains(port) {
            task.abort();
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let idle = idle_connections(&c).await.context("idle connections")?;
    let udp = udp_flows(&c).await.context("udp flows")?;

    println!(
        "lbfleet scale, {NODES} release nodes on 127.0.120.11-13, open-file limit of this process {nofile}"
    );
    println!("idle RSS per node before any config: {} MiB", list_mib(&rss_idle));
    println!();
    println!(
        "| config | size | commit (apply returns) | every node serves (nodes 1/2/3) | CPU of each node until then | RSS before, MiB | RSS after, MiB | peak RSS, MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.2} MB | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.bytes as f64 / 1e6,
            ms(r.commit),
            r.served.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" / "),
            r.cpu.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(" / "),
            list_mib(&r.rss_before),
            list_mib(&r.rss_after),
            list_mib(&r.hwm_after),
        );
    }
    for r in &runs {
        println!(
            "{}: {} listener checks on the nodes all answered from their own pool; ring digests agree: {}",
            r.name, r.checked, r.digests_agree
        );
    }
    println!();
    let per_conn = (idle.rss[1] as f64 - idle.rss[0] as f64) * 1024.0 / idle.opened.max(1) as f64;
    println!(
        "idle connections to node 1: {} opened ({} failed) in {}; node 1 RSS {} -> {} MiB ({:.0} bytes per \
         connection), open files {} -> {}; after closing: RSS {} MiB, open files {}; a request on a new \
         connection meanwhile: {}",
        idle.opened,
        idle.failed,
        ms(idle.took),
        mib(idle.rss[0]),
        mib(idle.rss[1]),
        per_conn,
        idle.files[0],
        idle.files[1],
        mib(idle.rss[2]),
        idle.files[2],
        match &idle.request {
            Ok(d) => format!("ok in {}", ms(*d)),
            Err(e) => format!("failed ({e:#})"),
        }
    );
    println!();
    println!(
        "udp flows to node 1: {} sources sent one datagram each ({} could not bind) in {}; {} answered within \
         {}; node counted {} flows started, {} open after the flood ({}), upstream connect failures {}; \
         drops by reason: {:?}",
        udp.sent,
        udp.bind_failed,
        ms(udp.took),
        udp.answered,
        ms(UDP_REPLY_WAIT),
        udp.flows_started,
        match &udp.flows_open {
            Ok(n) => format!("{n}"),
            Err(_) => "?".into(),
        },
        match &udp.flows_open {
            Ok(_) => "gauge".to_string(),
            Err(e) => format!("gauge unreadable: {e:#}").chars().take(100).collect(),
        },
        udp.connect_failures,
        udp.drops,
    );
    println!(
        "  node 1 RSS {} -> {} MiB, open files {} -> {}; after the flows expired: RSS {} MiB, open files {}",
        mib(udp.rss[0]),
        mib(udp.rss[1]),
        udp.files[0],
        udp.files[1],
        mib(udp.rss[2]),
        udp.files[2]
    );
    println!(
        "  while the flows were held: /metrics {}, HTTP request through node 1 {}, new gRPC call {}; \
         {} of the first {} flows answered again",
        outcome(&udp.during[0]),
        outcome(&udp.during[1]),
        outcome(&udp.during[2]),
        udp.kept_answered,
        udp.kept,
    );
    println!(
        "  flows gone from node 1 {} after the flood (idle timeout {}s)",
        match &udp.expired_after {
            Ok(d) => ms(*d),
            Err(e) => format!("not within the deadline ({e:#})"),
        },
        UDP_IDLE.as_secs()
    );
    println!("total time {}", ms(started.elapsed()));
    for t in udp_backends {
        t.abort();
    }
    Ok(())
}
