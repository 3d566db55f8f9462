//! `NodeConfig`: who this node is, where it listens, who its peers are and how Raft is timed.
//!
//! Sources, lowest priority first: built-in defaults, the TOML file given with `--config`, then
//! command-line flags. The file uses the flag names in snake_case (`grpc_port = 7400`,
//! `peers = "1=127.0.0.11:7400,2=127.0.0.12:7400"`, or `peers = ["1=…", "2=…"]`).
//!
//! A peer is written `id=grpc_host:port` or `id=grpc_host:port@http_host:port`. Without the `@…`
//! part, the peer's admin HTTP address is its gRPC host with this node's `http_port` (every node uses
//! the same ports on its own IP, as in containers).
//!
//! Scale hooks exist only here, in the file (never as flags, never in the replicated config): named,
//! allow-listed commands, each an argv run without a shell, that the pools' `scale_out_hook` /
//! `scale_in_hook` refer to by name:
//!
//! ```toml
//! [hooks.add-web]
//! command = ["/usr/local/bin/add-backend", "--pool", "web"]
//! timeout = "60s"      # optional: 1s..=10m, 60s by default
//! ```
//!
//! Everything here is pure: [`NodeConfig::resolve`] turns a parsed file and parsed flags into a
//! validated config and reports every bad field at once; only [`NodeConfig::load`] reads a file (at
//! most [`MAX_FILE_BYTES`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use lbfleet_api::state::LbNode;
use lbfleet_api::NodeId;
use serde::Deserialize;

pub use crate::tls::TlsFiles;

/// Default gRPC port (Raft and admin API on one server).
pub const DEFAULT_GRPC_PORT: u16 = 7400;
/// Default admin HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 7401;
/// Highest connection cap a node accepts for its servers (`grpc_max_connections`,
/// `admin_http_max_connections`).
pub const MAX_CONNECTIONS_CAP: usize = 1_000_000;
/// Largest node config file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Accepted `heartbeat_ms`.
pub const HEARTBEAT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Largest `election_min_ms` / `election_max_ms`.
pub const MAX_ELECTION_MS: u64 = 60_000;
/// Accepted `snapshot_logs`.
pub const SNAPSHOT_LOGS_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
/// Default `write_timeout_ms`.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 5_000;
/// Accepted `write_timeout_ms`.
pub const WRITE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=300_000;
/// Accepted `upstream_idle_per_backend` (0: a new backend connection for every request).
pub const DEFAULT_UPSTREAM_IDLE: usize = 256;
/// Accepted `upstream_idle_per_backend`.
pub const UPSTREAM_IDLE_RANGE: std::ops::RangeInclusive<usize> = 0..=65_536;

/// Accepted `dataplane_threads`.
pub const DATAPLANE_THREADS_RANGE: std::ops::RangeInclusive<usize> = 1..=256;
/// Most hooks one node defines.
pub const MAX_HOOKS: usize = 64;
/// Most arguments of one hook's `command`, the program included.
pub const MAX_HOOK_ARGS: usize = 64;
/// Longest argument of a hook's `command`, in bytes.
pub const MAX_HOOK_ARG_LEN: usize = 4_096;
/// A hook's `timeout` when none is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Accepted hook `timeout`s.
pub const HOOK_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

