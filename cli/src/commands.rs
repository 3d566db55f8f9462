//! The admin commands: one function per command, each a call through [`Admin`] and a rendering from
//! [`crate::output`]. Results go to standard output; errors are returned for `main` to show.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use lbfleet_api::pb;

use crate::args::{self, ConfigFormat};
use crate::client::Admin;
use crate::error::{CliError, Effect};
use crate::output;

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub endpoint: String,
    pub json: bool,
    pub timeout: std::time::Duration,
    pub credentials: crate::client::Credentials,
}

impl Global {
    pub(crate) async fn connect(&self) -> Result<Admin, CliError> {
        Admin::connect(&self.endpoint, self.timeout, &self.credentials.load()?).await
    }
}

/// Write to standard output. A closed pipe (`lbctl watch | head -1`) ends lbctl quietly with exit 0.
pub(crate) fn print(s: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(crate::error::EXIT_OK),
        Err(e) => Err(CliError::Local(anyhow::Error::new(e).context("cannot write to standard output"))),
    }
}

pub async fn status(g: &Global) -> Result<(), CliError> {
    let r = g.connect().await?.status().await?;
    if g.json {
        print(&output::to_json_pretty(&output::StatusJson::from(&r)))
    } else {
        print(&output::status_text(&r))
    }
}

pub async fn apply(g: &Global, a: &args::ApplyArgs) -> Result<(), CliError> {
    let format = ConfigFormat::resolve(a.format, &a.file);
    let body = read_config(&a.file)?;
    if a.dry_run {
        let (r, changes) = dry_run(g, format, body).await?;
        return if g.json {
            print(&output::to_json_pretty(&output::DiffJson::new(&r, changes)))
        } else {
            print(&format!(
                "dry run: node {} validated the config; nothing was applied
                 the committed config is version {} (applied index {}); applying would make version {}
{}",
                r.answered_by,
                r.current_version,
                r.log_index,
                r.version,
                crate::diff::diff_text(&changes)
            ))
        };
    }
    let r = g.connect().await?.apply_config(format.as_str(), body).await?;
    if g.json {
        print(&output::to_json_pretty(&serde_json::json!({
            "version": r.version,
            "log_index": r.log_index,
        })))
    } else {
        print(&format!("config version {} applied (log index {})\n", r.version, r.log_index))
    }
}

/// Validate `body` on the node as an apply would (nothing is proposed) and diff it against the committed
/// config the node read.
async fn dry_run(
    g: &Global,
    format: ConfigFormat,
    body: String,
) -> Result<(pb::ApplyConfigResponse, Vec<crate::diff::Change>), CliError> {
    let r = g.connect().await?.dry_run_config(format.as_str(), body).await?;
    let garbled = |what: &str, e: serde_json::Error| {
        CliError::Local(anyhow::anyhow!("lbnode at {}: the {what} it sent cannot be read: {e}", g.endpoint))
    };
    if !r.dry_run {
        return Err(CliError::Local(anyhow::anyhow!(
            "lbnode at {} does not know dry runs (an older release?); nothing was applied, \
             but check with `lbctl get config`",
            g.endpoint
        )));
    }
    let new: serde_json::Value = serde_json::from_str(&r.config_json).map_err(|e| garbled("config", e))?;
    let old: Option<serde_json::Value> = if r.current_json.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&r.current_json).map_err(|e| garbled("committed config", e))?)
    };
    let changes = crate::diff::diff(old.as_ref(), &new);
    Ok((r, changes))
}

/// `config diff -f FILE`: the changes, and [`crate::error::EXIT_DIFFERENT`] when there are any.
pub async fn config_diff(g: &Global, d: &args::ConfigDiffArgs) -> Result<i32, CliError> {
    let format = ConfigFormat::resolve(d.format, &d.file);
    let (r, changes) = dry_run(g, format, read_config(&d.file)?).await?;
    let code = if changes.is_empty() { crate::error::EXIT_OK } else { crate::error::EXIT_DIFFERENT };
    if g.json {
        print(&output::to_json_pretty(&output::DiffJson::new(&r, changes)))?;
    } else {
        print(&format!(
            "# committed config version {} (applied index {}) -> {}\n{}",
            r.current_version,
            r.log_index,
            d.file.display(),
            crate::diff::diff_text(&changes)
        ))?;
    }
    Ok(code)
}

