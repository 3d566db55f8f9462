//! The proxies: the sockets of the data plane, thin shells around [`crate::balance`].
//!
//! Layout:
//! - this file: [`ProxyContext`], what every proxy task of this node shares.
//! - [`listeners`]: follows the committed model, swaps the routing snapshot and binds/stops listeners.
//! - [`http`], [`tcp`], [`udp`]: the proxies, one task per listener, reading the snapshot per
//!   connection (HTTP: per request).
//! - [`proxy_protocol`]: PROXY protocol headers: the one a TCP listener may send to backends, and the
//!   decoder and bounded read of a listener with `accept_proxy_protocol` (the front's header first).
//! - [`admission`]: a listener's connection caps and rate-limit buckets.
//! - [`tls`]: TLS termination, passthrough by SNI, TLS towards backends; the certificates of each
//!   listener, reloaded when the config or their files change.
//! - [`counters`]: the data-plane counters and scrape-time gauges of `/metrics`.
//! - [`access_log`]: the per-request and per-session JSON lines of listeners with `access_log`,
//!   written by a thread of their own behind a bounded queue.
//! - `testkit` (tests only): the one kit the proxy tests share; `limits_tests` (tests only): caps,
//!   per-backend limits and rate limits through the real HTTP and TCP proxies.
//!
//! Data enters as client connections and datagrams on the listener sockets and leaves towards the
//! backends that [`crate::balance`] picks, from this node's IP ([`crate::net`]).

pub mod access_log;
pub mod admission;
pub mod counters;
pub mod http;
pub mod listeners;
pub mod proxy_protocol;
pub mod tcp;
pub mod tls;
pub mod udp;

#[cfg(test)]
mod limits_tests;
#[cfg(test)]
pub(crate) mod testkit;

use std::net::IpAddr;
use std::sync::Arc;

use crate::balance::{OutlierTracker, Routing, SharedRouting};

/// What every proxy task of this node shares.
#[derive(Debug)]
pub struct ProxyContext {
    pub node_id: u64,
    /// This node's IP: listeners bind `bind_ip:port`, and connections to backends leave from it
    /// ([`crate::net`]).
    pub bind_ip: IpAddr,
    /// Where TCP and HTTP listeners bind: `bind_ip`, or the wildcard address when the node has a VIP
    /// (one socket accepts on the node's IP and on the VIP, so a listener's caps count both).
    /// UDP listeners bind `bind_ip`, and the VIP too (see `vip`).
    pub listen_ip: IpAddr,
    /// The front's virtual IP: each UDP listener binds a second socket on it, so that its replies
    /// leave from the VIP the client sent to (a wildcard UDP socket would answer from the node's IP).
    pub vip: Option<IpAddr>,
    /// The current routing snapshot, swapped on every applied change.
    pub routing: SharedRouting,
    /// Node-local usability of backends (passive ejection, this node's active-check view): proxies pick
    /// with `pick_usable(key, |b| outlier.is_usable(pool, b.addr()))` and report each attempt's outcome.
    pub outlier: Arc<OutlierTracker>,
    /// The data-plane counters shown on `/metrics`.
    pub metrics: Arc<counters::DataplaneMetrics>,
    /// The TLS configs of the listeners and pools, kept current by [`listeners::run`].
    pub tls: Arc<tls::TlsStore>,
    /// Where listeners with `access_log = true` send their entries; `None`: this node logs none.
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// Idle HTTP connections kept per backend and listener (`upstream_idle_per_backend`).
    pub upstream_idle_per_backend: usize,
    /// The flow sockets all UDP listeners of this node may hold ([`udp::flow_file_budget`]).
    pub udp_flows: Arc<udp::FlowBudget>,
}

impl ProxyContext {
    pub fn new(node_id: u64, bind_ip: IpAddr) -> ProxyContext {
        ProxyContext {
            node_id,
            bind_ip,
            listen_ip: bind_ip,
            vip: None,
            upstream_idle_per_backend: http::upstream::PoolLimits::default().max_idle_per_backend,
            routing: Arc::new(arc_swap::ArcSwap::from_pointee(Routing::empty())),
            outlier: Arc::new(OutlierTracker::new()),
            metrics: Default::default(),
            tls: Default::default(),
            access_log: None,
            udp_flows: Default::default(),
        }
    }
}
