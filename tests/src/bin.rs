//! The workspace binaries: found in the target dir of the running test, built there if needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;

use crate::process::output_within;

/// Path of a workspace binary, building the binaries once per test process if needed.
///
/// `cargo test` only builds the binaries of a package for that package's own integration tests, so
/// this crate asks cargo (the same one running the tests, same profile and target dir) to build them.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current test executable");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target profile dir").to_path_buf();
        // scripts/test.sh builds every binary before the tests start; a build here would only redo
        // it with the test run's feature set, competing for CPU with timing-sensitive tests.
        if std::env::var_os("LBFLEET_TEST_BINS_BUILT").is_some() {
            return profile_dir;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .status()
            .expect("run cargo build for the workspace binaries");
        assert!(status.success(), "cargo build of the workspace binaries failed");
        profile_dir
    });
    let p = dir.join(name);
    assert!(p.exists(), "binary {} not found after build", p.display());
    p
}

/// Run `lbctl args...` to completion within `deadline`, with the test clusters' CA and admin token in
/// `LBCTL_CA` / `LBCTL_TOKEN` (flags in `args` override them). `LBCTL_ENDPOINT` is cleared so that
/// defaults are predictable.
pub async fn lbctl(args: &[&str], deadline: Duration) -> Result<Output> {
    let creds = crate::creds::creds();
    let mut cmd = Command::new(bin("lbctl"));
    cmd.args(args)
        .env_remove("LBCTL_ENDPOINT")
        .env("LBCTL_CA", creds.ca())
        .env("LBCTL_TOKEN", &creds.admin_token);
    output_within(&mut cmd, deadline).await
}

/// [`lbctl`] without any credentials in the environment (only what `args` gives).
pub async fn lbctl_bare(args: &[&str], deadline: Duration) -> Result<Output> {
    let mut cmd = Command::new(bin("lbctl"));
    cmd.args(args).env_remove("LBCTL_ENDPOINT").env_remove("LBCTL_CA").env_remove("LBCTL_TOKEN");
    output_within(&mut cmd, deadline).await
}

/// [`lbctl`] on a terminal: run through `script(1)`, which gives it a pseudo-terminal as standard input,
/// output and error; what it showed there is the returned stdout (stderr is empty).
pub async fn lbctl_on_terminal(args: &[&str], deadline: Duration) -> Result<Output> {
    let creds = crate::creds::creds();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(bin("lbctl").display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    let line = line.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("LBCTL_ENDPOINT")
        .env("LBCTL_CA", creds.ca())
        .env("LBCTL_TOKEN", &creds.admin_token);
    output_within(&mut cmd, deadline).await
}
