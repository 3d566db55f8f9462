//! Leader duties end to end: real lbnode processes, real probes, real Raft.
//!
//! - a killed node is marked down by the leader (status and the event log show it) and up again
//!   when it comes back; a killed leader is marked down by its successor, once;
//! - `lbctl drain --wait` commits the drain and returns when no node has anything in flight to the
//!   backend; `LocalLoad` and `ReportLoad` answer on every node;
//! - load through the TCP proxy (open connections to demo backends) and through the HTTP proxy (slow
//!   `/sleep/<ms>` requests) makes the leader activate a standby (and run the hook its config names,
//!   defined in the nodes' local config), and deactivate it once the load is gone; `drain --wait`
//!   follows real requests until they finish.
//!
//! Every test uses its own 127.0.<net>.0/24 (91..=99 belong to this file).

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, pb, wait_until, BackendProc, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ELECTION: Duration = Duration::from_secs(20);
/// Three missed probes a second apart, a commit, and slack for a loaded machine.
const MARKED: Duration = Duration::from_secs(30);

/// Run `lbctl` with `args`: (exit code, stdout, stderr). Its own deadlines (`--timeout`, at most 30 s here,
/// and 60 s for a `drain --wait` without one) end it before the harness's.
async fn lbctl(args: &[&str]) -> Result<(i32, String, String)> {
    let out = lbfleet_tests::lbctl(args, Duration::from_secs(90)).await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn events(addr: &str) -> Result<Vec<pb::EventRecord>> {
    let mut c = admin::connect(addr).await?;
    Ok(c.events(pb::EventsRequest { since_index: 0, limit: 0, stale: false }).await?.into_inner().events)
}

/// Wait until `addr`'s status says node `id` is (or is not) marked down.
async fn wait_down(addr: &str, id: u64, down: bool) -> Result<pb::StatusResponse> {
    wait_until(&format!("node {id} marked {}", if down { "down" } else { "up" }), MARKED, || async move {
        let st = admin::status(addr).await?;
        let n = st.nodes.iter().find(|n| n.id == id).ok_or_else(|| anyhow!("node {id} not in status"))?;
        ensure!(n.down == down, "node {id}: down = {}", n.down);
        Ok(st)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_marked_down_and_up_again_when_it_returns() -> Result<()> {
    let mut c = Cluster::start(91, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let leader_addr = c.node(leader).grpc_addr();
    let victim = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    // Nobody is down while everyone answers.
    let st = admin::status(&leader_addr).await?;
    ensure!(st.nodes.iter().all(|n| !n.down), "{:?}", st.nodes);

    c.node(victim).kill9();
    let killed = std::time::Instant::now();
    wait_down(&leader_addr, victim, true).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("node {victim} marked down {:?} after SIGKILL", killed.elapsed());
    let evs = events(&leader_addr).await?;
    let down = evs
        .iter()
        .find(|e| e.what == format!("node {victim} marked down"))
        .ok_or_else(|| anyhow!("no down event in {evs:?}"))?;
    assert_eq!(down.leader, Some(leader));
    assert!(down.why.contains("status probes"), "{}", down.why);

    // The CLI shows it too, from any node (here the other follower).
    let other = c.nodes.iter().find(|n| n.id != leader && n.id != victim).expect("a third node").grpc_addr();
    let (code, out, err) = lbctl(&["--endpoint", &other, "status", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let node = v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["id"] == victim)).cloned();
    let node = node.ok_or_else(|| anyhow!("node {victim} missing in {out}"))?;
    assert_eq!(node["down"], true, "{out}");
    assert_eq!(node["reachable"], false, "{out}");
    let (code, out, err) = lbctl(&["--endpoint", &other, "events"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TIME"), "{out}");
    assert!(out.contains(&format!("node {victim} marked down")), "{out}");

    c.node(victim).start()?;
    let restarted = std::time::Instant::now();
    wait_down(&leader_addr, victim, false).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("node {victim} marked up {:?} after its restart", restarted.elapsed());
    let evs = events(&leader_addr).await?;
    ensure!(evs.iter().any(|e| e.what == format!("node {victim} marked up")), "no up event in {evs:?}");
    let (code, out, _) = lbctl(&["--endpoint", &leader_addr, "events", "--json", "--limit", "1"]).await?;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["events"].as_array().map(Vec::len), Some(1), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_marks_the_killed_leader_down_exactly_once() -> Result<()> {
    let mut c = Cluster::start(92, 3, &[])?;
    let old = c.wait_for_leader(ELECTION).await?;
    let old_term = admin::local_status(&c.node(old).grpc_addr()).await?.term;
    c.node(old).kill9();
    let new = c.wait_for_leader(ELECTION).await?;
    assert_ne!(new, old);
    let new_addr = c.node(new).grpc_addr();
    wait_down(&new_addr, old, true).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    // Let the new leader run at least three more probe rounds: the committed state says "down", so
    // it must not decide again.
    let survivor = c.nodes.iter().find(|n| n.id != old && n.id != new).expect("a third node").grpc_addr();
    let t = std::time::Instant::now();
    wait_until("three more seconds of leader ticks", Duration::from_secs(10), || async move {
        ensure!(t.elapsed() >= Duration::from_secs(3), "only {:?}", t.elapsed());
        Ok(())
    })
    .await?;
    let evs_after = events(&survivor).await?;
    let downs: Vec<&pb::EventRecord> =
        evs_after.iter().filter(|e| e.what == format!("node {old} marked down")).collect();
    assert_eq!(downs.len(), 1, "{evs_after:?}");
    assert_eq!(downs[0].leader, Some(new));
    assert!(downs[0].term > old_term, "decided in the new leader's term: {:?} vs {old_term}", downs[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_returns_once_no_node_has_requests_in_flight() -> Result<()> {
    let mut c = Cluster::start(93, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let via = c.nodes.iter().find(|n| n.id != leader).expect("a follower").grpc_addr();
    let cfg = "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
               [[pool.backend]]\naddr = \"127.0.93.200:9001\"\n[[pool.backend]]\naddr = \"127.0.93.200:9002\"\n\
               [pool.health]\nkind = \"none\"\n";
    admin::apply_toml(&via, cfg).await?;

    // Every node reports both backends idle.
    for n in &c.nodes {
        let addr = n.grpc_addr();
        let report = wait_until("the config applied on every node", ELECTION, || {
            let addr = addr.clone();
            async move {
                let r = admin::connect(&addr).await?.local_load(pb::LocalLoadRequest {}).await?.into_inner();
                ensure!(r.backends.len() == 2, "{r:?}");
                Ok(r)
            }
        })
        .await?;
        assert_eq!(report.node, n.id);
        assert!(report.backends.iter().all(|b| b.in_flight == 0 && b.pool == "web"), "{report:?}");
    }

    let (code, out, err) =
        lbctl(&["--endpoint", &via, "drain", "web", "127.0.93.200:9001", "--wait", "--timeout", "20s"])
            .await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("nodes answered"), "no progress when not on a terminal: {out}");
    assert!(out.contains("drained: nothing in flight to 127.0.93.200:9001"), "{out}");
    let (code, out, err) = lbctl(&["--endpoint", &via, "backends", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let b =
        v["backends"].as_array().and_then(|a| a.iter().find(|b| b["addr"] == "127.0.93.200:9001")).cloned();
    assert_eq!(b.map(|b| b["draining"].clone()), Some(serde_json::Value::Bool(true)), "{out}");

    let (code, out, err) =
        lbctl(&["--endpoint", &via, "--json", "drain", "web", "127.0.93.200:9002", "--wait"]).await?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    assert_eq!((v["drained"].clone(), v["in_flight"].clone()), (true.into(), 0.into()), "{out}");

    // A backend that is not there: refused before any waiting.
    let (code, _, err) = lbctl(&["--endpoint", &via, "drain", "web", "127.0.93.200:9999", "--wait"]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.93.200:9999"), "{err}");

    let (code, _, err) = lbctl(&["--endpoint", &via, "undrain", "web", "127.0.93.200:9001"]).await?;
    assert_eq!(code, 0, "{err}");

    // Load reports: only the leader takes them, only from members, each from the node its certificate names.
    let report = |node| pb::LoadReport { node, at_ms: 1, backends: vec![] };
    let as_node = |addr: String, id: u64| async move {
        anyhow::Ok(pb::admin_client::AdminClient::new(
            admin::node_channel(&addr, Duration::from_secs(15), id).await?,
        ))
    };
    let mut l = as_node(c.node(leader).grpc_addr(), 1).await?;
    assert!(l.report_load(report(1)).await?.into_inner().accepted);
    let mut stranger = as_node(c.node(leader).grpc_addr(), 9).await?;
    let refused = stranger.report_load(report(9)).await.expect_err("node 9 is not a member");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let mut f = as_node(via.clone(), 1).await?;
    assert!(!f.report_load(report(1)).await?.into_inner().accepted, "a follower does not collect");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_does_not_count_a_silent_node_as_empty_but_skips_one_marked_down() -> Result<()> {
    let mut c = Cluster::start(95, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let leader_addr = c.node(leader).grpc_addr();
    let cfg = "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
               [[pool.backend]]\naddr = \"127.0.95.200:9001\"\n[[pool.backend]]\naddr = \"127.0.95.200:9002\"\n\
               [pool.health]\nkind = \"none\"\n";
    admin::apply_toml(&leader_addr, cfg).await?;
    let victim = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");

    // Right after the kill the node is not marked down yet (that takes three missed probes a second
    // apart): it may still hold requests, so the wait cannot end well.
    c.node(victim).kill9();
    let (code, out, err) = lbctl(&[
        "--endpoint",
        &leader_addr,
        "drain",
        "web",
        "127.0.95.200:9001",
        "--wait",
        "--timeout",
        "1s",
    ])
    .await?;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("still has 0 requests/connections in flight after 1s"), "{err}");
    assert!(err.contains(&format!("(no answer from node {victim}); it stays draining")), "{err}");
    assert!(!out.contains("nodes answered"), "no progress when not on a terminal: {out}");

    // Once the leader marked it down, it no longer holds the wait up.
    wait_down(&leader_addr, victim, true).await.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let (code, out, err) = lbctl(&[
        "--endpoint",
        &leader_addr,
        "drain",
        "web",
        "127.0.95.200:9002",
        "--wait",
        "--timeout",
        "20s",
        "--json",
    ])
    .await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    assert_eq!((v["drained"].clone(), v["nodes_answered"].clone()), (true.into(), 2.into()), "{out}");
    Ok(())
}

/// Fleet-wide in-flight count of pool `web` on node `addr` (its own counters).
async fn local_in_flight(addr: &str) -> Result<u64> {
    let r = admin::connect(addr).await?.local_load(pb::LocalLoadRequest {}).await?.into_inner();
    Ok(r.backends.iter().filter(|b| b.pool == "web").map(|b| b.in_flight + b.connections).sum())
}

/// Start a cluster on `net` (nodes get the flags `args`), apply `cfg` and wait until node 1 proxies
/// TCP on `port`.
async fn serving(net: u8, cfg: &str, port: u16, args: &[&str]) -> Result<Cluster> {
    let mut c = Cluster::start(net, 3, args)?;
    c.wait_for_leader(ELECTION).await?;
    let via = c.nodes[0].grpc_addr();
    wait_until("the config applied", ELECTION, || async { Ok(admin::apply_toml(&via, cfg).await?) }).await?;
    let front = format!("{}:{port}", c.nodes[0].ip);
    let grpc = via.clone();
    wait_until("node 1 to proxy TCP", ELECTION, || {
        let (front, grpc) = (front.clone(), grpc.clone());
        async move {
            let s = TcpStream::connect(&front).await?;
            drop(s);
            // The probe connection must be gone again before the test counts its own.
            ensure!(local_in_flight(&grpc).await? == 0, "the probe is still counted");
            Ok(())
        }
    })
    .await?;
    Ok(c)
}

async fn backends_of(addr: &str) -> Result<Vec<pb::BackendStatus>> {
    let mut c = admin::connect(addr).await?;
    Ok(c.list_backends(pb::ListBackendsRequest { stale: false }).await?.into_inner().backends)
}

async fn is_active(addr: &str, backend: &str) -> Result<bool> {
    let all = backends_of(addr).await?;
    let b = all.iter().find(|b| b.addr == backend).ok_or_else(|| anyhow!("no backend {backend}"))?;
    Ok(b.active)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_through_the_tcp_proxy_scale_a_standby_out_and_back_in() -> Result<()> {
    const PORT: u16 = 18096;
    let (b1, b2, s1) = ("127.0.96.101:9001", "127.0.96.102:9001", "127.0.96.103:9001");
    let _procs = (
        BackendProc::start("b1", b1).await?,
        BackendProc::start("b2", b2).await?,
        BackendProc::start("s1", s1).await?,
    );
    let hooks = tempfile::NamedTempFile::new()?;
    let log = hooks.path().display().to_string();
    // The hooks are defined in every node's local config; the replicated config names them.
    let node_toml = tempfile::NamedTempFile::new()?;
    std::fs::write(
        node_toml.path(),
        format!(
            "[hooks.web-out]\ncommand = [\"/bin/sh\", \"-c\", \"echo out $LBFLEET_POOL $LBFLEET_BACKEND >> {log}\"]\n\
             [hooks.web-in]\ncommand = [\"/bin/sh\", \"-c\", \"echo in $LBFLEET_POOL $LBFLEET_BACKEND >> {log}\"]\n"
        ),
    )?;
    let node_toml_path = node_toml.path().display().to_string();
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
         [[pool.backend]]\naddr = \"{b1}\"\n[[pool.backend]]\naddr = \"{b2}\"\n\
         [[pool.backend]]\naddr = \"{s1}\"\nstandby = true\n\
         [pool.health]\nkind = \"none\"\n\
         [pool.scale]\nmin_active = 2\nmax_active = 3\nhigh_watermark = 3\nlow_watermark = 1\nwindow = \"2s\"\n\
         scale_out_hook = \"web-out\"\nscale_in_hook = \"web-in\"\n\
         [[listener]]\nname = \"tcp\"\nprotocol = \"tcp\"\nport = {PORT}\npool = \"web\"\n"
    );
    let c = serving(96, &cfg, PORT, &["--config", &node_toml_path]).await?;
    let grpc = c.nodes[0].grpc_addr();
    let front = format!("{}:{PORT}", c.nodes[0].ip);
    assert!(!is_active(&grpc, s1).await?);

    // Ten open connections through node 1: five per primary, above the high watermark of 3.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(TcpStream::connect(&front).await?);
    }
    wait_until("ten connections counted on node 1", ELECTION, || async {
        let n = local_in_flight(&grpc).await?;
        ensure!(n == 10, "{n}");
        Ok(())
    })
    .await?;
    wait_until("the standby activated", Duration::from_secs(30), || async {
        ensure!(is_active(&grpc, s1).await?, "still inactive");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let evs = events(&grpc).await?;
    let on: Vec<_> =
        evs.iter().filter(|e| e.what == format!("activated standby backend {s1} of pool \"web\"")).collect();
    assert_eq!(on.len(), 1, "{evs:#?}");
    assert!(
        on[0].why.starts_with("avg load ") && on[0].why.contains("> high watermark 3 for 2s"),
        "{}",
        on[0].why
    );
    wait_until("the scale-out hook", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(hooks.path())?;
        ensure!(text.contains(&format!("out web {s1}")), "{text:?}");
        Ok(())
    })
    .await?;

    // Closed: the average drops to 0, below the low watermark, and the standby goes back.
    drop(conns);
    wait_until("the standby deactivated", Duration::from_secs(30), || async {
        ensure!(!is_active(&grpc, s1).await?, "still active");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    wait_until("the scale-in hook", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(hooks.path())?;
        ensure!(text == format!("out web {s1}\nin web {s1}\n"), "{text:?}");
        Ok(())
    })
    .await?;
    let (code, out, err) = lbctl(&["--endpoint", &grpc, "events"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("deactivated standby backend {s1}")), "{out}");
    assert!(out.contains("hook `web-out`") && out.contains("hook `web-in`"), "{out}");
    assert!(out.contains("exited with 0"), "{out}");
    Ok(())
}

/// One slow request through the proxy: send it, read the whole answer (the backend closes after it).
async fn slow_request(front: String, ms: u64) -> Result<String> {
    let mut s = TcpStream::connect(&front).await?;
    s.write_all(format!("GET /sleep/{ms} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_follows_real_requests_until_they_finish() -> Result<()> {
    const PORT: u16 = 18097;
    let (b1, b2) = ("127.0.97.101:9001", "127.0.97.102:9001");
    let _procs = (BackendProc::start("b1", b1).await?, BackendProc::start("b2", b2).await?);
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
         [[pool.backend]]\naddr = \"{b1}\"\n[[pool.backend]]\naddr = \"{b2}\"\n\
         [pool.health]\nkind = \"none\"\n\
         [[listener]]\nname = \"tcp\"\nprotocol = \"tcp\"\nport = {PORT}\npool = \"web\"\n"
    );
    let c = serving(97, &cfg, PORT, &[]).await?;
    let grpc = c.nodes[0].grpc_addr();
    let front = format!("{}:{PORT}", c.nodes[0].ip);

    // Four requests of 5 s each: two per backend.
    let requests: Vec<_> = (0..4).map(|_| tokio::spawn(slow_request(front.clone(), 5000))).collect();
    wait_until("four requests in flight", ELECTION, || async {
        let n = local_in_flight(&grpc).await?;
        ensure!(n == 4, "{n}");
        Ok(())
    })
    .await?;
    // On a terminal, so that the progress bar shows what the wait saw.
    let shown = lbfleet_tests::lbctl_on_terminal(
        &["--endpoint", &grpc, "drain", "web", b1, "--wait", "--timeout", "30s"],
        Duration::from_secs(90),
    )
    .await?;
    let out = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "{out}");
    assert!(out.contains("] 2 in flight (3/3 nodes answered)"), "the two requests to b1 were seen: {out}");
    assert!(out.contains(&format!("drained: nothing in flight to {b1}")), "{out}");
    for r in requests {
        let answer = r.await??;
        assert!(answer.starts_with("HTTP/1.1 200"), "a drain lets requests finish: {answer}");
    }

    // Two connections held open to b2 (the only one left): the wait runs out and says how many.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(&front).await?);
    }
    wait_until("two connections counted", ELECTION, || async {
        ensure!(local_in_flight(&grpc).await? == 2);
        Ok(())
    })
    .await?;
    let (code, out, err) =
        lbctl(&["--endpoint", &grpc, "drain", "web", b2, "--wait", "--timeout", "2s"]).await?;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!(
            "backend {b2} of pool \"web\" still has 2 requests/connections in flight after 2s"
        )),
        "{err}"
    );
    drop(held);
    for b in [b1, b2] {
        let (code, _, err) = lbctl(&["--endpoint", &grpc, "undrain", "web", b]).await?;
        assert_eq!(code, 0, "{err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_requests_scale_a_standby_out_and_back_in() -> Result<()> {
    const PORT: u16 = 18098;
    let (b1, b2, s1) = ("127.0.98.101:9001", "127.0.98.102:9001", "127.0.98.103:9001");
    let _procs = (
        BackendProc::start("b1", b1).await?,
        BackendProc::start("b2", b2).await?,
        BackendProc::start("s1", s1).await?,
    );
    let cfg = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
         [[pool.backend]]\naddr = \"{b1}\"\n[[pool.backend]]\naddr = \"{b2}\"\n\
         [[pool.backend]]\naddr = \"{s1}\"\nstandby = true\n\
         [pool.health]\nkind = \"none\"\n\
         [pool.scale]\nmin_active = 2\nmax_active = 3\nhigh_watermark = 3\nlow_watermark = 1\nwindow = \"2s\"\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {PORT}\npool = \"web\"\n"
    );
    let c = serving(98, &cfg, PORT, &[]).await?;
    let grpc = c.nodes[0].grpc_addr();
    let front = format!("{}:{PORT}", c.nodes[0].ip);
    wait_until("node 1 to proxy HTTP", ELECTION, || async {
        let (status, _, _) = lbfleet_tests::http_get(&front, "/", &[]).await?;
        ensure!(status == 200, "status {status}");
        Ok(())
    })
    .await?;

    // Twelve requests of 8 s each: six per primary, above the high watermark of 3.
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let front = front.clone();
            tokio::spawn(async move { lbfleet_tests::http_get(&front, "/sleep/8000", &[]).await })
        })
        .collect();
    wait_until("the standby activated while the requests run", Duration::from_secs(30), || async {
        ensure!(is_active(&grpc, s1).await?, "still inactive");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("standby activated {:?} after the slow requests started (window 2s)", started.elapsed());
    for r in requests {
        let (status, headers, _) = r.await??;
        assert_eq!(status, 200);
        let by = headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(by == "b1" || by == "b2", "sent before the activation: {by}");
    }
    // Done: nothing in flight, below the low watermark for a window → back to standby.
    let done = std::time::Instant::now();
    wait_until("the standby deactivated", Duration::from_secs(30), || async {
        ensure!(!is_active(&grpc, s1).await?, "still active");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    eprintln!("standby deactivated {:?} after the last request ended (window 2s)", done.elapsed());
    let evs = events(&grpc).await?;
    let steps: Vec<_> = evs.iter().filter(|e| e.what.contains(&format!("standby backend {s1}"))).collect();
    assert_eq!(steps.len(), 2, "one activation, one deactivation: {evs:#?}");
    assert!(steps[0].what.starts_with("activated") && steps[0].why.contains("> high watermark 3 for 2s"));
    assert!(steps[1].what.starts_with("deactivated") && steps[1].why.contains("< low watermark 1 for 2s"));
    Ok(())
}