/// Command-line flags of `lbnode`. Every flag is optional so that the TOML file can supply it.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "lbnode", version, about = "lbfleet node: Raft member, data plane and admin API")]
pub struct Cli {
    /// Print a complete node.toml (every field, its default, what it means and its bounds) and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// TOML file with the same fields as the flags (snake_case); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node id in the Raft group (1, 2, …; 0 is not allowed).
    #[arg(long)]
    pub id: Option<NodeId>,
    /// IP address this node binds its gRPC and admin HTTP servers to [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub bind: Option<String>,
    /// Directory for the Raft log and state machine [default: ./lbnode-ID].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members: "1=127.0.0.11:7400,2=127.0.0.12:7400" (optionally `id=grpc@http`).
    #[arg(long)]
    pub peers: Option<String>,
    /// gRPC port (Raft + admin) [default: 7400].
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Admin HTTP port on the bind IP [default: 7401].
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Full admin HTTP listen address; overrides bind:http_port.
    #[arg(long, value_name = "ADDR")]
    pub admin_http: Option<String>,
    /// Log filter when RUST_LOG is not set (error, warn, info, debug, trace or a filter) [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format on stderr: text, or json (one JSON object per line) [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Where the access log of listeners with `access_log = true` goes: stdout, a file path
    /// (appended to), or off [default: stdout].
    #[arg(long, value_name = "stdout|PATH|off")]
    pub access_log: Option<String>,
    /// Raft heartbeat interval in milliseconds [default: 50].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the election timeout in milliseconds [default: 250].
    #[arg(long)]
    pub election_min_ms: Option<u64>,
    /// Upper bound of the election timeout in milliseconds [default: 400].
    #[arg(long)]
    pub election_max_ms: Option<u64>,
    /// Take a snapshot after this many log entries since the last one [default: 500].
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// How long a write may wait for commitment before "no quorum" is returned [default: 5000].
    #[arg(long)]
    pub write_timeout_ms: Option<u64>,
    /// Worker threads of the data plane's own runtime (proxies), apart from the control plane's
    /// [default: the number of CPUs].
    #[arg(long)]
    pub dataplane_threads: Option<usize>,
    /// Idle HTTP connections each listener keeps to each backend for later requests; the oldest is
    /// closed beyond it, 0 keeps none [default: 256].
    #[arg(long, value_name = "N")]
    pub upstream_idle_per_backend: Option<usize>,
    /// The cluster CA's certificate (PEM); every peer's certificate must chain to it.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (PEM) from the cluster CA, naming node-<id>.lbfleet (`lbctl ca init`).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The operators' tokens, hashed (TOML `[[token]]` entries with name, role and sha256). Without
    /// it only cluster nodes may call the admin API.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Most open gRPC connections; further ones wait in the accept queue [default: 1024].
    #[arg(long, value_name = "N")]
    pub grpc_max_connections: Option<usize>,
    /// Most open admin HTTP connections; further ones wait in the accept queue [default: 256].
    #[arg(long, value_name = "N")]
    pub admin_http_max_connections: Option<usize>,
    /// The virtual IP of the front: TCP and HTTP listeners accept on it too (they bind the wildcard
    /// address), UDP listeners bind a second socket on it, and the BGP speaker announces it while this
    /// node can serve.
    #[arg(long, value_name = "IP")]
    pub vip: Option<String>,
    /// Add the VIP (/32 or /128) to the loopback interface at start (needs CAP_NET_ADMIN).
    #[arg(long)]
    pub vip_loopback: bool,
    /// The BGP speaker (BIRD 2's `bird`) to run beside this node as its child; it dies with the node.
    #[arg(long, value_name = "PATH")]
    pub bgp_speaker: Option<PathBuf>,
    /// The speaker's config; it must define the static protocol `lbfleet_vip`, disabled at start.
    #[arg(long, value_name = "PATH")]
    pub bgp_config: Option<PathBuf>,
    /// BIRD's control socket, through which the VIP is announced and withdrawn
    /// [default: DATA_DIR/bird.ctl when --bgp-speaker is given].
    #[arg(long, value_name = "PATH")]
    pub bgp_socket: Option<PathBuf>,
    /// How long the node keeps accepting after it withdrew the VIP at shutdown [default: 1000].
    #[arg(long, value_name = "MS")]
    pub bgp_withdraw_grace_ms: Option<u64>,
}

/// How `lbnode` writes its log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (`message` among them), `span`s.
    Json,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

/// Longest `access_log` path accepted.
pub const MAX_ACCESS_LOG_PATH: usize = 4096;

impl AccessLogTarget {
    /// `stdout` (also the default, `None`), `off`, or a file path.
    pub fn parse(text: Option<&str>) -> Result<Option<AccessLogTarget>, String> {
        match text.map(str::trim) {
            None | Some("stdout") => Ok(Some(AccessLogTarget::Stdout)),
            Some("off") => Ok(None),
            Some("") => Err("must be \"stdout\", \"off\" or a file path, not empty".into()),
            Some(p) if p.len() > MAX_ACCESS_LOG_PATH => Err(format!(
                "a path of {} bytes is longer than the maximum of {MAX_ACCESS_LOG_PATH}",
                p.len()
            )),
            Some(p) => Ok(Some(AccessLogTarget::File(PathBuf::from(p)))),
        }
    }
}

