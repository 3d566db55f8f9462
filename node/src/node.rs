//! Start and stop everything one lbnode runs: the store, Raft, the gRPC server (Raft + Admin on one
//! port, mutual TLS, every call through [`crate::auth`]), the admin HTTP server, the data plane (routing snapshot and listeners), the health task
//! (active checks and votes) and the one-time bootstrap.
//!
//! Start order: bind both listeners (a port in use is reported before the store is touched), put the
//! VIP on `lo` and start the BGP speaker if configured ([`crate::front`]), open the store, create
//! Raft, serve, then bootstrap. Stop order ([`Node::shutdown`]): withdraw the VIP and keep accepting
//! for `bgp_withdraw_grace_ms` (the router moves new flows elsewhere meanwhile), stop accepting and
//! end streams, let in-flight calls finish (bounded), shut Raft down, then drop the store (the last
//! handle closes and flushes the database).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lbfleet_api::state::ClusterState;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::accept::Acceptor;
use crate::admin::grpc::AdminService;
use crate::auth::AuthLayer;
use crate::channels::ChannelCache;
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::front::{self, Front};
use crate::limits;
use crate::proxy::listeners::ListenerStatuses;
use crate::proxy::ProxyContext;
use crate::raft::service::RaftService;
use crate::raft::{bootstrap, Bootstrap, Raft};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::tls::NodeTls;

