//! `lbchaos run --target local`: a randomized fault run against a local cluster it starts itself, with a
//! register workload whose history is checked for linearizability.
//!
//! 1. `lbctl local up --nodes N` in `--dir` (default: a new directory under the system temp dir).
//! 2. `--clients` clients write unique values to a register (the `chaos` pool of the config: its one
//!    backend's address encodes the value) and read it back (linearizable reads; `--stale` makes them
//!    stale reads, a control run the checker must fail), each through a random node, recording every
//!    operation's invoke and return times and its outcome as lbctl classifies it (acknowledged, not
//!    applied, or unknown: "may have been applied").
//! 3. Meanwhile faults, drawn from `--faults` by the seed, one at a time, each held 2–5 s then healed:
//!    `kill` (SIGKILL of the leader, a follower or any node; restarted at the heal), `pause` (SIGSTOP,
//!    then SIGCONT), `partition` (iptables DROP rules between node addresses on loopback: the leader
//!    isolated, a minority split off, one-way loss from the leader to one follower, or a flapping link),
//!    `restart` (SIGTERM, then started again). Never more than a minority of nodes down at once. Node
//!    connections to peers leave from each node's own IP, so rules on loopback can cut node pairs.
//! 4. Verdicts, after every fault is healed: no acknowledged write lost (a final linearizable read is at
//!    or past the last acknowledged version), the history (with that read) is linearizable, after each
//!    heal every node serves the same ring digest at the version committed before it within
//!    `--agree-within`, HTTP traffic ([`crate::traffic`]) succeeds with one retry and each key got one
//!    backend, and no node process died that was not killed. Exit 0 only when every verdict holds; the last line printed is a
//!    one-line summary with the figures.
//!
//! Bounded: the run lasts `--duration` plus the final checks; each client performs at most
//! [`MAX_OPS_PER_CLIENT`] operations; every wait has a deadline.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use lbfleet_api::config::{parse, ClusterConfig, Format};
use lbfleet_cli::client::Admin;
use lbfleet_cli::error::EXIT_UNKNOWN;
use lbfleet_cli::local::plan::DEMO_HTTP_PORT;
use lbfleet_tests::process::{alive, signal};
use lbfleet_tests::wait_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{check, Kind, Op, Outcome, Value};
use crate::traffic::Request;
use crate::view::NodeRow;
use crate::{creds, discover, load_creds, restart, NodeProc};
use crate::{report, traffic, view};

/// Most operations one client performs in a run.
pub const MAX_OPS_PER_CLIENT: usize = 20_000;
/// The pool whose one backend's address carries the register's value.
pub const REGISTER_POOL: &str = "chaos";
/// How long a fault is held: between these.
const HOLD: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(5));
/// Quiet time between faults.
const BETWEEN: Duration = Duration::from_secs(2);
/// Deadline of one client operation (connect and call).
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pace of each client: one operation, then this pause.
const PACE: Duration = Duration::from_millis(20);
/// The verdict's floor on HTTP requests that succeed on the first try or the one retry.
pub const MIN_ONE_RETRY: f64 = 0.99;
/// Deadline for a leader after a heal, and for the final checks.
const RECOVER: Duration = Duration::from_secs(30);
/// The iptables chain the partitions use (created and removed by the run).
const CHAIN: &str = "LBCHAOS";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the cluster runs (`local`: lbnode processes on 127.0.0.1N started with `lbctl local up`).
    #[arg(long, value_enum, default_value_t = Target::Local)]
    pub target: Target,
    /// Number of nodes (3 to 9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=9))]
    pub nodes: u8,
    /// How long faults are injected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice (faults, victims, clients' nodes and operations).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fault kinds to draw from, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill,pause,partition,restart")]
    pub faults: Vec<FaultKind>,
    /// Control run: reads are stale (answered from one node's state); the history check must fail.
    #[arg(long)]
    pub stale: bool,
    /// Concurrent register clients.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub clients: u32,
    /// The verdict's bound on how soon after each heal every node serves the same ring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub agree_within: Duration,
    /// HTTP traffic clients (requests to the demo listener of random nodes, from 32 source addresses).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub http_clients: u32,
    /// Write a Markdown report here (and its plot as an SVG beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Leave the cluster running at the end (default: `lbctl local down`).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Restart,
}