/// The TOML file: the same fields as [`Cli`], all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<NodeId>,
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Option<PeerList>,
    pub grpc_port: Option<u16>,
    pub http_port: Option<u16>,
    pub admin_http: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub access_log: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub dataplane_threads: Option<usize>,
    pub upstream_idle_per_backend: Option<usize>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
    pub grpc_max_connections: Option<usize>,
    pub admin_http_max_connections: Option<usize>,
    pub vip: Option<String>,
    pub vip_loopback: Option<bool>,
    pub bgp_speaker: Option<PathBuf>,
    pub bgp_config: Option<PathBuf>,
    pub bgp_socket: Option<PathBuf>,
    pub bgp_withdraw_grace_ms: Option<u64>,
    /// Scale hooks by name (file only).
    #[serde(default)]
    pub hooks: BTreeMap<String, FileHook>,
}

/// One `[hooks.NAME]` table of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHook {
    /// The program (an absolute path) and its arguments; run as is, without a shell.
    #[serde(default)]
    pub command: Vec<String>,
    /// How long it may run before it is killed (humantime, e.g. "60s").
    pub timeout: Option<String>,
}

/// A scale hook this node may run when it leads: a named, allow-listed argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    /// `argv[0]` is an absolute path; never passed to a shell.
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// The hooks of this node, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks(BTreeMap<String, Hook>);

impl Hooks {
    pub fn get(&self, name: &str) -> Option<&Hook> {
        self.0.get(name)
    }

    /// The names the replicated config may refer to.
    pub fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Hook> for Hooks {
    fn from_iter<I: IntoIterator<Item = Hook>>(iter: I) -> Self {
        Hooks(iter.into_iter().map(|h| (h.name.clone(), h)).collect())
    }
}

/// `peers` in the file: one comma-separated string or a list of entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PeerList {
    Text(String),
    List(Vec<String>),
}

impl PeerList {
    fn joined(&self) -> String {
        match self {
            PeerList::Text(t) => t.clone(),
            PeerList::List(v) => v.join(","),
        }
    }
}

/// One initial member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    /// gRPC address, `host:port`.
    pub addr: String,
    /// Admin HTTP address, `host:port`.
    pub http_addr: String,
}

impl Peer {
    pub fn node(&self) -> LbNode {
        LbNode { addr: self.addr.clone(), http_addr: self.http_addr.clone() }
    }
}

/// Raft timing and log compaction.
///
/// What openraft 0.9 does with the three timings (read in its sources, `engine_config.rs`,
/// `raft_core.rs`, `tick.rs`, `replication/mod.rs`):
/// - its timer ticks every 1.5 × `heartbeat_ms`; the leader sends a heartbeat on a tick, so
///   followers hear from it every 1.5 × `heartbeat_ms`, and every AppendEntries RPC (heartbeat or
///   entries) times out after `heartbeat_ms`;
/// - each node draws its election timeout `t` once, at start, uniformly in
///   `election_min_ms..election_max_ms`, and keeps it for the life of the process;
/// - the leader lease is `election_max_ms`: a voter that heard from a leader within it refuses votes;
/// - a follower of an established leader campaigns only after hearing nothing for lease + `t`, that is
///   between `election_min_ms + election_max_ms` and 2 × `election_max_ms` (2 × `election_max_ms` more
///   after a vote refused for its shorter log); a candidate whose round failed retries after `t`.
///
/// So failover after a crash takes about `election_max_ms` + the first survivor's `t` (+ up to a tick),
/// and a live leader is deposed only if a follower misses every heartbeat for at least
/// `election_min_ms + election_max_ms`. The defaults (50 / 250 / 400) give a failover of about 0.75 s
/// and need 650 ms without a single heartbeat (about 8 heartbeats in a row lost) before a spurious
/// election; `tests/tests/elections.rs` checks that a fully loaded 2-core machine holds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_logs: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming { heartbeat_ms: 50, election_min_ms: 250, election_max_ms: 400, snapshot_logs: 500 }
    }
}

