//! Demo HTTP backend processes (`lbctl demo-backend`): each names itself in its body and in `x-backend`.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::bin::bin;
use crate::http::{header, http_get};
use crate::process;
use crate::wait::wait_until;

/// How long a demo backend may take to answer `/health`.
const START: Duration = Duration::from_secs(20);

/// A running `lbctl demo-backend`, killed on drop.
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

    /// [`BackendProc::start`] with extra flags (e.g. `--refuse-from IP`). Its standard error is the
    /// test's.
    pub async fn start_with(name: &str, addr: &str, extra: &[&str]) -> Result<BackendProc> {
        match Self::spawn(name, addr, extra, None).await? {
            Ok(b) => Ok(b),
            Err(status) => bail!("demo backend {name} on {addr} exited ({status}) before it served"),
        }
    }

    /// Start a demo backend named `backend-<tag>-<our pid>` on the first free port of
    /// 127.0.0.1:9901..=9999 (starting at an offset taken from our pid, so parallel test binaries rarely
    /// collide), logging to `dir/<name>-<port>.log`. A port taken by someone else makes the backend exit
    /// with "cannot listen"; then the next port is tried.
    pub async fn start_on_free_port(tag: &str, dir: &Path) -> Result<BackendProc> {
        let offset = (std::process::id() % 99) as u16;
        let name = format!("backend-{tag}-{}", std::process::id());
        for i in 0..99u16 {
            let port = 9901 + (offset + i) % 99;
            let addr = format!("127.0.0.1:{port}");
            let log = dir.join(format!("{name}-{port}.log"));
            match Self::spawn(&name, &addr, &[], Some(&log)).await? {
                Ok(b) => return Ok(b),
                Err(status) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    ensure!(
                        text.contains("cannot listen"),
                        "demo backend exited ({status}) for another reason:\n{text}"
                    );
                    // The port is taken: try the next one.
                }
            }
        }
        bail!("no free port in 127.0.0.1:9901..=9999 for a demo backend")
    }

    /// Spawn a backend (standard output and error to `log`, or standard error to ours) and wait until it
    /// answers `/health` under its own name (`Ok`) or exits (`Err` with its status).
    async fn spawn(
        name: &str,
        addr: &str,
        extra: &[&str],
        log: Option<&Path>,
    ) -> Result<std::result::Result<BackendProc, ExitStatus>> {
        let mut cmd = Command::new(bin("lbctl"));
        cmd.args(["demo-backend", "--name", name, "--listen", addr]).args(extra).stdin(Stdio::null());
        match log {
            Some(path) => {
                let file =
                    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn demo backend {name}"))?;
        let outcome = wait_until(&format!("demo backend {name} to answer /health on {addr}"), START, || {
            let exited = child.try_wait();
            async move {
                if let Some(status) = exited? {
                    return Ok(Some(status));
                }
                let (status, headers, _) = http_get(addr, "/health", &[]).await?;
                let who = header(&headers, "x-backend");
                ensure!(status == 200 && who == name, "status {status} from {who:?}");
                Ok(None)
            }
        })
        .await;
        // Built before the outcome is looked at, so that a failed start kills the child on drop.
        let b = BackendProc { name: name.to_string(), addr: addr.to_string(), child: Some(child) };
        Ok(match outcome? {
            None => Ok(b),
            Some(status) => Err(status),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Wait until the backend exits (after a signal, say) and return its status; killed after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("demo backend {} was killed", self.name))?;
        process::wait_exit(child, timeout).await
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

/// A TCP backend in the test process on `at`: for each connection, reads until the client's FIN and
/// answers with everything it read, then closes. Returns its address and the accept task.
pub async fn tcp_echo(
    at: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(at).await.with_context(|| format!("bind tcp backend {at}"))?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_ok() {
                    let _ = s.write_all(&req).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    Ok((addr, task))
}