/// A fault in progress, undone by [`heal`].
#[derive(Debug)]
enum Active {
    Killed(usize),
    Paused(usize),
    /// Ordered pairs of node indexes whose packets are dropped.
    Cut(Vec<(usize, usize)>),
    /// A link that goes down and up until healed.
    Flap(usize, usize),
    Terminated(usize),
}

/// What the clients, the sampler and the fault loop share.
pub(crate) struct Shared {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    pub(crate) requests: Mutex<Vec<Request>>,
    timeline: Mutex<Vec<(u64, String)>>,
    leaders: Mutex<Vec<(u64, Option<u64>)>>,
    next_value: AtomicU64,
    pub(crate) stop: AtomicBool,
    endpoints: Vec<String>,
    base: ClusterConfig,
    stale: bool,
    /// The live view is drawn: no plain lines while it runs.
    tui: bool,
    nodes: Mutex<Vec<NodeRow>>,
    fault: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Print a timeline entry (unless the live view shows it) and keep it for the report.
    fn event(&self, what: String) {
        let t = self.ms();
        if !self.tui {
            println!("[{:>6.1}s] {what}", t as f64 / 1000.0);
        }
        self.timeline.lock().unwrap_or_else(|p| p.into_inner()).push((t, what));
    }

    pub(crate) fn node_rows(&self) -> Vec<NodeRow> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn fault_now(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn with_ops<T>(&self, f: impl FnOnce(&[Op]) -> T) -> T {
        f(&self.ops.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn with_requests<T>(&self, f: impl FnOnce(&[Request]) -> T) -> T {
        f(&self.requests.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn recent_events(&self, n: usize) -> Vec<(u64, String)> {
        let t = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
        t[t.len().saturating_sub(n)..].to_vec()
    }

    fn set_fault(&self, f: Option<String>) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }
}

pub async fn run(args: RunArgs, dir: Option<PathBuf>) -> Result<bool> {
    let Target::Local = args.target;
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("lbchaos-{}-{}", args.seed, std::process::id())),
    };
    let lbctl = sibling("lbctl")?;
    println!("starting {} nodes in {} (seed {})", args.nodes, dir.display(), args.seed);
    let up = Command::new(&lbctl)
        .args(["local", "up", "--nodes", &args.nodes.to_string(), "--backends", "3", "--dir"])
        .arg(&dir)
        .output()
        .context("run lbctl local up")?;
    ensure!(up.status.success(), "lbctl local up failed: {}", String::from_utf8_lossy(&up.stderr).trim());
    let partitions = args.faults.contains(&FaultKind::Partition);
    let firewall = if partitions { Some(Firewall::install()?) } else { None };
    // Interrupted (SIGINT, SIGTERM): heal and stop the cluster all the same.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = drive(&args, &dir, firewall.as_ref()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    drop(firewall);
    if !args.keep {
        let down = Command::new(&lbctl).args(["local", "down", "--dir"]).arg(&dir).output();
        if let Ok(o) = down {
            if !o.status.success() {
                eprintln!("lbchaos: lbctl local down: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
        }
    }
    outcome
}

async fn drive(args: &RunArgs, dir: &Path, firewall: Option<&Firewall>) -> Result<bool> {
    let mut nodes = discover(dir)?;
    load_creds(dir)?;
    let ips: Vec<Ipv4Addr> = nodes
        .iter()
        .map(|n| n.endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or("").parse())
        .collect::<Result<_, _>>()
        .context("node endpoints must be IPv4 addresses")?;
    let first = connect(&nodes[0].endpoint).await?;
    let current = first.get_config(false).await.map_err(|e| anyhow!("{e}"))?;
    ensure!(!current.config_json.is_empty(), "the cluster has no config");
    let mut base = parse(&current.config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;
    base.pool.retain(|p| p.name != REGISTER_POOL);
    let initial = value_of(&current.config_json)?.unwrap_or(0);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        timeline: Mutex::new(Vec::new()),
        leaders: Mutex::new(Vec::new()),
        next_value: AtomicU64::new(initial + 1),
        stop: AtomicBool::new(false),
        endpoints: nodes.iter().map(|n| n.endpoint.clone()).collect(),
        base,
        stale: args.stale,
        tui: view::wanted(),
        nodes: Mutex::new(
            nodes.iter().map(|n| NodeRow { name: n.name.clone(), ..NodeRow::default() }).collect(),
        ),
        fault: Mutex::new(None),
    });
    let live = shared.tui.then(|| tokio::spawn(view::run(Arc::clone(&shared))));
    let clients: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(client(Arc::clone(&shared), c, args.seed.wrapping_mul(1000) + u64::from(c))))
        .collect();
    let traffic: Vec<_> = (0..args.http_clients)
        .map(|c| {
            let seed = args.seed.wrapping_mul(1000) + 500 + u64::from(c);
            tokio::spawn(traffic::client(Arc::clone(&shared), ips.clone(), DEMO_HTTP_PORT, seed))
        })
        .collect();
    let progress = tokio::spawn(report_progress(Arc::clone(&shared)));
    let sampler = {
        let (shared, nodes) = (Arc::clone(&shared), nodes.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let rows = sample(&nodes).await;
                let l = rows
                    .iter()
                    .filter(|r| r.role == "leader")
                    .max_by_key(|r| r.term)
                    .and_then(|r| r.name.strip_prefix("node-").and_then(|id| id.parse().ok()));
                let t = shared.ms();
                shared.leaders.lock().unwrap_or_else(|p| p.into_inner()).push((t, l));
                *shared.nodes.lock().unwrap_or_else(|p| p.into_inner()) = rows;
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut failovers: Vec<Duration> = Vec::new();
    let mut faults_done: Vec<String> = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    let mut agreements: Vec<Duration> = Vec::new();
    let mut disagreements = 0usize;
    let end = Instant::now() + args.duration;
    while Instant::now() + HOLD.0 < end {
        let kind = args.faults[rng.random_range(0..args.faults.len())];
        let leader = leader(&nodes).await;
        let (active, what) = inject(kind, &mut nodes, &ips, leader, &mut rng, firewall)?;
        shared.event(format!("fault: {what}"));
        shared.set_fault(Some(what.clone()));
        let hold = rng.random_range(HOLD.0..=HOLD.1).min(end.saturating_duration_since(Instant::now()));
        let held = Instant::now();
        // A fault that takes the leader away (killed, stopped, isolated): how long until another leads.
        let leader_hit = match (&active, leader) {
            (Active::Killed(i) | Active::Paused(i) | Active::Terminated(i), Some((l, _))) => *i == l,
            (Active::Cut(pairs), Some((l, _))) => cut_off(l, pairs, nodes.len()),
            _ => false,
        };
        if leader_hit {
            let old = leader.map(|(i, _)| i);
            let found = wait_until("a new leader", hold + RECOVER / 3, || {
                let nodes = &nodes;
                async move {
                    match self::leader(nodes).await {
                        Some((i, _)) if Some(i) != old => Ok(()),
                        other => Err(anyhow!("leader still {other:?}")),
                    }
                }
            })
            .await;
            match found {
                Ok(()) => {
                    let took = held.elapsed();
                    shared.event(format!("new leader after {took:.2?}"));
                    failovers.push(took);
                }
                Err(e) => shared.event(format!("no new leader: {e:#}")),
            }
        }
        if let Active::Flap(a, b) = active {
            if let Some(fw) = firewall {
                let mut down = true;
                while held.elapsed() < hold {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    down = !down;
                    if down {
                        fw.cut(ips[a], ips[b])?;
                        fw.cut(ips[b], ips[a])?;
                    } else {
                        fw.heal()?;
                    }
                }
            }
        } else {
            tokio::time::sleep(hold.saturating_sub(held.elapsed())).await;
        }
        if let Active::Killed(i) = active {
            killed.push(i);
        }
        let committed = committed_version(&nodes).await;
        heal(active, dir, &mut nodes, firewall).await?;
        let healed = Instant::now();
        shared.event("healed".to_string());
        shared.set_fault(None);
        faults_done.push(what);
        match agreement(&nodes, committed, healed).await {
            Ok(t) => {
                shared.event(format!(
                    "every node serves the same ring, at version {committed} or later, {t:.2?} after the heal"
                ));
                agreements.push(t);
            }
            Err(e) => {
                shared.event(format!("nodes disagree: {e:#}"));
                disagreements += 1;
            }
        }
        tokio::time::sleep(
            BETWEEN.saturating_sub(healed.elapsed()).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients.into_iter().chain(traffic) {
        c.await.context("client task")?;
    }
    progress.abort();
    sampler.abort();
    if let Some(live) = live {
        live.abort();
        let _ = live.await;
        view::restore();
    }

    // Verdicts.
    let worst_agree = agreements.iter().max().copied();
    let mut ops = std::mem::take(&mut *shared.ops.lock().unwrap_or_else(|p| p.into_inner()));
    let (final_version, final_value) = final_read(&nodes, &shared, &mut ops).await?;
    let acked_writes = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let last_acked_version = *LAST_ACKED.lock().unwrap_or_else(|p| p.into_inner());
    let lost = final_version < last_acked_version;
    let verdict = check(&ops, initial);
    let dead: Vec<String> = nodes.iter().filter(|n| !alive(n.pid)).map(|n| n.name.clone()).collect();

    let writes = ops.iter().filter(|o| matches!(o.kind, Kind::Write(_))).count();
    let reads = ops.len() - writes;
    let ok_first = ops.iter().filter(|o| matches!(o.outcome, Outcome::Ok(_))).count();
    failovers.sort();
    let median = failovers.get(failovers.len() / 2).copied();
    let requests = std::mem::take(&mut *shared.requests.lock().unwrap_or_else(|p| p.into_inner()));
    let http = traffic::summarize(&requests);
    let http_ok = http.requests == 0 || http.one_retry >= MIN_ONE_RETRY;
    let mut verdicts = vec![
        format!(
            "no acknowledged write lost: {} (last acknowledged version {last_acked_version}, cluster at {final_version}, value {final_value})",
            yes(!lost)
        ),
        format!(
            "history linearizable: {}{} ({} operations checked, {} unknown, {} not applied; stateright's search: {}{})",
            yes(verdict.linearizable),
            verdict.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default(),
            verdict.checked,
            verdict.unknown,
            verdict.failed,
            match verdict.cross_check {
                Some(true) => "linearizable".to_string(),
                Some(false) => "not linearizable".to_string(),
                None => format!("no answer within {:?}", crate::history::CROSS_CHECK_BUDGET),
            },
            if args.stale { "; reads were stale: a control run" } else { "" }
        ),
    ];
    let agreed = disagreements == 0 && worst_agree.is_none_or(|t| t <= args.agree_within);
    verdicts.push(format!(
        "every node serves the same ring within {:?} of each heal: {} (worst {}, {disagreements} heals without agreement within {RECOVER:?})",
        args.agree_within,
        yes(agreed),
        worst_agree.map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
    ));
    verdicts.push(format!(
        "HTTP requests succeed with one retry on another node: {} ({:.2}% of {}; {:.2}% on the first try, which a node fault costs without a front)",
        yes(http_ok),
        100.0 * http.one_retry,
        http.requests,
        100.0 * http.first_try
    ));
    verdicts.push(format!(
        "one key, one backend, from every node: {}{}",
        yes(http.split_keys.is_empty()),
        if http.split_keys.is_empty() {
            format!(" ({} keys)", traffic::KEYS)
        } else {
            let keys: Vec<String> =
                http.split_keys.iter().map(|(k, b)| format!("127.0.2.{k} got {}", b.join(" and "))).collect();
            format!(": {}", keys.join("; "))
        }
    ));
    verdicts.push(format!(
        "no node died that was not killed: {}",
        if dead.is_empty() { "yes".to_string() } else { format!("no ({})", dead.join(", ")) }
    ));
    for v in &verdicts {
        println!("verdict: {v}");
    }
    let pass =
        !lost && verdict.linearizable && agreed && dead.is_empty() && http_ok && http.split_keys.is_empty();
    let summary = format!(
        "lbchaos: {} seed={} nodes={} faults={} ops={} (writes {writes}, reads {reads}) ok={:.1}% acknowledged_writes={acked_writes} unknown={} lost={} linearizable={} agree_worst={} http={} first_try={:.2}% one_retry={:.2}% split_keys={} leader_failover_median={} max={} killed={}",
        if pass { "PASS" } else { "FAIL" },
        args.seed,
        nodes.len(),
        faults_done.len(),
        ops.len(),
        100.0 * ok_first as f64 / ops.len().max(1) as f64,
        verdict.unknown,
        if lost { "yes" } else { "0" },
        yes(verdict.linearizable),
        worst_agree.map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
        http.requests,
        100.0 * http.first_try,
        100.0 * http.one_retry,
        http.split_keys.len(),
        median.map(|d| format!("{d:.2?}")).unwrap_or_else(|| "-".into()),
        failovers.last().map(|d| format!("{d:.2?}")).unwrap_or_else(|| "-".into()),
        killed.len(),
    );
    if let Some(path) = &args.report {
        let timeline = shared.timeline.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let leaders = shared.leaders.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let r = report::Report {
            title: format!("lbchaos run: {} nodes, seed {}, {:?}", nodes.len(), args.seed, args.duration),
            timeline: &timeline,
            verdicts: &verdicts,
            summary: &summary,
            ops: &ops,
            requests: &requests,
            leaders: &leaders,
        };
        match report::write(path, &r) {
            Ok(()) => println!("report: {}", path.display()),
            Err(e) => println!("report not written: {e:#}"),
        }
    }
    println!("{summary}");
    Ok(pass)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The highest version any acknowledged write returned.
static LAST_ACKED: Mutex<u64> = Mutex::new(0);

/// A binary next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("current executable")?;
    let p = me.parent().map(|d| d.join(name)).ok_or_else(|| anyhow!("no directory for {}", me.display()))?;
    ensure!(p.exists(), "{} not found next to lbchaos (build the workspace's binaries)", p.display());
    Ok(p)
}

async fn connect(endpoint: &str) -> Result<Admin> {
    Admin::connect(endpoint, OP_TIMEOUT, creds()).await.map_err(|e| anyhow!("{e}"))
}

/// The value a config's register pool carries.
fn value_of(config_json: &str) -> Result<Option<Value>> {
    if config_json.is_empty() {
        return Ok(None);
    }
    let c = parse(config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;
    let Some(p) = c.pool(REGISTER_POOL) else { return Ok(None) };
    let addr = p.backend.first().ok_or_else(|| anyhow!("the {REGISTER_POOL} pool has no backend"))?.addr;
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            Ok(Some((u64::from(o[1]) << 16) | (u64::from(o[2]) << 8) | u64::from(o[3])))
        }
        other => bail!("unexpected register address {other}"),
    }
}

/// The config with the register at `v` (values below 2^24).
fn config_with(base: &ClusterConfig, v: Value) -> Result<String> {
    let ip = Ipv4Addr::new(127, (v >> 16) as u8, (v >> 8) as u8, v as u8);
    let pool = format!(
        "[[pool]]\nname = \"{REGISTER_POOL}\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{ip}:9\"\n\
         [pool.health]\nkind = \"none\"\n"
    );
    let extra = parse(&pool, Format::Toml).map_err(|e| anyhow!("register pool: {e}"))?;
    let mut c = base.clone();
    c.pool.extend(extra.pool);
    Ok(c.to_json())
}

async fn client(shared: Arc<Shared>, id: u32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..MAX_OPS_PER_CLIENT {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let node_idx = rng.random_range(0..shared.endpoints.len());
        let ep = &shared.endpoints[node_idx];
        let write = rng.random_bool(0.5);
        let kind = if write {
            Kind::Write(shared.next_value.fetch_add(1, Ordering::SeqCst).min((1 << 24) - 1))
        } else {
            Kind::Read
        };
        let invoke_ms = shared.ms();
        let outcome = match Admin::connect(ep, OP_TIMEOUT, creds()).await {
            Err(_) => Outcome::Failed,
            Ok(admin) => match kind {
                Kind::Write(v) => match config_with(&shared.base, v) {
                    Err(_) => Outcome::Failed,
                    Ok(body) => match admin.apply_config("json", body).await {
                        Ok(r) => {
                            let mut last = LAST_ACKED.lock().unwrap_or_else(|p| p.into_inner());
                            *last = (*last).max(r.version);
                            Outcome::Ok(None)
                        }
                        Err(e) if e.exit_code() == EXIT_UNKNOWN => Outcome::Unknown,
                        Err(_) => Outcome::Failed,
                    },
                },
                Kind::Read => match admin.get_config(shared.stale).await {
                    Ok(r) => match value_of(&r.config_json) {
                        Ok(v) => Outcome::Ok(v),
                        Err(_) => Outcome::Failed,
                    },
                    Err(_) => Outcome::Failed,
                },
            },
        };
        let op =
            Op { client: id, node: node_idx as u64 + 1, kind, invoke_ms, return_ms: shared.ms(), outcome };
        shared.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
        tokio::time::sleep(PACE).await;
    }
}

/// A progress line every 5 s: operations per second and how many succeeded.
async fn report_progress(shared: Arc<Shared>) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        if shared.tui {
            continue;
        }
        let ops = shared.ops.lock().unwrap_or_else(|p| p.into_inner());
        let recent = &ops[seen..];
        let ok = recent.iter().filter(|o| matches!(o.outcome, Outcome::Ok(_))).count();
        println!(
            "[{:>6.1}s] {:.0} ops/s, {:.0}% ok",
            shared.ms() as f64 / 1000.0,
            recent.len() as f64 / 5.0,
            100.0 * ok as f64 / recent.len().max(1) as f64
        );
        seen = ops.len();
    }
}

/// Every node's status, as far as each answers within 500 ms (an empty role when it does not).
async fn sample(nodes: &[NodeProc]) -> Vec<NodeRow> {
    futures::future::join_all(nodes.iter().map(|n| async move {
        let ask = async {
            let admin = Admin::connect(&n.endpoint, Duration::from_millis(400), creds()).await.ok()?;
            admin.local_status().await.ok()
        };
        let st = if alive(n.pid) {
            tokio::time::timeout(Duration::from_millis(500), ask).await.ok().flatten()
        } else {
            None
        };
        match st {
            Some(st) => NodeRow {
                name: n.name.clone(),
                role: st.role,
                term: st.term,
                applied: st.applied_index,
                config_version: st.config_version,
            },
            None => NodeRow { name: n.name.clone(), ..NodeRow::default() },
        }
    }))
    .await
}

/// The node that leads with the highest term, among those that answer within 500 ms.
async fn leader(nodes: &[NodeProc]) -> Option<(usize, u64)> {
    let answers = futures::future::join_all(nodes.iter().enumerate().map(|(i, n)| async move {
        if !alive(n.pid) {
            return None;
        }
        let ask = async {
            let admin = Admin::connect(&n.endpoint, Duration::from_millis(400), creds()).await.ok()?;
            admin.local_status().await.ok()
        };
        let st = tokio::time::timeout(Duration::from_millis(500), ask).await.ok()??;
        (st.role == "leader").then_some((i, st.id, st.term))
    }))
    .await;
    answers.into_iter().flatten().max_by_key(|(_, _, term)| *term).map(|(i, id, _)| (i, id))
}

fn inject(
    kind: FaultKind,
    nodes: &mut [NodeProc],
    ips: &[Ipv4Addr],
    leader: Option<(usize, u64)>,
    rng: &mut StdRng,
    firewall: Option<&Firewall>,
) -> Result<(Active, String)> {
    let n = nodes.len();
    let any = |rng: &mut StdRng| rng.random_range(0..n);
    let l = leader.map(|(i, _)| i);
    // Leader, a follower, or any node.
    let pick = |rng: &mut StdRng| -> (usize, &'static str) {
        match (rng.random_range(0..3), l) {
            (0, Some(l)) => (l, "the leader"),
            (1, Some(l)) => ((l + 1 + rng.random_range(0..n - 1)) % n, "a follower"),
            _ => (any(rng), "a random node"),
        }
    };
    Ok(match kind {
        FaultKind::Kill => {
            let (i, role) = pick(rng);
            signal(nodes[i].pid, libc::SIGKILL);
            (Active::Killed(i), format!("SIGKILL {} ({role})", nodes[i].name))
        }
        FaultKind::Pause => {
            let (i, role) = pick(rng);
            signal(nodes[i].pid, libc::SIGSTOP);
            (Active::Paused(i), format!("SIGSTOP {} ({role})", nodes[i].name))
        }
        FaultKind::Restart => {
            let (i, role) = pick(rng);
            signal(nodes[i].pid, libc::SIGTERM);
            (Active::Terminated(i), format!("SIGTERM and restart {} ({role})", nodes[i].name))
        }
        FaultKind::Partition => {
            let fw = firewall.ok_or_else(|| anyhow!("partitions need the firewall"))?;
            let cut_both = |a: usize, b: usize| -> Result<()> {
                fw.cut(ips[a], ips[b])?;
                fw.cut(ips[b], ips[a])
            };
            match rng.random_range(0..4) {
                0 => {
                    let x = l.unwrap_or_else(|| any(rng));
                    let mut pairs = Vec::new();
                    for o in (0..n).filter(|o| *o != x) {
                        cut_both(x, o)?;
                        pairs.extend([(x, o), (o, x)]);
                    }
                    (Active::Cut(pairs), format!("partition: {} isolated (the leader)", nodes[x].name))
                }
                1 => {
                    // A random minority (at most (n-1)/2 nodes) split from the rest.
                    let size = rng.random_range(1..=(n - 1) / 2);
                    let mut all: Vec<usize> = (0..n).collect();
                    for i in 0..size {
                        let j = rng.random_range(i..n);
                        all.swap(i, j);
                    }
                    let (minority, majority) = all.split_at(size);
                    let mut pairs = Vec::new();
                    for &a in minority {
                        for &b in majority {
                            cut_both(a, b)?;
                            pairs.extend([(a, b), (b, a)]);
                        }
                    }
                    let names: Vec<&str> = minority.iter().map(|i| nodes[*i].name.as_str()).collect();
                    (Active::Cut(pairs), format!("partition: minority {} split off", names.join("+")))
                }
                2 => {
                    let a = l.unwrap_or_else(|| any(rng));
                    let b = (a + 1 + rng.random_range(0..n - 1)) % n;
                    fw.cut(ips[a], ips[b])?;
                    (
                        Active::Cut(vec![(a, b)]),
                        format!("partition: one-way loss {} -> {}", nodes[a].name, nodes[b].name),
                    )
                }
                _ => {
                    let a = any(rng);
                    let b = (a + 1 + rng.random_range(0..n - 1)) % n;
                    cut_both(a, b)?;
                    (
                        Active::Flap(a, b),
                        format!("partition: flapping link {} <-> {}", nodes[a].name, nodes[b].name),
                    )
                }
            }
        }
    })
}

async fn heal(active: Active, dir: &Path, nodes: &mut [NodeProc], firewall: Option<&Firewall>) -> Result<()> {
    match active {
        Active::Killed(i) | Active::Terminated(i) => {
            let pid = nodes[i].pid;
            // After SIGTERM the node leaves gracefully: wait for it to be gone before starting it again.
            let gone = wait_until("the stopped node to exit", Duration::from_secs(20), || async {
                ensure!(!alive(pid), "pid {pid} still alive");
                Ok(())
            })
            .await;
            if gone.is_err() {
                signal(pid, libc::SIGKILL);
            }
            restart(dir, &mut nodes[i])?;
        }
        Active::Paused(i) => {
            signal(nodes[i].pid, libc::SIGCONT);
        }
        Active::Cut(_) | Active::Flap(..) => {
            if let Some(fw) = firewall {
                fw.heal()?;
            }
        }
    }
    Ok(())
}

/// How long after `since` every node served the same ring digest and had applied at least config
/// `version` (what was committed before the heal), while the clients keep writing.
async fn agreement(nodes: &[NodeProc], version: u64, since: Instant) -> Result<Duration> {
    wait_until("every node to serve the same ring", RECOVER, || async {
        let statuses = futures::future::join_all(nodes.iter().map(|n| async move {
            let admin = connect(&n.endpoint).await?;
            admin.local_status().await.map_err(|e| anyhow!("{}: {e}", n.name))
        }))
        .await;
        let mut digest: Option<String> = None;
        for (n, st) in nodes.iter().zip(statuses) {
            let st = st?;
            ensure!(
                st.config_version >= version,
                "{} at config version {} < {version}",
                n.name,
                st.config_version
            );
            match &digest {
                None => digest = Some(st.ring_digest),
                Some(d) if *d == st.ring_digest => {}
                Some(d) => bail!("{} serves ring {}, another {d}", n.name, st.ring_digest),
            }
        }
        Ok(())
    })
    .await?;
    Ok(since.elapsed())
}

/// The highest config version a node reports (what the cluster committed, as far as anyone knows).
async fn committed_version(nodes: &[NodeProc]) -> u64 {
    let versions = futures::future::join_all(nodes.iter().map(|n| async move {
        let admin =
            tokio::time::timeout(Duration::from_millis(500), connect(&n.endpoint)).await.ok()?.ok()?;
        admin.local_status().await.ok().map(|s| s.config_version)
    }))
    .await;
    versions.into_iter().flatten().max().unwrap_or(0)
}

/// Whether the partition `pairs` leaves node `x` unable to reach a majority (counting itself).
fn cut_off(x: usize, pairs: &[(usize, usize)], n: usize) -> bool {
    let reach =
        (0..n).filter(|o| *o != x && !pairs.contains(&(x, *o)) && !pairs.contains(&(*o, x))).count() + 1;
    reach <= n / 2
}

/// A final linearizable read, added to the history; returns the version and value it saw.
async fn final_read(nodes: &[NodeProc], shared: &Shared, ops: &mut Vec<Op>) -> Result<(u64, Value)> {
    let invoke_ms = shared.ms();
    let got = wait_until("a final linearizable read", RECOVER, || async {
        for n in nodes {
            if let Ok(admin) = connect(&n.endpoint).await {
                if let Ok(r) = admin.get_config(false).await {
                    return Ok(r);
                }
            }
        }
        bail!("no node answered a linearizable read")
    })
    .await?;
    let value = value_of(&got.config_json)?;
    ops.push(Op {
        client: u32::MAX,
        node: got.answered_by,
        kind: Kind::Read,
        invoke_ms,
        return_ms: shared.ms(),
        outcome: Outcome::Ok(value),
    });
    Ok((got.version, value.unwrap_or(0)))
}

/// DROP rules between node addresses, in a chain of their own, removed on drop.
pub struct Firewall;

impl Firewall {
    fn iptables(args: &[&str]) -> Result<std::process::Output> {
        Command::new("iptables").args(args).output().context("run iptables (partitions need it, as root)")
    }

    pub fn install() -> Result<Firewall> {
        let _ = Self::iptables(&["-N", CHAIN]);
        let out = Self::iptables(&["-F", CHAIN])?;
        ensure!(out.status.success(), "iptables -F {CHAIN}: {}", String::from_utf8_lossy(&out.stderr).trim());
        if !Self::iptables(&["-C", "INPUT", "-j", CHAIN])?.status.success() {
            let out = Self::iptables(&["-I", "INPUT", "-j", CHAIN])?;
            ensure!(
                out.status.success(),
                "iptables -I INPUT: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Firewall)
    }

    fn cut(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<()> {
        let (f, t) = (from.to_string(), to.to_string());
        let out = Self::iptables(&["-A", CHAIN, "-s", &f, "-d", &t, "-j", "DROP"])?;
        ensure!(
            out.status.success(),
            "iptables cut {f} -> {t}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn heal(&self) -> Result<()> {
        let out = Self::iptables(&["-F", CHAIN])?;
        ensure!(out.status.success(), "iptables -F {CHAIN}: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Self::iptables(&["-F", CHAIN]);
        let _ = Self::iptables(&["-D", "INPUT", "-j", CHAIN]);
        let _ = Self::iptables(&["-X", CHAIN]);
    }
}
