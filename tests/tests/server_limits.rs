//! The limits of a node's servers, each hit once on a real process and answered as documented
//! (`node/src/limits.rs`, `node/src/accept.rs`), with the node still serving:
//! - the gRPC connection cap: further connections wait until one closes, open clients are served;
//! - an admin HTTP slowloris is cut after the header timeout while `/healthz` answers others, and
//!   a body over the limit gets 413;
//! - out of file descriptors, the accept loops back off instead of spinning (CPU time from
//!   `/proc/PID/stat`) and the node serves again once connections close; the soft open-file limit
//!   is raised to the hard one at start;
//! - a storage error (the data dir on a full tmpfs) stops the process with a non-zero exit.
//!
//! Addresses: one node per test on 127.0.142.11 … 127.0.145.11.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lbfleet_api::pb;
use lbfleet_tests::{admin, http_get, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ELECTION: Duration = Duration::from_secs(20);

/// `utime + stime` of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// (soft, hard) "Max open files" of `pid`.
fn nofile(pid: u32) -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files")).ok_or_else(|| anyhow!("no line"))?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    ensure!(v.len() == 2, "{line}");
    Ok((v[0], v[1]))
}

async fn status_within(addr: &str, timeout: Duration) -> Result<pb::NodeStatus> {
    let mut c = tokio::time::timeout(timeout, admin::connect_with_timeout(addr, timeout))
        .await
        .map_err(|_| anyhow!("connect to {addr} timed out"))??;
    Ok(c.local_status(pb::LocalStatusRequest {}).await?.into_inner())
}

