//! A connection to one lbnode's Admin gRPC service with a per-call deadline.
//!
//! The connection is TLS, verified against the cluster CA (`--ca`, `LBCTL_CA`) and the name every
//! node certificate carries; every call carries the bearer token (`--token`, `LBCTL_TOKEN`). Missing
//! credentials fail before anything is sent, with exit code 4, as do the node's refusals.
//!
//! Every call is bounded by the `--timeout` on the client side (and sent as `grpc-timeout` so the node
//! can give up too); every failure comes back as a classified [`CliError`] naming the endpoint.

use std::future::Future;
use std::time::Duration;

use lbfleet_api::pb;
use lbfleet_api::pb::admin_client::AdminClient;
use std::path::PathBuf;

use lbfleet_api::auth::SERVER_NAME;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{CliError, Effect};

/// Interval of HTTP/2 pings on an admin connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Largest CA file read.
const MAX_CA_BYTES: u64 = 256 * 1024;

/// Where an operator's credentials come from (`--ca`, `--token` or their environment variables).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    /// Read the token from this file when `token` is not given (`--token-file`, `LBCTL_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
}

/// Credentials read and checked, ready for a connection.
#[derive(Clone)]
pub struct Loaded {
    tls: ClientTlsConfig,
    authorization: MetadataValue<Ascii>,
}

fn missing(what: &str) -> CliError {
    CliError::Auth { endpoint: None, message: what.to_string() }
}

impl Credentials {
    /// Read the CA and check the token; both are required.
    pub fn load(&self) -> Result<Loaded, CliError> {
        let Some(ca) = &self.ca else {
            return Err(missing(
                "no CA certificate to verify lbnode with: pass --ca FILE or set LBCTL_CA \
                 (for a local cluster: `. DIR/lbctl.env`)",
            ));
        };
        let size = std::fs::metadata(ca)
            .map_err(|e| missing(&format!("cannot read the CA certificate {}: {e}", ca.display())))?
            .len();
        if size > MAX_CA_BYTES {
            return Err(missing(&format!(
                "CA certificate {}: {size} bytes is over {MAX_CA_BYTES}",
                ca.display()
            )));
        }
        let pem = std::fs::read(ca)
            .map_err(|e| missing(&format!("cannot read the CA certificate {}: {e}", ca.display())))?;
        if lbfleet_api::auth::pem_certificates(&pem).is_empty() {
            return Err(missing(&format!("{} holds no PEM certificate (--ca / LBCTL_CA)", ca.display())));
        }
        let from_file = match (&self.token, &self.token_file) {
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| missing(&format!("cannot read the token file {}: {e}", path.display())))?,
            ),
            _ => None,
        };
        let token = match self.token.as_deref().or(from_file.as_deref()).map(str::trim) {
            None | Some("") => return Err(missing(
                "no token: pass --token TOKEN or set LBCTL_TOKEN (for a local cluster: `. DIR/lbctl.env`)",
            )),
            Some(t) => t,
        };
        let authorization = format!("Bearer {token}").parse().map_err(|_| {
            missing("the token (--token / LBCTL_TOKEN) holds characters a header cannot carry")
        })?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(SERVER_NAME);
        Ok(Loaded { tls, authorization })
    }
}

/// Admin client bound to one endpoint.
#[derive(Clone)]
pub struct Admin {
    endpoint: String,
    timeout: Duration,
    client: AdminClient<Channel>,
    authorization: MetadataValue<Ascii>,
}