/// The validated configuration of one lbnode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    pub bind: IpAddr,
    pub data_dir: PathBuf,
    /// Initial members, sorted by id; empty when the node waits to be added.
    pub peers: Vec<Peer>,
    pub grpc_port: u16,
    pub http_port: u16,
    /// Where the admin HTTP server listens.
    pub admin_http: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where access log lines go; `None`: nowhere (`access_log = "off"`).
    pub access_log: Option<AccessLogTarget>,
    pub raft: RaftTiming,
    pub write_timeout: Duration,
    /// Worker threads of the data-plane runtime.
    pub dataplane_threads: usize,
    /// Idle HTTP connections kept per backend and listener.
    pub upstream_idle_per_backend: usize,
    /// The TLS material and the operators' tokens.
    pub tls: TlsFiles,
    /// Cap on open gRPC connections (`crate::limits::GRPC_MAX_CONNECTIONS` by default).
    pub grpc_max_connections: usize,
    /// Cap on open admin HTTP connections (`crate::limits::ADMIN_HTTP_MAX_CONNECTIONS` by default).
    pub admin_http_max_connections: usize,
    /// Scale hooks this node runs when it leads (from the file's `[hooks.NAME]` tables).
    pub hooks: Hooks,
    /// The virtual IP and the BGP speaker that announces it.
    pub front: FrontConfig,
}

/// The front of this node: the virtual IP its listeners accept on and the BGP speaker (BIRD) that
/// announces it while the node can serve ([`crate::front`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontConfig {
    pub vip: Option<IpAddr>,
    /// Add the VIP to `lo` at start.
    pub vip_loopback: bool,
    /// The speaker program run as this node's child, with its config.
    pub speaker: Option<Speaker>,
    /// BIRD's control socket; `None`: nothing is announced (the VIP is routed to this node otherwise).
    pub socket: Option<PathBuf>,
    /// How long the node keeps accepting after withdrawing the VIP at shutdown.
    pub withdraw_grace: Duration,
}

/// A BGP speaker lbnode starts: `program -f -c config -s socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speaker {
    pub program: PathBuf,
    pub config: PathBuf,
}

/// Default `bgp_withdraw_grace_ms`.
pub const DEFAULT_WITHDRAW_GRACE_MS: u64 = 1000;
/// Accepted `bgp_withdraw_grace_ms`.
pub const WITHDRAW_GRACE_MS_RANGE: std::ops::RangeInclusive<u64> = 0..=60_000;
/// Longest `bgp_socket` path, in bytes (a Unix socket address holds 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a node config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid node config:{}", list(.0))]
    Invalid(Vec<FieldProblem>),
}

