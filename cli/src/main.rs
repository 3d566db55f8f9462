//! `lbctl`: parses the command line, runs the command on a tokio runtime, prints any error and exits with
//! its code (see `lbctl --help`: 0 ok, 1 refused/failed, 2 unreachable, 3 unavailable, 4 credentials, 64 usage).
//! Everything else lives in the `lbfleet_cli` library.

use clap::Parser;
use lbfleet_cli::args::{Cli, Command};
use lbfleet_cli::error::{CliError, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use lbfleet_cli::output;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    // Only the demo backend logs; the other commands speak through their output.
    if matches!(cli.command, Command::DemoBackend(_)) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbctl: cannot start the async runtime: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let json = cli.json;
    let result = runtime.block_on(lbfleet_cli::run(cli));
    // Do not wait for background tasks (a lingering connection) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => std::process::exit(report(&e, json)),
    }
}

fn report(e: &CliError, json: bool) -> i32 {
    for line in e.render() {
        eprintln!("{line}");
    }
    if json {
        let text = output::to_json_pretty(&serde_json::json!({ "error": e.to_json() }));
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    }
    e.exit_code()
}
