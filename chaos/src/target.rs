//! Where a run's faults land: lbnode processes on this machine (`--target local`, signals to pids and
//! iptables rules on loopback) or the containers of a docker compose cluster (`--target compose`,
//! `docker kill|pause|unpause|start` and iptables rules inside each node container's network
//! namespace, entered from the host with `nsenter`, since the image has no shell and no iptables).
//!
//! A compose node or backend is a [`NodeProc`] too: `pid` is the host's pid of its container's main
//! process (the lbnode or `lbctl demo-backend` itself), read again after every start, so liveness
//! checks stay the same on both targets.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::compose::Compose;
use lbfleet_tests::process::{alive, signal};
use lbfleet_tests::wait_until;

use crate::{restart, NodeProc};

/// The iptables chain the partitions use (created and removed by the run).
pub const CHAIN: &str = "LBCHAOS";
/// How long a stopped (SIGTERM) or killed process may take to be gone before it is started again.
const GONE: Duration = Duration::from_secs(20);

/// How faults reach the nodes and the backends.
#[derive(Debug, Clone)]
pub enum Driver {
    /// Processes started by `lbctl local up --dir DIR` (restarted from their own command line).
    Local { dir: PathBuf },
    /// The containers of a compose project.
    Compose(Compose),
}

impl Driver {
    fn service(n: &NodeProc) -> Result<&str> {
        n.service.as_deref().ok_or_else(|| anyhow!("{} is not a compose service", n.name))
    }

    /// `docker VERB` on `n`'s container, off the async workers (a docker call takes ~100 ms).
    fn docker(c: &Compose, verb: &str, n: &NodeProc) -> Result<()> {
        let service = Self::service(n)?;
        tokio::task::block_in_place(|| match verb {
            "TERM" => c.signal(service, "TERM"),
            _ => c.docker(verb, service),
        })
    }

    /// Signal `sig` to a local process, or `docker VERB` on the container.
    fn act(&self, n: &NodeProc, sig: libc::c_int, verb: &str) -> Result<()> {
        match self {
            Driver::Local { .. } => {
                signal(n.pid, sig);
                Ok(())
            }
            Driver::Compose(c) => Self::docker(c, verb, n),
        }
    }

    /// SIGKILL (`docker kill`).
    pub fn kill(&self, n: &NodeProc) -> Result<()> {
        self.act(n, libc::SIGKILL, "kill")
    }

    /// Frozen: SIGSTOP (`docker pause`, the cgroup freezer).
    pub fn pause(&self, n: &NodeProc) -> Result<()> {
        self.act(n, libc::SIGSTOP, "pause")
    }

    pub fn resume(&self, n: &NodeProc) -> Result<()> {
        self.act(n, libc::SIGCONT, "unpause")
    }

    /// SIGTERM: the node leaves gracefully (withdraws from the front, drains) and exits.
    pub fn terminate(&self, n: &NodeProc) -> Result<()> {
        self.act(n, libc::SIGTERM, "TERM")
    }

    /// Start `n` again once its process is gone (killed at once after [`GONE`]); its new pid in `n`.
    pub async fn start(&self, n: &mut NodeProc) -> Result<()> {
        let pid = n.pid;
        let gone = wait_until("the stopped process to exit", GONE, || async {
            ensure!(!alive(pid), "pid {pid} still alive");
            Ok(())
        })
        .await;
        match self {
            Driver::Local { dir } => {
                if gone.is_err() {
                    signal(pid, libc::SIGKILL);
                }
                restart(dir, n)
            }
            Driver::Compose(c) => {
                if gone.is_err() {
                    Self::docker(c, "kill", n)?;
                }
                Self::docker(c, "start", n)?;
                let service = Self::service(n)?.to_string();
                n.pid = tokio::task::block_in_place(|| c.pid(&service))?
                    .ok_or_else(|| anyhow!("{} is not running after docker start", n.name))?;
                Ok(())
            }
        }
    }
}

/// DROP rules between node addresses, in a chain of their own, removed on drop: in the host's INPUT
/// chain (local nodes share loopback) or in each destination container's own INPUT chain.
#[derive(Debug)]
pub enum Firewall {
    Host,
    /// Each node container's address and service.
    Containers(Compose, Vec<(Ipv4Addr, String)>),
}

