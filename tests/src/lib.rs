//! lbfleet-tests: helpers for end-to-end tests that start real lbnode processes on loopback.
//!
//! Layout:
//! - [`bin`]: finds (and if needed builds) the workspace binaries `lbnode` and `lbctl`.
//! - [`Cluster`] / [`NodeProc`]: real processes with their own data dirs and loopback IPs; killed on drop.
//! - [`admin`]: a thin gRPC client for the Admin service, with deadlines.
//! - [`wait_until`]: polling with a deadline (tests never sleep and hope).
//!
//! Each test picks its own third octet (`127.0.<net>.1N`) so test binaries running at the same time
//! never share an address; ports are the contract's defaults (7400 gRPC, 7401 admin HTTP).

use std::fs;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
pub use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use tonic::transport::Channel;

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
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        // Exactly the command scripts/test.sh runs first, so the features match and this is a no-op there.
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

/// Poll `f` until it returns `Some`, or fail after `timeout` with `what` and the last error.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = anyhow!("never tried");
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last_err = e,
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: last error: {last_err:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One lbnode process (or a stopped one that can be restarted from its data dir).
pub struct NodeProc {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
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

    /// Start (or restart) the process with the same arguments and data dir.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("node {} is already running", self.id);
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin("lbnode"))
            .args(&self.args)
            .env("RUST_LOG", std::env::var("LBF_TEST_LOG").unwrap_or_else(|_| "info".into()))
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

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut c) = self.child.take() else { return Ok(None) };
        // SAFETY: sending a signal to our own child process id.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("node {} did not exit within {timeout:?} after SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn client(&self) -> Result<AdminClient<Channel>> {
        admin::connect(&self.grpc_addr()).await
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A set of lbnode processes forming (or joining) one cluster.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub dir: tempfile::TempDir,
    pub net: u8,
    pub extra_args: Vec<String>,
}

impl Cluster {
    /// Node `id`'s IP in this test's network: 127.0.<net>.1<id> (for id < 10).
    pub fn ip(net: u8, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, net, 10 + id as u8)
    }

    /// Start `n` nodes that bootstrap one cluster. `extra` flags go to every node.
    pub fn start(net: u8, n: u64, extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("lbfleet-e2e-").tempdir()?;
        let peers: Vec<String> = (1..=n).map(|i| format!("{i}={}:7400", Self::ip(net, i))).collect();
        let mut c = Cluster {
            nodes: Vec::new(),
            dir,
            net,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            let node = c.make_node(id, Some(&peers.join(",")));
            c.nodes.push(node);
        }
        for node in &mut c.nodes {
            node.start()?;
        }
        Ok(c)
    }

    /// A node process that is not started yet; `peers` None makes it wait to be added.
    pub fn make_node(&self, id: u64, peers: Option<&str>) -> NodeProc {
        let ip = Self::ip(self.net, id);
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
        args.extend(self.extra_args.iter().cloned());
        NodeProc { id, ip, data_dir, log: self.dir.path().join(format!("node-{id}.log")), args, child: None }
    }

    pub fn node(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id in cluster")
    }

    /// Wait until every running node reports the same leader, that leader is itself running and says
    /// so, and return its id. (Right after a SIGKILL the survivors still name the dead leader.) On
    /// failure the error carries the tail of every node's log.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64> {
        match self.agreed_leader(timeout).await {
            Ok(l) => Ok(l),
            Err(e) => Err(anyhow!("{e:#}\n{}", self.logs())),
        }
    }

    async fn agreed_leader(&mut self, timeout: Duration) -> Result<u64> {
        let running: Vec<(u64, String)> = self
            .nodes
            .iter_mut()
            .filter_map(|n| if n.is_running() { Some((n.id, n.grpc_addr())) } else { None })
            .collect();
        wait_until("all running nodes to agree on a running leader", timeout, || {
            let running = running.clone();
            async move {
                let mut leader = None;
                for (_, addr) in &running {
                    let st = admin::local_status(addr).await?;
                    let l = st.leader.ok_or_else(|| anyhow!("{addr} knows no leader"))?;
                    if leader.is_some_and(|x| x != l) {
                        bail!("nodes disagree on the leader ({leader:?} vs {l})");
                    }
                    leader = Some(l);
                }
                let l = leader.ok_or_else(|| anyhow!("no running node"))?;
                let (_, addr) = running
                    .iter()
                    .find(|(id, _)| *id == l)
                    .ok_or_else(|| anyhow!("the agreed leader {l} is not running"))?;
                let st = admin::local_status(addr).await?;
                ensure!(st.role == "leader", "node {l} is named leader but is {}", st.role);
                Ok(l)
            }
        })
        .await
    }

    /// Logs of every node, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}\n", n.id, n.log_tail(40))).collect()
    }
}

