//! `lbctl local up|down`: a development cluster on one machine.
//!
//! - [`plan`]: names, addresses, files, lbnode arguments and the demo config (pure).
//! - [`procs`]: detached processes, pid files, signals, log tails.
//! - [`up`] / [`down`]: the two commands.
//!
//! Node i runs `lbnode --id i --bind 127.0.0.1i --data-dir DIR/node-i --peers ...` with its output in
//! `DIR/node-i.log` and its pid in `DIR/node-i.pid`; demo backend k runs `lbctl demo-backend --udp` on
//! 127.0.0.1:(base+k) (HTTP, and a UDP echo on the same port) with `DIR/backend-k.{log,pid}`. Every child lives in its own session and outlives lbctl.

pub mod plan;
pub mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::time::Instant;

use crate::args::{LocalDownArgs, LocalUpArgs};
use crate::client::{Admin, Credentials, Loaded};
use crate::commands::print;
use crate::error::CliError;
use crate::output;
use plan::{LeaderView, Plan};

/// How long each demo backend may take to answer `/health` after start.
const BACKEND_START_DEADLINE: Duration = Duration::from_secs(10);
/// How long, after the demo config is applied, to wait for listeners and healthy backends (warnings only).
const SETTLE_DEADLINE: Duration = Duration::from_secs(15);
/// Interval between readiness polls.
const POLL: Duration = Duration::from_millis(200);
/// Lines of a log shown when a step fails.
const TAIL_LINES: usize = 20;
/// How long a failed `up` waits for its children after SIGTERM before SIGKILL.
const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// A process `up` started and still owns.
struct Started {
    name: String,
    child: Child,
    pid_file: PathBuf,
    log: PathBuf,
}

/// A failed step of `up`: what was being done, why it failed, which logs tell more.
struct StepFailure {
    step: String,
    error: anyhow::Error,
    logs: Vec<PathBuf>,
}

fn fail(step: &str, error: anyhow::Error, logs: Vec<PathBuf>) -> StepFailure {
    StepFailure { step: step.to_string(), error, logs }
}

fn progress(msg: &str) {
    eprintln!("lbctl: {msg}");
}

pub async fn up(a: &LocalUpArgs, json: bool) -> Result<(), CliError> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create \"{}\"", a.dir.display()))?;
    let dir = a.dir.canonicalize().with_context(|| format!("cannot resolve \"{}\"", a.dir.display()))?;
    let plan = plan::plan(&dir, a.nodes, a.backends, a.base_port).map_err(|e| anyhow!(e))?;

    let mut started: Vec<Started> = Vec::new();
    match up_steps(a, &plan, &mut started).await {
        Ok(summary) => {
            if json {
                print(&output::to_json_pretty(&summary))
            } else {
                print(&summary.text())
            }
        }
        Err(f) => {
            let mut msg = format!("local up failed at step \"{}\": {:#}", f.step, f.error);
            for log in &f.logs {
                msg.push_str(&format!("\n--- last {TAIL_LINES} lines of {} ---\n", log.display()));
                msg.push_str(&procs::tail(log, TAIL_LINES));
            }
            if started.is_empty() {
                // Nothing was started.
            } else if a.keep_on_failure {
                msg.push_str(&format!(
                    "\nthe started processes keep running (--keep-on-failure); stop them with: lbctl local down --dir {}",
                    dir.display()
                ));
            } else {
                let stopped = stop_children(&mut started).await;
                msg.push_str(&format!("\nstopped what this run started: {}", stopped.join(", ")));
                msg.push_str(&format!("\nlogs are kept in {}", dir.display()));
            }
            Err(CliError::Local(anyhow!(msg)))
        }
    }
}

