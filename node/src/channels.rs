//! One lazily connected gRPC channel per peer address, shared by every call to that peer.
//!
//! A tonic `Channel` multiplexes calls over one HTTP/2 connection and reconnects by itself after a
//! failure, so creating one per RPC (as some examples do) only adds connection setup (here a TCP and
//! a TLS handshake) to every call. Every channel is mutual TLS with the node's
//! [`crate::tls::NodeTls::client_config`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long establishing a TCP connection to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive: a silent peer (paused, partitioned) is detected within about two intervals.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Cache of channels keyed by `host:port`.
#[derive(Clone)]
pub struct ChannelCache {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: ClientTlsConfig,
    /// The address connections leave from (the node's own IP), if any.
    local: Option<IpAddr>,
}

impl ChannelCache {
    /// An empty cache whose channels use `tls`.
    pub fn new(tls: ClientTlsConfig) -> Self {
        ChannelCache { channels: Arc::default(), tls, local: None }
    }

    /// The same cache, its connections leaving from `ip` (unless it is unspecified). Nodes bind their
    /// peer connections to their own IP, as they do those to backends: a peer sees which node calls,
    /// and firewall rules (or a partition test on loopback, where every address is local) can cut
    /// one pair of nodes.
    pub fn from_ip(mut self, ip: IpAddr) -> Self {
        self.local = (!ip.is_unspecified()).then_some(ip);
        self
    }

    /// Another empty cache with the same settings (its channels are connections of their own).
    pub fn fresh(&self) -> Self {
        ChannelCache { channels: Arc::default(), tls: self.tls.clone(), local: self.local }
    }

    /// The channel to `addr` (`host:port`), created on first use. Fails only for an address that
    /// cannot form a URI; connection errors surface on the calls made through the channel.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = endpoint(addr, self.tls.clone())?.local_address(self.local).connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// The endpoint settings used for every peer.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, String> {
    crate::config::split_host_port(addr)?;
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| format!("invalid peer address \"{addr}\": {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("TLS settings for \"{addr}\": {e}"))?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true))
}

/// Whether the call's own deadline (`Request::set_timeout`) expired before an answer came.
pub fn is_deadline_expired(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether a failed call never reached the peer's service (connection refused, reset, timed out at
/// the transport), as opposed to an answer the peer sent. Only the former is safe to retry elsewhere
/// and means "unreachable".
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>()
            || err.is::<tonic::transport::Error>()
            || err.is::<hyper::Error>()
            || err.is::<std::io::Error>()
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_refused_with_the_address() {
        let cache = ChannelCache::new(ClientTlsConfig::new());
        let err = cache.get("no port").unwrap_err();
        assert!(err.contains("no port"), "{err}");
    }

    #[tokio::test]
    async fn the_same_address_reuses_one_entry() {
        let cache = ChannelCache::new(ClientTlsConfig::new());
        cache.get("127.0.0.1:1").unwrap();
        cache.get("127.0.0.1:1").unwrap();
        cache.get("127.0.0.2:1").unwrap();
        assert_eq!(cache.channels.lock().unwrap().len(), 2);
    }

    #[test]
    fn an_answer_from_a_peer_is_not_a_transport_failure() {
        assert!(!is_transport_failure(&tonic::Status::unavailable("no quorum")));
        assert!(!is_transport_failure(&tonic::Status::invalid_argument("bad")));
    }

    #[test]
    fn a_connect_error_is_a_transport_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(is_transport_failure(&status));
    }
}