/// Admin gRPC helpers with deadlines.
pub mod admin {
    use super::*;

    pub async fn connect(addr: &str) -> Result<AdminClient<Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .with_context(|| format!("connect to {addr}"))?;
        Ok(AdminClient::new(ch))
    }

    pub async fn local_status(addr: &str) -> Result<pb::NodeStatus> {
        let mut c = connect(addr).await?;
        Ok(c.local_status(pb::LocalStatusRequest {}).await?.into_inner())
    }

    pub async fn status(addr: &str) -> Result<pb::StatusResponse> {
        let mut c = connect(addr).await?;
        Ok(c.status(pb::StatusRequest {}).await?.into_inner())
    }

    pub async fn apply_toml(addr: &str, toml: &str) -> Result<pb::ApplyConfigResponse, tonic::Status> {
        let mut c = connect(addr).await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        c.apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: toml.into() })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get_config(addr: &str, stale: bool) -> Result<pb::GetConfigResponse, tonic::Status> {
        let mut c = connect(addr).await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        c.get_config(pb::GetConfigRequest { stale }).await.map(|r| r.into_inner())
    }
}

/// A small valid config whose single backend port encodes `marker`, so a test can tell configs apart.
pub fn marked_config(marker: u32) -> String {
    let port = 10_000 + (marker % 50_000);
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:{port}\"\n\
         [pool.health]\nkind = \"none\"\n\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18080\npool = \"web\"\n"
    )
}

/// The marker a config produced by [`marked_config`] carries.
pub fn marker_of(config_json: &str) -> Result<u32> {
    let v: serde_json::Value = serde_json::from_str(config_json).context("config JSON")?;
    let addr =
        v["pool"][0]["backend"][0]["addr"].as_str().ok_or_else(|| anyhow!("no backend addr in {v}"))?;
    let port: u32 = addr.rsplit(':').next().unwrap_or("").parse()?;
    Ok(port - 10_000)
}

/// Is `ip` usable on this machine (the whole 127/8 is loopback on Linux)?
pub fn loopback_ok(ip: IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// A demo HTTP backend process (`lbctl demo-backend`): names itself in the body and in `x-backend`.
pub struct BackendProc {
    pub name: String,
    pub addr: String,
    child: Option<Child>,
}

impl BackendProc {
    /// Start `lbctl demo-backend --name NAME --listen ADDR` and wait until it answers `/health`.
    pub async fn start(name: &str, addr: &str) -> Result<BackendProc> {
        Self::start_with(name, addr, &[]).await
    }

    /// [`BackendProc::start`] with extra flags (e.g. `--refuse-from IP`).
    pub async fn start_with(name: &str, addr: &str, extra: &[&str]) -> Result<BackendProc> {
        let child = Command::new(bin("lbctl"))
            .args(["demo-backend", "--name", name, "--listen", addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn demo backend {name}"))?;
        let b = BackendProc { name: name.to_string(), addr: addr.to_string(), child: Some(child) };
        let a = b.addr.clone();
        wait_until(&format!("demo backend {name} on {addr}"), Duration::from_secs(20), || {
            let a = a.clone();
            async move {
                let (status, _, _) = http_get(&a, "/health", &[]).await?;
                ensure!(status == 200, "status {status}");
                Ok(())
            }
        })
        .await?;
        Ok(b)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A response header as text ("" when absent or not text), e.g. `header(&h, "x-backend")`.
pub fn header(headers: &hyper::HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// One HTTP/1.1 GET on a fresh connection: (status, headers, body).
pub async fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out"))??;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}