async fn up_steps(
    a: &LocalUpArgs,
    plan: &Plan,
    started: &mut Vec<Started>,
) -> Result<plan::UpSummary, StepFailure> {
    let t0 = Instant::now();
    check_no_live_pids(&plan.dir).map_err(|e| fail("check the directory", e, vec![]))?;
    let lbnode =
        procs::find_executable("lbnode", a.lbnode.as_deref()).map_err(|e| fail("find lbnode", e, vec![]))?;
    let lbctl = std::env::current_exe()
        .context("cannot locate the running lbctl executable")
        .map_err(|e| fail("find lbctl", e, vec![]))?;
    check_ports_free(plan).await.map_err(|e| fail("check ports", e, vec![]))?;
    let creds = credentials(plan).map_err(|e| fail("make the cluster CA and tokens", e, vec![]))?;

    // Backends first, so the first health checks of the nodes find them up.
    for b in &plan.backends {
        let args = vec![
            "demo-backend".to_string(),
            "--name".into(),
            b.name.clone(),
            "--listen".into(),
            b.addr.to_string(),
            "--udp".into(),
        ];
        start(&lbctl, &args, &b.name, &b.log, &b.pid, &plan.dir, started)
            .map_err(|e| fail(&format!("start {}", b.name), e, vec![b.log.clone()]))?;
    }
    for (i, b) in plan.backends.iter().enumerate() {
        let step = format!("wait for {} to answer /health", b.name);
        wait_backend(b, &mut started[i]).await.map_err(|e| fail(&step, e, vec![b.log.clone()]))?;
    }
    progress(&format!("{} demo backend(s) answer /health", plan.backends.len()));

    let first_node = started.len();
    for n in &plan.nodes {
        start(&lbnode, &plan.lbnode_args(n, &a.log_level), &n.name, &n.log, &n.pid, &plan.dir, started)
            .map_err(|e| fail(&format!("start {}", n.name), e, vec![n.log.clone()]))?;
    }
    let node_logs: Vec<PathBuf> = plan.nodes.iter().map(|n| n.log.clone()).collect();

    let deadline = t0 + a.wait;
    let (leader, term) =
        wait_leader(plan, &creds, &mut started[first_node..], deadline).await.map_err(|(e, log)| {
            fail(
                "wait for a leader that every node reports",
                e,
                log.map_or_else(|| node_logs.clone(), |l| vec![l]),
            )
        })?;
    progress(&format!("node {leader} leads term {term}; every node agrees"));

    let demo = plan::demo_config_toml(&plan.backends.iter().map(|b| b.addr).collect::<Vec<_>>());
    let config_file = plan.dir.join("demo.toml");
    std::fs::write(&config_file, &demo)
        .with_context(|| format!("cannot write \"{}\"", config_file.display()))
        .map_err(|e| fail("write demo.toml", e, vec![]))?;
    let leader_node = plan.nodes.iter().find(|n| n.id == leader).unwrap_or(&plan.nodes[0]);
    let version = apply_demo(plan, &creds, leader_node.grpc, &demo, deadline)
        .await
        .map_err(|e| fail("apply the demo config", e, vec![leader_node.log.clone()]))?;
    progress(&format!("demo config applied (version {version})"));

    let warnings = settle(plan, &creds).await;

    let pid_of = |name: &str| started.iter().find(|s| s.name == name).map_or(0, |s| s.child.id());
    // The children now belong to nobody: they keep running after lbctl exits.
    Ok(plan::UpSummary {
        dir: plan.dir.display().to_string(),
        leader,
        term,
        config_version: version,
        config_file: config_file.display().to_string(),
        env_file: plan.env_file.display().to_string(),
        nodes: plan
            .nodes
            .iter()
            .map(|n| plan::NodeSummary {
                id: n.id,
                name: n.name.clone(),
                pid: pid_of(&n.name),
                grpc: n.grpc.to_string(),
                http: n.http.to_string(),
                log: n.log.display().to_string(),
            })
            .collect(),
        listeners: [("web", "http", plan::DEMO_HTTP_PORT), ("web-tcp", "tcp", plan::DEMO_TCP_PORT)]
            .iter()
            .map(|(name, proto, port)| plan::ListenerSummary {
                name: name.to_string(),
                protocol: proto.to_string(),
                port: *port,
                addrs: plan.nodes.iter().map(|n| format!("{}:{port}", n.ip)).collect(),
            })
            .collect(),
        backends: plan
            .backends
            .iter()
            .map(|b| plan::BackendSummary {
                name: b.name.clone(),
                pid: pid_of(&b.name),
                addr: b.addr.to_string(),
                log: b.log.display().to_string(),
            })
            .collect(),
        warnings,
    })
}