async fn healthz(addr: &str) -> Result<()> {
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(3), http_get(addr, "/healthz", &[]))
        .await
        .map_err(|_| anyhow!("/healthz timed out"))??;
    ensure!(status == 200, "/healthz answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_grpc_connection_cap_new_connections_wait_and_open_ones_are_served() -> Result<()> {
    const CAP: usize = 4;
    let mut c = Cluster::start(142, 1, &["--grpc-max-connections", &CAP.to_string()])?;
    c.wait_for_leader(ELECTION).await?;
    let addr = c.grpc_addr(1);

    let mut open = Vec::new();
    for i in 0..CAP {
        let mut client = admin::connect_with_timeout(&addr, Duration::from_secs(5)).await?;
        client.local_status(pb::LocalStatusRequest {}).await.with_context(|| format!("client {i}"))?;
        open.push(client);
    }
    // One over the cap: TCP completes in the kernel's accept queue, but nothing answers.
    // Lazy: connecting (TCP, then the TLS handshake the node never starts) happens inside the call.
    let lazy =
        admin::lazy_endpoint(&addr, Duration::from_millis(1500), lbfleet_tests::creds().operator_tls())?;
    let mut extra = pb::admin_client::AdminClient::with_interceptor(
        lazy.connect_lazy(),
        admin::Bearer::of(&lbfleet_tests::creds().admin_token),
    );
    let started = Instant::now();
    // Bounded here too: a lazy channel's connect (TLS handshake included) is not under its call timeout.
    let r = tokio::time::timeout(Duration::from_millis(1500), extra.local_status(pb::LocalStatusRequest {}))
        .await;
    ensure!(!matches!(r, Ok(Ok(_))), "a connection over the cap was served: {r:?}");
    ensure!(started.elapsed() >= Duration::from_millis(1000), "refused at once rather than queued: {r:?}");
    // Those already open are still served.
    for (i, client) in open.iter_mut().enumerate() {
        client.local_status(pb::LocalStatusRequest {}).await.with_context(|| format!("open client {i}"))?;
    }
    // One closes: the waiting connection is accepted and served.
    open.pop();
    wait_until("the queued connection to be served once one closed", Duration::from_secs(10), || {
        let mut extra = extra.clone();
        async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(2), extra.local_status(pb::LocalStatusRequest {}));
            Ok(answer.await??.into_inner())
        }
    })
    .await?;
    ensure!(c.node(1).log_tail(100).contains("connection cap reached"), "{}", c.node(1).log_tail(20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_http_slowloris_is_cut_after_the_header_timeout() -> Result<()> {
    // node/src/limits.rs: ADMIN_HTTP_HEADER_TIMEOUT.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    let mut c = Cluster::start(143, 1, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let http = c.http_addr(1);

    let mut slow = TcpStream::connect(&http).await?;
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
    let dribble = b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_after = None;
    for (i, byte) in dribble.iter().cycle().enumerate() {
        ensure!(started.elapsed() < HEADER_TIMEOUT * 4, "the slow client was never cut");
        if slow.write_all(&[*byte]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        // Others are answered meanwhile.
        if i % 8 == 0 {
            healthz(&http).await.context("/healthz while a client dribbles its headers")?;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // A 408 is fine too; the connection must close right after it.
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                ensure!(text.starts_with("HTTP/1.1 408"), "unexpected answer to a slow client: {text}");
            }
        }
    }
    let cut = cut_after.expect("the loop only ends when cut");
    ensure!(
        cut >= HEADER_TIMEOUT - Duration::from_millis(500) && cut <= HEADER_TIMEOUT + Duration::from_secs(3),
        "the slow client was cut after {cut:?}, expected about {HEADER_TIMEOUT:?}"
    );
    eprintln!("slowloris cut after {cut:?}");
    healthz(&http).await?;

    // A body over the limit is refused without being read.
    let mut big = TcpStream::connect(&http).await?;
    big.write_all(b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n").await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer);
    ensure!(text.starts_with("HTTP/1.1 413"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_node_backs_off_and_recovers() -> Result<()> {
    const SOFT: u64 = 64;
    const HARD: u64 = 128;
    let mut c = Cluster::builder(144).nodes(0).start()?;
    let mut node = c.make_node(1, Some(&format!("1={}", c.grpc_addr(1))));
    node.set_nofile_limit(SOFT, HARD);
    node.start()?;
    c.nodes.push(node);
    c.wait_for_leader(ELECTION).await?;
    let pid = c.node(1).pid().expect("started");
    ensure!(nofile(pid)? == (HARD, HARD), "soft limit not raised: {:?}", nofile(pid)?);
    ensure!(c.node(1).log_tail(100).contains("raised the open-file limit"), "{}", c.node(1).log_tail(20));

    // Connections until the node has no descriptor left; the rest wait in its accept queue.
    let addr = c.grpc_addr(1);
    let mut conns = Vec::new();
    for _ in 0..HARD + 40 {
        conns.push(TcpStream::connect(&addr).await?);
    }
    wait_until("the node to run out of descriptors", Duration::from_secs(15), || async {
        let n = open_fds(pid)?;
        ensure!(n as u64 >= HARD - 1, "{n} descriptors open");
        Ok(n)
    })
    .await?;
    let log = c.node(1).log.clone();
    wait_until("the accept failure to be logged", Duration::from_secs(5), || {
        let log = log.clone();
        async move {
            ensure!(std::fs::read_to_string(&log)?.contains("accept failed"), "not yet");
            Ok(())
        }
    })
    .await?;

    // No spinning: a busy accept loop burns a whole core (100 ticks a second).
    let window = Duration::from_secs(3);
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(window).await; // a measuring window, not a wait for a condition
    let used = cpu_ticks(pid)? - before;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let used_ms = used * 1000 / hz;
    eprintln!("CPU over {window:?} at EMFILE: {used_ms} ms");
    ensure!(used_ms < 600, "the node used {used_ms} ms of CPU in {window:?} while out of descriptors");
    let warnings = c.node(1).log_tail(10_000).matches("accept failed").count();
    ensure!(warnings <= 4, "{warnings} accept warnings in a few seconds: not rate-limited");

    drop(conns);
    let st = wait_until("the node to serve again", Duration::from_secs(15), || {
        status_within(&addr, Duration::from_secs(2))
    })
    .await?;
    ensure!(st.role == "leader", "{st:?}");
    let http = c.http_addr(1);
    wait_until("admin HTTP to serve again", Duration::from_secs(15), || healthz(&http)).await?;
    ensure!(c.node(1).is_running(), "the node died:\n{}", c.node(1).log_tail(30));
    Ok(())
}

/// Unmounts (lazily) on drop, also when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<Option<Mount>> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .context("run mount")?;
    if !out.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs for the data dir ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Ok(None);
    }
    Ok(Some(Mount(dir.to_path_buf())))
}

/// A config of about 100 KB: bulk pools that never change, and a first pool whose backend port is
/// `marker`, so every apply is a new entry of that size.
fn bulky_config(marker: u32) -> String {
    let mut s = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"127.0.0.1:{}\"\n\
         [pool.health]\nkind = \"none\"\n",
        10_000 + marker % 50_000
    );
    for p in 0..8 {
        s.push_str(&format!(
            "[[pool]]\nname = \"bulk{p}\"\npolicy = \"maglev\"\ntable_size = 2503\n[pool.health]\nkind = \"none\"\n"
        ));
        for b in 0..250 {
            s.push_str(&format!("[[pool.backend]]\naddr = \"10.{p}.{}.{}:8080\"\n", b / 200, b % 200 + 1));
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_stops_the_node_with_a_non_zero_exit() -> Result<()> {
    let mut c = Cluster::builder(145).nodes(0).start()?;
    let node = c.make_node(1, Some(&format!("1={}", c.grpc_addr(1))));
    let Some(_mount) = mount_tmpfs(&node.data_dir, "6m")? else { return Ok(()) };
    c.nodes.push(node);
    c.node(1).start()?;
    c.wait_for_leader(ELECTION).await?;
    let addr = c.grpc_addr(1);
    let pid = c.node(1).pid().expect("started");

    // Fill the data dir with config applies until the store fails.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut applied = 0u32;
    let mut last_error = None;
    while c.node(1).is_running() {
        if Instant::now() > deadline {
            bail!(
                "still running after {applied} applies; last error {last_error:?}\n{}",
                c.node(1).log_tail(30)
            );
        }
        match admin::apply_toml(&addr, &bulky_config(applied + 1)).await {
            Ok(_) => applied += 1,
            Err(e) => {
                last_error = Some(e.to_string());
                // A failed write is the store failing (then the node stops, bounded by its drain
                // timeouts) or a slow commit; write again if it does not stop.
                let _ = wait_until("the node to stop", Duration::from_secs(10), || async move {
                    ensure!(!lbfleet_tests::process::alive(pid), "still running");
                    Ok(())
                })
                .await;
            }
        }
    }
    let code = c.node(1).wait_exit(Duration::from_secs(60)).await?;
    eprintln!("node stopped after {applied} applies with exit code {code:?}; last error: {last_error:?}");
    ensure!(
        matches!(code, Some(n) if n != 0),
        "exit code {code:?}, expected non-zero\n{}",
        c.node(1).log_tail(30)
    );
    let log = c.node(1).log_tail(60);
    ensure!(log.contains("fatal") || log.contains("storage"), "no clear log line about the failure:\n{log}");
    Ok(())
}