fn list(problems: &[FieldProblem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl NodeConfig {
    /// Read the file named by `--config` (if any) and merge the flags over it.
    pub fn load(cli: &Cli) -> Result<NodeConfig, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        NodeConfig::resolve(file, cli)
    }

    /// Merge `cli` over `file` over the defaults and validate. Reports every bad field.
    pub fn resolve(file: FileConfig, cli: &Cli) -> Result<NodeConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, message: String| problems.push(FieldProblem { field, message });

        let id = match cli.id.or(file.id) {
            None => {
                bad("id", "missing: give --id N or `id = N` in the config file".into());
                0
            }
            Some(0) => {
                bad("id", "must be at least 1 (0 is reserved)".into());
                0
            }
            Some(id) => id,
        };

        let bind_text = cli.bind.clone().or(file.bind).unwrap_or_else(|| "127.0.0.1".into());
        let bind = match bind_text.trim().parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                bad("bind", format!("\"{bind_text}\" is not an IP address"));
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
        };

        let grpc_port = cli.grpc_port.or(file.grpc_port).unwrap_or(DEFAULT_GRPC_PORT);
        let http_port = cli.http_port.or(file.http_port).unwrap_or(DEFAULT_HTTP_PORT);
        if grpc_port == 0 {
            bad("grpc_port", "must not be 0".into());
        }
        if http_port == 0 {
            bad("http_port", "must not be 0".into());
        }

        let admin_http = match cli.admin_http.clone().or(file.admin_http) {
            Some(text) => match text.trim().parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => a,
                _ => {
                    bad("admin_http", format!("\"{text}\" is not an IP:port address"));
                    SocketAddr::new(bind, http_port)
                }
            },
            None => SocketAddr::new(bind, http_port),
        };
        if admin_http == SocketAddr::new(bind, grpc_port) {
            bad("admin_http", format!("{admin_http} is also the gRPC address; use another port"));
        }

        let peers_text = cli.peers.clone().or_else(|| file.peers.as_ref().map(PeerList::joined));
        let peers = match peers_text {
            None => Vec::new(),
            Some(text) => match parse_peers(&text, http_port) {
                Ok(p) => p,
                Err(e) => {
                    bad("peers", e);
                    Vec::new()
                }
            },
        };

        let data_dir =
            cli.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("lbnode-{id}")));
        if data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty".into());
        }

        let log_level = cli.log_level.clone().or(file.log_level).unwrap_or_else(|| "info".into());
        if log_level.trim().is_empty() {
            bad("log_level", "must not be empty".into());
        }
        let log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        let access_log =
            match AccessLogTarget::parse(cli.access_log.as_deref().or(file.access_log.as_deref())) {
                Ok(t) => t,
                Err(e) => {
                    bad("access_log", e);
                    None
                }
            };

        let d = RaftTiming::default();
        let raft = RaftTiming {
            heartbeat_ms: cli.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(d.heartbeat_ms),
            election_min_ms: cli.election_min_ms.or(file.election_min_ms).unwrap_or(d.election_min_ms),
            election_max_ms: cli.election_max_ms.or(file.election_max_ms).unwrap_or(d.election_max_ms),
            snapshot_logs: cli.snapshot_logs.or(file.snapshot_logs).unwrap_or(d.snapshot_logs),
        };
        if !HEARTBEAT_MS_RANGE.contains(&raft.heartbeat_ms) {
            bad("heartbeat_ms", out_of_range(raft.heartbeat_ms, &HEARTBEAT_MS_RANGE));
        }
        for (field, v) in
            [("election_min_ms", raft.election_min_ms), ("election_max_ms", raft.election_max_ms)]
        {
            if v > MAX_ELECTION_MS {
                bad(field, format!("{v} is above the limit of {MAX_ELECTION_MS}"));
            }
        }
        if raft.election_min_ms <= raft.heartbeat_ms {
            bad(
                "election_min_ms",
                format!(
                    "{} must be greater than heartbeat_ms ({}) or followers time out between heartbeats",
                    raft.election_min_ms, raft.heartbeat_ms
                ),
            );
        }
        if raft.election_max_ms <= raft.election_min_ms {
            bad(
                "election_max_ms",
                format!(
                    "{} must be greater than election_min_ms ({})",
                    raft.election_max_ms, raft.election_min_ms
                ),
            );
        }
        if !SNAPSHOT_LOGS_RANGE.contains(&raft.snapshot_logs) {
            bad("snapshot_logs", out_of_range(raft.snapshot_logs, &SNAPSHOT_LOGS_RANGE));
        }

        let write_timeout_ms =
            cli.write_timeout_ms.or(file.write_timeout_ms).unwrap_or(DEFAULT_WRITE_TIMEOUT_MS);
        if !WRITE_TIMEOUT_MS_RANGE.contains(&write_timeout_ms) {
            bad("write_timeout_ms", out_of_range(write_timeout_ms, &WRITE_TIMEOUT_MS_RANGE));
        }

        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dataplane_threads = cli.dataplane_threads.or(file.dataplane_threads).unwrap_or(cpus.min(256));
        if !DATAPLANE_THREADS_RANGE.contains(&dataplane_threads) {
            bad("dataplane_threads", out_of_range(dataplane_threads, &DATAPLANE_THREADS_RANGE));
        }
        let upstream_idle_per_backend =
            cli.upstream_idle_per_backend.or(file.upstream_idle_per_backend).unwrap_or(DEFAULT_UPSTREAM_IDLE);
        if !UPSTREAM_IDLE_RANGE.contains(&upstream_idle_per_backend) {
            bad("upstream_idle_per_backend", out_of_range(upstream_idle_per_backend, &UPSTREAM_IDLE_RANGE));
        }

        let mut tls_path = |field: &'static str, flag: Option<&PathBuf>, file: Option<PathBuf>| {
            let path = flag.cloned().or(file);
            if path.is_none() {
                bad(
                    field,
                    "missing: every node needs the cluster CA, its certificate and key \
                     (--ca-file, --cert-file, --key-file; make them with `lbctl ca init --dir DIR`)"
                        .to_string(),
                );
            }
            path.unwrap_or_default()
        };
        let tls = TlsFiles {
            ca: tls_path("ca_file", cli.ca_file.as_ref(), file.ca_file),
            cert: tls_path("cert_file", cli.cert_file.as_ref(), file.cert_file),
            key: tls_path("key_file", cli.key_file.as_ref(), file.key_file),
            tokens: cli.tokens_file.clone().or(file.tokens_file),
        };
        let grpc_max_connections = cli
            .grpc_max_connections
            .or(file.grpc_max_connections)
            .unwrap_or(crate::limits::GRPC_MAX_CONNECTIONS);
        if !(1..=MAX_CONNECTIONS_CAP).contains(&grpc_max_connections) {
            bad(
                "grpc_max_connections",
                format!("{grpc_max_connections} is out of range 1..={MAX_CONNECTIONS_CAP}"),
            );
        }
        let admin_http_max_connections = cli
            .admin_http_max_connections
            .or(file.admin_http_max_connections)
            .unwrap_or(crate::limits::ADMIN_HTTP_MAX_CONNECTIONS);
        if !(1..=MAX_CONNECTIONS_CAP).contains(&admin_http_max_connections) {
            bad(
                "admin_http_max_connections",
                format!("{admin_http_max_connections} is out of range 1..={MAX_CONNECTIONS_CAP}"),
            );
        }
        let hooks = resolve_hooks(&file.hooks, &mut bad);
        let file_front = FileFront {
            vip: file.vip,
            vip_loopback: file.vip_loopback,
            bgp_speaker: file.bgp_speaker,
            bgp_config: file.bgp_config,
            bgp_socket: file.bgp_socket,
            bgp_withdraw_grace_ms: file.bgp_withdraw_grace_ms,
        };
        let front = resolve_front(file_front, cli, &data_dir, &mut bad);

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(NodeConfig {
            id,
            bind,
            data_dir,
            peers,
            grpc_port,
            http_port,
            admin_http,
            log_level,
            log_format,
            access_log,
            raft,
            write_timeout: Duration::from_millis(write_timeout_ms),
            dataplane_threads,
            upstream_idle_per_backend,
            tls,
            grpc_max_connections,
            admin_http_max_connections,
            hooks,
            front,
        })
    }

    /// Where the gRPC server listens.
    pub fn grpc_listen(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.grpc_port)
    }

    /// How other nodes reach this one: its own entry in `peers` when listed there, else the listen
    /// addresses.
    pub fn advertised(&self) -> LbNode {
        match self.peers.iter().find(|p| p.id == self.id) {
            Some(p) => p.node(),
            None => LbNode { addr: self.grpc_listen().to_string(), http_addr: self.admin_http.to_string() },
        }
    }
}

