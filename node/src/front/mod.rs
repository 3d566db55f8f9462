//! The front: this node's share of the virtual IP (VIP) that clients use, announced over BGP by a
//! BIRD beside the node to a router that spreads flows over every announcing node (ECMP).
//!
//! - [`speaker`]: BIRD as this node's child, dying with it (`PR_SET_PDEATHSIG`).
//! - [`bird`]: BIRD's control socket; the VIP route lives in the static protocol [`bird::PROTOCOL`],
//!   enabled to announce and disabled to withdraw.
//! - [`Front`]: the task that announces the VIP while the node can serve ([`can_serve`]: a routing
//!   snapshot with listeners applied and one of them bound) and withdraws it when it cannot, and
//!   [`Front::leave`], which withdraws it for good at shutdown, before the listeners stop.
//! - [`NodeDrain`]: an operator's `lbctl drain-node`: the VIP is withdrawn while the node keeps
//!   running, until `lbctl undrain-node`; kept across restarts.
//! - [`add_to_loopback`]: the VIP on `lo`, so the kernel delivers packets for it to the wildcard
//!   listeners (the direct-routing trick of LVS: replies leave from the VIP straight to the client).
//!
//! Failure detection is BIRD's (BFD and the BGP hold timer, set in its config): a node that dies or
//! freezes stops answering and the router drops its routes.

pub mod bird;
pub mod speaker;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::proxy::listeners::{ListenerStatus, ListenerStatuses};

/// How often the task compares what it announces with what the node can do.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often the wanted state is sent again although it did not change (BIRD may have restarted
/// with the VIP protocol disabled).
pub const RESEND_INTERVAL: Duration = Duration::from_secs(1);

/// The file in the data directory whose presence means the node is drained.
pub const DRAIN_FILE: &str = "drained";

/// Whether an operator drained this node (`lbctl drain-node`): shared by the admin service, which
/// sets it, and the announcing task, which withdraws the VIP while it is set. The state is the
/// presence of [`DRAIN_FILE`] in the data directory, so a drained node stays drained when it
/// restarts (for maintenance) until it is undrained.
#[derive(Debug)]
pub struct NodeDrain {
    drained: AtomicBool,
    file: PathBuf,
    /// Serialises changes, so the file and the flag never disagree.
    change: Mutex<()>,
}

impl NodeDrain {
    /// The drain state kept in `data_dir`.
    pub fn load(data_dir: &Path) -> NodeDrain {
        let file = data_dir.join(DRAIN_FILE);
        NodeDrain { drained: AtomicBool::new(file.exists()), file, change: Mutex::new(()) }
    }

    /// The file whose presence is the drain.
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// Drain (`true`) or undrain the node; returns whether it was drained before. The file is
    /// written (and its directory synced) before the flag changes, so what the caller is told has
    /// been done survives a crash.
    pub fn set(&self, drained: bool) -> std::io::Result<bool> {
        let _one = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.is_drained();
        if drained {
            std::fs::write(&self.file, b"drained by an operator (lbctl drain-node)\n")?;
        } else if let Err(e) = std::fs::remove_file(&self.file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        if let Some(dir) = self.file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.drained.store(drained, Ordering::Release);
        Ok(was)
    }
}

/// What the announcing task is told about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It can serve: announce the VIP.
    Ready,
    /// An operator drained it: withdraw the VIP, keep serving.
    Drained,
    /// No routing snapshot with listeners, or none of them bound: withdraw the VIP.
    CannotServe,
}

/// Whether this node can serve the VIP: a config with listeners is applied and at least one of them
/// is bound. One listener that cannot bind (a port in use) does not withdraw the VIP: the same
/// problem would usually hit every node at once, and the node still serves the other listeners.
pub fn can_serve(listeners_in_snapshot: usize, statuses: &[ListenerStatus]) -> bool {
    listeners_in_snapshot > 0 && statuses.iter().any(|s| s.bound)
}

