//! Command-line grammar of `lbctl` (clap derive). Pure: parsing only, no I/O.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default admin endpoint: node 1 of a local cluster.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.11:7400";
/// Default deadline of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of how long `drain --wait` waits for the backend to empty.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(60);

const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   the request was refused (invalid argument, config rejected, unknown node or backend) or failed
  2   cannot reach the lbnode at --endpoint (connection refused, timed out, connection lost)
  3   the cluster cannot serve the request now and nothing was changed (no leader, no quorum for a read,
      a read timed out); retry later
  4   missing or refused credentials (no CA, no token, a token without the role the command needs)
  5   outcome unknown: a write was sent but its answer never came (timed out, connection lost, not
      committed in time); it may have been applied: check before repeating it
  10  `config diff` only: the file differs from the committed config (0: no difference)
  64  invalid command line

Credentials: `. DIR/lbctl.env` (written by `lbctl local up --dir DIR`) sets LBCTL_ENDPOINT, LBCTL_CA and
LBCTL_TOKEN.";

/// Operator CLI for an lbfleet cluster (admin gRPC API of any lbnode).
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Admin gRPC endpoint of any lbnode (HOST:PORT).
    #[arg(long, global = true, env = "LBCTL_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_parser = parse_endpoint)]
    pub endpoint: String,

    /// The cluster CA's certificate (PEM), to verify the node's certificate.
    #[arg(long, global = true, env = "LBCTL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Bearer token with the read or admin role (`lbctl ca init` writes admin.token and read.token).
    #[arg(long, global = true, env = "LBCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the bearer token (used when --token is not given).
    #[arg(long, global = true, env = "LBCTL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline of each request, e.g. 10s, 500ms, 1m (default 10s). With `drain --wait`: how long to
    /// wait for the backend to empty (default 60s; each request then takes at most 10s).
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster status: every node's role, reachability, applied index and ring digest.
    Status,
    /// Apply a cluster config file (replaces the whole config).
    Apply(ApplyArgs),
    /// Read something from the cluster.
    Get(GetArgs),
    /// Backends of every pool with their fleet-wide state.
    Backends(StaleArg),
    /// List, add or remove cluster members.
    Nodes(NodesArgs),
    /// Stop sending new flows to a backend (on every node); with --wait, until its last request ends.
    Drain(DrainCommandArgs),
    /// Resume sending new flows to a drained backend.
    Undrain(DrainArgs),
    /// Take the node at --endpoint out of the front: it withdraws its share of the VIP (BGP), so the
    /// router sends it no new flows, and keeps running and serving its own address. Kept across
    /// restarts.
    DrainNode,
    /// Put the node at --endpoint back into the front: it announces the VIP again once it can serve.
    UndrainNode,
    /// Stream one line per applied change of the replicated state until Ctrl-C.
    Watch,
    /// The replicated event log: leader decisions (standbys, nodes marked down, hooks) and health changes.
    Events(EventsArgs),
    /// What applying a config file would change against the committed config.
    Config(ConfigArgs),
    /// Live per-backend traffic from every node: requests/s, errors/s, in flight, state.
    Top(TopArgs),
    /// Run a development cluster on this machine (127.0.0.11, 127.0.0.12, ...).
    Local(LocalArgs),
    /// The cluster's certificate authority: node certificates and operator tokens.
    Ca(CaArgs),
    /// Print a shell completion script (e.g. `lbctl completions bash > /etc/bash_completion.d/lbctl`).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per command into --dir.
    Man(ManArgs),
    /// Run one demo HTTP backend (used by `local up` and the docker demo).
    #[command(hide = true)]
    DemoBackend(DemoBackendArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub action: CaAction,
}

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Make a cluster CA, certificates for nodes 1..=N and an admin and a read token in DIR.
    Init(CaInitArgs),
    /// Make a certificate for one more node, signed by the CA in DIR.
    Issue(CaIssueArgs),
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Directory for the CA, the node certificates and the tokens (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// How many node certificates to make (ids 1..=N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Extra DNS name or IP address for every node certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// When DIR already holds a CA, keep it and its tokens and only add missing node certificates
    /// (for a one-shot container that runs on every start).
    #[arg(long)]
    pub if_missing: bool,
}

