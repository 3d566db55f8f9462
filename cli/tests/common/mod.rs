//! Shared helpers of the lbctl integration tests: run the real binary, wait with deadlines, speak HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

pub const LBCTL: &str = env!("CARGO_BIN_EXE_lbctl");

/// Build `lbnode` next to `lbctl` (same cargo, profile and target dir), once per test process:
/// `cargo test` builds only this package's own binaries.
pub fn ensure_lbnode() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        // Exactly the command scripts/test.sh runs first, so the features match and this is a no-op there.
        cmd.args(["build", "--workspace", "--bins"]);
        if Path::new(LBCTL).parent().and_then(Path::file_name).is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).stdin(Stdio::null()).status();
        assert!(status.is_ok_and(|s| s.success()), "cargo build -p lbfleet-node failed");
    });
}

/// Run lbctl to completion with a deadline; LBCTL_ENDPOINT is cleared so defaults are predictable.
pub fn lbctl(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(LBCTL)
        .args(args)
        .env_remove("LBCTL_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lbctl");
    let until = Instant::now() + deadline;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "lbctl {args:?} did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `cond` until it returns true or the deadline passes.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a child to exit, with a deadline.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {deadline:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `lbctl demo-backend`.
pub struct DemoBackend {
    pub child: Child,
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start a demo backend on the first free port of 127.0.0.1:9901..=9999 (starting at an offset taken from
/// our pid, so parallel test binaries rarely collide). A port taken by someone else makes the backend exit
/// with "cannot listen"; then the next port is tried.
pub fn start_demo_backend(tag: &str, dir: &Path) -> DemoBackend {
    let offset = (std::process::id() as u16) % 99;
    let name = format!("backend-{tag}-{}", std::process::id());
    for i in 0..99u16 {
        let port = 9901 + (offset + i) % 99;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(format!("{name}-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(LBCTL)
            .args(["demo-backend", "--name", &name, "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn lbctl demo-backend");
        let mut b = DemoBackend { child, name: name.clone(), addr, log };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = b.child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&b.log).unwrap_or_default();
                assert!(
                    text.contains("cannot listen"),
                    "demo backend exited ({st}) for another reason:\n{text}"
                );
                break; // port taken: try the next one
            }
            if let Ok((200, Some(who))) = blocking_get(addr, "/health") {
                if who == name {
                    return b;
                }
                // Someone else's server on this port answered: ours will fail to bind and exit.
            }
            assert!(Instant::now() < until, "demo backend on {addr} never answered /health");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no free port in 127.0.0.1:9901..=9999 for a demo backend");
}

pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// One blocking HTTP/1.1 GET with `Connection: close` (std sockets only, usable anywhere); returns the
/// status and the `x-backend` header.
pub fn blocking_get(addr: SocketAddr, path: &str) -> Result<(u16, Option<String>), String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let backend = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-backend")))
        .map(|(_, v)| v.trim().to_string());
    Ok((status, backend))
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr.to_string()).body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status, headers, body })
}

/// Deterministic pseudo-random bytes (xorshift), so a mismatch is not hidden by a repeating pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
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