/// The announcing task of one node.
#[derive(Debug)]
pub struct Front {
    leave: mpsc::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Front {
    /// Follow `ready` (polled every [`CHECK_INTERVAL`]) and announce or withdraw the VIP through
    /// `control`.
    pub fn start<F>(control: bird::Control, vip: IpAddr, ready: F) -> Front
    where
        F: Fn() -> Readiness + Send + 'static,
    {
        let (leave, rx) = mpsc::channel(1);
        let task = tokio::spawn(follow(control, vip, ready, rx));
        Front { leave, task }
    }

    /// Withdraw the VIP and stop following: the node is leaving. Returns once BIRD took the
    /// withdrawal (or failed to, which is logged).
    pub async fn leave(self) {
        let (tx, rx) = oneshot::channel();
        if self.leave.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

async fn follow<F: Fn() -> Readiness>(
    control: bird::Control,
    vip: IpAddr,
    ready: F,
    mut leave: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What BIRD was last told successfully; `None`: unknown.
    let mut announced: Option<bool> = None;
    let mut last_sent = tokio::time::Instant::now();
    let mut last_error: Option<String> = None;
    // Why the VIP was last withdrawn, so that a change of reason is logged too.
    let mut last_state: Option<Readiness> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            done = leave.recv() => {
                match control.set_announced(false).await {
                    Ok(()) => tracing::info!(%vip, "VIP withdrawn: this node is leaving"),
                    Err(e) => tracing::error!(%vip, "cannot withdraw the VIP before leaving: {e}"),
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
        let state = ready();
        let want = state == Readiness::Ready;
        if announced == Some(want) && last_state == Some(state) && last_sent.elapsed() < RESEND_INTERVAL {
            continue;
        }
        last_sent = tokio::time::Instant::now();
        match control.set_announced(want).await {
            Ok(()) => {
                if announced != Some(want) || last_state != Some(state) {
                    match state {
                        Readiness::Ready => tracing::info!(
                            %vip,
                            "VIP announced: listeners bound and a routing snapshot applied"
                        ),
                        Readiness::Drained => tracing::info!(
                            %vip,
                            "VIP withdrawn: this node is drained (lbctl undrain-node announces it again)"
                        ),
                        Readiness::CannotServe => {
                            tracing::warn!(%vip, "VIP withdrawn: this node cannot serve (no listener bound)")
                        }
                    }
                }
                announced = Some(want);
                last_state = Some(state);
                last_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%vip, "cannot {} the VIP: {text}", if want { "announce" } else { "withdraw" });
                }
                last_error = Some(text);
                announced = None;
            }
        }
    }
}

/// The readiness test of a running node: the operator's drain, its routing snapshot and its
/// listeners' statuses.
pub fn readiness(
    ctx: Arc<crate::proxy::ProxyContext>,
    statuses: ListenerStatuses,
    drain: Arc<NodeDrain>,
) -> impl Fn() -> Readiness + Send + 'static {
    move || {
        if drain.is_drained() {
            return Readiness::Drained;
        }
        let in_snapshot = ctx.routing.load().listeners().count();
        let statuses = statuses.lock().map(|s| s.clone()).unwrap_or_default();
        if can_serve(in_snapshot, &statuses) {
            Readiness::Ready
        } else {
            Readiness::CannotServe
        }
    }
}

/// Put `vip` on the loopback interface (`ip addr replace VIP/32 dev lo`, idempotent); needs
/// CAP_NET_ADMIN. `ip` is looked up in PATH.
pub async fn add_to_loopback(vip: IpAddr) -> anyhow::Result<()> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("ip")
            .args([family, "addr", "replace", &format!("{vip}/{prefix}"), "dev", "lo"])
            .output(),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("cannot add the VIP {vip} to lo (vip_loopback): `ip` did not finish within 5s")
    })?
    .map_err(|e| {
        anyhow::anyhow!("cannot add the VIP {vip} to lo (vip_loopback): cannot run `ip` (iproute2): {e}")
    })?;
    if !out.status.success() {
        anyhow::bail!(
            "cannot add the VIP {vip} to lo (vip_loopback; needs CAP_NET_ADMIN): ip: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(bound: bool) -> ListenerStatus {
        ListenerStatus {
            name: "web".into(),
            protocol: "http",
            addr: "0.0.0.0:8080".into(),
            bound,
            error: (!bound).then(|| "in use".into()),
        }
    }

    #[test]
    fn no_snapshot_or_no_bound_listener_is_not_ready() {
        assert!(!can_serve(0, &[]));
        assert!(!can_serve(1, &[]));
        assert!(!can_serve(1, &[status(false)]));
        assert!(!can_serve(0, &[status(true)]));
    }

    #[test]
    fn one_bound_listener_of_a_snapshot_is_ready() {
        assert!(can_serve(1, &[status(true)]));
        assert!(can_serve(2, &[status(true), status(false)]));
    }

    #[test]
    fn a_drain_is_kept_in_the_data_dir_until_undrained() {
        let dir = tempfile::tempdir().unwrap();
        let drain = NodeDrain::load(dir.path());
        assert!(!drain.is_drained());
        assert!(!drain.set(true).unwrap(), "was not drained");
        assert!(drain.is_drained());
        assert!(drain.set(true).unwrap(), "draining twice is no error");
        // A restart reads the file.
        assert!(NodeDrain::load(dir.path()).is_drained());
        assert!(drain.set(false).unwrap());
        assert!(!drain.is_drained());
        assert!(!NodeDrain::load(dir.path()).is_drained());
        assert!(!drain.set(false).unwrap(), "undraining twice is no error");
    }

    #[test]
    fn a_drain_that_cannot_be_written_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let drain = NodeDrain::load(&dir.path().join("missing"));
        assert!(drain.set(true).is_err());
        assert!(!drain.is_drained());
    }
}