/// The cluster CA, node certificates and tokens in `DIR/tls` (made on the first `up`, reused after;
/// a node added to the plan gets its certificate), and `DIR/lbctl.env`.
fn credentials(plan: &Plan) -> anyhow::Result<Loaded> {
    let tls = &plan.tls;
    tls.ensure(plan.nodes.len() as u64, &[])?;
    let token = tls.read_token(lbfleet_api::auth::Role::Admin)?;
    std::fs::write(&plan.env_file, plan.env_text(&token))
        .with_context(|| format!("cannot write \"{}\"", plan.env_file.display()))?;
    std::fs::set_permissions(&plan.env_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    progress(&format!(
        "credentials in {} (cluster CA and tokens in {})",
        plan.env_file.display(),
        tls.dir.display()
    ));
    Credentials { ca: Some(tls.ca_cert()), token: Some(token), token_file: None }
        .load()
        .map_err(|e| anyhow!("{e}"))
}

fn start(
    program: &Path,
    args: &[String],
    name: &str,
    log: &Path,
    pid_file: &Path,
    dir: &Path,
    started: &mut Vec<Started>,
) -> anyhow::Result<()> {
    let child = procs::spawn_detached(program, args, log, dir)?;
    let pid = child.id();
    started.push(Started {
        name: name.to_string(),
        child,
        pid_file: pid_file.to_path_buf(),
        log: log.to_path_buf(),
    });
    procs::write_pid_file(pid_file, pid)?;
    progress(&format!("started {name} (pid {pid}), log {}", log.display()));
    Ok(())
}

/// Refuse a directory whose pid files name live processes; remove stale pid files.
fn check_no_live_pids(dir: &Path) -> anyhow::Result<()> {
    let mut live = Vec::new();
    for f in procs::list_pid_files(dir)? {
        match f.pid {
            Some(pid) if procs::alive(pid) && procs::looks_like_ours(pid, dir) => {
                live.push(format!("{} (pid {pid})", f.name));
            }
            _ => {
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }
    if live.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} already has running processes: {}; stop them first with: lbctl local down --dir {}",
            dir.display(),
            live.join(", "),
            dir.display()
        ))
    }
}

/// Every address the cluster will listen on must be free now (same SO_REUSEADDR as the real listeners).
async fn check_ports_free(plan: &Plan) -> anyhow::Result<()> {
    let mut busy = Vec::new();
    for (addr, who) in plan.listen_addrs() {
        let ok = (|| -> std::io::Result<()> {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            sock.bind(addr)?;
            let _listener = sock.listen(1)?;
            Ok(())
        })();
        if let Err(e) = ok {
            busy.push(format!("{addr} ({who}): {e}"));
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "cannot listen on {} address(es): {}; is another cluster or program using them?",
            busy.len(),
            busy.join("; ")
        ))
    }
}

fn exited(s: &mut Started) -> Option<String> {
    match s.child.try_wait() {
        Ok(Some(status)) => Some(format!("{} exited during startup ({status})", s.name)),
        _ => None,
    }
}

