//! The admin commands: one function per command, each a call through [`Admin`] and a rendering from
//! [`crate::output`]. Results go to standard output; errors are returned for `main` to show.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use lbfleet_api::pb;

use crate::args::{self, ConfigFormat};
use crate::client::Admin;
use crate::error::CliError;
use crate::output;

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub endpoint: String,
    pub json: bool,
    pub timeout: std::time::Duration,
}

impl Global {
    async fn connect(&self) -> Result<Admin, CliError> {
        Admin::connect(&self.endpoint, self.timeout).await
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

fn read_config(file: &Path) -> Result<String, CliError> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the config from standard input")?;
        return Ok(s);
    }
    Ok(std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file \"{}\"", file.display()))?)
}

pub async fn get_config(g: &Global, stale: bool) -> Result<(), CliError> {
    let r = g.connect().await?.get_config(stale).await?;
    let cfg = output::decode_config(&r.config_json)
        .map_err(|e| CliError::Local(anyhow::anyhow!("lbnode at {}: {e}", g.endpoint)))?;
    if g.json {
        print(&output::config_json(cfg.as_ref()))
    } else {
        print(&output::config_toml(&r, cfg.as_ref()))
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

/// Stream events until Ctrl-C or SIGTERM (exit 0) or until the stream breaks (an error).
pub async fn watch(g: &Global) -> Result<(), CliError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let admin = g.connect().await?;
    let mut stream = admin.watch().await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
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
                Err(status) => return Err(CliError::from_status(&g.endpoint, &status)),
            },
        }
    }
}
