//! `lbchaos`: fault runs against a local lbfleet cluster or a docker compose one.
//!
//! Layout:
//! - [`run`]: `lbchaos run`, a randomized fault run (kills, pauses, restarts, partitions) against a
//!   cluster it starts itself (local processes or, with [`compose`], containers; [`target`] is how
//!   faults reach either), with a register workload whose history [`history`] checks for
//!   linearizability, HTTP traffic ([`traffic`]) and UDP flows ([`udp`]), the fleet faults ([`fleet`]:
//!   a backend killed, a rolling restart, a node added or removed), a live view ([`view`]) and a report
//!   ([`report`]).
//! - this file: the fixed scenarios against a cluster started with `lbctl local up --dir DIR`:
//! - discovery: every `DIR/node-*.pid` names a running lbnode; its endpoint comes from its command line.
//! - a writer applies a stream of configs (each one marked by the first backend's weight) through a
//!   random live node and records every acknowledged (version, marker) in `DIR/chaos-history.jsonl`.
//! - the fault loop: `kill-leader` (SIGKILL the leader, wait for a new one, restart the old one from its
//!   own command line), `pause-leader` (SIGSTOP for `--pause`, then SIGCONT), `kill-random`.
//! - the check: after the last round, a linearizable read must show a config version at least the last
//!   acknowledged one (and its marker when equal): nothing acknowledged was lost.
//!
//! Waiting (for a leader, for acknowledged writes, for a killed process to be gone) goes through
//! `lbfleet_tests::wait_until`, and liveness and signals through `lbfleet_tests::process`, the same
//! harness the end-to-end tests use; the pid files and detached restarts are `lbctl local`'s
//! (`lbfleet_cli::local::procs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use lbfleet_api::config::{parse, ClusterConfig, Format};
use lbfleet_cli::client::Admin;
use lbfleet_cli::local::procs;
use lbfleet_tests::process::{alive, signal};
use lbfleet_tests::wait_until;
use rand::seq::IndexedRandom;

mod compose;
mod fleet;
mod history;
mod report;
mod run;
mod target;
mod traffic;
mod udp;
mod view;

#[derive(Parser, Debug)]
#[command(
    name = "lbchaos",
    about = "Fault runs and scenarios against a local or docker compose lbfleet cluster"
)]
struct Cli {
    /// Directory of the cluster (`lbctl local up --dir DIR`); for `run`, where it starts its own.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// A randomized fault run with a checked register history (starts and stops its own cluster).
    Run(run::RunArgs),
    /// SIGKILL the leader each round, restart it.
    KillLeader(ScenarioArgs),
    /// SIGSTOP the leader each round for --pause, then SIGCONT.
    PauseLeader(ScenarioArgs),
    /// SIGKILL a random node each round, restart it.
    KillRandom(ScenarioArgs),
}

/// The scenarios against a running cluster (`lbctl local up --dir DIR` first).
#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    /// How many faults to inject.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// How long `pause-leader` keeps the leader stopped.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// Deadline for a new leader (and for a restarted node to catch up).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    KillLeader,
    PauseLeader,
    KillRandom,
}

#[derive(Debug, Clone)]
struct NodeProc {
    name: String,
    pid_file: PathBuf,
    pid: u32,
    args: Vec<String>,
    exe: PathBuf,
    endpoint: String,
    /// The compose service of a node or backend of `run --target compose` (`None`: a local process).
    service: Option<String>,
}

/// The running processes of `DIR/PREFIX*.pid`, with their command lines (`endpoint` left empty).
fn running(dir: &Path, prefix: &str) -> Result<Vec<NodeProc>> {
    let mut out = Vec::new();
    for pf in procs::list_pid_files(dir)? {
        if !pf.name.starts_with(prefix) {
            continue;
        }
        let pid = pf
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| anyhow!("{} holds no valid pid", pf.path.display()))?;
        let (exe, args) = cmdline(&pf.name, pid)?;
        out.push(NodeProc {
            name: pf.name,
            pid_file: pf.path,
            pid,
            args,
            exe,
            endpoint: String::new(),
            service: None,
        });
    }
    Ok(out)
}

/// The value after `name` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn discover(dir: &Path) -> Result<Vec<NodeProc>> {
    let mut nodes = running(dir, "node-")?;
    for n in &mut nodes {
        let ip = flag(&n.args, "--bind").unwrap_or_else(|| "127.0.0.1".into());
        let port = flag(&n.args, "--grpc-port").unwrap_or_else(|| "7400".into());
        n.endpoint = format!("{ip}:{port}");
    }
    if nodes.is_empty() {
        bail!(
            "no node-*.pid in {}: start a cluster with `lbctl local up --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(nodes)
}

/// The executable and arguments of process `pid` (named `name` in errors), from `/proc/PID/cmdline`.
fn cmdline(name: &str, pid: u32) -> Result<(PathBuf, Vec<String>)> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("{name} (pid {pid}) is not running"))?;
    let mut argv: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
    if argv.is_empty() {
        bail!("{name} (pid {pid}) has an empty command line");
    }
    let exe = PathBuf::from(argv.remove(0));
    Ok((exe, argv))
}

