//! `lbchaos run --target compose`: the cluster of `docker/compose-N.yml` (N = 3 or 5), started as the
//! compose project [`PROJECT`] and removed at the end (`--keep` leaves it running).
//!
//! - The image `lbfleet:dev` must exist (`docker/build-image.sh`); lbchaos does not build it.
//! - The host reaches the front's VIP through the `router` container: the run adds the route
//!   `VIP/32 via ROUTER_IP` (what `docker/front-route.sh add` does) and removes it at the end. Client
//!   HTTP traffic goes to the VIP only: the router's ECMP spreads the connections over the nodes that
//!   announce it, and a node that dies must leave the router's route before its share of new
//!   connections is lost.
//! - The register workload, the status sampling and the ring agreement speak to each node's admin
//!   gRPC at its container address (`172.28.0.1I:7400`) with the compose cluster's credentials
//!   (`docker/certs`, made by the one-shot service `certs`).
//! - After each node fault (kill, pause, SIGTERM) the run times how long the router keeps the node's
//!   next hop (polling `ip route` in the router container): node loss to front withdrawal.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lbfleet_cli::client::Admin;
use lbfleet_tests::compose::{Compose, VIP};
use lbfleet_tests::wait_until;

use crate::NodeProc;

/// The compose project of a run (its containers are `lbchaos_<service>_1`).
pub const PROJECT: &str = "lbchaos";
/// The `router` service's address: the host's next hop to the VIP.
pub const ROUTER_IP: &str = "172.28.0.2";
/// The image every service runs.
pub const IMAGE: &str = "lbfleet:dev";
/// How long the cluster may take to form and take the demo config after `up`.
const READY: Duration = Duration::from_secs(180);
/// The verdict's bound on node loss to front withdrawal (the goal is 1 s: BFD at 100 ms × 3 on a
/// pause, the BGP session closing on a kill; the bound leaves room for a loaded machine and includes
/// the `docker` call that injects the fault, about 0.3 s).
pub const FRONT_BOUND: Duration = Duration::from_secs(2);
/// How long a withdrawal is waited for before it counts as missing.
const WITHDRAW_WAIT: Duration = Duration::from_secs(10);

/// Address of compose node `i` (1-based).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 28, 0, 10 + i as u8)
}

/// A compose cluster of a run.
#[derive(Debug)]
pub struct Cluster {
    pub compose: Compose,
    /// `docker/certs` beside the compose file.
    pub certs: PathBuf,
    nodes: usize,
    routed: bool,
}

impl Cluster {
    /// Start `file` (relative to `root`, which holds `docker/`) as [`PROJECT`], route the VIP through
    /// the router, and wait until the cluster has a leader and the demo config.
    pub async fn start(root: &Path, file: &str, nodes: usize) -> Result<Cluster> {
        ensure!(
            Command::new("docker")
                .args(["image", "inspect", IMAGE])
                .output()
                .is_ok_and(|o| o.status.success()),
            "no image {IMAGE}: build it first with docker/build-image.sh"
        );
        let path = root.join(file);
        ensure!(path.is_file(), "no compose file {}", path.display());
        let certs =
            path.parent().map(|d| d.join("certs")).ok_or_else(|| anyhow!("{file} has no directory"))?;
        let compose = Compose::in_dir(root.to_path_buf(), file, PROJECT);
        tokio::task::block_in_place(|| compose.up()).context("docker-compose up")?;
        let mut cluster = Cluster { compose, certs, nodes, routed: false };
        let route = Command::new("ip")
            .args(["route", "replace", &format!("{VIP}/32"), "via", ROUTER_IP])
            .output()
            .context("run ip route (the compose target needs root)")?;
        ensure!(
            route.status.success(),
            "ip route replace {VIP}/32 via {ROUTER_IP}: {}",
            String::from_utf8_lossy(&route.stderr).trim()
        );
        cluster.routed = true;
        Ok(cluster)
    }

    /// Wait until a node leads and serves the demo config (applied by the one-shot `apply-config`).
    pub async fn ready(&self, nodes: &[NodeProc]) -> Result<()> {
        wait_until("the compose cluster to form and take the demo config", READY, || async {
            let mut last = anyhow!("no node answered");
            for n in nodes {
                match Admin::connect(&n.endpoint, Duration::from_secs(2), crate::creds()).await {
                    Ok(admin) => match admin.get_config(false).await {
                        Ok(r) if !r.config_json.is_empty() => return Ok(()),
                        Ok(_) => last = anyhow!("{}: no config yet", n.name),
                        Err(e) => last = anyhow!("{}: {e}", n.name),
                    },
                    Err(e) => last = anyhow!("{}: {e}", n.name),
                }
            }
            Err(last)
        })
        .await
    }

    fn proc(&self, name: String, service: String, endpoint: String) -> Result<NodeProc> {
        let pid = tokio::task::block_in_place(|| self.compose.pid(&service))?
            .ok_or_else(|| anyhow!("{service} is not running"))?;
        Ok(NodeProc {
            name,
            pid_file: PathBuf::new(),
            pid,
            args: Vec::new(),
            exe: PathBuf::new(),
            endpoint,
            service: Some(service),
        })
    }

    /// The node containers, `node-1` … (gRPC endpoints at their container addresses).
    pub fn nodes(&self) -> Result<Vec<NodeProc>> {
        (1..=self.nodes)
            .map(|i| self.proc(format!("node-{i}"), format!("lbnode-{i}"), format!("{}:7400", node_ip(i))))
            .collect()
    }

    /// The demo backend containers (`backend-K` on `172.28.0.10K:900K`, as in `docker/demo.toml`).
    pub fn backends(&self) -> Result<Vec<NodeProc>> {
        (1..=3)
            .map(|k| {
                let name = format!("backend-{k}");
                self.proc(name.clone(), name, format!("172.28.0.{}:{}", 100 + k, 9000 + k))
            })
            .collect()
    }

    /// `docker-compose down -v` (unless `keep`) and the VIP route removed.
    pub fn stop(&mut self, keep: bool) {
        if self.routed {
            let _ = Command::new("ip").args(["route", "del", &format!("{VIP}/32")]).output();
            self.routed = false;
        }
        if !keep {
            self.compose.down();
        }
    }
}

/// Poll the router until the node at `ip` is no longer a next hop of the VIP; the time since `since`
/// (`None`: not within [`WITHDRAW_WAIT`]).
pub async fn withdrawal(compose: Compose, ip: Ipv4Addr, since: Instant) -> Option<Duration> {
    let ip = IpAddr::V4(ip);
    let found = wait_until(&format!("{ip} withdrawn from the router"), WITHDRAW_WAIT, || async {
        let c = compose.clone();
        let hops = tokio::task::spawn_blocking(move || c.vip_nexthops(VIP)).await??;
        if hops.contains(&ip) {
            bail!("next hops {hops:?}");
        }
        Ok(())
    })
    .await;
    found.ok().map(|()| since.elapsed())
}