fn read_config(file: &Path) -> Result<String, CliError> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the config from standard input")?;
        return Ok(s);
    }
    Ok(std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file \"{}\"", file.display()))?)
}

pub async fn get_config(g: &Global, a: &args::GetConfigArgs) -> Result<(), CliError> {
    let r = g.connect().await?.get_config(a.stale).await?;
    let cfg = output::decode_config(&r.config_json)
        .map_err(|e| CliError::Local(anyhow::anyhow!("lbnode at {}: {e}", g.endpoint)))?;
    match a.output_format(g.json) {
        ConfigFormat::Json => print(&output::config_json(cfg.as_ref())),
        ConfigFormat::Toml => print(&output::config_toml(&r, cfg.as_ref())),
    }
}

pub async fn backends(g: &Global, stale: bool) -> Result<(), CliError> {
    let r = g.connect().await?.list_backends(stale).await?;
    if g.json {
        print(&output::to_json_pretty(&output::BackendsJson::from(&r)))
    } else {
        print(&output::backends_text(&r))
    }
}

pub async fn nodes(g: &Global, action: Option<&args::NodesAction>) -> Result<(), CliError> {
    let admin = g.connect().await?;
    let view = match action {
        None | Some(args::NodesAction::List) => {
            let r = admin.list_nodes().await?;
            output::NodesJson::listing(&r.nodes, r.leader)
        }
        Some(args::NodesAction::Add(a)) => {
            // Empty: the node fills in the gRPC host with the cluster's admin HTTP port.
            let http_addr = a.http_addr.clone().unwrap_or_default();
            let r = admin
                .add_node(pb::AddNodeRequest {
                    id: a.id,
                    addr: a.addr.clone(),
                    http_addr,
                    learner_only: a.learner,
                })
                .await?;
            output::NodesJson::changed(&r.nodes, r.log_index)
        }
        Some(args::NodesAction::Remove(rm)) => {
            let r = admin.remove_node(rm.id).await?;
            output::NodesJson::changed(&r.nodes, r.log_index)
        }
    };
    if g.json {
        print(&output::to_json_pretty(&view))
    } else {
        print(&output::nodes_text(&view))
    }
}

pub async fn drain(g: &Global, d: &args::DrainArgs, draining: bool) -> Result<(), CliError> {
    let r = g.connect().await?.set_drain(&d.pool, &d.backend, draining).await?;
    if g.json {
        print(&output::to_json_pretty(&serde_json::json!({
            "pool": d.pool,
            "backend": d.backend,
            "draining": draining,
            "log_index": r.log_index,
        })))
    } else {
        let what = if draining { "draining" } else { "no longer draining" };
        print(&format!(
            "backend {} in pool \"{}\" is {what} (log index {})\n",
            d.backend, d.pool, r.log_index
        ))
    }
}

/// `drain-node` / `undrain-node`: the node at --endpoint withdraws (or announces again) its share of
/// the VIP. Only that node changes; its answer names it.
pub async fn drain_node(g: &Global, drained: bool) -> Result<(), CliError> {
    let r = g.connect().await?.set_node_drain(drained).await?;
    if g.json {
        return print(&output::to_json_pretty(&serde_json::json!({
            "node": r.node,
            "drained": r.drained,
            "was_drained": r.was_drained,
            "vip": r.vip,
        })));
    }
    let text = match (drained, r.was_drained) {
        (true, false) => format!(
            "node {} is drained: it withdraws the VIP {} (the router sends it no new flows) and keeps \
             running (`lbctl undrain-node` puts it back)\n",
            r.node, r.vip
        ),
        (true, true) => format!("node {} was already drained (the VIP {} stays withdrawn)\n", r.node, r.vip),
        (false, true) => {
            format!("node {} is undrained: it announces the VIP {} again once it can serve\n", r.node, r.vip)
        }
        (false, false) => format!("node {} was not drained (nothing changed)\n", r.node),
    };
    print(&text)
}