/// The admin credentials of the cluster under test (`DIR/tls`, written by `lbctl local up`).
static CREDS: std::sync::OnceLock<lbfleet_cli::client::Loaded> = std::sync::OnceLock::new();

fn creds() -> &'static lbfleet_cli::client::Loaded {
    CREDS.get().expect("credentials are loaded at start")
}

fn load_creds(dir: &Path) -> Result<()> {
    load_creds_from(&dir.join("tls"))
}

/// The admin credentials of the CA directory `ca_dir` (`lbctl ca init --dir`).
fn load_creds_from(ca_dir: &Path) -> Result<()> {
    let tls = lbfleet_cli::ca::CaDir::new(ca_dir);
    let token = tls.read_token(lbfleet_api::auth::Role::Admin)?;
    let loaded =
        lbfleet_cli::client::Credentials { ca: Some(tls.ca_cert()), token: Some(token), token_file: None }
            .load()
            .map_err(|e| anyhow!("{e}"))?;
    let _ = CREDS.set(loaded);
    Ok(())
}

async fn leader_of(nodes: &[NodeProc], skip: Option<u32>) -> Option<(usize, u64)> {
    for (i, n) in nodes.iter().enumerate() {
        if Some(n.pid) == skip || !alive(n.pid) {
            continue;
        }
        let Ok(admin) = Admin::connect(&n.endpoint, Duration::from_millis(500), creds()).await else {
            continue;
        };
        if let Ok(st) = admin.local_status().await {
            if st.role == "leader" {
                return Some((i, st.id));
            }
        }
    }
    None
}

async fn wait_leader(nodes: &[NodeProc], skip: Option<u32>, deadline: Duration) -> Result<(usize, u64)> {
    wait_until("a leader", deadline, || async {
        leader_of(nodes, skip).await.ok_or_else(|| anyhow!("no live node says it is the leader"))
    })
    .await
}

fn restart(dir: &Path, n: &mut NodeProc) -> Result<()> {
    let log = dir.join(format!("{}.log", n.name));
    let child = procs::spawn_detached(&n.exe, &n.args, &log, dir)?;
    n.pid = child.id();
    procs::write_pid_file(&n.pid_file, child.id())?;
    Ok(())
}

fn marked(base: &ClusterConfig, marker: u32) -> Result<String> {
    let mut c = base.clone();
    let b = c
        .pool
        .first_mut()
        .and_then(|p| p.backend.first_mut())
        .ok_or_else(|| anyhow!("the cluster config needs at least one pool with a backend"))?;
    b.weight = marker % 1000 + 1;
    Ok(c.to_toml())
}

/// Let the cluster recover between faults: wait until 10 more writes are acknowledged.
async fn settle(history: &Mutex<History>, deadline: Duration) -> Result<()> {
    let start = history.lock().unwrap().acked.len();
    wait_until("the cluster to acknowledge 10 more writes", deadline, || async {
        let more = history.lock().unwrap().acked.len() - start;
        ensure!(more >= 10, "{more} acknowledged");
        Ok(())
    })
    .await
}

#[derive(Default)]
struct History {
    acked: Vec<(u64, u32)>,
    failed: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run::run(args, cli.dir).await.map(|pass| if pass { 0 } else { 1 }),
        Cmd::KillLeader(a) => scenario(Scenario::KillLeader, a, cli.dir).await.map(|()| 0),
        Cmd::PauseLeader(a) => scenario(Scenario::PauseLeader, a, cli.dir).await.map(|()| 0),
        Cmd::KillRandom(a) => scenario(Scenario::KillRandom, a, cli.dir).await.map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("lbchaos: {e:#}");
            std::process::exit(2);
        }
    }
}

struct Run {
    dir: PathBuf,
    scenario: Scenario,
    rounds: u32,
    pause: Duration,
    deadline: Duration,
}

