//! `lbchaos run`: a randomized fault run against a cluster it starts itself, with a register workload
//! whose history is checked for linearizability.
//!
//! 1. `--target local`: `lbctl local up --nodes N` in `--dir` (default: a new directory under the
//!    system temp dir). `--target compose`: `docker/compose-N.yml` ([`crate::compose`]); there faults
//!    are docker commands and partitions are rules inside the node containers ([`crate::target`]),
//!    client traffic goes through the front's VIP, and each node fault also measures how long the
//!    router kept routing to the node (a verdict: [`compose::FRONT_BOUND`]). The membership faults and
//!    UDP flows are local only.
//! 2. `--clients` clients write unique values to a register (the `chaos` pool of the config: its one
//!    backend's address encodes the value) and read it back (linearizable reads; `--stale` makes them
//!    stale reads, a control run the checker must fail), each through a random node, recording every
//!    operation's invoke and return times and its outcome as lbctl classifies it (acknowledged, not
//!    applied, or unknown: "may have been applied").
//! 3. Meanwhile faults, drawn from `--faults` by the seed (from a shuffled bag of the kinds, refilled
//!    when empty, so each kind runs once per round), one at a time, each held 2–5 s then healed:
//!    `kill` (SIGKILL of the leader, a follower or any node; restarted at the heal), `pause` (SIGSTOP,
//!    then SIGCONT), `partition` (iptables DROP rules between node addresses on loopback: the leader
//!    isolated, a minority split off, one-way loss from the leader to one follower, or a flapping link),
//!    `restart` (SIGTERM, then started again); and ([`crate::fleet`]) `backend-kill` (SIGKILL of a demo
//!    backend: the time until every node's data plane has ejected it is measured; restarted at the
//!    heal), `rolling-restart` (every node in turn: SIGTERM, started again, caught up, the next one),
//!    `node-add` (node N+1 joins under load; removed at the heal) and `node-remove` (a member leaves and
//!    is stopped; at the heal it joins again with an empty store). Never more than a minority of nodes
//!    down at once. Node connections to peers leave from each node's own IP, so rules on loopback can
//!    cut node pairs.
//! 4. Verdicts, after every fault is healed: no acknowledged write lost (a final linearizable read is at
//!    or past the last acknowledged version), the history (with that read) is linearizable, after each
//!    heal every node serves the same ring digest at the version committed before it within
//!    `--agree-within`, HTTP traffic ([`crate::traffic`]) and UDP flows ([`crate::udp`]) succeed with one
//!    retry and each key or flow got one backend while the backend set was unchanged, every killed
//!    backend was ejected by every node within [`fleet::EJECT_BOUND`] and routed to again after its
//!    restart, every rolling restart and membership change completed, and no node process died that
//!    was not killed. Exit 0 only when every verdict holds; the last line printed is a
//!    one-line summary with the figures.
//!
//! Bounded: the run lasts `--duration` plus the final checks; each client performs at most
//! [`MAX_OPS_PER_CLIENT`] operations; every wait has a deadline.

use std::net::{Ipv4Addr, SocketAddr};
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
use lbfleet_tests::compose::VIP;
use lbfleet_tests::process::alive;
use lbfleet_tests::wait_until;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::history::{check, Kind, Op, Outcome, Value};
use crate::target::{Driver, Firewall};
use crate::traffic::Request;
use crate::view::NodeRow;
use crate::{compose, fleet};
use crate::{creds, discover, load_creds, load_creds_from, restart, NodeProc};
use crate::{report, traffic, udp, view};

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
/// Passive ejection of the run's pools: base and longest (see [`prepare_config`]).
const OUTLIER_EJECTION: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(4));
/// The fault kinds of a run without `--faults`, per target.
const LOCAL_FAULTS: &[FaultKind] = &[
    FaultKind::Kill,
    FaultKind::Pause,
    FaultKind::Partition,
    FaultKind::Restart,
    FaultKind::BackendKill,
    FaultKind::RollingRestart,
    FaultKind::NodeAdd,
    FaultKind::NodeRemove,
];
const COMPOSE_FAULTS: &[FaultKind] =
    &[FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Restart, FaultKind::BackendKill];