#[derive(Debug, Args)]
pub struct CaIssueArgs {
    /// Directory that holds the CA (from `lbctl ca init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The node's id.
    #[arg(long)]
    pub id: u64,
    /// Extra DNS name or IP address for the certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Config file; `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Format of the file; by default from its extension (.json is JSON, anything else TOML).
    #[arg(long, value_enum)]
    pub format: Option<ConfigFormat>,
    /// Validate the file on the node asked exactly as an apply would, and show what would change
    /// against the committed config; nothing is proposed or changed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Pools, backends, listeners and routes that applying FILE would add, remove or change, field by
    /// field (the node asked validates FILE as `apply` would). Exit 0: no difference, 10: differences.
    Diff(ConfigDiffArgs),
    /// Print the JSON Schema of the cluster config (what `apply -f` takes, TOML or JSON), for editors;
    /// offline.
    Schema,
}

#[derive(Debug, Args)]
pub struct ConfigDiffArgs {
    /// Config file; `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Format of the file; by default from its extension (.json is JSON, anything else TOML).
    #[arg(long, value_enum)]
    pub format: Option<ConfigFormat>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between two refreshes (rates are per second over this interval).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one view (rates over one interval) and exit.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print N views and exit (default: until Ctrl-C).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write lbctl.1 and one page per subcommand (lbctl-status.1, ...) into DIR instead of printing
    /// lbctl.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    Toml,
    Json,
}

impl ConfigFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigFormat::Toml => "toml",
            ConfigFormat::Json => "json",
        }
    }

    /// The format an explicit `--format` or the file's extension names.
    pub fn resolve(explicit: Option<ConfigFormat>, file: &std::path::Path) -> ConfigFormat {
        explicit.unwrap_or_else(|| match file.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => ConfigFormat::Json,
            _ => ConfigFormat::Toml,
        })
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(subcommand)]
    pub what: GetWhat,
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// The cluster config (TOML, or JSON with --json or --format json).
    Config(GetConfigArgs),
}

#[derive(Debug, Args)]
pub struct GetConfigArgs {
    /// Answer from the asked node's applied state instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
    /// Output format (default: TOML, or JSON with --json).
    #[arg(long, value_enum)]
    pub format: Option<ConfigFormat>,
}

impl GetConfigArgs {
    /// The format to print: `--format`, else JSON with `--json`, else TOML.
    pub fn output_format(&self, json: bool) -> ConfigFormat {
        self.format.unwrap_or(if json { ConfigFormat::Json } else { ConfigFormat::Toml })
    }
}