impl Admin {
    /// Connect to `endpoint` (`HOST:PORT`) with `credentials`, waiting at most `timeout`.
    pub async fn connect(endpoint: &str, timeout: Duration, credentials: &Loaded) -> Result<Admin, CliError> {
        let uri = format!("https://{endpoint}");
        let ep = Endpoint::from_shared(uri).and_then(|ep| ep.tls_config(credentials.tls.clone())).map_err(
            |e| {
                CliError::Local(anyhow::anyhow!(
                    "invalid endpoint \"{endpoint}\": {}",
                    crate::error::transport_reason(&e)
                ))
            },
        )?;
        // HTTP/2 keep-alive notices a peer that stopped answering (SIGSTOP, partition) during a long `watch`.
        let ep = ep
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(timeout);
        let channel = match tokio::time::timeout(timeout, ep.connect()).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => return Err(with_duration(CliError::unreachable(endpoint, &e), timeout)),
            Err(_) => {
                return Err(CliError::Unreachable {
                    endpoint: endpoint.to_string(),
                    reason: format!("timed out after {}", humantime::format_duration(timeout)),
                })
            }
        };
        Ok(Admin {
            endpoint: endpoint.to_string(),
            timeout,
            client: AdminClient::new(channel),
            authorization: credentials.authorization.clone(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One call of kind `effect`, bounded by the timeout; a failure is told by [`CliError::of_call`]
    /// (a write whose answer never came may have been applied).
    async fn call<T, F, Fut>(&self, effect: Effect, f: F) -> Result<T, CliError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, f(self.client.clone())).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                Err(with_duration(CliError::of_call(&self.endpoint, &status, effect), self.timeout))
            }
            Err(_) => Err(CliError::deadline(&self.endpoint, self.timeout, effect)),
        }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = self.unbounded(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// A request with the token and no deadline (a stream).
    fn unbounded<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", self.authorization.clone());
        r
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, CliError> {
        let req = self.req(pb::StatusRequest {});
        self.call(Effect::Read, |mut c| async move { c.status(req).await }).await
    }

    pub async fn local_status(&self) -> Result<pb::NodeStatus, CliError> {
        let req = self.req(pb::LocalStatusRequest {});
        self.call(Effect::Read, |mut c| async move { c.local_status(req).await }).await
    }

    pub async fn apply_config(
        &self,
        format: &str,
        body: String,
    ) -> Result<pb::ApplyConfigResponse, CliError> {
        let req = self.req(pb::ApplyConfigRequest { format: format.to_string(), body, dry_run: false });
        self.call(Effect::Write, |mut c| async move { c.apply_config(req).await }).await
    }

    /// Validate a config as an apply would and read the committed one; nothing is proposed (a read:
    /// nothing can have changed when its answer is lost).
    pub async fn dry_run_config(
        &self,
        format: &str,
        body: String,
    ) -> Result<pb::ApplyConfigResponse, CliError> {
        let req = self.req(pb::ApplyConfigRequest { format: format.to_string(), body, dry_run: true });
        self.call(Effect::Read, |mut c| async move { c.apply_config(req).await }).await
    }

    pub async fn get_config(&self, stale: bool) -> Result<pb::GetConfigResponse, CliError> {
        let req = self.req(pb::GetConfigRequest { stale });
        self.call(Effect::Read, |mut c| async move { c.get_config(req).await }).await
    }

    pub async fn list_nodes(&self) -> Result<pb::ListNodesResponse, CliError> {
        let req = self.req(pb::ListNodesRequest {});
        self.call(Effect::Read, |mut c| async move { c.list_nodes(req).await }).await
    }

    pub async fn add_node(&self, req: pb::AddNodeRequest) -> Result<pb::MembershipResponse, CliError> {
        let req = self.req(req);
        self.call(Effect::Write, |mut c| async move { c.add_node(req).await }).await
    }

    pub async fn remove_node(&self, id: u64) -> Result<pb::MembershipResponse, CliError> {
        let req = self.req(pb::RemoveNodeRequest { id });
        self.call(Effect::Write, |mut c| async move { c.remove_node(req).await }).await
    }

    pub async fn list_backends(&self, stale: bool) -> Result<pb::ListBackendsResponse, CliError> {
        let req = self.req(pb::ListBackendsRequest { stale });
        self.call(Effect::Read, |mut c| async move { c.list_backends(req).await }).await
    }

    pub async fn set_drain(
        &self,
        pool: &str,
        backend: &str,
        draining: bool,
    ) -> Result<pb::WriteResponse, CliError> {
        let req =
            self.req(pb::SetDrainRequest { pool: pool.to_string(), backend: backend.to_string(), draining });
        self.call(Effect::Write, |mut c| async move { c.set_drain(req).await }).await
    }

    /// Drain or undrain the node this client speaks to (not replicated; idempotent).
    pub async fn set_node_drain(&self, drained: bool) -> Result<pb::SetNodeDrainResponse, CliError> {
        let req = self.req(pb::SetNodeDrainRequest { drained });
        self.call(Effect::Write, |mut c| async move { c.set_node_drain(req).await }).await
    }

    pub async fn events(&self, req: pb::EventsRequest) -> Result<pb::EventsResponse, CliError> {
        let req = self.req(req);
        self.call(Effect::Read, |mut c| async move { c.events(req).await }).await
    }

    /// This node's in-flight counts per backend.
    pub async fn local_load(&self) -> Result<pb::LoadReport, CliError> {
        let req = self.req(pb::LocalLoadRequest {});
        self.call(Effect::Read, |mut c| async move { c.local_load(req).await }).await
    }

    /// Open the watch stream. Only opening it is bounded by the timeout; the stream itself lasts.
    pub async fn watch(&self) -> Result<tonic::Streaming<pb::WatchEvent>, CliError> {
        let req = self.unbounded(pb::WatchRequest {});
        self.call(Effect::Read, |mut c| async move { c.watch(req).await }).await
    }
}

/// "timed out" from the transport says which deadline it was.
fn with_duration(e: CliError, timeout: Duration) -> CliError {
    match e {
        CliError::Unreachable { endpoint, reason } if reason == "timed out" => CliError::Unreachable {
            endpoint,
            reason: format!("timed out after {}", humantime::format_duration(timeout)),
        },
        other => other,
    }
}
