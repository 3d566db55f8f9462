//! Reading the PROXY protocol header on a listener with `accept_proxy_protocol` (HTTP and TCP): the
//! thin I/O shell around [`super::decode`].
//!
//! [`accept`] runs first on every accepted connection of such a listener, before any other byte is read
//! (and before TLS, were the listener to terminate it):
//! 1. the connection's source must be in the listener's `from` list (the fronts allowed to speak the
//!    protocol), otherwise it is refused: a client that could send the header itself could claim any
//!    address;
//! 2. the header is read with `peek` and then consumed exactly, so no byte of the client's stream is
//!    taken: each round peeks what has arrived, and either finds the header complete (and consumes just
//!    its bytes) or consumes what it saw, all of it header, and waits for more. At most
//!    [`MAX_HEADER_LEN`] bytes are read, within [`HEADER_TIMEOUT`];
//! 3. the header's source becomes the connection's peer (hash keys, `X-Forwarded-For`, `Forwarded`,
//!    logs, the PROXY header sent on to backends) and its destination the local address; a header
//!    without a usable address (v1 UNKNOWN, v2 LOCAL, UNSPEC, AF_UNIX) leaves the socket's own.
//!
//! A connection whose header is refused is closed by the caller and counted on `/metrics`
//! (`proxy_protocol_headers{listener, result}`, [`Refused::result`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lbfleet_api::config::AcceptProxyProtocol;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::decode::{self, decode, Addresses, Header, MAX_HEADER_LEN};
use crate::proxy::counters::DataplaneMetrics;

/// Longest wait for a complete header after the accept (the spec asks for at least 3 s, to cover a
/// TCP retransmission).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection was refused before its header was accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "source {0} is not one of the listener's trusted PROXY protocol senders (accept_proxy_protocol.from)"
    )]
    Untrusted(IpAddr),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(#[from] decode::Error),
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed after {0} bytes of a PROXY protocol header")]
    Closed(usize),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl Refused {
    /// The `result` label of `proxy_protocol_headers` for this refusal.
    pub fn result(&self) -> &'static str {
        match self {
            Refused::Untrusted(_) => "untrusted",
            Refused::Malformed(_) => "malformed",
            Refused::Timeout(_) => "timeout",
            Refused::Closed(_) | Refused::Io(_) => "closed",
        }
    }
}

/// The connection as the front saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The original client (the socket's peer when the header carries no address).
    pub peer: SocketAddr,
    /// The address the client connected to (the socket's local address when the header carries none).
    pub local: SocketAddr,
    pub header: Header,
}

/// Check that `peer` may send a header, then read it from `stream` within `timeout`. See the module
/// docs.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: &AcceptProxyProtocol,
    timeout: Duration,
) -> Result<Accepted, Refused> {
    if !trusted.trusts(peer.ip()) {
        return Err(Refused::Untrusted(peer.ip()));
    }
    let header = match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(r) => r?,
        Err(_) => return Err(Refused::Timeout(timeout)),
    };
    let (peer, local) = match header.addresses {
        Addresses::Inet { src, dst, .. } => (canonical(src), canonical(dst)),
        Addresses::None(_) => (peer, local),
    };
    Ok(Accepted { peer, local, header })
}

