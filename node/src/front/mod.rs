//! The front: this node's share of the virtual IP (VIP) that clients use, announced over BGP by a
//! BIRD beside the node to a router that spreads flows over every announcing node (ECMP).
//!
//! - [`speaker`]: BIRD as this node's child, dying with it (`PR_SET_PDEATHSIG`).
//! - [`bird`]: BIRD's control socket; the VIP route lives in the static protocol [`bird::PROTOCOL`],
//!   enabled to announce and disabled to withdraw.
//! - [`Front`]: the task that announces the VIP while the node can serve ([`can_serve`]: a routing
//!   snapshot with listeners applied and one of them bound) and withdraws it when it cannot, and
//!   [`Front::leave`], which withdraws it for good at shutdown, before the listeners stop.
//! - [`add_to_loopback`]: the VIP on `lo`, so the kernel delivers packets for it to the wildcard
//!   listeners (the direct-routing trick of LVS: replies leave from the VIP straight to the client).
//!
//! Failure detection is BIRD's (BFD and the BGP hold timer, set in its config): a node that dies or
//! freezes stops answering and the router drops its routes.

pub mod bird;
pub mod speaker;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::proxy::listeners::{ListenerStatus, ListenerStatuses};

/// How often the task compares what it announces with what the node can do.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often the wanted state is sent again although it did not change (BIRD may have restarted
/// with the VIP protocol disabled).
pub const RESEND_INTERVAL: Duration = Duration::from_secs(1);

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
        F: Fn() -> bool + Send + 'static,
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

async fn follow<F: Fn() -> bool>(
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
        let want = ready();
        if announced == Some(want) && last_sent.elapsed() < RESEND_INTERVAL {
            continue;
        }
        last_sent = tokio::time::Instant::now();
        match control.set_announced(want).await {
            Ok(()) => {
                if announced != Some(want) {
                    if want {
                        tracing::info!(%vip, "VIP announced: listeners bound and a routing snapshot applied");
                    } else {
                        tracing::warn!(%vip, "VIP withdrawn: this node cannot serve (no listener bound)");
                    }
                }
                announced = Some(want);
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

/// The readiness test of a running node: its routing snapshot and its listeners' statuses.
pub fn readiness(
    ctx: Arc<crate::proxy::ProxyContext>,
    statuses: ListenerStatuses,
) -> impl Fn() -> bool + Send + 'static {
    move || {
        let in_snapshot = ctx.routing.load().listeners().count();
        let statuses = statuses.lock().map(|s| s.clone()).unwrap_or_default();
        can_serve(in_snapshot, &statuses)
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
}
