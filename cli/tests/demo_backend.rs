//! The real `lbctl demo-backend` process: routes, the `x-backend` header, streaming echo over HTTP/1.1 and
//! h2c, and a graceful exit on SIGTERM that lets an in-flight request finish.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lbfleet_tests::process::signal;
use lbfleet_tests::{http_get, wait_until, BackendProc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

const CHUNK: usize = 64 * 1024;
const ECHO_LEN: usize = 4 * 1024 * 1024 + 123;

type EchoBody = StreamBody<
    tokio_stream::adapters::Map<ReceiverStream<Bytes>, fn(Bytes) -> Result<Frame<Bytes>, std::io::Error>>,
>;

fn echo_request(addr: SocketAddr, rx: mpsc::Receiver<Bytes>) -> hyper::Request<EchoBody> {
    let to_frame: fn(Bytes) -> Result<Frame<Bytes>, std::io::Error> = |b| Ok(Frame::data(b));
    let body = StreamBody::new(ReceiverStream::new(rx).map(to_frame));
    hyper::Request::post(format!("http://{addr}/echo")).header("host", addr.to_string()).body(body).unwrap()
}

async fn feed(tx: mpsc::Sender<Bytes>, data: Vec<u8>) {
    for c in data.chunks(CHUNK) {
        tx.send(Bytes::copy_from_slice(c)).await.expect("request body receiver gone");
    }
}

async fn read_answer(resp: hyper::Response<Incoming>) -> (u16, String, Vec<u8>) {
    let status = resp.status().as_u16();
    let who = resp.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = resp.into_body().collect().await.expect("echo body").to_bytes().to_vec();
    (status, who, body)
}

/// Deterministic pseudo-random bytes (xorshift), so a mismatch is not hidden by a repeating pattern.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn echo_http1(addr: SocketAddr, data: &[u8]) -> (u16, String, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(feed(tx, data.to_vec()));
    let resp = sender.send_request(echo_request(addr, rx)).await.expect("echo over HTTP/1.1");
    let out = read_answer(resp).await;
    feeder.await.unwrap();
    out
}

async fn echo_h2c(addr: SocketAddr, data: &[u8]) -> (u16, String, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(feed(tx, data.to_vec()));
    let resp = sender.send_request(echo_request(addr, rx)).await.expect("echo over h2c");
    let out = read_answer(resp).await;
    feeder.await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_backend_answers_health_names_itself_and_echoes_megabytes() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let b = BackendProc::start_on_free_port("routes", dir.path()).await?;
    let addr: SocketAddr = b.addr.parse()?;

    let (status, headers, body) = http_get(&b.addr, "/health", &[]).await?;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok\n");
    assert_eq!(headers["x-backend"], b.name.as_str());

    let (status, headers, body) = http_get(&b.addr, "/some/path?q=1", &[]).await?;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), format!("{}\nGET /some/path?q=1\n", b.name));
    assert_eq!(headers["x-backend"], b.name.as_str());

    let (status, headers, body) = http_get(&b.addr, "/bytes/300000", &[]).await?;
    assert_eq!((status, body.len()), (200, 300_000));
    assert_eq!(headers["content-length"], "300000");

    let (status, _, body) = http_get(&b.addr, "/sleep/50", &[]).await?;
    assert_eq!(status, 200);
    assert!(body.starts_with(b.name.as_bytes()));

    let (status, headers, _) = http_get(&b.addr, "/sleep/soon", &[]).await?;
    assert_eq!(status, 400);
    assert_eq!(headers["x-backend"], b.name.as_str());

    let data = pattern(ECHO_LEN, 7);
    let (status, who, body) = echo_http1(addr, &data).await;
    assert_eq!((status, who.as_str(), body.len()), (200, b.name.as_str(), data.len()));
    assert!(body == data, "HTTP/1.1 echo differs from what was sent");

    let data = pattern(ECHO_LEN, 11);
    let (status, who, body) = echo_h2c(addr, &data).await;
    assert_eq!((status, who.as_str(), body.len()), (200, b.name.as_str(), data.len()));
    assert!(body == data, "h2c echo differs from what was sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_echo_finish_then_exits_zero() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BackendProc::start_on_free_port("sigterm", dir.path()).await?;
    let addr: SocketAddr = b.addr.parse()?;
    let data = pattern(1024 * 1024, 3);

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::copy_from_slice(&data[..CHUNK])).await.unwrap();
    // The response head arrives once the backend is handling the request: it is in flight now.
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(echo_request(addr, rx)))
        .await
        .expect("response head in time")
        .expect("response head");

    assert!(signal(b.pid().expect("backend running"), libc::SIGTERM), "SIGTERM delivered");

    // New connections are refused once the listener is closed...
    wait_until("the listener to close after SIGTERM", Duration::from_secs(10), || async {
        let accepted = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        ensure!(!accepted, "{addr} still accepts connections");
        Ok(())
    })
    .await?;
    // ...while the request in flight still completes.
    let rest = data[CHUNK..].to_vec();
    let feeder = tokio::spawn(feed(tx, rest));
    let (status, who, body) = tokio::time::timeout(Duration::from_secs(10), read_answer(resp)).await.unwrap();
    feeder.await.unwrap();
    assert_eq!((status, who.as_str()), (200, b.name.as_str()));
    assert!(body == data, "echo cut short by the shutdown");

    let st = b.wait_exit(Duration::from_secs(10)).await?;
    assert!(st.success(), "demo backend exited with {st}");
    Ok(())
}