fn out_of_range<T: fmt::Display>(v: T, range: &std::ops::RangeInclusive<T>) -> String {
    format!("{v} is out of range {}..={}", range.start(), range.end())
}

/// Validate the `[hooks.NAME]` tables: at most [`MAX_HOOKS`], names of the replicated config's charset,
/// a non-empty argv of at most [`MAX_HOOK_ARGS`] arguments starting with an absolute path, a timeout
/// within [`HOOK_TIMEOUT_RANGE`].
fn resolve_hooks(file: &BTreeMap<String, FileHook>, bad: &mut impl FnMut(&'static str, String)) -> Hooks {
    if file.len() > MAX_HOOKS {
        bad("hooks", format!("{} hooks, above the limit of {MAX_HOOKS}", file.len()));
    }
    let mut hooks = Vec::new();
    for (name, h) in file {
        let shown: String = name.chars().take(64).collect();
        let mut problem = |message: String| bad("hooks", format!("hooks.{shown}: {message}"));
        let mut ok = true;
        if !lbfleet_api::config::is_name(name) {
            problem(format!(
                "invalid hook name: use 1 to {} of A-Z a-z 0-9 - _ .",
                lbfleet_api::config::MAX_NAME_LEN
            ));
            ok = false;
        }
        match h.command.first() {
            None => {
                problem(
                    "command must name a program: command = [\"/absolute/program\", \"arg\", ...]".into(),
                );
                ok = false;
            }
            Some(program) if !Path::new(program).is_absolute() => {
                problem(format!(
                    "the program \"{}\" must be an absolute path (hooks are run without a shell or a PATH search)",
                    program.chars().take(64).collect::<String>()
                ));
                ok = false;
            }
            Some(_) => {}
        }
        if h.command.len() > MAX_HOOK_ARGS {
            problem(format!("command has {} arguments, above the limit of {MAX_HOOK_ARGS}", h.command.len()));
            ok = false;
        }
        if let Some((i, a)) = h.command.iter().enumerate().find(|(_, a)| a.len() > MAX_HOOK_ARG_LEN) {
            problem(format!(
                "argument {} is {} bytes long, above the limit of {MAX_HOOK_ARG_LEN}",
                i + 1,
                a.len()
            ));
            ok = false;
        }
        if h.command.iter().any(|a| a.contains('\0')) {
            problem("command contains a NUL byte".into());
            ok = false;
        }
        let timeout = match &h.timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if HOOK_TIMEOUT_RANGE.contains(&d) => d,
                Ok(_) => {
                    problem(format!(
                        "timeout {t} is out of range {}..={}",
                        humantime::format_duration(*HOOK_TIMEOUT_RANGE.start()),
                        humantime::format_duration(*HOOK_TIMEOUT_RANGE.end())
                    ));
                    ok = false;
                    DEFAULT_HOOK_TIMEOUT
                }
                Err(e) => {
                    problem(format!("invalid timeout \"{}\": {e}", t.chars().take(64).collect::<String>()));
                    ok = false;
                    DEFAULT_HOOK_TIMEOUT
                }
            },
        };
        if ok {
            hooks.push(Hook { name: name.clone(), argv: h.command.clone(), timeout });
        }
    }
    hooks.into_iter().collect()
}

