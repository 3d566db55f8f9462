//! Small network probes used while a local cluster starts: one HTTP/1.1 GET, one TCP connect.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Answer of [`http_get`].
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// `GET path` over a fresh HTTP/1.1 connection, bounded by `timeout`; bodies above 1 MiB are refused.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpAnswer> {
    http_get_limited(addr, path, timeout, 1 << 20).await
}

/// [`http_get`] refusing bodies above `max_body` bytes.
pub async fn http_get_limited(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> anyhow::Result<HttpAnswer> {
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {addr} failed"))?;
        let conn_task = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .context("cannot build the request")?;
        let resp =
            sender.send_request(req).await.with_context(|| format!("GET http://{addr}{path} failed"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the body of http://{addr}{path} failed: {e}"))?
            .to_bytes();
        conn_task.abort();
        Ok(HttpAnswer { status, headers, body })
    })
    .await
    .map_err(|_| {
        anyhow!("GET http://{addr}{path}: no answer within {}", humantime::format_duration(timeout))
    })?
}

/// Whether a TCP connection to `addr` succeeds within `timeout`.
pub async fn tcp_connects(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}