/// How long in-flight requests may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The data plane's shared context: listeners on the wildcard address when the node has a VIP.
fn proxy_context(config: &NodeConfig) -> anyhow::Result<ProxyContext> {
    let mut ctx = ProxyContext::new(config.id, config.bind);
    tracing::info!(flows = ctx.udp_flows.max(), "udp flows over all listeners at most (half the file limit)");
    if let Some(target) = &config.access_log {
        let dropped = ctx.metrics.access_log_dropped().clone();
        ctx.access_log = Some(Arc::new(crate::proxy::access_log::AccessLog::start(target, dropped)?));
    }
    ctx.vip = config.front.vip;
    ctx.upstream_idle_per_backend = config.upstream_idle_per_backend;
    if config.front.vip.is_some() {
        ctx.listen_ip = match config.bind {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
    }
    Ok(ctx)
}

/// A running lbnode.
pub struct Node {
    cluster: Cluster,
    shutdown_tx: Trigger,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http: Option<JoinHandle<()>>,
    /// The listener manager (routing snapshot updates and proxies).
    dataplane: Option<JoinHandle<()>>,
    /// Active health checks and health votes of this node.
    health: Option<JoinHandle<()>>,
    bootstrap: JoinHandle<()>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    /// The VIP's announcer, when the node has a BGP speaker.
    front: Option<Front>,
    /// The BGP speaker this node runs as its child.
    speaker: Option<front::speaker::Speaker>,
    withdraw_grace: Duration,
}

impl Node {
    /// Open the store in `config.data_dir`, start Raft and both servers, and bootstrap the cluster
    /// if this node is the one that must (see [`crate::raft`]).
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        Self::start_with(config, None).await
    }

    /// [`Node::start`] with the proxies on `dataplane`, a runtime of their own (so proxy load cannot
    /// delay Raft heartbeats, and the proxies' thread count is set apart); `None` runs them here.
    pub async fn start_with(
        config: NodeConfig,
        dataplane: Option<tokio::runtime::Handle>,
    ) -> anyhow::Result<Node> {
        let grpc_listener = TcpListener::bind(config.grpc_listen()).await.with_context(|| {
            format!("cannot listen for gRPC on {} (grpc_port/bind)", config.grpc_listen())
        })?;
        let http_listener = TcpListener::bind(config.admin_http).await.with_context(|| {
            format!("cannot listen for admin HTTP on {} (admin_http/http_port)", config.admin_http)
        })?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        if let (Some(vip), true) = (config.front.vip, config.front.vip_loopback) {
            front::add_to_loopback(vip).await?;
            tracing::info!(%vip, "VIP added to lo");
        }
        let tls = NodeTls::load(&config.tls, config.id)?;
        if tls.tokens.tokens.is_empty() {
            tracing::warn!("no operator tokens (tokens_file): only cluster nodes can call the admin API");
        }
        let (shutdown_tx, shutdown_rx) = shutdown::channel();
        let channels = ChannelCache::new(tls.client_config()).from_ip(config.bind);
        let node = crate::raft::start(&config, channels.clone()).await?;
        let raft = node.raft().clone();
        let cluster = Cluster {
            raft: node.clone(),
            admin_channels: channels.clone(),
            shutdown: shutdown_rx.clone(),
            dataplane: Arc::new(proxy_context(&config)?),
            listeners: ListenerStatuses::default(),
            loads: crate::load::LoadBoard::default(),
            tokens: Arc::clone(&tls.tokens),
            hooks: Arc::new(config.hooks.clone()),
            traffic: Default::default(),
            observed: Default::default(),
            announced_vip: config.front.vip.filter(|_| config.front.socket.is_some()),
            drain: Arc::new(front::NodeDrain::load(&config.data_dir)),
        };
        if cluster.drain.is_drained() {
            tracing::warn!(
                "this node is drained (lbctl drain-node; {} in the data directory): it does not announce \
                 the VIP until `lbctl undrain-node`",
                front::DRAIN_FILE
            );
        }
        let dataplane = tokio::spawn(crate::proxy::listeners::run(
            Arc::clone(&cluster.dataplane),
            node.watch_model(),
            shutdown_rx.clone(),
            Arc::clone(&cluster.listeners),
            dataplane,
        ));

        let health = tokio::spawn(crate::health::run(
            node.clone(),
            Arc::clone(&cluster.dataplane),
            shutdown_rx.clone(),
        ));
        // Both end on the shutdown signal; nothing waits for them.
        tokio::spawn(crate::load::run_reporter(
            node.clone(),
            Arc::clone(&cluster.dataplane),
            cluster.loads.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::traffic::run_sampler(
            node.clone(),
            Arc::clone(&cluster.dataplane),
            Arc::clone(&cluster.traffic),
            Arc::clone(&cluster.observed),
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::leader::run(crate::leader::Duties {
            raft: node.clone(),
            channels: channels.clone(),
            loads: cluster.loads.clone(),
            hooks: Arc::clone(&cluster.hooks),
            shutdown: shutdown_rx.clone(),
        }));

        let speaker = match (&config.front.speaker, &config.front.socket) {
            (Some(s), Some(socket)) => Some(
                front::speaker::Speaker::start(s.program.clone(), s.config.clone(), socket.clone())
                    .context("cannot start the BGP speaker's thread")?,
            ),
            _ => None,
        };
        let front = match (config.front.vip, &config.front.socket) {
            (Some(vip), Some(socket)) => Some(Front::start(
                front::bird::Control::new(socket),
                vip,
                front::readiness(
                    Arc::clone(&cluster.dataplane),
                    Arc::clone(&cluster.listeners),
                    Arc::clone(&cluster.drain),
                ),
            )),
            _ => None,
        };
        let withdraw_grace = config.front.withdraw_grace;

        let grpc = {
            let mut stop = shutdown_rx.clone();
            let timeout = limits::grpc_request_timeout(node.proposer().forward_timeout());
            let router = limits::grpc_server(timeout)
                .tls_config(tls.server_config())
                .context("gRPC server TLS (cert_file, key_file, ca_file)")?
                .layer(AuthLayer::new(Arc::clone(&tls.tokens)))
                .add_service(RaftService::new(raft.clone(), node.proposer().clone()).into_server())
                .add_service(AdminService::new(cluster.clone(), config.http_port).into_server());
            // TCP options, the connection cap and the back-off on accept errors (tonic's own accept
            // loop retries at once, and spins when out of descriptors).
            let incoming = Acceptor::new("gRPC", grpc_listener)
                .max_connections(config.grpc_max_connections)
                .tcp_keepalive(limits::TCP_KEEPALIVE_IDLE, limits::TCP_KEEPALIVE_INTERVAL)
                .into_incoming();
            tokio::spawn(async move {
                router.serve_with_incoming_shutdown(incoming, async move { stop.wait().await }).await
            })
        };
        let http_acceptor = Acceptor::new("admin HTTP", http_listener)
            .max_connections(config.admin_http_max_connections)
            .tcp_keepalive(limits::TCP_KEEPALIVE_IDLE, limits::TCP_KEEPALIVE_INTERVAL);
        let http =
            tokio::spawn(crate::admin::http::serve(http_acceptor, cluster.clone(), shutdown_rx.clone()));
        tracing::info!(
            id = config.id,
            grpc = %grpc_addr,
            http = %http_addr,
            data_dir = %config.data_dir.display(),
            "lbnode serving"
        );

        let bootstrap = {
            let node = node.clone();
            tokio::spawn(async move {
                match bootstrap(&node, &config).await {
                    Ok(Bootstrap::Initialized(voters)) => {
                        tracing::info!(?voters, "initialized a new cluster")
                    }
                    Ok(Bootstrap::AlreadyInitialized) => {
                        tracing::info!("store already holds a cluster membership")
                    }
                    Ok(Bootstrap::Waiting) => {
                        tracing::info!("waiting to be contacted by a leader (not the bootstrapping node)")
                    }
                    Err(e) => tracing::error!("cannot initialize the cluster: {e}"),
                }
            })
        };

        Ok(Node {
            cluster,
            shutdown_tx,
            grpc: Some(grpc),
            http: Some(http),
            dataplane: Some(dataplane),
            health: Some(health),
            bootstrap,
            grpc_addr,
            http_addr,
            front,
            speaker,
            withdraw_grace,
        })
    }

    /// Shared handles (Raft, applied state, identity).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn raft(&self) -> &Raft {
        self.cluster.raft.raft()
    }

    /// The applied model.
    pub fn model(&self) -> Arc<ClusterState> {
        self.cluster.raft.model()
    }

    /// Becomes `true` when the node starts shutting down; tasks spawned beside the node end on it.
    pub fn shutdown_signal(&self) -> Shutdown {
        self.shutdown_tx.subscribe()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Resolves when a server stops on its own (an error: they only stop at shutdown otherwise), or
    /// when Raft stops on a fatal error (storage, a panic of its core): the node would otherwise
    /// keep proxying on frozen state forever. `lbnode` then exits non-zero, for a supervisor to
    /// restart it.
    pub async fn failed(&mut self) -> anyhow::Error {
        let (Some(grpc), Some(http)) = (self.grpc.as_mut(), self.http.as_mut()) else {
            return anyhow::anyhow!("node is already stopped");
        };
        tokio::select! {
            r = grpc => {
                self.grpc = None;
                match r {
                    Ok(Ok(())) => anyhow::anyhow!("gRPC server stopped"),
                    Ok(Err(e)) => anyhow::anyhow!("gRPC server failed: {e}"),
                    Err(e) => anyhow::anyhow!("gRPC server task failed: {e}"),
                }
            }
            r = http => {
                self.http = None;
                anyhow::anyhow!("admin HTTP server stopped: {r:?}")
            }
            e = self.cluster.raft.fatal() => anyhow::anyhow!("Raft stopped on a fatal error: {e}"),
        }
    }

    /// Withdraw the VIP, shut Raft down, stop accepting, finish in-flight requests (bounded) and close
    /// the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!(id = self.cluster.id(), "shutting down");
        if let Some(front) = self.front.take() {
            // New flows go elsewhere first; connections that arrive meanwhile are still served.
            front.leave().await;
            tracing::info!(grace = ?self.withdraw_grace, "accepting during the withdrawal grace");
            tokio::time::sleep(self.withdraw_grace).await;
        }
        // After a fatal storage error the store is not closed: sled 0.34 waits forever in its drop
        // for a flush that can no longer succeed.
        let store_failed = self.cluster.raft.metrics().running_state.is_err();
        self.shutdown_tx.trigger();
        self.bootstrap.abort();
        // Raft stops before the connections drain: a leader that kept heartbeating while they finish
        // would hold the leadership for seconds after SIGTERM (openraft 0.9 cannot hand it over);
        // stopped now, the others elect a leader within an election timeout, as after a kill. The data
        // plane serves what is open from its last routing snapshot meanwhile.
        let raft_stopped = self
            .cluster
            .raft
            .raft()
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("Raft did not shut down cleanly: {e}"));
        if let Some(health) = self.health.take() {
            // It ends on the shutdown signal; its checkers and vote calls are not worth waiting for.
            let abort = health.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, health).await.is_err() {
                abort.abort();
            }
        }
        if let Some(grpc) = self.grpc.take() {
            let abort = grpc.abort_handle();
            match tokio::time::timeout(DRAIN_TIMEOUT, grpc).await {
                Ok(Ok(Err(e))) => tracing::warn!("gRPC server ended with an error: {e}"),
                Err(_) => {
                    tracing::warn!("gRPC calls still running after {DRAIN_TIMEOUT:?}; aborting them");
                    abort.abort();
                }
                _ => {}
            }
        }
        if let Some(dp) = self.dataplane.take() {
            // The listener manager bounds its own grace for open connections.
            let abort = dp.abort_handle();
            if tokio::time::timeout(crate::proxy::listeners::SHUTDOWN_GRACE + DRAIN_TIMEOUT, dp)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(http) = self.http.take() {
            let abort = http.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, http).await.is_err() {
                abort.abort();
            }
        }
        if store_failed {
            tracing::warn!("Raft had failed: the store is left as it is, not closed");
            std::mem::forget(self.cluster);
        } else {
            drop(self.cluster);
        }
        if let Some(speaker) = self.speaker.take() {
            let _ = tokio::task::spawn_blocking(move || speaker.stop()).await;
        }
        raft_stopped?;
        tracing::info!("stopped");
        Ok(())
    }
}