/// The front's fields of the file.
struct FileFront {
    vip: Option<String>,
    vip_loopback: Option<bool>,
    bgp_speaker: Option<PathBuf>,
    bgp_config: Option<PathBuf>,
    bgp_socket: Option<PathBuf>,
    bgp_withdraw_grace_ms: Option<u64>,
}

/// Validate the front's fields: a VIP that is a unicast address, a speaker only with its config and a
/// VIP, the control socket's path within [`MAX_SOCKET_PATH`], the grace within
/// [`WITHDRAW_GRACE_MS_RANGE`].
fn resolve_front(
    file: FileFront,
    cli: &Cli,
    data_dir: &Path,
    bad: &mut impl FnMut(&'static str, String),
) -> FrontConfig {
    let vip = match cli.vip.clone().or(file.vip) {
        None => None,
        Some(text) => match text.trim().parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                bad("vip", format!("{ip} cannot be a virtual IP (unspecified, multicast or loopback)"));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                let shown: String = text.chars().take(64).collect();
                bad("vip", format!("\"{shown}\" is not an IP address"));
                None
            }
        },
    };
    let vip_loopback = cli.vip_loopback || file.vip_loopback.unwrap_or(false);
    if vip_loopback && vip.is_none() {
        bad("vip_loopback", "needs a virtual IP (--vip IP)".into());
    }
    let program = cli.bgp_speaker.clone().or(file.bgp_speaker);
    let config = cli.bgp_config.clone().or(file.bgp_config);
    let speaker = match (program, config) {
        (Some(program), Some(config)) => {
            if !program.is_absolute() {
                bad("bgp_speaker", format!("{} must be an absolute path", program.display()));
            }
            Some(Speaker { program, config })
        }
        (Some(_), None) => {
            bad("bgp_config", "missing: --bgp-speaker needs the speaker's config (--bgp-config PATH)".into());
            None
        }
        (None, Some(_)) => {
            bad(
                "bgp_speaker",
                "missing: --bgp-config is the config of a speaker (--bgp-speaker PATH)".into(),
            );
            None
        }
        (None, None) => None,
    };
    let socket = cli
        .bgp_socket
        .clone()
        .or(file.bgp_socket)
        .or_else(|| speaker.as_ref().map(|_| data_dir.join("bird.ctl")));
    if let Some(path) = &socket {
        if vip.is_none() {
            bad("bgp_socket", "a BGP speaker needs a virtual IP to announce (--vip IP)".into());
        }
        let len = path.as_os_str().len();
        if len == 0 || len > MAX_SOCKET_PATH {
            bad(
                "bgp_socket",
                format!(
                    "{} is {len} bytes long; a Unix socket path takes 1 to {MAX_SOCKET_PATH}",
                    path.display()
                ),
            );
        }
    }
    let grace_ms =
        cli.bgp_withdraw_grace_ms.or(file.bgp_withdraw_grace_ms).unwrap_or(DEFAULT_WITHDRAW_GRACE_MS);
    if !WITHDRAW_GRACE_MS_RANGE.contains(&grace_ms) {
        bad("bgp_withdraw_grace_ms", out_of_range(grace_ms, &WITHDRAW_GRACE_MS_RANGE));
    }
    FrontConfig { vip, vip_loopback, speaker, socket, withdraw_grace: Duration::from_millis(grace_ms) }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let read = |source| ConfigError::Read { path: path.to_owned(), source };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            message: format!("the file is larger than the limit of {MAX_FILE_BYTES} bytes"),
        });
    }
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().into() })
}

