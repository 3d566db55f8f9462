//! `lbnode`: one member of an lbfleet cluster.
//!
//! `lbnode --print-default-config` prints a complete node.toml with every default and exits.
//! Reads its [`NodeConfig`] from flags and an optional TOML file, starts the node (Raft, gRPC admin
//! and Raft service, admin HTTP) and runs until SIGTERM or SIGINT, then shuts down gracefully and
//! exits 0. A bad config exits 2 with every bad field named; a failure at start or while running
//! exits 1 — including a fatal Raft or storage error, after which the node would only serve frozen
//! state: it stops so that a supervisor restarts it. Logs go to stderr (`RUST_LOG` wins over
//! `--log-level`), as text or, with `--log-format json`, one JSON object per line.
//!
//! At start the soft limit of open files is raised to the hard limit (every connection, peer
//! channel and store file is a descriptor), and both are logged.

use std::process::ExitCode;

use clap::Parser;
use lbfleet_node::config::{Cli, LogFormat, NodeConfig};
use lbfleet_node::node::Node;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: every proxied request allocates and frees its heads, header
/// maps and buffers across the data-plane threads, and glibc's allocator spent about a tenth of the
/// node's CPU on it (README, "Measured").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", lbfleet_node::config::reference::default_config_toml());
        return ExitCode::SUCCESS;
    }
    let config = match NodeConfig::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lbnode: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => {
            EnvFilter::try_new(&text).map_err(|e| format!("RUST_LOG: {e}"))
        }
        _ => EnvFilter::try_new(&config.log_level)
            .map_err(|e| format!("log_level \"{}\": {e}", config.log_level)),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lbnode: invalid node config:\n  - {e}");
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().init(),
    }

    match lbfleet_node::accept::raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "raised the open-file limit (RLIMIT_NOFILE) to its hard limit")
        }
        Ok((_, limit)) => tracing::info!(limit, "open-file limit (RLIMIT_NOFILE) already at its hard limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit (RLIMIT_NOFILE): {e}"),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbnode: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The proxies get a runtime of their own: proxy load cannot delay Raft heartbeats or admin calls.
    let dataplane = match Dataplane::start(config.dataplane_threads) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lbnode: cannot start the data-plane runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(config, dataplane.handle()));
    // Connections still open after the node's bounded grace are closed here.
    dataplane.shutdown(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lbnode: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The data plane's runtime. With one thread it is tokio's current-thread scheduler on a thread of its
/// own: the same single worker as a one-thread multi-thread runtime, without the work-stealing
/// scheduler's bookkeeping on every wake-up (measured in README, "Measured"); with more, the
/// multi-thread scheduler.
enum Dataplane {
    Multi(tokio::runtime::Runtime),
    Single {
        handle: tokio::runtime::Handle,
        /// Sending (or dropping) it ends the thread's `block_on`, which then shuts the runtime down.
        stop: tokio::sync::oneshot::Sender<std::time::Duration>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl Dataplane {
    fn start(threads: usize) -> std::io::Result<Dataplane> {
        if threads > 1 {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("lbnode-dataplane")
                .enable_all()
                .build()?;
            return Ok(Dataplane::Multi(rt));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<std::time::Duration>();
        let thread = std::thread::Builder::new().name("lbnode-dataplane".into()).spawn(move || {
            // Tasks spawned on `handle` from other threads run while this thread is in `block_on`.
            let grace = rt.block_on(stopped).unwrap_or(std::time::Duration::ZERO);
            rt.shutdown_timeout(grace);
        })?;
        Ok(Dataplane::Single { handle, stop, thread })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match self {
            Dataplane::Multi(rt) => rt.handle().clone(),
            Dataplane::Single { handle, .. } => handle.clone(),
        }
    }

    /// Stop the runtime, waiting at most `grace` for its tasks.
    fn shutdown(self, grace: std::time::Duration) {
        match self {
            Dataplane::Multi(rt) => rt.shutdown_timeout(grace),
            Dataplane::Single { stop, thread, .. } => {
                let _ = stop.send(grace);
                if thread.join().is_err() {
                    eprintln!("lbnode: the data-plane thread panicked");
                }
            }
        }
    }
}

async fn run(config: NodeConfig, dataplane: tokio::runtime::Handle) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut node = Node::start_with(config, Some(dataplane)).await?;
    let failure = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM received"); None }
        _ = int.recv() => { tracing::info!("SIGINT received"); None }
        e = node.failed() => Some(e),
    };
    if let Some(e) = &failure {
        tracing::error!("{e:#}; stopping this node (exit code 1) so that a supervisor restarts it");
    }
    let stopped = node.shutdown().await;
    match (failure, stopped) {
        (Some(e), Err(also)) => {
            tracing::warn!("while stopping after the failure: {also:#}");
            Err(e)
        }
        (Some(e), Ok(())) => Err(e),
        (None, stopped) => stopped,
    }
}
