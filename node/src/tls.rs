//! The node's TLS material: the cluster CA, this node's certificate and key, and the operators'
//! hashed tokens, read once at start.
//!
//! Every gRPC connection, to and from peers, is mutual TLS with certificates of the cluster CA
//! (`lbctl ca init` makes them): the server asks every client for a certificate but lets a client
//! without one finish the handshake, so that `lbctl` can authenticate with a bearer token instead;
//! [`crate::auth`] then decides per method. Clients verify a node's certificate against
//! [`SERVER_NAME`], which every node certificate carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use lbfleet_api::auth::{node_id_from_cert, pem_certificates, TokenSet, SERVER_NAME};
use lbfleet_api::NodeId;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake on the gRPC port may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest certificate or key file read.
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Where the node's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): peers and this node's own certificate chain to it.
    pub ca: PathBuf,
    /// This node's certificate (PEM), naming `node-<id>.lbfleet` and `lbfleet-node`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The operators' tokens, hashed (TOML, see [`TokenSet`]); `None`: only nodes may call.
    pub tokens: Option<PathBuf>,
}

/// The loaded material.
#[derive(Clone)]
pub struct NodeTls {
    ca: Certificate,
    identity: Identity,
    /// The operators' tokens.
    pub tokens: Arc<TokenSet>,
}

fn read_limited(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.len() > MAX_PEM_BYTES {
        bail!("{what} {}: {} bytes is over the limit of {MAX_PEM_BYTES}", path.display(), meta.len());
    }
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

impl NodeTls {
    /// Read the files and check that this node's certificate names node `id`.
    pub fn load(files: &TlsFiles, id: NodeId) -> anyhow::Result<NodeTls> {
        let ca = read_limited(&files.ca, "ca_file")?;
        let cert = read_limited(&files.cert, "cert_file")?;
        let key = read_limited(&files.key, "key_file")?;
        if pem_certificates(&ca).is_empty() {
            bail!("ca_file {}: no PEM certificate in it", files.ca.display());
        }
        let Some(leaf) = pem_certificates(&cert).into_iter().next() else {
            bail!("cert_file {}: no PEM certificate in it", files.cert.display());
        };
        match node_id_from_cert(&leaf) {
            Ok(named) if named == id => {}
            Ok(named) => bail!(
                "cert_file {} names node {named}, but this node's id is {id}: give it its own certificate \
                 (lbctl ca issue --id {id})",
                files.cert.display()
            ),
            Err(e) => bail!("cert_file {}: {e}", files.cert.display()),
        }
        let tokens = match &files.tokens {
            None => TokenSet::default(),
            Some(path) => {
                let text = read_limited(path, "tokens_file")?;
                let text = String::from_utf8(text)
                    .map_err(|_| anyhow::anyhow!("tokens_file {}: not UTF-8", path.display()))?;
                TokenSet::parse(&text).map_err(|e| anyhow::anyhow!("tokens_file {}: {e}", path.display()))?
            }
        };
        Ok(NodeTls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            tokens: Arc::new(tokens),
        })
    }

    /// The gRPC server's TLS: this node's certificate; client certificates of the cluster CA are
    /// asked for and verified, and optional (operators may use a token instead).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The TLS of this node's calls to peers: verify the peer against the cluster CA and
    /// [`SERVER_NAME`], present this node's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(SERVER_NAME)
    }
}
