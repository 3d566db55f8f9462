//! lbnode processes: one [`NodeProc`] per node, a [`Cluster`] of them sharing one temp dir.
//!
//! Node `id` listens on `127.0.<net>.<host_base + id>` (host base 10 unless a test picks another), ports
//! 7400 (gRPC) and 7401 (admin HTTP). Every process is killed on drop, also on panic, and a panicking test
//! prints the tail of every node's log.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::admin;
use crate::bin::bin;
use crate::process;
use crate::wait::wait_until;

/// One lbnode process (or a stopped one that can be restarted from its data dir).
pub struct NodeProc {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// `RUST_LOG` of the process (`LBF_TEST_LOG` overrides it).
    log_filter: String,
    /// `RLIMIT_NOFILE` (soft, hard) the process starts with, when set.
    nofile: Option<(u64, u64)>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn grpc_addr(&self) -> String {
        format!("{}:7400", self.ip)
    }

    pub fn http_addr(&self) -> String {
        format!("{}:7401", self.ip)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start the process (from its next [`NodeProc::start`] on) with this open-file limit.
    pub fn set_nofile_limit(&mut self, soft: u64, hard: u64) {
        self.nofile = Some((soft, hard));
    }

    /// Start (or restart) the process with the same arguments and data dir.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("node {} is already running", self.id);
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(bin("lbnode"));
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            // SAFETY: setrlimit is async-signal-safe and touches only the struct copied in here.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", std::env::var("LBF_TEST_LOG").unwrap_or_else(|_| self.log_filter.clone()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn lbnode {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after `timeout`, which is an error); returns the exit
    /// code (`None` when the node was not started or died of a signal).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else { return Ok(None) };
        process::signal(c.id(), libc::SIGTERM);
        let status = process::wait_exit(&mut c, timeout)
            .await
            .with_context(|| format!("node {} after SIGTERM", self.id))?;
        Ok(status.code())
    }

    /// Wait until the process exits on its own and return its exit code (`None` when a signal ended
    /// it); after `timeout` it is killed and the wait fails.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else { bail!("node {} was not started", self.id) };
        let status =
            process::wait_exit(&mut c, timeout).await.with_context(|| format!("node {}", self.id))?;
        Ok(status.code())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn client(&self) -> Result<admin::Admin> {
        admin::connect(&self.grpc_addr()).await
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How to start a [`Cluster`]; from [`Cluster::builder`].
pub struct ClusterBuilder {
    net: u8,
    host_base: u8,
    nodes: u64,
    founders: Option<u64>,
    args: Vec<String>,
    log_filter: String,
}

impl ClusterBuilder {
    /// How many nodes to start (ids `1..=n`); 3 unless set.
    pub fn nodes(mut self, n: u64) -> Self {
        self.nodes = n;
        self
    }

    /// Only nodes `1..=n` bootstrap the cluster (`--peers` names them); the others start without
    /// `--peers` and wait to be added. All nodes are founders unless set.
    pub fn founders(mut self, n: u64) -> Self {
        self.founders = Some(n);
        self
    }

    /// Node `id` gets IP `127.0.<net>.<base + id>`; 10 unless set.
    pub fn host_base(mut self, base: u8) -> Self {
        self.host_base = base;
        self
    }

    /// Flags for every node.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// The nodes' `RUST_LOG`; `info` unless set (the environment's `LBF_TEST_LOG` wins over both).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_string();
        self
    }

    /// Create the data dirs and start every node.
    pub fn start(self) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("lbfleet-e2e-").tempdir()?;
        let mut c = Cluster {
            nodes: Vec::new(),
            dir,
            net: self.net,
            extra_args: self.args,
            host_base: self.host_base,
            log_filter: self.log_filter,
        };
        let founders = self.founders.unwrap_or(self.nodes);
        let peers: Vec<String> = (1..=founders).map(|i| format!("{i}={}:7400", c.ip_of(i))).collect();
        let peers = peers.join(",");
        for id in 1..=self.nodes {
            let node = c.make_node(id, (id <= founders).then_some(peers.as_str()));
            c.nodes.push(node);
        }
        for node in &mut c.nodes {
            node.start()?;
        }
        Ok(c)
    }
}