#[derive(Debug, Args)]
pub struct StaleArg {
    /// Answer from the asked node's applied state instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

#[derive(Debug, Subcommand)]
pub enum NodesAction {
    /// List members (the default).
    List,
    /// Add a node: first as a learner, then promoted to voter unless --learner.
    Add(AddNodeArgs),
    /// Remove a node from the membership.
    Remove(RemoveNodeArgs),
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[arg(long)]
    pub id: u64,
    /// gRPC address of the new node (HOST:PORT).
    #[arg(long, value_parser = parse_host_port)]
    pub addr: String,
    /// Admin HTTP address (HOST:PORT); default: the gRPC host with the cluster's admin HTTP port (7401).
    #[arg(long, value_parser = parse_host_port)]
    pub http_addr: Option<String>,
    /// Keep the node a non-voting learner.
    #[arg(long)]
    pub learner: bool,
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    #[arg(long)]
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct DrainCommandArgs {
    #[command(flatten)]
    pub target: DrainArgs,
    /// After the drain is committed, poll every node's in-flight count for the backend and return when
    /// it reaches zero on every node (exit 1 with the remaining count at --timeout, default 60s).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events with a log index above N.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub since: u64,
    /// At most N events (the newest); 0 for every event kept.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u32,
    /// Answer from the asked node's applied state instead of a linearizable read through the leader.
    #[arg(long)]
    pub stale: bool,
    /// After the events so far, keep printing new ones as they are committed, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Pool name.
    pub pool: String,
    /// Backend address as in the config (IP:PORT).
    pub backend: String,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub action: LocalAction,
}

#[derive(Debug, Subcommand)]
pub enum LocalAction {
    /// Start N lbnodes and K demo backends, form the cluster, apply a demo config, print the endpoints.
    Up(LocalUpArgs),
    /// Stop every process recorded in DIR/*.pid.
    Down(LocalDownArgs),
}

#[derive(Debug, Args)]
pub struct LocalUpArgs {
    /// Number of lbnodes (node i binds 127.0.0.1i).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub nodes: u8,
    /// Number of demo HTTP backends (backend k listens on 127.0.0.1:BASE_PORT+k).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub backends: u16,
    /// Directory for data, logs and pid files.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 9000)]
    pub base_port: u16,
    /// The lbnode binary; default: next to lbctl, then PATH.
    #[arg(long)]
    pub lbnode: Option<PathBuf>,
    /// --log-level passed to every lbnode.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// How long to wait for the cluster to form and take the demo config.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// On failure, leave the started processes running (for debugging) instead of stopping them.
    #[arg(long)]
    pub keep_on_failure: bool,
}

#[derive(Debug, Args)]
pub struct LocalDownArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// How long to wait after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

#[derive(Debug, Args)]
pub struct DemoBackendArgs {
    /// Name this backend answers with (body and `x-backend` header).
    #[arg(long)]
    pub name: String,
    /// Address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Close connections from this source IP at once, unanswered (repeatable; for tests).
    #[arg(long = "refuse-from", value_name = "IP")]
    pub refuse_from: Vec<std::net::IpAddr>,
    /// Also answer UDP on the same address: each datagram comes back prefixed with `NAME\n`.
    #[arg(long)]
    pub udp: bool,
}

/// A refresh interval of `top`: 100ms to 1h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("\"{s}\": {e}"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("\"{s}\" is outside 100ms..=1h"));
    }
    Ok(d)
}

/// `HOST:PORT` with a non-empty host and a port in 1..=65535. Brackets allowed for IPv6.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| format!("\"{s}\" is not HOST:PORT (missing port)"))?;
    if host.is_empty() {
        return Err(format!("\"{s}\" is not HOST:PORT (empty host)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("\"{s}\" is not HOST:PORT (write IPv6 hosts in brackets)"));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("\"{s}\" is not HOST:PORT (invalid host \"{host}\")"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("\"{s}\" is not HOST:PORT (port must be 1..=65535)")),
    }
}