/// Parse `"1=host:7400,2=host:7400@host:7401"`. Entries are sorted by id; ids and addresses must be
/// unique. `default_http_port` fills in the HTTP address of entries without `@…`.
pub fn parse_peers(text: &str, default_http_port: u16) -> Result<Vec<Peer>, String> {
    let mut peers: Vec<Peer> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id_text, rest) = entry
            .split_once('=')
            .ok_or_else(|| format!("entry \"{entry}\" is not of the form id=host:port"))?;
        let id: NodeId = id_text
            .trim()
            .parse()
            .map_err(|_| format!("entry \"{entry}\": node id \"{}\" is not a number", id_text.trim()))?;
        if id == 0 {
            return Err(format!("entry \"{entry}\": node id must be at least 1"));
        }
        let (grpc, http) = match rest.split_once('@') {
            Some((g, h)) => (g.trim(), Some(h.trim())),
            None => (rest.trim(), None),
        };
        let (host, _) = split_host_port(grpc).map_err(|e| format!("entry \"{entry}\": gRPC address {e}"))?;
        let http_addr = match http {
            Some(h) => {
                split_host_port(h).map_err(|e| format!("entry \"{entry}\": HTTP address {e}"))?;
                h.to_string()
            }
            None => format!("{host}:{default_http_port}"),
        };
        if let Some(dup) = peers.iter().find(|p| p.id == id) {
            return Err(format!("node id {id} is listed twice (\"{}\" and \"{grpc}\")", dup.addr));
        }
        if let Some(dup) = peers.iter().find(|p| p.addr == grpc) {
            return Err(format!("address \"{grpc}\" is listed for node {} and node {id}", dup.id));
        }
        peers.push(Peer { id, addr: grpc.to_string(), http_addr });
    }
    peers.sort_by_key(|p| p.id);
    Ok(peers)
}

/// Check a `host:port` address (host may be a name, an IPv4 address or a bracketed IPv6 address).
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) =
        addr.rsplit_once(':').ok_or_else(|| format!("\"{addr}\" has no port (expected host:port)"))?;
    let port: u16 = port.parse().map_err(|_| format!("\"{addr}\" has an invalid port \"{port}\""))?;
    if port == 0 {
        return Err(format!("\"{addr}\" has port 0"));
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = !bare.is_empty()
        && if host.starts_with('[') {
            bare.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        };
    if !host_ok {
        return Err(format!("\"{addr}\" has an invalid host \"{host}\""));
    }
    Ok((host, port))
}

pub mod reference;

#[cfg(test)]
mod tests;
