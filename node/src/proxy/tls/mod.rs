//! TLS of the data plane: termination on HTTP and TCP listeners, passthrough by SNI, and TLS
//! towards backends.
//!
//! Layout:
//! - [`resolver`]: pure: the certificate a ClientHello's SNI gets.
//! - [`store`]: the per-listener server configs and per-pool client configs, rebuilt when the config
//!   or a file changes and swapped atomically.
//! - [`client_hello`]: passthrough: the bounded read of a ClientHello and its SNI.
//!
//! [`accept`] is the one handshake every terminating listener does (bounded by the listener's
//! `handshake_timeout`, a failure counted in `lbfleet_tls_handshake_failures_total{listener}`);
//! [`connect`] is the one every TLS backend connection does.

pub mod client_hello;
pub mod resolver;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use super::ProxyContext;

pub use store::{TlsStore, POLL_FILES};

/// Terminate TLS on `stream`, a connection of listener `name`; `None` (counted, logged at debug) when
/// the listener has no usable certificates or the handshake fails or takes over `timeout`.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    timeout: Duration,
    ctx: &ProxyContext,
) -> Option<server::TlsStream<TcpStream>> {
    let failed = |why: String| {
        ctx.metrics.tls_handshake_failure(name);
        tracing::debug!(listener = %name, %peer, "TLS handshake failed: {why}");
    };
    let Some(cfg) = ctx.tls.server(name) else {
        failed("the listener has no usable certificate (see the node's log)".into());
        return None;
    };
    match tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(cfg).accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            failed(e.to_string());
            None
        }
        Err(_) => {
            failed(format!("not finished within {timeout:?}"));
            None
        }
    }
}

/// A TLS connection to a backend over `stream`, verified with `cfg` against `server_name` (or the
/// backend's IP address).
pub async fn connect(
    cfg: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
    backend: SocketAddr,
    stream: TcpStream,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let name = match server_name {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server_name {n}: {e}"))
        })?,
        None => ServerName::IpAddress(backend.ip().into()),
    };
    tokio_rustls::TlsConnector::from(cfg).connect(name, stream).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("TLS handshake with backend {backend} failed: {e}"))
    })
}