/// An endpoint as `HOST:PORT`; an `http://` prefix and a trailing `/` are accepted and dropped.
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let trimmed = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    if trimmed.starts_with("https://") {
        return Err(format!("\"{s}\": TLS endpoints are not supported"));
    }
    parse_host_port(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
    }

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_after_the_command() {
        let cli =
            parse(&["status", "--json", "--endpoint", "127.0.0.12:7400", "--timeout", "1500ms"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoint, "127.0.0.12:7400");
        assert_eq!(cli.timeout, Some(Duration::from_millis(1500)));
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn defaults() {
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.timeout, None, "each command applies its own default");
        assert!(!cli.json);
        // The endpoint default applies unless the environment running the tests sets LBCTL_ENDPOINT.
        let expected = std::env::var("LBCTL_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
        assert_eq!(cli.endpoint, expected);
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(parse_endpoint("http://127.0.0.1:7400/").unwrap(), "127.0.0.1:7400");
        assert_eq!(parse_endpoint("lbnode-1:7400").unwrap(), "lbnode-1:7400");
        assert_eq!(parse_endpoint("[::1]:7400").unwrap(), "[::1]:7400");
        assert!(parse_endpoint("127.0.0.1").unwrap_err().contains("missing port"));
        assert!(parse_endpoint("127.0.0.1:0").unwrap_err().contains("1..=65535"));
        assert!(parse_endpoint("127.0.0.1:70000").is_err());
        assert!(parse_endpoint(":7400").unwrap_err().contains("empty host"));
        assert!(parse_endpoint("::1:7400").unwrap_err().contains("brackets"));
        assert!(parse_endpoint("https://x:1").unwrap_err().contains("TLS"));
        assert!(parse(&["--endpoint", "nope", "status"]).is_err());
    }

    #[test]
    fn apply_format_from_flag_or_extension() {
        let cli = parse(&["apply", "-f", "c.JSON"]).unwrap();
        let Command::Apply(a) = cli.command else { panic!("not apply") };
        assert_eq!(ConfigFormat::resolve(a.format, &a.file), ConfigFormat::Json);
        let cli = parse(&["apply", "-f", "c.json", "--format", "toml"]).unwrap();
        let Command::Apply(a) = cli.command else { panic!("not apply") };
        assert_eq!(ConfigFormat::resolve(a.format, &a.file), ConfigFormat::Toml);
        let cli = parse(&["apply", "--file", "cluster.conf"]).unwrap();
        let Command::Apply(a) = cli.command else { panic!("not apply") };
        assert_eq!(ConfigFormat::resolve(a.format, &a.file), ConfigFormat::Toml);
        assert!(parse(&["apply"]).is_err(), "apply needs -f");
        assert!(parse(&["apply", "-f", "x", "--format", "yaml"]).is_err());
    }

    #[test]
    fn get_config_backends_and_stale() {
        let cli = parse(&["get", "config", "--stale"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Get(GetArgs { what: GetWhat::Config(GetConfigArgs { stale: true, format: None }) })
        ));
        let cli = parse(&["get", "config", "--format", "json"]).unwrap();
        let Command::Get(GetArgs { what: GetWhat::Config(g) }) = cli.command else { panic!("not get") };
        assert_eq!(g.output_format(false), ConfigFormat::Json);
        let cli = parse(&["get", "config", "--json", "--format", "toml"]).unwrap();
        let Command::Get(GetArgs { what: GetWhat::Config(g) }) = cli.command else { panic!("not get") };
        assert_eq!(g.output_format(cli.json), ConfigFormat::Toml, "--format wins over --json");
        let cli = parse(&["get", "config", "--json"]).unwrap();
        let Command::Get(GetArgs { what: GetWhat::Config(g) }) = cli.command else { panic!("not get") };
        assert_eq!(g.output_format(cli.json), ConfigFormat::Json);
        assert!(parse(&["get", "config", "--format", "yaml"]).is_err());
        let cli = parse(&["backends"]).unwrap();
        assert!(matches!(cli.command, Command::Backends(StaleArg { stale: false })));
        assert!(parse(&["get"]).is_err());
    }

    #[test]
    fn nodes_subcommands() {
        let cli = parse(&["nodes"]).unwrap();
        assert!(matches!(cli.command, Command::Nodes(NodesArgs { action: None })));
        let cli = parse(&["nodes", "add", "--id", "4", "--addr", "127.0.0.14:7400", "--learner"]).unwrap();
        let Command::Nodes(NodesArgs { action: Some(NodesAction::Add(a)) }) = cli.command else {
            panic!("not nodes add")
        };
        assert_eq!((a.id, a.addr.as_str(), a.http_addr, a.learner), (4, "127.0.0.14:7400", None, true));
        let cli = parse(&["nodes", "remove", "--id", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Nodes(NodesArgs { action: Some(NodesAction::Remove(RemoveNodeArgs { id: 2 })) })
        ));
        assert!(parse(&["nodes", "add", "--id", "4"]).is_err(), "addr is required");
        assert!(parse(&["nodes", "add", "--id", "x", "--addr", "a:1"]).is_err());
        assert!(parse(&["nodes", "add", "--id", "4", "--addr", "a"]).is_err());
    }

    #[test]
    fn drain_takes_pool_and_backend() {
        let cli = parse(&["drain", "web", "127.0.0.1:9001"]).unwrap();
        let Command::Drain(d) = cli.command else { panic!("not drain") };
        assert_eq!(
            (d.target.pool.as_str(), d.target.backend.as_str(), d.wait),
            ("web", "127.0.0.1:9001", false)
        );
        let cli = parse(&["drain", "web", "127.0.0.1:9001", "--wait", "--timeout", "90s"]).unwrap();
        let Command::Drain(d) = cli.command else { panic!("not drain") };
        assert!(d.wait);
        assert_eq!(cli.timeout, Some(Duration::from_secs(90)));
        assert!(parse(&["undrain", "web"]).is_err());
        assert!(parse(&["undrain", "web", "127.0.0.1:9001", "--wait"]).is_err(), "undrain does not wait");
    }

    #[test]
    fn events_flags() {
        let cli = parse(&["events"]).unwrap();
        let Command::Events(e) = cli.command else { panic!("not events") };
        assert_eq!((e.since, e.limit, e.stale), (0, 0, false));
        let cli = parse(&["events", "--since", "12", "--limit", "5", "--stale", "--json"]).unwrap();
        let Command::Events(e) = cli.command else { panic!("not events") };
        assert_eq!((e.since, e.limit, e.stale, cli.json), (12, 5, true, true));
        assert!(!e.follow);
        let cli = parse(&["events", "--follow"]).unwrap();
        let Command::Events(e) = cli.command else { panic!("not events") };
        assert!(e.follow);
        assert!(parse(&["events", "--limit", "-1"]).is_err());
    }

    #[test]
    fn new_operator_commands() {
        let cli = parse(&["apply", "-f", "c.toml", "--dry-run"]).unwrap();
        let Command::Apply(a) = cli.command else { panic!("not apply") };
        assert!(a.dry_run);
        let cli = parse(&["config", "diff", "-f", "c.json", "--json"]).unwrap();
        let Command::Config(ConfigArgs { action: ConfigAction::Diff(d) }) = cli.command else {
            panic!("not config diff")
        };
        assert_eq!(ConfigFormat::resolve(d.format, &d.file), ConfigFormat::Json);
        assert!(parse(&["config", "diff"]).is_err(), "diff needs -f");
        let cli = parse(&["top", "--iterations", "3", "--interval", "250ms"]).unwrap();
        let Command::Top(t) = cli.command else { panic!("not top") };
        assert_eq!((t.iterations, t.interval, t.once), (Some(3), Duration::from_millis(250), false));
        assert!(parse(&["top", "--once", "--iterations", "2"]).is_err());
        assert!(parse(&["top", "--iterations", "0"]).is_err());
        assert!(parse(&["top", "--interval", "1ms"]).is_err());
        let cli = parse(&["completions", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completions(CompletionsArgs { shell: clap_complete::Shell::Zsh })
        ));
        assert!(parse(&["completions", "tcsh"]).is_err());
        let cli = parse(&["man", "--dir", "/tmp/m"]).unwrap();
        assert!(matches!(cli.command, Command::Man(ManArgs { dir: Some(_) })));
    }

    #[test]
    fn local_up_and_down() {
        let cli = parse(&["local", "up", "--nodes", "3", "--backends", "2", "--dir", "/tmp/x"]).unwrap();
        let Command::Local(LocalArgs { action: LocalAction::Up(u) }) = cli.command else { panic!("not up") };
        assert_eq!((u.nodes, u.backends, u.base_port), (3, 2, 9000));
        assert_eq!(u.wait, Duration::from_secs(30));
        assert!(parse(&["local", "up", "--nodes", "0", "--dir", "/tmp/x"]).is_err());
        assert!(parse(&["local", "up", "--nodes", "100", "--dir", "/tmp/x"]).is_err());
        assert!(parse(&["local", "up"]).is_err(), "dir is required");
        let cli = parse(&["local", "down", "--dir", "/tmp/x"]).unwrap();
        assert!(matches!(cli.command, Command::Local(LocalArgs { action: LocalAction::Down(_) })));
    }

    #[test]
    fn demo_backend_is_hidden_but_parses() {
        let help = Cli::command().render_help().to_string();
        assert!(!help.contains("demo-backend"));
        let cli = parse(&["demo-backend", "--name", "backend-1", "--listen", "127.0.0.1:9001"]).unwrap();
        let Command::DemoBackend(d) = cli.command else { panic!("not demo-backend") };
        assert_eq!(d.listen.port(), 9001);
        assert!(d.refuse_from.is_empty());
        let cli = parse(&[
            "demo-backend",
            "--name",
            "b",
            "--listen",
            "127.0.0.1:9001",
            "--refuse-from",
            "127.0.0.12",
            "--refuse-from",
            "127.0.0.13",
        ])
        .unwrap();
        let Command::DemoBackend(d) = cli.command else { panic!("not demo-backend") };
        assert_eq!(d.refuse_from.len(), 2);
        assert!(parse(&["demo-backend", "--name", "b", "--listen", "localhost"]).is_err());
    }
}
