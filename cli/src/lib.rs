//! lbfleet-cli: `lbctl`, the operator CLI of an lbfleet cluster, its local-cluster launcher and the demo
//! HTTP backend.
//!
//! Layout:
//! - [`args`]: the command-line grammar (clap), pure.
//! - [`ca`]: `lbctl ca init|issue`: the cluster CA, node certificates and operator tokens (rcgen).
//! - [`client`]: one connection to an lbnode's Admin gRPC service, every call bounded by `--timeout`.
//! - [`error`]: classification of failures into messages and exit codes (unreachable 2, unavailable 3, ...).
//! - [`output`]: tables for people and the stable JSON shapes for scripts, pure.
//! - [`commands`]: the admin commands (`status`, `apply` (with `--dry-run`), `config diff`, `get config`,
//!   `backends`, `nodes`, `drain` (with `--wait`: fleet-wide in-flight count until zero), `undrain`,
//!   `watch`, `events` (with `--follow`)), `completions` and `man`.
//! - [`diff`]: the structural difference of two configs (`config diff`, `apply --dry-run`), pure.
//! - [`top`]: `top`, per-backend rates from every node's `/metrics`.
//! - [`local`]: `local up` / `local down`, processes on 127.0.0.1N with pid files and logs in a directory.
//! - [`demo_backend`]: the HTTP/1.1 + h2c demo backend (`lbctl demo-backend`).
//! - [`probe`]: small HTTP/TCP readiness probes.
//!
//! Data enters from the command line and config files, leaves as Admin gRPC requests to one endpoint;
//! answers leave on standard output, errors on standard error (and as JSON on standard output with `--json`).

pub mod args;
pub mod ca;
pub mod client;
pub mod commands;
pub mod demo_backend;
pub mod diff;
pub mod error;
pub mod local;
pub mod output;
pub mod probe;
pub mod top;

use args::{CaAction, Cli, Command, ConfigAction, GetWhat, LocalAction};
use error::CliError;

/// Run one parsed command line to completion; the exit code of a success (0, or `config diff`'s 10).
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    let timeout = cli.timeout.unwrap_or(args::DEFAULT_TIMEOUT);
    let g = commands::Global {
        endpoint: cli.endpoint.clone(),
        json: cli.json,
        timeout,
        credentials: client::Credentials {
            ca: cli.ca.clone(),
            token: cli.token.clone(),
            token_file: cli.token_file.clone(),
        },
    };
    let done = match &cli.command {
        Command::Config(c) => match &c.action {
            ConfigAction::Diff(d) => return commands::config_diff(&g, d).await,
            ConfigAction::Schema => {
                commands::print(&lbfleet_api::config::schema::cluster_config_schema_json())
            }
        },
        Command::Top(t) => top::run(&g, t).await,
        Command::Completions(c) => commands::completions(&g, c.shell),
        Command::Man(m) => commands::man(&g, m.dir.as_deref()),
        Command::Status => commands::status(&g).await,
        Command::Apply(a) => commands::apply(&g, a).await,
        Command::Get(get) => match &get.what {
            GetWhat::Config(a) => commands::get_config(&g, a).await,
        },
        Command::Backends(s) => commands::backends(&g, s.stale).await,
        Command::Nodes(n) => commands::nodes(&g, n.action.as_ref()).await,
        Command::Drain(d) if d.wait => {
            let wait = cli.timeout.unwrap_or(args::DEFAULT_DRAIN_WAIT);
            let g = commands::Global { timeout: wait.min(args::DEFAULT_TIMEOUT), ..g };
            commands::drain_wait(&g, &d.target, wait).await
        }
        Command::Drain(d) => commands::drain(&g, &d.target, true).await,
        Command::Undrain(d) => commands::drain(&g, d, false).await,
        Command::DrainNode => commands::drain_node(&g, true).await,
        Command::UndrainNode => commands::drain_node(&g, false).await,
        Command::Watch => commands::watch(&g).await,
        Command::Events(e) => commands::events(&g, e).await,
        Command::Local(l) => match &l.action {
            LocalAction::Up(u) => local::up(u, cli.json).await,
            LocalAction::Down(d) => local::down(d, cli.json).await,
        },
        Command::Ca(c) => match &c.action {
            CaAction::Init(i) => {
                let dir = ca::CaDir::new(&i.dir);
                if i.if_missing {
                    dir.ensure(i.nodes, &i.sans).map_err(CliError::Local)?;
                } else {
                    dir.init(i.nodes, &i.sans).map_err(CliError::Local)?;
                }
                commands::print(&format!(
                    "the cluster CA, {} node certificates and tokens in {}\n\
                     nodes: --ca-file {} --cert-file {} --key-file {} --tokens-file {}\n\
                     operators: LBCTL_CA={} LBCTL_TOKEN=$(cat {})\n",
                    i.nodes,
                    i.dir.display(),
                    dir.ca_cert().display(),
                    dir.dir.join("node-<id>.pem").display(),
                    dir.dir.join("node-<id>.key").display(),
                    dir.tokens().display(),
                    dir.ca_cert().display(),
                    dir.token(lbfleet_api::auth::Role::Admin).display(),
                ))
            }
            CaAction::Issue(i) => {
                let dir = ca::CaDir::new(&i.dir);
                dir.issue(i.id, &i.sans).map_err(CliError::Local)?;
                commands::print(&format!(
                    "node {}: {} and {}\n",
                    i.id,
                    dir.node_cert(i.id).display(),
                    dir.node_key(i.id).display()
                ))
            }
        },
        Command::DemoBackend(d) => {
            if d.udp {
                demo_backend::udp_echo(d.name.clone(), d.listen).await.map_err(CliError::Local)?;
            }
            demo_backend::serve_refusing(d.name.clone(), d.listen, d.refuse_from.clone())
                .await
                .map_err(CliError::Local)
        }
    };
    done.map(|()| error::EXIT_OK)
}