/// The listener and pool a compose run adds for its traffic through the VIP: Maglev over the demo
/// backends on the request header [`traffic::KEY_HEADER`] (every request comes from the host's one
/// address, so the source IP cannot be the key).
const VIP_POOL: &str = "chaos-http";
const VIP_PORT: u16 = 8090;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the cluster runs: `local`, lbnode processes on 127.0.0.1N started with `lbctl local up`;
    /// `compose`, the containers of `docker/compose-N.yml` (N = 3 or 5; image built with
    /// docker/build-image.sh), client traffic through the front's VIP.
    #[arg(long, value_enum, default_value_t = Target::Local)]
    pub target: Target,
    /// With `--target compose`: the compose file, relative to the current directory (default
    /// `docker/compose-N.yml`).
    #[arg(long, value_name = "FILE")]
    pub compose_file: Option<String>,
    /// Number of nodes (3 to 9; 3 or 5 with `--target compose`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=9))]
    pub nodes: u8,
    /// How long faults are injected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice (faults, victims, clients' nodes and operations).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fault kinds to draw from, comma-separated. Default: every kind on `local`; kill, pause,
    /// partition, restart and backend-kill on `compose` (rolling-restart, node-add and node-remove are
    /// local only).
    #[arg(long, value_enum, value_delimiter = ',')]
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
    /// UDP clients (datagrams to the UDP listener of random nodes, 8 flows each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub udp_clients: u8,
    /// Write a Markdown report here (and its plot as an SVG beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Leave the cluster running at the end (default: `lbctl local down`, `docker-compose down -v`).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Local,
    Compose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Restart,
    BackendKill,
    RollingRestart,
    NodeAdd,
    NodeRemove,
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
    /// A demo backend (index into the backends) killed, with the number of pools that routed to it.
    BackendKilled(usize, usize),
    /// A node added (not in `nodes`), removed at the heal.
    Added(Box<NodeProc>),
    /// A node removed from the membership and stopped; it joins again at the heal.
    Removed(usize),
    /// Done already (a rolling restart, a membership change that failed): nothing to heal.
    Done,
}

/// What the clients, the sampler and the fault loop share.
pub(crate) struct Shared {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    pub(crate) requests: Mutex<Vec<Request>>,
    pub(crate) datagrams: Mutex<Vec<Request>>,
    /// Even while the backend set is stable, odd while it changes (see [`crate::traffic`]).
    backend_epoch: AtomicU64,
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

    pub(crate) fn backend_epoch(&self) -> u64 {
        self.backend_epoch.load(Ordering::SeqCst)
    }

    /// The backend set starts or stops changing.
    fn next_epoch(&self) {
        self.backend_epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn with_datagrams<T>(&self, f: impl FnOnce(&[Request]) -> T) -> T {
        f(&self.datagrams.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The stable epoch a request started (`before`) and ended (`after`) in, if it did.
pub(crate) fn epoch_of(before: u64, after: u64) -> Option<u64> {
    (before == after && before.is_multiple_of(2)).then_some(before)
}

/// What a run drives: how faults reach the cluster, its nodes and backends, and where traffic goes.
struct Setup {
    driver: Driver,
    nodes: Vec<NodeProc>,
    backends: Vec<NodeProc>,
    /// The admin token (for the nodes' admin HTTP state).
    token: String,
    front: traffic::Front,
}

/// `fut`, or an error when the run is interrupted (SIGINT, SIGTERM): the caller heals and stops the
/// cluster all the same.
async fn interruptible(fut: impl std::future::Future<Output = Result<bool>>) -> Result<bool> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    }
}

pub async fn run(mut args: RunArgs, dir: Option<PathBuf>) -> Result<bool> {
    if args.faults.is_empty() {
        args.faults = match args.target {
            Target::Local => LOCAL_FAULTS,
            Target::Compose => COMPOSE_FAULTS,
        }
        .to_vec();
    }
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("lbchaos-{}-{}", args.seed, std::process::id())),
    };
    let partitions = args.faults.contains(&FaultKind::Partition);
    match args.target {
        Target::Local => run_local(&args, &dir, partitions).await,
        Target::Compose => {
            ensure!(
                matches!(args.nodes, 3 | 5),
                "--target compose runs docker/compose-3.yml or docker/compose-5.yml: --nodes 3 or 5"
            );
            if let Some(k) = args.faults.iter().find(|k| !COMPOSE_FAULTS.contains(k)) {
                bail!(
                    "the fault {k:?} is not available with --target compose (kill, pause, partition, restart and backend-kill are)"
                );
            }
            run_compose(&args, &dir, partitions).await
        }
    }
}

