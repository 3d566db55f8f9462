//! Passthrough: read a connection's ClientHello (bounded in size and time) to learn its SNI, keeping
//! every byte read so that it can be sent on to the backend untouched.

use rustls::server::Acceptor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes read before the ClientHello must be complete (a ClientHello fits in one 16 KiB record;
/// four allow for one split over records).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Why a passthrough connection was closed before any backend was chosen.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("the client closed before its ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TLS ClientHello: {0}")]
    Malformed(String),
    #[error("no complete ClientHello in the first {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("no complete ClientHello within {0:?}")]
    Timeout(std::time::Duration),
}

/// The ClientHello's SNI (`None`: it names none) and every byte read from `stream` to find it.
pub async fn read_sni(stream: &mut TcpStream) -> Result<(Option<String>, Vec<u8>), HelloError> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        if seen.len() >= MAX_CLIENT_HELLO {
            return Err(HelloError::TooLarge);
        }
        let room = buf.len().min(MAX_CLIENT_HELLO - seen.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        seen.extend_from_slice(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(HelloError::Malformed(e.to_string())),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_string);
                return Ok((sni, seen));
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(HelloError::Malformed(e.to_string())),
        }
    }
}