/// [`accept`] with [`HEADER_TIMEOUT`], counted on `/metrics` under `listener`: what the HTTP and TCP
/// proxies run first on every connection of a listener with `accept_proxy_protocol`.
pub async fn accept_counted(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: &AcceptProxyProtocol,
    listener: &str,
    metrics: &DataplaneMetrics,
) -> Result<Accepted, Refused> {
    let r = accept(stream, peer, local, trusted, HEADER_TIMEOUT).await;
    metrics.proxy_protocol_header(listener, r.as_ref().map_or_else(Refused::result, |_| "accepted"));
    r
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries, so a client hashes and shows the same
/// whichever family the front wrote it in.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Read exactly the header's bytes from `stream` (see the module docs).
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, Refused> {
    let mut seen: Vec<u8> = Vec::with_capacity(64);
    let mut buf = [0u8; MAX_HEADER_LEN];
    loop {
        // `decode` never leaves a prefix of MAX_HEADER_LEN bytes or more undecided, so room > 0.
        let room = MAX_HEADER_LEN - seen.len();
        let n = stream.peek(&mut buf[..room]).await?;
        if n == 0 {
            return Err(Refused::Closed(seen.len()));
        }
        let before = seen.len();
        seen.extend_from_slice(&buf[..n]);
        match decode(&seen)? {
            Some(header) => {
                // The peeked bytes are in the socket's buffer: this read returns at once.
                stream.read_exact(&mut buf[..header.len - before]).await?;
                return Ok(header);
            }
            None => {
                stream.read_exact(&mut buf[..n]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode, Version};
    use super::*;
    use crate::proxy::testkit::{ip, within};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn trust_all() -> AcceptProxyProtocol {
        AcceptProxyProtocol { from: vec!["0.0.0.0/0".parse().unwrap()] }
    }

    /// A connected pair on 127.0.180.x: (client side, accepted side, the accepted side's peer).
    async fn pair(d: u8) -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind(SocketAddr::new(ip(180, d), 0)).await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn the_header_is_consumed_exactly_even_when_it_arrives_byte_by_byte() {
        let (mut client, mut server, peer) = pair(1).await;
        let local = server.local_addr().unwrap();
        let src: SocketAddr = "203.0.113.9:41000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let header = encode(Version::V1, src, dst);
        let writer = tokio::spawn(async move {
            for b in header {
                client.write_all(&[b]).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"after").await.unwrap();
            client
        });
        let got = within("the header", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
        let got = got.unwrap();
        assert_eq!((got.peer, got.local, got.header.version), (src, dst, Version::V1));
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 5];
        within("the client's bytes", server.read_exact(&mut rest)).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn bytes_after_the_header_in_the_same_segment_stay_for_the_client_stream() {
        let (mut client, mut server, peer) = pair(2).await;
        let local = server.local_addr().unwrap();
        let src: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let mut wire = encode(Version::V2, src, dst);
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        client.write_all(&wire).await.unwrap();
        let got = within("the header", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
        assert_eq!(got.unwrap().peer, src);
        let mut rest = [0u8; 18];
        within("the request", server.read_exact(&mut rest)).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_sockets_own_addresses() {
        for wire in [b"PROXY UNKNOWN\r\n".to_vec(), {
            let mut v = super::super::V2_SIGNATURE.to_vec();
            v.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            v
        }] {
            let (mut client, mut server, peer) = pair(3).await;
            let local = server.local_addr().unwrap();
            client.write_all(&wire).await.unwrap();
            let got =
                within("the header", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
            let got = got.unwrap();
            assert_eq!((got.peer, got.local), (peer, local));
        }
    }

    #[tokio::test]
    async fn ipv4_mapped_sources_become_ipv4() {
        let (mut client, mut server, peer) = pair(4).await;
        let local = server.local_addr().unwrap();
        client.write_all(b"PROXY TCP6 ::ffff:10.0.0.7 2001:db8::1 5000 80\r\n").await.unwrap();
        let got = within("the header", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
        assert_eq!(got.unwrap().peer, "10.0.0.7:5000".parse().unwrap());
    }

    #[tokio::test]
    async fn malformed_untrusted_cut_and_slow_headers_are_refused() {
        let (mut client, mut server, peer) = pair(5).await;
        let local = server.local_addr().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let r = within("refusal", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
        assert_eq!(r.unwrap_err().result(), "malformed");

        let (_client, mut server, peer) = pair(6).await;
        let only_other: AcceptProxyProtocol =
            AcceptProxyProtocol { from: vec!["10.0.0.0/8".parse().unwrap()] };
        let r = within("refusal", accept(&mut server, peer, local, &only_other, HEADER_TIMEOUT)).await;
        assert!(matches!(r, Err(Refused::Untrusted(a)) if a == peer.ip()), "{r:?}");

        let (mut client, mut server, peer) = pair(7).await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(client);
        let r = within("refusal", accept(&mut server, peer, local, &trust_all(), HEADER_TIMEOUT)).await;
        assert!(matches!(r, Err(Refused::Closed(18))), "{r:?}");

        let (mut client, mut server, peer) = pair(8).await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let short = Duration::from_millis(200);
        let r = within("refusal", accept(&mut server, peer, local, &trust_all(), short)).await;
        assert!(matches!(r, Err(Refused::Timeout(d)) if d == short), "{r:?}");
        drop(client);
    }
}
