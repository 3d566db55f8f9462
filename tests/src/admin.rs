//! Admin gRPC helpers with deadlines.

use std::time::Duration;

use anyhow::{Context, Result};
use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use tonic::transport::Channel;

/// A connected Admin client: 500 ms to connect, 15 s per call.
pub async fn connect(addr: &str) -> Result<AdminClient<Channel>> {
    connect_with_timeout(addr, Duration::from_secs(15)).await
}

/// A connected Admin client: 500 ms to connect, `per_call` for each call.
pub async fn connect_with_timeout(addr: &str, per_call: Duration) -> Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(addr, per_call).await?))
}

/// A connected gRPC channel to a node's gRPC port (Raft and Admin services): 500 ms to connect,
/// `per_call` for each call. Tests that speak to a node's services build their clients on this.
pub async fn channel(addr: &str, per_call: Duration) -> Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(per_call)
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))
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