/// A set of lbnode processes forming (or joining) one cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub dir: tempfile::TempDir,
    pub net: u8,
    pub extra_args: Vec<String>,
    host_base: u8,
    log_filter: String,
}

impl Cluster {
    /// Node `id`'s IP in this test's network with the default host base: 127.0.<net>.1<id> (for id < 10).
    pub fn ip(net: u8, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, net, 10 + id as u8)
    }

    /// Start `n` nodes that bootstrap one cluster. `extra` flags go to every node.
    pub fn start(net: u8, n: u64, extra: &[&str]) -> Result<Cluster> {
        Self::builder(net).nodes(n).args(extra).start()
    }

    /// A cluster on `127.0.<net>.*` to configure before [`ClusterBuilder::start`].
    pub fn builder(net: u8) -> ClusterBuilder {
        ClusterBuilder {
            net,
            host_base: 10,
            nodes: 3,
            founders: None,
            args: Vec::new(),
            log_filter: "info".into(),
        }
    }

    /// Node `id`'s IP in this cluster.
    pub fn ip_of(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.net, self.host_base + id as u8)
    }

    /// Node `id`'s gRPC address (whether or not it runs).
    pub fn grpc_addr(&self, id: u64) -> String {
        format!("{}:7400", self.ip_of(id))
    }

    /// Node `id`'s admin HTTP address.
    pub fn http_addr(&self, id: u64) -> String {
        format!("{}:7401", self.ip_of(id))
    }

    /// A node process that is not started yet; `peers` None makes it wait to be added.
    pub fn make_node(&self, id: u64, peers: Option<&str>) -> NodeProc {
        let ip = self.ip_of(id);
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--bind".to_string(),
            ip.to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
        ];
        if let Some(p) = peers {
            args.push("--peers".into());
            args.push(p.to_string());
        }
        args.extend(crate::creds::creds().node_args(id));
        args.extend(self.extra_args.iter().cloned());
        NodeProc {
            id,
            ip,
            data_dir,
            log: self.dir.path().join(format!("node-{id}.log")),
            args,
            log_filter: self.log_filter.clone(),
            nofile: None,
            child: None,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id in cluster")
    }

    /// Ids of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<u64> {
        self.nodes.iter_mut().filter_map(|n| n.is_running().then_some(n.id)).collect()
    }

    /// Wait until every running node reports the same leader, that leader is itself running and says
    /// so, and return its id. (Right after a SIGKILL the survivors still name the dead leader.) On
    /// failure the error carries the tail of every node's log.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64> {
        let running = self.running();
        self.wait_for_leader_among(&running, timeout).await
    }

    /// Wait until every node of `ids` answers and names the same leader, which is one of `ids` and says
    /// it leads; return its id. On failure the error carries the tail of every node's log.
    pub async fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> Result<u64> {
        let members: Vec<(u64, String)> = ids.iter().map(|id| (*id, self.grpc_addr(*id))).collect();
        let agreed = wait_until(&format!("nodes {ids:?} to agree on a leader among them"), timeout, || {
            let members = members.clone();
            async move {
                let mut leader = None;
                for (_, addr) in &members {
                    let st = admin::local_status(addr).await?;
                    let l = st.leader.ok_or_else(|| anyhow!("{addr} knows no leader"))?;
                    if leader.is_some_and(|x| x != l) {
                        bail!("nodes disagree on the leader ({leader:?} vs {l})");
                    }
                    leader = Some(l);
                }
                let l = leader.ok_or_else(|| anyhow!("no node to ask"))?;
                let (_, addr) = members
                    .iter()
                    .find(|(id, _)| *id == l)
                    .ok_or_else(|| anyhow!("the agreed leader {l} is not one of {ids:?}"))?;
                let st = admin::local_status(addr).await?;
                ensure!(st.role == "leader", "node {l} is named leader but is {}", st.role);
                Ok(l)
            }
        })
        .await;
        agreed.map_err(|e| anyhow!("{e:#}\n{}", self.logs()))
    }

    /// Logs of every node, for failure messages.
    pub fn logs(&self) -> String {
        self.logs_tail(40)
    }

    fn logs_tail(&self, lines: usize) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}\n", n.id, n.log_tail(lines))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(60));
        }
    }
}

/// Is `ip` usable on this machine (the whole 127/8 is loopback on Linux)?
pub fn loopback_ok(ip: IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}