fn iptables(netns_of: Option<u32>, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = match netns_of {
        None => Command::new("iptables"),
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "iptables"]);
            c
        }
    };
    cmd.args(args).output().context("run iptables (partitions need it, as root; nsenter for compose)")
}

fn ok(what: &str, out: std::process::Output) -> Result<()> {
    ensure!(out.status.success(), "iptables {what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The chain, empty, jumped to first from INPUT (in the host, or in the network namespace of `pid`).
fn install_chain(netns_of: Option<u32>) -> Result<()> {
    let _ = iptables(netns_of, &["-N", CHAIN]);
    ok(&format!("-F {CHAIN}"), iptables(netns_of, &["-F", CHAIN])?)?;
    if !iptables(netns_of, &["-C", "INPUT", "-j", CHAIN])?.status.success() {
        ok("-I INPUT", iptables(netns_of, &["-I", "INPUT", "-j", CHAIN])?)?;
    }
    Ok(())
}

fn remove_chain(netns_of: Option<u32>) {
    let _ = iptables(netns_of, &["-F", CHAIN]);
    let _ = iptables(netns_of, &["-D", "INPUT", "-j", CHAIN]);
    let _ = iptables(netns_of, &["-X", CHAIN]);
}

impl Firewall {
    pub fn host() -> Result<Firewall> {
        install_chain(None)?;
        Ok(Firewall::Host)
    }

    pub fn containers(compose: Compose, nodes: Vec<(Ipv4Addr, String)>) -> Result<Firewall> {
        ensure!(
            Command::new("nsenter").arg("--version").output().is_ok_and(|o| o.status.success()),
            "partitions on the compose target need nsenter (util-linux) on the host"
        );
        Ok(Firewall::Containers(compose, nodes))
    }

    /// The host pid whose network namespace is the container of the node at `ip` (`None`: not running).
    fn netns(compose: &Compose, service: &str) -> Result<Option<u32>> {
        tokio::task::block_in_place(|| compose.pid(service))
    }

    /// Drop packets from `from` to `to`.
    pub fn cut(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<()> {
        let (f, t) = (from.to_string(), to.to_string());
        match self {
            Firewall::Host => ok(
                &format!("cut {f} -> {t}"),
                iptables(None, &["-A", CHAIN, "-s", &f, "-d", &t, "-j", "DROP"])?,
            ),
            Firewall::Containers(compose, nodes) => {
                let (_, service) = nodes
                    .iter()
                    .find(|(ip, _)| *ip == to)
                    .ok_or_else(|| anyhow!("no node container has the address {to}"))?;
                // A node that is not running has nothing to cut (one fault at a time: not expected).
                let Some(pid) = Self::netns(compose, service)? else { return Ok(()) };
                tokio::task::block_in_place(|| {
                    install_chain_once(pid)?;
                    ok(
                        &format!("cut {f} -> {t} in {service}"),
                        iptables(Some(pid), &["-A", CHAIN, "-s", &f, "-j", "DROP"])?,
                    )
                })
            }
        }
    }

    /// Remove every rule.
    pub fn heal(&self) -> Result<()> {
        match self {
            Firewall::Host => ok(&format!("-F {CHAIN}"), iptables(None, &["-F", CHAIN])?),
            Firewall::Containers(compose, nodes) => {
                for (_, service) in nodes {
                    if let Some(pid) = Self::netns(compose, service)? {
                        // No chain yet in that namespace: nothing to flush.
                        let _ = tokio::task::block_in_place(|| iptables(Some(pid), &["-F", CHAIN]));
                    }
                }
                Ok(())
            }
        }
    }
}

/// [`install_chain`] without flushing a chain that is already jumped to (rules of the fault in
/// progress stay).
fn install_chain_once(pid: u32) -> Result<()> {
    if iptables(Some(pid), &["-C", "INPUT", "-j", CHAIN])?.status.success() {
        return Ok(());
    }
    install_chain(Some(pid))
}

impl Drop for Firewall {
    fn drop(&mut self) {
        match self {
            Firewall::Host => remove_chain(None),
            Firewall::Containers(compose, nodes) => {
                for (_, service) in nodes.iter() {
                    if let Ok(Some(pid)) = compose.pid(service) {
                        remove_chain(Some(pid));
                    }
                }
            }
        }
    }
}
