//! The docker compose clusters of `docker/`: build the image, start and stop a project, run a command
//! in a container, kill, pause, unpause, stop and start a service's container, and read the router's
//! next hops for the front's VIP. Every docker call runs under a deadline ([`DOCKER_TIMEOUT`], or the
//! longer [`UP_TIMEOUT`] for `up` and the image build).
//!
//! Containers are named as docker-compose v1 names them: `<project>_<service>_1`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// The front's virtual IP in the compose files.
pub const VIP: &str = "172.28.1.1";
/// The compose service that routes the VIP.
pub const ROUTER: &str = "router";
/// Deadline of one docker call.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of `compose up` and of the image build.
pub const UP_TIMEOUT: Duration = Duration::from_secs(900);

/// Whether a docker engine and docker-compose answer here.
pub fn docker_available() -> bool {
    Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success())
        && Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success())
}

/// The workspace root (where `docker/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Run `program args` under `timeout` (coreutils), from `dir` (the directory compose files are
/// relative to).
fn run_in(dir: &Path, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", timeout.as_secs().max(1)))
        .arg(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("run {program} {}", args.join(" ")))
}

fn check(what: &str, out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build `lbfleet:dev` from this workspace's binaries of `profile` (`debug` or `release`).
pub fn build_image(profile: &str) -> Result<()> {
    let out = Command::new("timeout")
        .arg(format!("{}", UP_TIMEOUT.as_secs()))
        .arg("docker/build-image.sh")
        .current_dir(repo_root())
        .env("PROFILE", profile)
        .output()
        .context("run docker/build-image.sh")?;
    check("docker/build-image.sh", out).map(|_| ())
}

/// The profile of the running test binary's lbnode (so an image build compiles nothing twice).
pub fn profile() -> &'static str {
    if crate::bin("lbnode").to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    }
}

/// One compose project of one compose file.
#[derive(Debug, Clone)]
pub struct Compose {
    /// Relative to `root`, e.g. `docker/compose-3.yml`.
    pub file: String,
    pub project: String,
    /// The directory docker commands run in (the workspace root unless [`Compose::in_dir`]).
    pub root: PathBuf,
}

impl Compose {
    /// A project of `file`, relative to the workspace root.
    pub fn new(file: &str, project: &str) -> Compose {
        Compose::in_dir(repo_root(), file, project)
    }

