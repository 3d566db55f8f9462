//! The one test kit of the proxy tests (`http/tests.rs`, `tcp/tests.rs`, `udp/tests.rs`): a real
//! `Routing` built from a real `ClusterState`, proxy contexts, loopback addresses, bounded waits and a
//! memory probe. Every wait has a deadline and says what it waited for.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lbfleet_api::command::{Command, CommandResult};
use lbfleet_api::config::{parse, Format};
use lbfleet_api::state::{ClusterState, LbNode};

use super::ProxyContext;
use crate::balance::routing::{Routing, SharedRouting};

/// Generous bound for anything a test waits for on a loaded 2-core machine.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// `127.0.c.d`.
pub(crate) fn ip(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, c, d))
}

/// Poll `f` until it returns `Some`, failing after `timeout` with `what` (the workspace's one wait
/// helper, `lbfleet_tests::wait_until`, underneath).
pub(crate) async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let probe = || {
        let fut = f();
        async move { fut.await.ok_or_else(|| anyhow::anyhow!("not yet")) }
    };
    lbfleet_tests::wait_until(what, timeout, probe).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`wait_for`] a condition, within [`WAIT`].
pub(crate) async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    wait_for(what, WAIT, || std::future::ready(check().then_some(()))).await
}

/// `f`, failing after [`WAIT`] with `what`.
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// The committed state after applying the config `toml`, with three voting nodes (for health votes).
pub(crate) fn state_with(toml: &str) -> ClusterState {
    let config = parse(toml, Format::Toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    let mut state = ClusterState::default();
    state.apply_membership([1, 2, 3].into(), (1..=3).map(|i| (i, LbNode::default())).collect());
    let r = state.apply(&Command::ApplyConfig { config }, 1);
    assert!(matches!(r, CommandResult::ConfigApplied { .. }), "{r:?}");
    state
}

/// A shared routing snapshot built from the config `toml`.
pub(crate) fn routing_for(toml: &str) -> SharedRouting {
    let state = state_with(toml);
    Arc::new(ArcSwap::from_pointee(Routing::build(&state, 1, &Routing::empty())))
}

/// Replace the snapshot with one built from `toml`, as a committed config change does.
pub(crate) fn reconfigure(routing: &SharedRouting, toml: &str, index: u64) {
    let state = state_with(toml);
    let next = Routing::build(&state, index, &routing.load());
    routing.store(Arc::new(next));
}

/// A proxy context of node 1 on `bind_ip` reading `routing`.
pub(crate) fn context(bind_ip: IpAddr, routing: &SharedRouting) -> Arc<ProxyContext> {
    Arc::new(ProxyContext { routing: Arc::clone(routing), ..ProxyContext::new(1, bind_ip) })
}

/// A line of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    line.split_whitespace().next()?.parse().ok()
}