async fn scenario(scenario: Scenario, a: ScenarioArgs, dir: Option<PathBuf>) -> Result<()> {
    let dir =
        dir.ok_or_else(|| anyhow!("--dir DIR is needed: the directory of `lbctl local up --dir DIR`"))?;
    let cli = Run { dir, scenario, rounds: a.rounds, pause: a.pause, deadline: a.deadline };
    let mut nodes = discover(&cli.dir)?;
    load_creds(&cli.dir)?;
    let (_, leader) = wait_leader(&nodes, None, cli.deadline).await?;
    println!("{} nodes, leader {leader}; scenario {:?}, {} rounds", nodes.len(), cli.scenario, cli.rounds);
    let admin = Admin::connect(&nodes[0].endpoint, Duration::from_secs(5), creds())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let current = admin.get_config(false).await.map_err(|e| anyhow!("{e}"))?;
    if current.config_json.is_empty() {
        bail!("the cluster has no config yet: apply one first (lbctl local up does)");
    }
    let base = parse(&current.config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let log_path = cli.dir.join("chaos-history.jsonl");
    let mut log = std::fs::File::create(&log_path)?;
    let endpoints: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(nodes.iter().map(|n| n.endpoint.clone()).collect()));
    let writer = {
        let (history, stop, endpoints, base) =
            (history.clone(), stop.clone(), endpoints.clone(), base.clone());
        tokio::spawn(async move {
            // Bounded: at most 100 000 writes, and it stops when the fault loop ends.
            for marker in 1..100_000u32 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let ep = { endpoints.lock().unwrap().choose(&mut rand::rng()).cloned() };
                let Some(ep) = ep else { break };
                let Ok(body) = marked(&base, marker) else { break };
                let result = match Admin::connect(&ep, Duration::from_secs(2), creds()).await {
                    Ok(a) => a.apply_config("toml", body).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let mut h = history.lock().unwrap();
                match result {
                    Ok(r) => h.acked.push((r.version, marker)),
                    Err(_) => h.failed += 1,
                }
            }
        })
    };

    let mut failovers = Vec::new();
    for round in 1..=cli.rounds {
        settle(&history, cli.deadline).await?;
        let (li, lid) = wait_leader(&nodes, None, cli.deadline).await?;
        match cli.scenario {
            Scenario::KillLeader | Scenario::KillRandom => {
                let victim = match cli.scenario {
                    Scenario::KillLeader => li,
                    _ => (0..nodes.len()).collect::<Vec<_>>().choose(&mut rand::rng()).copied().unwrap_or(li),
                };
                let pid = nodes[victim].pid;
                signal(pid, libc::SIGKILL);
                let t = Instant::now();
                let (_, new) = wait_leader(&nodes, Some(pid), cli.deadline).await?;
                let took = t.elapsed();
                if victim == li {
                    failovers.push(took);
                }
                println!(
                    "round {round}: SIGKILL {} (leader was {lid}); leader {new} after {took:?}",
                    nodes[victim].name
                );
                // As before, a process that lingers does not stop the restart (the new one then fails
                // to bind and exits).
                let _ = wait_until("the killed node to be gone", Duration::from_secs(5), || async {
                    ensure!(!alive(pid), "pid {pid} still alive");
                    Ok(())
                })
                .await;
                restart(&cli.dir, &mut nodes[victim])?;
            }
            Scenario::PauseLeader => {
                let pid = nodes[li].pid;
                signal(pid, libc::SIGSTOP);
                let t = Instant::now();
                let new = wait_leader(&nodes, Some(pid), cli.deadline).await;
                let took = t.elapsed();
                tokio::time::sleep(cli.pause.saturating_sub(took)).await;
                signal(pid, libc::SIGCONT);
                let (_, new) = new?;
                failovers.push(took);
                println!(
                    "round {round}: SIGSTOP {} for {:?}; leader {new} after {took:?}",
                    nodes[li].name, cli.pause
                );
            }
        }
    }
    settle(&history, cli.deadline).await?;
    stop.store(true, Ordering::SeqCst);
    writer.await?;

    let (li, _) = wait_leader(&nodes, None, cli.deadline).await?;
    let admin = Admin::connect(&nodes[li].endpoint, Duration::from_secs(5), creds())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let got = admin.get_config(false).await.map_err(|e| anyhow!("{e}"))?;
    let h = history.lock().unwrap();
    for (v, m) in &h.acked {
        writeln!(log, "{{\"version\":{v},\"marker\":{m},\"acked\":true}}")?;
    }
    let Some(&(last_v, last_m)) = h.acked.last() else { bail!("no write was acknowledged during the run") };
    if got.version < last_v {
        bail!("LOST: acknowledged config version {last_v} but the cluster is at {}", got.version);
    }
    if got.version == last_v {
        let now = parse(&got.config_json, Format::Json).map_err(|e| anyhow!("{e}"))?;
        let w = now.pool.first().and_then(|p| p.backend.first()).map(|b| b.weight);
        if w != Some(last_m % 1000 + 1) {
            bail!("LOST: config version {last_v} does not carry the acknowledged write {last_m}");
        }
    }
    failovers.sort();
    let median = failovers.get(failovers.len() / 2).copied().unwrap_or_default();
    println!(
        "ok: {} writes acknowledged, {} failed during faults, none lost (cluster at version {}); leader changes: median {median:?}, max {:?}",
        h.acked.len(),
        h.failed,
        got.version,
        failovers.last().copied().unwrap_or_default()
    );
    println!("history: {}", log_path.display());
    Ok(())
}
