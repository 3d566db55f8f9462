//! Admin gRPC helpers with deadlines: TLS verified against the test CA ([`crate::creds`]), the
//! admin token on every call.

use std::time::Duration;

use anyhow::{Context, Result};
use lbfleet_api::pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::creds::creds;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

impl Bearer {
    /// The bearer of `token`.
    pub fn of(token: &str) -> Bearer {
        Bearer(format!("Bearer {token}").parse().expect("a token is header-safe"))
    }
}

/// An Admin client that authenticates with a token.
pub type Admin = pb::admin_client::AdminClient<InterceptedService<Channel, Bearer>>;

/// A connected Admin client with the admin token: 500 ms to connect, 15 s per call.
pub async fn connect(addr: &str) -> Result<Admin> {
    connect_with_timeout(addr, Duration::from_secs(15)).await
}

/// A connected Admin client with the admin token: 500 ms to connect, `per_call` for each call.
pub async fn connect_with_timeout(addr: &str, per_call: Duration) -> Result<Admin> {
    let ch = channel(addr, per_call).await?;
    Ok(pb::admin_client::AdminClient::with_interceptor(ch, Bearer::of(&creds().admin_token)))
}

/// A connected gRPC channel to a node's gRPC port as an operator (TLS, no client certificate):
/// 500 ms to connect, `per_call` for each call.
pub async fn channel(addr: &str, per_call: Duration) -> Result<Channel> {
    channel_with(addr, per_call, creds().operator_tls()).await
}

/// A channel as node `id` (its certificate from the test CA): what a peer's calls look like.
pub async fn node_channel(addr: &str, per_call: Duration, id: u64) -> Result<Channel> {
    channel_with(addr, per_call, creds().node_tls(id)).await
}

/// A channel with the given TLS.
pub async fn channel_with(addr: &str, per_call: Duration, tls: ClientTlsConfig) -> Result<Channel> {
    let endpoint = lazy_endpoint(addr, per_call, tls)?;
    // The TLS handshake is part of connecting, and `connect_timeout` bounds only the TCP part.
    tokio::time::timeout(CONNECT_WITH_HANDSHAKE, endpoint.connect())
        .await
        .with_context(|| format!("connect to {addr}: no TLS handshake within {CONNECT_WITH_HANDSHAKE:?}"))?
        .with_context(|| format!("connect to {addr}"))
}

/// How long connecting may take, TLS handshake included.
pub const CONNECT_WITH_HANDSHAKE: Duration = Duration::from_secs(5);

/// An endpoint that connects on first use (each call then bounded by `per_call`, connecting included).
pub fn lazy_endpoint(
    addr: &str,
    per_call: Duration,
    tls: ClientTlsConfig,
) -> Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(per_call))
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
    c.apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: toml.into(), dry_run: false })
        .await
        .map(|r| r.into_inner())
}

pub async fn get_config(addr: &str, stale: bool) -> Result<pb::GetConfigResponse, tonic::Status> {
    let mut c = connect(addr).await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    c.get_config(pb::GetConfigRequest { stale }).await.map(|r| r.into_inner())
}