/// How often `drain --wait` polls the nodes.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// `drain POOL BACKEND --wait`: commit the drain, then poll every member's `LocalLoad` until the
/// backend has nothing in flight on any node that is not marked down (and every such node has applied
/// the drain), or `wait` has passed (an error naming the remaining count). Each request is bounded by
/// `g.timeout`.
pub async fn drain_wait(g: &Global, d: &args::DrainArgs, wait: std::time::Duration) -> Result<(), CliError> {
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let admin = g.connect().await?;
    let r = admin.set_drain(&d.pool, &d.backend, true).await?;
    if !g.json {
        print(&format!(
            "backend {} in pool \"{}\" is draining (log index {}); waiting for its requests to finish\n",
            d.backend, d.pool, r.log_index
        ))?;
    }
    // A progress bar on a terminal (standard error); nothing when it is not one, or with --json.
    let bar = (!g.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(drain_bar);
    let mut nodes: std::collections::BTreeMap<String, Admin> = std::collections::BTreeMap::new();
    let mut start: Option<u64> = None;
    loop {
        let p = drain_progress(g, &admin, &mut nodes, d, r.log_index).await?;
        let first = *start.get_or_insert(p.in_flight);
        if let Some(bar) = &bar {
            let (done, total) = output::drain_progress_position(first, &p);
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(output::drain_progress_message(&p));
        }
        if p.done() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let waited = started.elapsed();
            return if g.json {
                print(&output::to_json_pretty(&serde_json::json!({
                    "pool": d.pool,
                    "backend": d.backend,
                    "draining": true,
                    "log_index": r.log_index,
                    "drained": true,
                    "in_flight": 0,
                    "nodes_answered": p.answered,
                    "waited_ms": waited.as_millis() as u64,
                })))
            } else {
                print(&format!(
                    "drained: nothing in flight to {} on any node (waited {})\n",
                    d.backend,
                    humantime::format_duration(std::time::Duration::from_millis(waited.as_millis() as u64))
                ))
            };
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            if let Some(bar) = &bar {
                bar.abandon();
            }
            let mut msg = format!(
                "backend {} of pool \"{}\" still has {} requests/connections in flight after {}",
                d.backend,
                d.pool,
                p.in_flight,
                humantime::format_duration(wait)
            );
            if !p.silent.is_empty() {
                msg.push_str(&format!(" (no answer from node {})", output::join_ids(&p.silent)));
            }
            if !p.behind.is_empty() {
                msg.push_str(&format!(" (drain not applied yet on node {})", output::join_ids(&p.behind)));
            }
            msg.push_str("; it stays draining");
            return Err(CliError::Local(anyhow::anyhow!(msg)));
        }
        tokio::time::sleep_until((now + DRAIN_POLL).min(deadline)).await;
    }
}

/// The `drain --wait` bar: requests finished since the first poll out of those in flight then.
fn drain_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1);
    let style = indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#>-");
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// One poll: the members and their applied index from `status`, then `LocalLoad` of each member that
/// is not marked down (connections kept in `nodes` across polls).
async fn drain_progress(
    g: &Global,
    admin: &Admin,
    nodes: &mut std::collections::BTreeMap<String, Admin>,
    d: &args::DrainArgs,
    log_index: u64,
) -> Result<output::DrainProgress, CliError> {
    let status = admin.status().await?;
    let mut p = output::DrainProgress::default();
    let mut members: Vec<&pb::NodeStatus> = status.nodes.iter().filter(|n| !n.down).collect();
    members.sort_by_key(|n| n.id);
    p.expected = members.len();
    for n in members {
        if n.reachable && n.applied_index < log_index {
            p.behind.push(n.id);
        }
        let client = match nodes.get(&n.addr) {
            Some(c) => Some(c.clone()),
            None => match Admin::connect(&n.addr, g.timeout, &g.credentials.load()?).await {
                Ok(c) => {
                    nodes.insert(n.addr.clone(), c.clone());
                    Some(c)
                }
                Err(_) => None,
            },
        };
        let load = match client {
            Some(c) => c.local_load().await.ok(),
            None => None,
        };
        match load {
            Some(report) => {
                p.answered += 1;
                p.in_flight += report
                    .backends
                    .iter()
                    .filter(|b| b.pool == d.pool && b.backend == d.backend)
                    .map(|b| b.in_flight.saturating_add(b.connections))
                    .sum::<u64>();
            }
            None => p.silent.push(n.id),
        }
    }
    Ok(p)
}

