//! HTTP for tests: one GET on a fresh connection, and response headers as text.

use std::time::Duration;

use anyhow::{anyhow, Result};

/// A response header as text ("" when absent or not text), e.g. `header(&h, "x-backend")`.
pub fn header(headers: &hyper::HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// One HTTP/1.1 GET on a fresh connection: (status, headers, body).
pub async fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out"))??;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}
