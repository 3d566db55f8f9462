//! What clients and peers may make one node hold: the limits of its gRPC server (Raft and Admin on
//! one port) and of its admin HTTP server, each with its default. Peer messages are bounded apart,
//! in `raft::bounds`; the data-plane listeners take theirs from the replicated config.
//!
//! gRPC (every limit is per node unless it says otherwise):
//!
//! | limit | default | at the limit |
//! |---|---|---|
//! | open connections, `--grpc-max-connections` | [`GRPC_MAX_CONNECTIONS`] = 1024 | new connections wait in the kernel's accept queue until one closes (`crate::accept`) |
//! | concurrent HTTP/2 streams per connection | [`GRPC_MAX_CONCURRENT_STREAMS`] = 256 | the client queues further calls (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`) |
//! | requests being handled per connection | [`GRPC_CONCURRENCY_PER_CONNECTION`] = 64 | further requests wait for a slot (a `Watch` holds one only until its stream starts) |
//! | time to answer a request | [`GRPC_REQUEST_TIMEOUT`] = 30 s, or twice the longest forwarded request when that is longer ([`grpc_request_timeout`]) | `cancelled: Timeout expired`; the time to *start* a response: a `Watch` stream, once started, is not cut |
//! | message size, Raft service | `raft::MAX_RAFT_MESSAGE_BYTES` = 64 MiB | `resource_exhausted` |
//! | message size, Admin service | [`ADMIN_MAX_MESSAGE_BYTES`] = 16 MiB | `resource_exhausted` |
//! | request header list | [`GRPC_MAX_HEADER_LIST_BYTES`] = 16 KiB | the stream is refused |
//! | HTTP/2 keep-alive | ping every [`GRPC_KEEPALIVE_INTERVAL`] = 10 s, close after [`GRPC_KEEPALIVE_TIMEOUT`] = 10 s without the ack | a silent client's connection (and its place under the cap) is freed |
//! | TCP keep-alive | probes after [`TCP_KEEPALIVE_IDLE`] = 30 s idle, every [`TCP_KEEPALIVE_INTERVAL`] = 10 s | the kernel closes a dead peer's socket |
//! | accept errors (out of descriptors) | pause 50 ms doubling to 1 s, one warning per 10 s | see `crate::accept` |
//!
//! Admin HTTP (`admin::http`):
//!
//! | limit | default | at the limit |
//! |---|---|---|
//! | open connections, `--admin-http-max-connections` | [`ADMIN_HTTP_MAX_CONNECTIONS`] = 256 | new connections wait in the accept queue |
//! | time to send a request's headers (HTTP/1) | [`ADMIN_HTTP_HEADER_TIMEOUT`] = 5 s | the connection is closed (also when the headers trickle in byte by byte) |
//! | connection without traffic either way (idle keep-alive, a silent client, HTTP/2 too) | [`ADMIN_HTTP_IDLE_TIMEOUT`] = 30 s | the connection is closed |
//! | request head size | [`ADMIN_HTTP_MAX_HEADER_BYTES`] = 16 KiB (HTTP/1 read buffer, HTTP/2 header list) | `431` (HTTP/1) or the stream is refused |
//! | header count (HTTP/1) | [`ADMIN_HTTP_MAX_HEADERS`] = 64 | `431` |
//! | request body | [`ADMIN_HTTP_MAX_BODY_BYTES`] = 64 KiB (every path is read-only; the body is never read) | `413` and the connection is closed |
//! | concurrent HTTP/2 streams per connection | [`ADMIN_HTTP_MAX_CONCURRENT_STREAMS`] = 32 | the client queues further requests |

use std::time::Duration;

/// Default cap on open gRPC connections (peers, lbctl, other nodes' fan-out).
pub const GRPC_MAX_CONNECTIONS: usize = 1024;
/// Concurrent HTTP/2 streams one gRPC connection may open.
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Requests one gRPC connection may have in its handlers at once.
pub const GRPC_CONCURRENCY_PER_CONNECTION: usize = 64;
/// Floor of the time a gRPC handler has to answer (see [`grpc_request_timeout`]).
pub const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message the Admin service decodes or encodes (a config well above the config's own
/// size bounds, a status of every node).
pub const ADMIN_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest header list of one gRPC request (metadata, tokens).
pub const GRPC_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 ping interval of the gRPC server towards its clients.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long the gRPC server waits for a ping's ack before closing the connection.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive on accepted gRPC and admin HTTP sockets: first probe after this long idle.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// TCP keep-alive: interval between probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Default cap on open admin HTTP connections.
pub const ADMIN_HTTP_MAX_CONNECTIONS: usize = 256;
/// Time a client has to send one request's headers (HTTP/1), from the start of the request.
pub const ADMIN_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin HTTP connection with no bytes either way for this long is closed.
pub const ADMIN_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1 read buffer; HTTP/2 header list).
pub const ADMIN_HTTP_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers in one HTTP/1 request.
pub const ADMIN_HTTP_MAX_HEADERS: usize = 64;
/// Largest request body announced (`content-length`) or sent; every admin HTTP path is read-only.
pub const ADMIN_HTTP_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Concurrent HTTP/2 streams per admin HTTP connection.
pub const ADMIN_HTTP_MAX_CONCURRENT_STREAMS: u32 = 32;

/// The gRPC request timeout for a node whose longest forwarded request may take `forward`
/// (`Proposer::forward_timeout`: three write timeouts and the leader wait): [`GRPC_REQUEST_TIMEOUT`],
/// or twice `forward` when that is longer, so no request the node itself bounds is cut short.
pub fn grpc_request_timeout(forward: Duration) -> Duration {
    GRPC_REQUEST_TIMEOUT.max(forward.saturating_mul(2))
}

/// A tonic server builder with every gRPC limit above (the connection cap and TCP options are the
/// accept loop's, `crate::accept`).
pub fn grpc_server(request_timeout: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION)
        .timeout(request_timeout)
        .http2_max_header_list_size(GRPC_MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_timeout_never_cuts_a_forwarded_request_short() {
        assert_eq!(grpc_request_timeout(Duration::from_secs(1)), GRPC_REQUEST_TIMEOUT);
        // Defaults: a 5 s write timeout forwards for at most 3 × 5 s + 3 s.
        assert_eq!(grpc_request_timeout(Duration::from_secs(18)), Duration::from_secs(36));
        assert_eq!(grpc_request_timeout(Duration::MAX), Duration::MAX);
    }
}