/// How often `events --follow` asks for new events.
const EVENTS_POLL: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn events(g: &Global, e: &args::EventsArgs) -> Result<(), CliError> {
    let admin = g.connect().await?;
    let r = admin.events(pb::EventsRequest { since_index: e.since, limit: e.limit, stale: e.stale }).await?;
    if !e.follow {
        return if g.json {
            print(&output::to_json_pretty(&output::EventsJson::from(&r)))
        } else {
            print(&output::events_text(&r))
        };
    }
    // Follow: one line per event, the ones so far first, then each new one as it is committed.
    let mut stop = Stop::new()?;
    if !g.json {
        print(&output::event_header())?;
    }
    let mut since = e.since;
    let mut batch = r;
    loop {
        for ev in &batch.events {
            let view = lbfleet_api::view::EventView::from(ev);
            let line = if g.json { output::to_json_line(&view) } else { output::event_line(&view) };
            print(&(line + "\n"))?;
            since = since.max(ev.index);
        }
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = tokio::time::sleep(EVENTS_POLL) => {}
        }
        batch = admin.events(pb::EventsRequest { since_index: since, limit: 0, stale: e.stale }).await?;
    }
}

/// Ctrl-C or SIGTERM: the end of a command that runs until interrupted (exit 0).
pub(crate) struct Stop {
    sigterm: tokio::signal::unix::Signal,
}

impl Stop {
    pub(crate) fn new() -> Result<Stop, CliError> {
        let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        Ok(Stop { sigterm })
    }

    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.sigterm.recv() => {}
        }
    }
}

/// Stream events until Ctrl-C or SIGTERM (exit 0) or until the stream breaks (an error).
pub async fn watch(g: &Global) -> Result<(), CliError> {
    let mut stop = Stop::new()?;
    let admin = g.connect().await?;
    let mut stream = admin.watch().await?;
    loop {
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            msg = stream.message() => match msg {
                Ok(Some(ev)) => {
                    let line = if g.json {
                        output::to_json_line(&output::WatchJson::from(&ev))
                    } else {
                        output::watch_line(&ev)
                    };
                    print(&(line + "\n"))?;
                }
                Ok(None) => {
                    return Err(CliError::Unavailable {
                        endpoint: g.endpoint.clone(),
                        message: "the node ended the watch stream".to_string(),
                    })
                }
                Err(status) => return Err(CliError::of_call(&g.endpoint, &status, Effect::Read)),
            },
        }
    }
}

/// `completions SHELL`: the script on standard output (with --json: `{"shell", "script"}`).
pub fn completions(g: &Global, shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = <args::Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lbctl", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    if g.json {
        print(&output::to_json_pretty(&serde_json::json!({ "shell": shell.to_string(), "script": script })))
    } else {
        print(&script)
    }
}

/// `man`: lbctl.1 on standard output, or every page into `dir` (with --json: the files written).
pub fn man(g: &Global, dir: Option<&Path>) -> Result<(), CliError> {
    let cmd = <args::Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).context("cannot render the manual page")?;
        return print(&String::from_utf8_lossy(&page));
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lbctl") && n.ends_with(".1"))
        .collect();
    pages.sort();
    if g.json {
        print(&output::to_json_pretty(&serde_json::json!({ "dir": dir, "pages": pages })))
    } else {
        print(&format!("{} manual pages in {}: {}\n", pages.len(), dir.display(), pages.join(" ")))
    }
}