async fn wait_backend(b: &plan::BackendPlan, s: &mut Started) -> anyhow::Result<()> {
    let until = Instant::now() + BACKEND_START_DEADLINE;
    loop {
        if let Some(msg) = exited(s) {
            return Err(anyhow!(msg));
        }
        let last = match crate::probe::http_get(b.addr, "/health", Duration::from_secs(1)).await {
            Ok(ans) => {
                let who = ans.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("");
                if ans.status == 200 && who == b.name {
                    return Ok(());
                }
                format!("answered {} with x-backend \"{who}\"", ans.status)
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= until {
            return Err(anyhow!(
                "{} did not answer GET /health with 200 within {}: {last}",
                b.name,
                humantime::format_duration(BACKEND_START_DEADLINE)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One node's own view of the leader and term.
async fn leader_view(addr: SocketAddr, creds: Loaded) -> LeaderView {
    let ep = addr.to_string();
    let admin = Admin::connect(&ep, Duration::from_secs(1), &creds).await.map_err(|e| e.to_string())?;
    match admin.local_status().await {
        Ok(s) => Ok((s.leader, s.term)),
        // A node without LocalStatus still answers Status with its own view of the leader.
        Err(CliError::Server { code: tonic::Code::Unimplemented, .. }) => {
            admin.status().await.map(|s| (s.leader, s.term)).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Wait until every node reports the same leader and term. On failure, the log to show if one node died.
async fn wait_leader(
    plan: &Plan,
    creds: &Loaded,
    nodes: &mut [Started],
    deadline: Instant,
) -> Result<(u64, u64), (anyhow::Error, Option<PathBuf>)> {
    let names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    loop {
        for s in nodes.iter_mut() {
            if let Some(msg) = exited(s) {
                return Err((anyhow!(msg), Some(s.log.clone())));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in plan.nodes.iter().enumerate() {
            let addr = n.grpc;
            let creds = creds.clone();
            set.spawn(async move { (i, leader_view(addr, creds).await) });
        }
        let mut views: Vec<LeaderView> = vec![Err("no answer".to_string()); plan.nodes.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, v)) = r {
                views[i] = v;
            }
        }
        if let Some(agreed) = plan::agreed_leader(&views) {
            return Ok(agreed);
        }
        if Instant::now() >= deadline {
            return Err((
                anyhow!("no agreed leader in time: {}", plan::describe_views(&names, &views)),
                None,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Apply the demo config, retrying while the cluster is briefly unavailable (leader change).
async fn apply_demo(
    plan: &Plan,
    creds: &Loaded,
    first: SocketAddr,
    demo: &str,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut targets: Vec<SocketAddr> = vec![first];
    targets.extend(plan.nodes.iter().map(|n| n.grpc).filter(|a| *a != first));
    let mut attempt = 0usize;
    loop {
        let ep = targets[attempt % targets.len()].to_string();
        attempt += 1;
        let r = async {
            let admin = Admin::connect(&ep, Duration::from_secs(2), creds).await?;
            admin.apply_config("toml", demo.to_string()).await
        }
        .await;
        let err = match r {
            Ok(resp) => return Ok(resp.version),
            Err(e @ CliError::Rejected { .. }) | Err(e @ CliError::Server { .. }) => {
                return Err(anyhow!("{} rejected the demo config: {e}", ep))
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(anyhow!("gave up after {attempt} attempt(s); last: {err}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// After the config is in force: wait a little for every listener to accept and every backend to be healthy.
/// Returns warnings for what did not happen in time (the cluster is usable, just not settled).
async fn settle(plan: &Plan, creds: &Loaded) -> Vec<String> {
    let until = Instant::now() + SETTLE_DEADLINE;
    let listeners: Vec<SocketAddr> = plan
        .nodes
        .iter()
        .flat_map(|n| [plan::DEMO_HTTP_PORT, plan::DEMO_TCP_PORT].map(|p| SocketAddr::new(n.ip.into(), p)))
        .collect();
    let endpoint = plan.nodes[0].grpc.to_string();
    loop {
        let mut closed = Vec::new();
        for addr in &listeners {
            if !crate::probe::tcp_connects(*addr, Duration::from_millis(500)).await {
                closed.push(addr.to_string());
            }
        }
        let unhealthy: Result<Vec<String>, String> = async {
            let admin =
                Admin::connect(&endpoint, Duration::from_secs(2), creds).await.map_err(|e| e.to_string())?;
            let r = admin.list_backends(true).await.map_err(|e| e.to_string())?;
            if r.backends.is_empty() {
                return Err("no backends listed yet".to_string());
            }
            Ok(r.backends.iter().filter(|b| !b.healthy).map(|b| b.addr.clone()).collect())
        }
        .await;
        let healthy = matches!(&unhealthy, Ok(v) if v.is_empty());
        if closed.is_empty() && healthy {
            progress("every listener accepts connections and every backend is healthy");
            return Vec::new();
        }
        if Instant::now() >= until {
            let mut w = Vec::new();
            let t = humantime::format_duration(SETTLE_DEADLINE);
            if !closed.is_empty() {
                w.push(format!("listeners not accepting connections after {t}: {}", closed.join(", ")));
            }
            match unhealthy {
                Ok(v) if !v.is_empty() => w.push(format!("backends not healthy after {t}: {}", v.join(", "))),
                Err(e) => w.push(format!("cannot list backends from {endpoint}: {e}")),
                Ok(_) => {}
            }
            return w;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stop children started by a failed `up`: SIGTERM, wait, SIGKILL, reap; remove their pid files.
async fn stop_children(started: &mut [Started]) -> Vec<String> {
    for s in started.iter() {
        procs::signal(s.child.id() as i32, libc::SIGTERM);
    }
    let until = Instant::now() + CLEANUP_GRACE;
    let mut out = Vec::new();
    for s in started.iter_mut() {
        let how = loop {
            match s.child.try_wait() {
                Ok(Some(_)) | Err(_) => break "stopped",
                Ok(None) if Instant::now() >= until => {
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    break "killed";
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let _ = std::fs::remove_file(&s.pid_file);
        out.push(format!("{} {} (pid {})", how, s.name, s.child.id()));
    }
    out
}

/// What `local down` did with one pid file.
#[derive(Debug, Serialize)]
pub struct Stopped {
    pub name: String,
    pub pid: Option<i32>,
    /// stopped | killed | not_running | not_ours | invalid_pid_file | still_running
    pub outcome: &'static str,
}

#[derive(Debug, Serialize)]
struct DownJson<'a> {
    dir: String,
    processes: &'a [Stopped],
}

pub async fn down(a: &LocalDownArgs, json: bool) -> Result<(), CliError> {
    let dir = &a.dir;
    if !dir.exists() {
        return if json {
            print(&output::to_json_pretty(&DownJson { dir: dir.display().to_string(), processes: &[] }))
        } else {
            print(&format!("nothing to stop: {} does not exist\n", dir.display()))
        };
    }
    let files = procs::list_pid_files(dir)?;
    let mut results: Vec<Stopped> = Vec::new();
    let mut running: Vec<(usize, i32)> = Vec::new();
    for f in &files {
        let (pid, outcome) = match f.pid {
            None => (None, "invalid_pid_file"),
            Some(pid) if !procs::alive(pid) => (Some(pid), "not_running"),
            Some(pid) if !procs::looks_like_ours(pid, dir) => (Some(pid), "not_ours"),
            Some(pid) => {
                procs::signal(pid, libc::SIGTERM);
                running.push((results.len(), pid));
                (Some(pid), "stopped")
            }
        };
        results.push(Stopped { name: f.name.clone(), pid, outcome });
    }
    let pids: Vec<i32> = running.iter().map(|(_, p)| *p).collect();
    let left = procs::wait_gone(&pids, a.grace).await;
    if !left.is_empty() {
        for p in &left {
            procs::signal(*p, libc::SIGKILL);
        }
        let still = procs::wait_gone(&left, Duration::from_secs(5)).await;
        for (i, p) in &running {
            if still.contains(p) {
                results[*i].outcome = "still_running";
            } else if left.contains(p) {
                results[*i].outcome = "killed";
            }
        }
    }
    for (f, r) in files.iter().zip(&results) {
        if r.outcome != "still_running" {
            let _ = std::fs::remove_file(&f.path);
        }
    }
    if json {
        print(&output::to_json_pretty(&DownJson { dir: dir.display().to_string(), processes: &results }))?;
    } else if results.is_empty() {
        print(&format!("nothing to stop: no pid files in {}\n", dir.display()))?;
    } else {
        let grace = humantime::format_duration(a.grace);
        for r in &results {
            let pid = r.pid.map_or_else(|| "?".to_string(), |p| p.to_string());
            let line = match r.outcome {
                "stopped" => format!("stopped {} (pid {pid})", r.name),
                "killed" => format!("killed {} (pid {pid}): still running {grace} after SIGTERM", r.name),
                "not_running" => format!("{} was not running (pid {pid})", r.name),
                "not_ours" => format!(
                    "left pid {pid} alone: {}.pid names a process that is not part of this cluster ({})",
                    r.name,
                    r.pid.and_then(procs::cmdline).unwrap_or_default()
                ),
                "invalid_pid_file" => format!("removed {}.pid: it holds no valid pid", r.name),
                _ => format!("{} (pid {pid}) is still running after SIGKILL", r.name),
            };
            print(&format!("{line}\n"))?;
        }
    }
    let stuck: Vec<String> =
        results.iter().filter(|r| r.outcome == "still_running").map(|r| r.name.clone()).collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(CliError::Local(anyhow!("could not stop {}", stuck.join(", "))))
    }
}