    /// A project of `file`, relative to `root`.
    pub fn in_dir(root: PathBuf, file: &str, project: &str) -> Compose {
        Compose { file: file.to_string(), project: project.to_string(), root }
    }

    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        run_in(&self.root, program, args, timeout)
    }

    /// `docker-compose -f FILE -p PROJECT args…`.
    pub fn compose(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut all = vec!["-f", self.file.as_str(), "-p", self.project.as_str()];
        all.extend_from_slice(args);
        check(&format!("docker-compose {}", args.join(" ")), self.run("docker-compose", &all, timeout)?)
    }

    /// Start every service (after removing what a previous run left).
    pub fn up(&self) -> Result<()> {
        self.down();
        self.compose(&["up", "-d"], UP_TIMEOUT).map(|_| ())
    }

    /// Remove containers, network and volumes (errors ignored: used on teardown).
    pub fn down(&self) {
        let _ = self.compose(&["down", "-v", "--timeout", "5"], DOCKER_TIMEOUT);
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// `docker exec CONTAINER argv…`; its stdout.
    pub fn exec(&self, service: &str, argv: &[&str]) -> Result<String> {
        let container = self.container(service);
        let mut all = vec!["exec", container.as_str()];
        all.extend_from_slice(argv);
        check(
            &format!("docker exec {container} {}", argv.join(" ")),
            self.run("docker", &all, DOCKER_TIMEOUT)?,
        )
    }

    /// `docker VERB CONTAINER` (kill, pause, unpause, stop, start, …).
    pub fn docker(&self, verb: &str, service: &str) -> Result<()> {
        let container = self.container(service);
        check(&format!("docker {verb} {container}"), self.run("docker", &[verb, &container], DOCKER_TIMEOUT)?)
            .map(|_| ())
    }

    /// `docker kill --signal SIGNAL` (e.g. `TERM`): returns at once, unlike [`Compose::stop`].
    pub fn signal(&self, service: &str, signal: &str) -> Result<()> {
        let container = self.container(service);
        let out = self.run("docker", &["kill", "--signal", signal, &container], DOCKER_TIMEOUT)?;
        check(&format!("docker kill --signal {signal} {container}"), out).map(|_| ())
    }

    /// The host's pid of the container's main process, `None` when it is not running.
    pub fn pid(&self, service: &str) -> Result<Option<u32>> {
        let container = self.container(service);
        let out = self.run(
            "docker",
            &["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", &container],
            DOCKER_TIMEOUT,
        )?;
        let text = check(&format!("docker inspect {container}"), out)?;
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            ["true", pid] => {
                let pid: u32 = pid.parse().with_context(|| format!("pid {pid:?} of {container}"))?;
                Ok((pid > 0).then_some(pid))
            }
            ["false", _] => Ok(None),
            _ => bail!("docker inspect {container}: unexpected {text:?}"),
        }
    }

    pub fn kill(&self, service: &str) -> Result<()> {
        self.docker("kill", service)
    }

    pub fn pause(&self, service: &str) -> Result<()> {
        self.docker("pause", service)
    }

    pub fn unpause(&self, service: &str) -> Result<()> {
        self.docker("unpause", service)
    }

    /// `docker stop` (SIGTERM, then SIGKILL after the service's stop grace period).
    pub fn stop(&self, service: &str) -> Result<()> {
        self.docker("stop", service)
    }

    pub fn start(&self, service: &str) -> Result<()> {
        self.docker("start", service)
    }

    /// The last `lines` lines of a service's log (stdout and stderr).
    pub fn logs(&self, service: &str, lines: usize) -> String {
        let container = self.container(service);
        match self.run("docker", &["logs", "--tail", &lines.to_string(), &container], DOCKER_TIMEOUT) {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(no logs: {e:#})"),
        }
    }

    /// The next hops of the router's kernel route to `vip` (empty when it has none).
    pub fn vip_nexthops(&self, vip: &str) -> Result<Vec<IpAddr>> {
        let text = self.exec(ROUTER, &["ip", "-4", "route", "show", &format!("{vip}/32")])?;
        parse_nexthops(&text)
    }
}

/// The gateways of an `ip route show PREFIX` output: one `via` on a single-path route, one per
/// `nexthop via …` line on a multipath route; sorted.
pub fn parse_nexthops(text: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "via" {
            let Some(addr) = words.next() else { bail!("\"via\" without an address in {text:?}") };
            out.push(addr.parse().with_context(|| format!("next hop {addr:?} in {text:?}"))?);
        }
    }
    out.sort();
    Ok(out)
}

/// Tears a project down when dropped (on a test's failure too).
#[derive(Debug)]
pub struct Down(pub Compose);

impl Drop for Down {
    fn drop(&mut self) {
        self.0.down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_and_single_path_routes_give_their_gateways() {
        let multi = "172.28.1.1 proto bird metric 32 \n\tnexthop via 172.28.0.12 dev eth0 weight 1 \n\tnexthop via 172.28.0.11 dev eth0 weight 1 \n";
        let got = parse_nexthops(multi).unwrap();
        assert_eq!(got, vec!["172.28.0.11".parse::<IpAddr>().unwrap(), "172.28.0.12".parse().unwrap()]);
        let single = "172.28.1.1 via 172.28.0.13 dev eth0 proto bird metric 32 \n";
        assert_eq!(parse_nexthops(single).unwrap(), vec!["172.28.0.13".parse::<IpAddr>().unwrap()]);
        assert!(parse_nexthops("").unwrap().is_empty());
        assert!(parse_nexthops("x via nonsense").is_err());
    }
}