async fn run_local(args: &RunArgs, dir: &Path, partitions: bool) -> Result<bool> {
    let lbctl = sibling("lbctl")?;
    println!("starting {} nodes in {} (seed {})", args.nodes, dir.display(), args.seed);
    let up = Command::new(&lbctl)
        .args(["local", "up", "--nodes", &args.nodes.to_string(), "--backends", "3", "--dir"])
        .arg(dir)
        .output()
        .context("run lbctl local up")?;
    ensure!(up.status.success(), "lbctl local up failed: {}", String::from_utf8_lossy(&up.stderr).trim());
    let firewall = if partitions { Some(Firewall::host()?) } else { None };
    let outcome = interruptible(async {
        let nodes = discover(dir)?;
        load_creds(dir)?;
        let setup = Setup {
            driver: Driver::Local { dir: dir.to_path_buf() },
            front: traffic::Front::Nodes(node_ips(&nodes)?, DEMO_HTTP_PORT),
            nodes,
            backends: fleet::discover_backends(dir)?,
            token: lbfleet_cli::ca::CaDir::new(&dir.join("tls"))
                .read_token(lbfleet_api::auth::Role::Admin)?,
        };
        drive(args, dir, setup, firewall.as_ref()).await
    })
    .await;
    drop(firewall);
    if !args.keep {
        let down = Command::new(&lbctl).args(["local", "down", "--dir"]).arg(dir).output();
        if let Ok(o) = down {
            if !o.status.success() {
                eprintln!("lbchaos: lbctl local down: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
        }
    }
    outcome
}

async fn run_compose(args: &RunArgs, dir: &Path, partitions: bool) -> Result<bool> {
    let file = args.compose_file.clone().unwrap_or_else(|| format!("docker/compose-{}.yml", args.nodes));
    let root = std::env::current_dir().context("current directory")?;
    println!("starting {file} as compose project {} (seed {})", compose::PROJECT, args.seed);
    let mut cluster = compose::Cluster::start(&root, &file, args.nodes.into()).await?;
    let outcome = interruptible(async {
        load_creds_from(&cluster.certs)?;
        let nodes = cluster.nodes()?;
        cluster.ready(&nodes).await?;
        println!("the compose cluster leads and serves the demo config; traffic goes to {VIP}:{VIP_PORT}");
        let ips = node_ips(&nodes)?;
        let firewall = if partitions {
            let services = ips.iter().copied().zip(nodes.iter().filter_map(|n| n.service.clone())).collect();
            Some(Firewall::containers(cluster.compose.clone(), services)?)
        } else {
            None
        };
        let setup = Setup {
            driver: Driver::Compose(cluster.compose.clone()),
            front: traffic::Front::Vip(SocketAddr::new(VIP.parse().context("the VIP")?, VIP_PORT)),
            nodes,
            backends: cluster.backends()?,
            token: lbfleet_cli::ca::CaDir::new(&cluster.certs).read_token(lbfleet_api::auth::Role::Admin)?,
        };
        drive(args, dir, setup, firewall.as_ref()).await
    })
    .await;
    cluster.stop(args.keep);
    outcome
}

/// The IPv4 addresses of the nodes' endpoints.
fn node_ips(nodes: &[NodeProc]) -> Result<Vec<Ipv4Addr>> {
    nodes
        .iter()
        .map(|n| n.endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or("").parse())
        .collect::<Result<_, _>>()
        .context("node endpoints must be IPv4 addresses")
}

async fn drive(args: &RunArgs, dir: &Path, setup: Setup, firewall: Option<&Firewall>) -> Result<bool> {
    let Setup { driver, mut nodes, mut backends, token, front } = setup;
    let ips: Vec<Ipv4Addr> = nodes
        .iter()
        .map(|n| n.endpoint.rsplit_once(':').map(|(h, _)| h).unwrap_or("").parse())
        .collect::<Result<_, _>>()
        .context("node endpoints must be IPv4 addresses")?;
    let first = connect(&nodes[0].endpoint).await?;
    let mut current = first.get_config(false).await.map_err(|e| anyhow!("{e}"))?;
    ensure!(!current.config_json.is_empty(), "the cluster has no config");
    let vip_pool = matches!(front, traffic::Front::Vip(_));
    prepare_config(&first, &current.config_json, &backends, args.udp_clients > 0, vip_pool).await?;
    if let traffic::Front::Vip(vip) = front {
        wait_until("the run's listener to answer through the VIP", RECOVER, || async {
            traffic::probe(vip).await.ok_or_else(|| anyhow!("no 200 from {vip}"))
        })
        .await?;
    }
    let udp_targets = match &front {
        traffic::Front::Vip(vip) => udp::Targets::vip(vip.ip()),
        traffic::Front::Nodes(..) => udp::Targets::nodes(&ips),
    };
    if args.udp_clients > 0 {
        udp_ready(&udp_targets).await?;
    }
    current = first.get_config(false).await.map_err(|e| anyhow!("{e}"))?;
    let mut base = parse(&current.config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;
    base.pool.retain(|p| p.name != REGISTER_POOL);
    let initial = value_of(&current.config_json)?.unwrap_or(0);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        datagrams: Mutex::new(Vec::new()),
        backend_epoch: AtomicU64::new(0),
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
            tokio::spawn(traffic::client(Arc::clone(&shared), front.clone(), seed))
        })
        .collect();
    let flows: Vec<_> = (1..=args.udp_clients)
        .map(|c| {
            let seed = args.seed.wrapping_mul(1000) + 700 + u64::from(c);
            tokio::spawn(udp::client(Arc::clone(&shared), udp_targets.clone(), c, seed))
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
    let mut fx = FleetFaults::default();
    // Kinds are drawn from a shuffled bag, refilled when empty: every kind runs once in each round of
    // as many faults as there are kinds.
    let mut bag: Vec<FaultKind> = Vec::new();
    let end = Instant::now() + args.duration;
    while Instant::now() + HOLD.0 < end {
        if bag.is_empty() {
            bag = args.faults.clone();
            bag.sort_by_key(|k| *k as u8);
            bag.dedup();
            bag.shuffle(&mut rng);
        }
        let Some(kind) = bag.pop() else { bail!("--faults is empty") };
        let leader = leader(&nodes).await;
        let injected = Instant::now();
        let (active, what) = match kind {
            FaultKind::BackendKill => {
                let i = rng.random_range(0..backends.len());
                let addr = backends[i].endpoint.clone();
                let pools = fleet::pools_of(&nodes, &token, &addr).await?;
                shared.next_epoch();
                driver.kill(&backends[i])?;
                (Active::BackendKilled(i, pools), format!("SIGKILL {} ({addr})", backends[i].name))
            }
            FaultKind::RollingRestart | FaultKind::NodeAdd | FaultKind::NodeRemove => {
                let l = leader.map(|(i, _)| i);
                let victim = (l.unwrap_or(0) + rng.random_range(0..nodes.len())) % nodes.len();
                let what = match kind {
                    FaultKind::RollingRestart => "rolling restart of every node".to_string(),
                    FaultKind::NodeAdd => format!("node-{} added under load", nodes.len() + 1),
                    _ => format!(
                        "{} removed from the membership under load{}",
                        nodes[victim].name,
                        if Some(victim) == l { " (the leader)" } else { "" }
                    ),
                };
                shared.event(format!("fault: {what}"));
                shared.set_fault(Some(what.clone()));
                let active = membership(kind, victim, dir, &mut nodes, &shared, &mut fx).await;
                (active, what)
            }
            _ => inject(kind, &driver, &nodes, &ips, leader, &mut rng, firewall)?,
        };
        // On the compose front: how long the router keeps sending new flows to the node.
        let withdrawal = match (&driver, &active) {
            (Driver::Compose(c), Active::Killed(i) | Active::Paused(i) | Active::Terminated(i)) => {
                Some((*i, tokio::spawn(compose::withdrawal(c.clone(), ips[*i], injected))))
            }
            _ => None,
        };
        if !matches!(kind, FaultKind::RollingRestart | FaultKind::NodeAdd | FaultKind::NodeRemove) {
            shared.event(format!("fault: {what}"));
            shared.set_fault(Some(what.clone()));
        }
        if let Active::BackendKilled(i, _) = active {
            match fleet::wait_eligible(&nodes, &token, &backends[i].endpoint, 0, RECOVER).await {
                Ok(t) => {
                    shared.event(format!("{} ejected by every node after {t:.2?}", backends[i].name));
                    fx.ejections.push(Some(t));
                }
                Err(e) => {
                    shared.event(format!("{} not ejected everywhere: {e:#}", backends[i].name));
                    fx.ejections.push(None);
                }
            }
            shared.next_epoch();
        }
        let hold = rng.random_range(HOLD.0..=HOLD.1).min(end.saturating_duration_since(Instant::now()));
        let held = Instant::now();
        // A fault that takes the leader away (killed, stopped, isolated): how long until another leads.
        let leader_hit = match (&active, leader) {
            (
                Active::Killed(i) | Active::Paused(i) | Active::Terminated(i) | Active::Removed(i),
                Some((l, _)),
            ) => *i == l,
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
        } else if !matches!(active, Active::Done) {
            tokio::time::sleep(hold.saturating_sub(held.elapsed())).await;
        }
        if let Active::Killed(i) = active {
            killed.push(i);
        }
        if let Some((i, task)) = withdrawal {
            let took = task.await.unwrap_or(None);
            match took {
                Some(t) => {
                    shared.event(format!("the front stopped routing to {} after {t:.2?}", nodes[i].name))
                }
                None => shared.event(format!("the front still routes to {}", nodes[i].name)),
            }
            fx.withdrawals.push(took);
        }
        let committed = committed_version(&nodes).await;
        match active {
            Active::BackendKilled(i, pools) => {
                shared.next_epoch();
                driver.start(&mut backends[i]).await?;
                let addr = backends[i].endpoint.clone();
                match fleet::wait_eligible(&nodes, &token, &addr, pools, RECOVER).await {
                    Ok(t) => shared
                        .event(format!("{} routed to by every node again after {t:.2?}", backends[i].name)),
                    Err(e) => {
                        shared.event(format!("{} not routed to everywhere again: {e:#}", backends[i].name));
                        fx.not_restored += 1;
                    }
                }
                shared.next_epoch();
            }
            Active::Added(spare) => match leave(&nodes, &spare).await {
                Ok(()) => shared.event(format!("{} removed again", spare.name)),
                Err(e) => {
                    shared.event(format!("{} not removed: {e:#}", spare.name));
                    fx.membership_failures += 1;
                }
            },
            Active::Removed(i) => {
                let members = nodes.clone();
                let rejoin = async {
                    fleet::wipe(&nodes[i])?;
                    fleet::drop_peers(&mut nodes[i].args);
                    fleet::join(dir, &members, &mut nodes[i]).await
                };
                match rejoin.await {
                    Ok(t) => {
                        shared.event(format!(
                            "{} joined again with an empty store after {t:.2?}",
                            nodes[i].name
                        ));
                        fx.joins.push(t);
                    }
                    Err(e) => {
                        shared.event(format!("{} did not join again: {e:#}", nodes[i].name));
                        fx.membership_failures += 1;
                    }
                }
            }
            other => heal(other, &driver, &mut nodes, firewall).await?,
        }
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
    for c in clients.into_iter().chain(traffic).chain(flows) {
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
    let http = traffic::summarize(&requests, false);
    let datagrams = std::mem::take(&mut *shared.datagrams.lock().unwrap_or_else(|p| p.into_inner()));
    let udp_sum = traffic::summarize(&datagrams, true);
    let udp_ok = udp_sum.requests == 0 || udp_sum.one_retry >= MIN_ONE_RETRY;
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
    let via = match front {
        traffic::Front::Vip(vip) => format!("through the VIP {vip} with one retry"),
        traffic::Front::Nodes(..) => "with one retry on another node".to_string(),
    };
    verdicts.push(format!(
        "HTTP requests succeed {via}: {} ({:.2}% of {}; {:.2}% on the first try{})",
        yes(http_ok),
        100.0 * http.one_retry,
        http.requests,
        100.0 * http.first_try,
        if vip_pool { "" } else { ", which a node fault costs without a front" }
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
    if args.udp_clients > 0 {
        let udp_via = match front {
            traffic::Front::Vip(vip) => format!("through the VIP {} with one retry", vip.ip()),
            traffic::Front::Nodes(..) => "with one retry on another node".to_string(),
        };
        verdicts.push(format!(
            "UDP datagrams succeed {udp_via} while the backend set is stable: {} ({:.2}% of {}; {:.2}% on the first try; {} sent while a backend was being ejected or restored, not rated)",
            yes(udp_ok),
            100.0 * udp_sum.one_retry,
            udp_sum.requests,
            100.0 * udp_sum.first_try,
            udp_sum.unstable
        ));
        verdicts.push(format!(
            "one UDP flow, one backend, from every node, while the backend set is unchanged: {}{}",
            yes(udp_sum.split_keys.is_empty()),
            if udp_sum.split_keys.is_empty() {
                String::new()
            } else {
                let flows: Vec<String> = udp_sum
                    .split_keys
                    .iter()
                    .map(|(p, b)| format!("port {p} got {}", b.join(" and ")))
                    .collect();
                format!(": {}", flows.join("; "))
            }
        ));
    }
    let (ejected_ok, ejected_text) = ejection_verdict(&fx, fleet::EJECT_BOUND);
    let rolled_ok = fx.rolls.iter().all(Option::is_some);
    let members_ok = fx.membership_failures == 0;
    if !fx.ejections.is_empty() {
        verdicts.push(ejected_text);
    }
    if !fx.rolls.is_empty() {
        verdicts.push(format!(
            "every rolling restart brings every node back, caught up: {} ({} rolls, longest {})",
            yes(rolled_ok),
            fx.rolls.len(),
            fx.rolls.iter().flatten().max().map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into())
        ));
    }
    if !fx.joins.is_empty() || fx.membership_failures > 0 {
        verdicts.push(format!(
            "membership changes under load complete: {} ({} joins, longest {}; {} failed)",
            yes(members_ok),
            fx.joins.len(),
            fx.joins.iter().max().map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
            fx.membership_failures
        ));
    }
    let (front_ok, front_text) = front_verdict(&fx.withdrawals, compose::FRONT_BOUND);
    if !fx.withdrawals.is_empty() {
        verdicts.push(front_text);
    }
    verdicts.push(format!(
        "no node died that was not killed: {}",
        if dead.is_empty() { "yes".to_string() } else { format!("no ({})", dead.join(", ")) }
    ));
    for v in &verdicts {
        println!("verdict: {v}");
    }
    let pass = !lost
        && verdict.linearizable
        && agreed
        && dead.is_empty()
        && http_ok
        && http.split_keys.is_empty()
        && udp_ok
        && udp_sum.split_keys.is_empty()
        && ejected_ok
        && rolled_ok
        && members_ok
        && front_ok;
    let eject_worst =
        fx.ejections.iter().flatten().max().map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into());
    let summary = format!(
        "lbchaos: {} seed={} nodes={} faults={} ops={} (writes {writes}, reads {reads}) ok={:.1}% acknowledged_writes={acked_writes} unknown={} lost={} linearizable={} agree_worst={} http={} first_try={:.2}% one_retry={:.2}% split_keys={} udp={} udp_first_try={:.2}% udp_one_retry={:.2}% split_flows={} backend_ejection_worst={eject_worst} front_withdrawal_median={} max={} rolls={} joins={} membership_failures={} leader_failover_median={} max={} killed={}",
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
        udp_sum.requests,
        100.0 * udp_sum.first_try,
        100.0 * udp_sum.one_retry,
        udp_sum.split_keys.len(),
        median_of(&fx.withdrawals).map(|d| format!("{d:.2?}")).unwrap_or_else(|| "-".into()),
        fx.withdrawals.iter().flatten().max().map(|d| format!("{d:.2?}")).unwrap_or_else(|| "-".into()),
        fx.rolls.len(),
        fx.joins.len(),
        fx.membership_failures,
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
            datagrams: &datagrams,
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
        let mut answer = None;
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
                    Ok(r) => {
                        answer = Some((r.answered_by, r.applied_index));
                        match value_of(&r.config_json) {
                            Ok(v) => Outcome::Ok(v),
                            Err(_) => Outcome::Failed,
                        }
                    }
                    Err(_) => Outcome::Failed,
                },
            },
        };
        let op = Op {
            client: id,
            node: node_idx as u64 + 1,
            kind,
            invoke_ms,
            return_ms: shared.ms(),
            outcome,
            answer,
        };
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
    driver: &Driver,
    nodes: &[NodeProc],
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
            driver.kill(&nodes[i])?;
            (Active::Killed(i), format!("SIGKILL {} ({role})", nodes[i].name))
        }
        FaultKind::Pause => {
            let (i, role) = pick(rng);
            driver.pause(&nodes[i])?;
            (Active::Paused(i), format!("SIGSTOP {} ({role})", nodes[i].name))
        }
        FaultKind::Restart => {
            let (i, role) = pick(rng);
            driver.terminate(&nodes[i])?;
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
        FaultKind::BackendKill | FaultKind::RollingRestart | FaultKind::NodeAdd | FaultKind::NodeRemove => {
            bail!("{kind:?} is injected by the fault loop")
        }
    })
}

async fn heal(
    active: Active,
    driver: &Driver,
    nodes: &mut [NodeProc],
    firewall: Option<&Firewall>,
) -> Result<()> {
    match active {
        // After SIGTERM the node leaves gracefully: it is started again once it is gone.
        Active::Killed(i) | Active::Terminated(i) => driver.start(&mut nodes[i]).await?,
        Active::Paused(i) => driver.resume(&nodes[i])?,
        Active::Cut(_) | Active::Flap(..) => {
            if let Some(fw) = firewall {
                fw.heal()?;
            }
        }
        // Healed by the fault loop itself.
        Active::BackendKilled(..) | Active::Added(_) | Active::Removed(_) | Active::Done => {}
    }
    Ok(())
}

/// What the faults of [`fleet`] measured, for their verdicts.
#[derive(Debug, Default)]
pub(crate) struct FleetFaults {
    /// Per backend kill: how long until every node had ejected it (`None`: not within the deadline).
    pub ejections: Vec<Option<Duration>>,
    /// Killed backends not routed to again by every node after their restart.
    pub not_restored: usize,
    /// Per rolling restart: how long the whole roll took (`None`: a node did not come back).
    pub rolls: Vec<Option<Duration>>,
    /// Per node fault on the compose front: how long until the router stopped routing new flows to
    /// the node (`None`: not within the wait).
    pub withdrawals: Vec<Option<Duration>>,
    /// Membership changes (add, remove, join again) that did not complete.
    pub membership_failures: usize,
    /// How long each join (start, added, promoted) took.
    pub joins: Vec<Duration>,
}

/// The backend-ejection verdict: every kill ejected everywhere within `bound` and routed to again.
pub(crate) fn ejection_verdict(fx: &FleetFaults, bound: Duration) -> (bool, String) {
    let worst = fx.ejections.iter().flatten().max().copied();
    let missing = fx.ejections.iter().filter(|e| e.is_none()).count();
    let ok = missing == 0 && fx.not_restored == 0 && worst.is_none_or(|w| w <= bound);
    let text = format!(
        "every node ejects a killed backend within {bound:?} and routes to it again after its restart: {} ({} kills, worst {}, {missing} not ejected within {RECOVER:?}, {} not routed to again)",
        yes(ok),
        fx.ejections.len(),
        worst.map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
        fx.not_restored,
    );
    (ok, text)
}

/// The median of the measured durations (`None` when there are none).
fn median_of(v: &[Option<Duration>]) -> Option<Duration> {
    let mut got: Vec<Duration> = v.iter().flatten().copied().collect();
    got.sort();
    got.get(got.len() / 2).copied()
}

/// The front verdict: after every node fault the router stopped routing to the node within `bound`.
pub(crate) fn front_verdict(withdrawals: &[Option<Duration>], bound: Duration) -> (bool, String) {
    let worst = withdrawals.iter().flatten().max().copied();
    let missing = withdrawals.iter().filter(|w| w.is_none()).count();
    let ok = missing == 0 && worst.is_none_or(|w| w <= bound);
    let text = format!(
        "the front stops sending new flows to a killed, paused or stopped node within {bound:?}: {} ({} faults, median {}, worst {}, {missing} never withdrawn)",
        yes(ok),
        withdrawals.len(),
        median_of(withdrawals).map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
        worst.map(|t| format!("{t:.2?}")).unwrap_or_else(|| "-".into()),
    );
    (ok, text)
}

/// A rolling restart, a node added or a node removed (stopped); what the heal undoes.
async fn membership(
    kind: FaultKind,
    victim: usize,
    dir: &Path,
    nodes: &mut [NodeProc],
    shared: &Shared,
    fx: &mut FleetFaults,
) -> Active {
    match kind {
        FaultKind::RollingRestart => {
            let t = Instant::now();
            let mut complete = true;
            for i in 0..nodes.len() {
                let version = committed_version(nodes).await;
                let step = Instant::now();
                fleet::stop(&nodes[i]).await;
                let back = async {
                    restart(dir, &mut nodes[i])?;
                    fleet::caught_up(&nodes[i], version).await
                };
                match back.await {
                    Ok(()) => shared.event(format!(
                        "{} restarted and caught up in {:.2?}",
                        nodes[i].name,
                        step.elapsed()
                    )),
                    Err(e) => {
                        shared.event(format!("{} did not come back: {e:#}", nodes[i].name));
                        complete = false;
                        break;
                    }
                }
            }
            fx.rolls.push(complete.then(|| t.elapsed()));
            Active::Done
        }
        FaultKind::NodeAdd => {
            let id = nodes.len() as u64 + 1;
            let mut spare = match fleet::spare(dir, &nodes[0], id) {
                Ok(s) => s,
                Err(e) => {
                    shared.event(format!("node-{id} not made: {e:#}"));
                    fx.membership_failures += 1;
                    return Active::Done;
                }
            };
            let joined = async {
                fleet::wipe(&spare)?;
                fleet::join(dir, nodes, &mut spare).await
            };
            match joined.await {
                Ok(t) => {
                    shared.event(format!("{} joined (added, caught up, promoted) after {t:.2?}", spare.name));
                    fx.joins.push(t);
                    Active::Added(Box::new(spare))
                }
                Err(e) => {
                    shared.event(format!("{} did not join: {e:#}", spare.name));
                    fx.membership_failures += 1;
                    if spare.pid != 0 {
                        let _ = leave(nodes, &spare).await;
                    }
                    Active::Done
                }
            }
        }
        _ => {
            let removed = async {
                fleet::remove_member(nodes, fleet::id_of(&nodes[victim])?).await?;
                fleet::stop(&nodes[victim]).await;
                anyhow::Ok(())
            };
            match removed.await {
                Ok(()) => Active::Removed(victim),
                Err(e) => {
                    shared.event(format!("{} not removed: {e:#}", nodes[victim].name));
                    fx.membership_failures += 1;
                    Active::Done
                }
            }
        }
    }
}

/// Remove an added node from the membership, stop it, delete its data and pid file.
async fn leave(members: &[NodeProc], n: &NodeProc) -> Result<()> {
    let removed = fleet::remove_member(members, fleet::id_of(n)?).await;
    fleet::stop(n).await;
    fleet::wipe(n)?;
    let _ = std::fs::remove_file(&n.pid_file);
    removed
}

/// The config of the run: every pool's passive ejection shortened to [`OUTLIER_EJECTION`] (so a
/// restarted backend is routed to again by every node within seconds, not after the default 30 s),
/// and with `udp`, the pool and listener of the UDP flows ([`udp::config_toml`]) over the demo backends.
async fn prepare_config(
    admin: &Admin,
    config_json: &str,
    backends: &[NodeProc],
    udp: bool,
    vip_pool: bool,
) -> Result<()> {
    let mut c = parse(config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;
    if vip_pool && c.pool(VIP_POOL).is_none() {
        let addrs: Vec<String> = backends.iter().map(|b| format!("addr = \"{}\"", b.endpoint)).collect();
        let toml = format!(
            "[[pool]]\nname = \"{VIP_POOL}\"\npolicy = \"maglev\"\nhash_key = \"header:{}\"\n{}\n\
             [pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             [[listener]]\nname = \"{VIP_POOL}\"\nprotocol = \"http\"\nport = {VIP_PORT}\npool = \"{VIP_POOL}\"\n",
            traffic::KEY_HEADER,
            addrs.iter().map(|a| format!("[[pool.backend]]\n{a}")).collect::<Vec<_>>().join("\n"),
        );
        let extra = parse(&toml, Format::Toml).map_err(|e| anyhow!("the VIP traffic pool: {e}"))?;
        c.pool.extend(extra.pool);
        c.listener.extend(extra.listener);
    }
    if udp && c.pool(udp::UDP_POOL).is_none() {
        let addrs: Vec<String> = backends.iter().map(|b| b.endpoint.clone()).collect();
        let extra = parse(&udp::config_toml(&addrs), Format::Toml).map_err(|e| anyhow!("UDP pool: {e}"))?;
        c.pool.extend(extra.pool);
        c.listener.extend(extra.listener);
    }
    for p in &mut c.pool {
        p.outlier.base_ejection = p.outlier.base_ejection.min(OUTLIER_EJECTION.0);
        p.outlier.max_ejection = p.outlier.max_ejection.min(OUTLIER_EJECTION.1);
    }
    admin.apply_config("json", c.to_json()).await.map_err(|e| anyhow!("apply the run's config: {e}"))?;
    Ok(())
}

/// Wait until the UDP listener answers a datagram at every target.
async fn udp_ready(targets: &udp::Targets) -> Result<()> {
    let socket = tokio::net::UdpSocket::bind(std::net::SocketAddr::new(targets.source(250), 0))
        .await
        .context("bind a UDP probe")?;
    for &target in &targets.addrs {
        wait_until("the UDP listener to answer", RECOVER, || async {
            udp::exchange(&socket, target, b"lbchaos ready")
                .await
                .map(|_| ())
                .ok_or_else(|| anyhow!("no answer from {target}"))
        })
        .await?;
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
        answer: Some((got.answered_by, got.applied_index)),
    });
    Ok((got.version, value.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_verdict_fails_past_its_bound_or_without_a_withdrawal() {
        let ms = Duration::from_millis;
        let bound = Duration::from_secs(2);
        let (ok, text) = front_verdict(&[Some(ms(400)), Some(ms(600)), Some(ms(500))], bound);
        assert!(ok && text.contains("median 500") && text.contains("worst 600"), "{text}");
        assert!(!front_verdict(&[Some(ms(400)), Some(ms(2100))], bound).0);
        let (ok, text) = front_verdict(&[Some(ms(400)), None], bound);
        assert!(!ok && text.contains("1 never withdrawn"), "{text}");
        assert!(front_verdict(&[], bound).0);
    }

    #[test]
    fn the_ejection_verdict_fails_past_its_bound_or_without_an_ejection() {
        let bound = Duration::from_secs(6);
        let fx = |e: Vec<Option<Duration>>, not_restored| FleetFaults {
            ejections: e,
            not_restored,
            ..FleetFaults::default()
        };
        assert!(ejection_verdict(&fx(vec![Some(Duration::from_millis(2400))], 0), bound).0);
        let (ok, text) = ejection_verdict(
            &fx(vec![Some(Duration::from_millis(2400)), Some(Duration::from_millis(6100))], 0),
            bound,
        );
        assert!(!ok && text.contains("worst 6.10s"), "{text}");
        assert!(!ejection_verdict(&fx(vec![None], 0), bound).0);
        assert!(!ejection_verdict(&fx(vec![Some(Duration::from_secs(1))], 1), bound).0);
    }

    #[test]
    fn epochs_count_only_when_stable_throughout() {
        assert_eq!(epoch_of(2, 2), Some(2));
        assert_eq!(epoch_of(1, 1), None);
        assert_eq!(epoch_of(2, 3), None);
    }
}
