//! The cluster dashboard end to end: three real lbnode processes and two demo backends, the page
//! rendered by Debian's real Chromium in headless mode (`/usr/bin/chromium`, or `$CHROMIUM`).
//!
//! Chromium loads `/?token=<read token>` (the admin HTTP stores the token as a cookie and redirects
//! to `/`), runs the page's script for a few seconds of virtual time and dumps the DOM; the test reads
//! what the script rendered (node cards, backend rows), so a page whose script fails leaves them out
//! and the test fails. A screenshot is saved as `target/test-artifacts/dashboard.png`.
//!
//! Addresses: nodes on 127.0.211.1N, backends on 127.0.211.101:19001 and 127.0.211.102:19002.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use lbfleet_tests::{admin, creds, http_get, loopback_ok, wait_until, BackendProc, Cluster};
use serde_json::Value;

const NET: u8 = 211;
const ELECTION: Duration = Duration::from_secs(20);
const PORT: u16 = 18080;
/// One Chromium run (start, load, virtual time, dump) may take this long on a loaded machine.
const CHROMIUM_RUN: Duration = Duration::from_secs(45);
/// How soon after a backend dies the page must show it down: two failed checks 500 ms apart, the
/// vote through Raft, one poll of the page (1 s) and a Chromium run.
const SHOWS_DOWN: Duration = Duration::from_secs(20);

fn config(b1: &str, b2: &str) -> String {
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n\
         [[pool.backend]]\naddr = \"{b1}\"\n[[pool.backend]]\naddr = \"{b2}\"\n\
         [pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\
         rise = 2\nfall = 2\n\n\
         [[listener]]\nname = \"front\"\nprotocol = \"http\"\nport = {PORT}\npool = \"web\"\n"
    )
}

fn chromium() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    p.exists().then_some(p)
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("test-artifacts")
}

/// Run headless Chromium on `url` with `extra` flags; its standard output (the DOM with
/// `--dump-dom`). Killed after [`CHROMIUM_RUN`].
async fn run_chromium(bin: &Path, profile: &Path, url: &str, extra: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CHROMIUM_RUN, cmd.output())
        .await
        .map_err(|_| anyhow!("chromium on {url} did not finish within {CHROMIUM_RUN:?}"))?
        .context("run chromium")?;
    ensure!(
        out.status.success(),
        "chromium on {url} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The page as rendered after a few seconds of virtual time.
async fn rendered(bin: &Path, profile: &Path, url: &str) -> Result<String> {
    run_chromium(bin, profile, url, &["--dump-dom", "--virtual-time-budget=4000"]).await
}

/// The value of attribute `attr` of the element that carries `marker` (e.g. `data-backend="…"`).
fn attr_after(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_end = dom[at..].find('>')? + at;
    let tag = &dom[at..tag_end];
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

/// Every node card is there and reachable, every backend row shows `state` fleet-wide, and the events
/// list has an entry with each of `events`.
fn check_page(dom: &str, backends: &[(&str, &str)], events: &[&str]) -> Result<()> {
    ensure!(dom.contains("data-loaded=\"yes\""), "the page never loaded the cluster view:\n{dom}");
    for id in 1..=3 {
        let marker = format!("class=\"card\" data-node=\"{id}\"");
        let reachable = attr_after(dom, &marker, "data-reachable");
        ensure!(reachable.as_deref() == Some("true"), "node {id}'s card: reachable {reachable:?}");
        let ring = attr_after(dom, &marker, "data-ring");
        ensure!(ring.as_deref() == Some("agree"), "node {id}'s card: ring {ring:?}");
    }
    for (addr, state) in backends {
        let committed = attr_after(dom, &format!("data-backend=\"{addr}\""), "data-committed");
        ensure!(
            committed.as_deref() == Some(*state),
            "backend {addr}: fleet-wide {committed:?}, not {state}"
        );
    }
    let list = dom.find("id=\"events\"").map(|at| &dom[at..]).unwrap_or("");
    for e in events {
        ensure!(list.contains(e), "no event with {e:?} in the page's events list");
    }
    Ok(())
}

async fn cluster_doc(http: &str) -> Result<Value> {
    let (status, _, body) =
        http_get(http, "/api/v1/cluster", &[("authorization", &creds().read_bearer())]).await?;
    ensure!(status == 200, "GET /api/v1/cluster on {http}: {status} {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).context("cluster JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_node_and_a_dead_backend_within_seconds() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let Some(chromium) = chromium() else {
        bail!("/usr/bin/chromium is missing: install Debian's chromium package (.ci/run does)");
    };
    let (b1, b2) = (format!("127.0.{NET}.101:19001"), format!("127.0.{NET}.102:19002"));
    let mut backend1 = BackendProc::start("backend-1", &b1).await?;
    let _backend2 = BackendProc::start("backend-2", &b2).await?;
    let mut c = Cluster::start(NET, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    admin::apply_toml(&c.nodes[0].grpc_addr(), &config(&b1, &b2)).await?;
    let front = format!("{}:{PORT}", c.ip_of(2));
    let http = c.http_addr(2);

    // Traffic through node 2 (bounded: 40 requests), then the JSON shows it with every member.
    wait_until("the listener to answer", Duration::from_secs(30), || {
        let front = front.clone();
        async move {
            let (status, _, _) = http_get(&front, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            Ok(())
        }
    })
    .await?;
    for _ in 0..40 {
        http_get(&front, "/", &[]).await?;
    }
    let doc = wait_until("every member and the traffic in /api/v1/cluster", Duration::from_secs(20), || {
        let http = http.clone();
        async move {
            let doc = cluster_doc(&http).await?;
            let nodes = doc["nodes"].as_array().ok_or_else(|| anyhow!("no nodes"))?;
            ensure!(nodes.len() == 3 && nodes.iter().all(|n| n["reachable"] == true), "nodes: {nodes:?}");
            let rps = doc["listeners"][0]["traffic"]["requests_per_s"].as_f64().unwrap_or(0.0);
            ensure!(rps > 0.0, "no request rate on the listener yet: {}", doc["listeners"]);
            Ok(doc)
        }
    })
    .await?;
    assert_eq!(doc["ring_agreement"], true, "{doc:#}");
    // Latency from lbfleet_http_request_duration_seconds: quantiles in milliseconds, p50 <= p99.
    let t = &doc["listeners"][0]["traffic"];
    let (p50, p99) = (t["p50_ms"].as_f64(), t["p99_ms"].as_f64());
    assert!(doc["traffic"]["latency_available"] == true && p50.is_some() && p99.is_some(), "{t:#}");
    assert!(p50 <= p99 && p99 < Some(10_000.0), "{t:#}");
    assert_eq!(doc["pools"][0]["backends"][0]["local"]["2"], "usable", "{doc:#}");

    // Without the read token, the data and the page are refused.
    for path in ["/api/v1/cluster", "/"] {
        let (status, _, _) = http_get(&http, path, &[]).await?;
        assert_eq!(status, 401, "{path} without a token");
    }
    // The page as served, before any script ran, does not pass the checks below: they see what the
    // script rendered.
    let (status, _, raw) = http_get(&http, "/", &[("authorization", &creds().read_bearer())]).await?;
    assert_eq!(status, 200);
    assert!(
        check_page(&String::from_utf8_lossy(&raw), &[], &[]).is_err(),
        "the checks pass on a page with no script run"
    );

    let profile = tempfile::tempdir()?;
    let url = format!("http://{http}/?token={}", creds().read_token);
    // Render the page until it passes `check_page` with `backends` and `events`.
    let page_shows = |what: &'static str,
                      timeout: Duration,
                      backends: Vec<(String, &'static str)>,
                      events: Vec<String>| {
        let (chromium, profile, url) = (chromium.clone(), profile.path().to_path_buf(), url.clone());
        async move {
            wait_until(what, timeout, || {
                let (chromium, profile, url) = (chromium.clone(), profile.clone(), url.clone());
                let (backends, events) = (backends.clone(), events.clone());
                async move {
                    let dom = rendered(&chromium, &profile, &url).await?;
                    let backends: Vec<(&str, &str)> =
                        backends.iter().map(|(b, s)| (b.as_str(), *s)).collect();
                    let events: Vec<&str> = events.iter().map(String::as_str).collect();
                    check_page(&dom, &backends, &events)
                }
            })
            .await
        }
    };
    let leader_event = "is the leader of term".to_string();
    page_shows(
        "the page to show the cluster",
        Duration::from_secs(60),
        vec![(b1.clone(), "healthy"), (b2.clone(), "healthy")],
        vec![leader_event],
    )
    .await?;

    backend1.kill9();
    let killed = Instant::now();
    page_shows(
        "the page to show backend 1 down",
        SHOWS_DOWN,
        vec![(b1.clone(), "down"), (b2.clone(), "healthy")],
        vec![format!("backend {b1} of pool \"web\" is down")],
    )
    .await?;
    println!("the page showed {b1} down {:?} after it was killed", killed.elapsed());

    // A drain shows in the backend's row and, as the nodes saw it, in the events.
    let mut client = admin::connect(&c.nodes[0].grpc_addr()).await?;
    let drain =
        lbfleet_tests::pb::SetDrainRequest { pool: "web".into(), backend: b2.clone(), draining: true };
    client.set_drain(drain).await?;
    page_shows(
        "the page to show backend 2 draining",
        SHOWS_DOWN,
        vec![(b1.clone(), "down"), (b2.clone(), "draining")],
        vec![format!("backend {b2} of pool \"web\" is draining")],
    )
    .await?;

    // A dead node is shown unreachable, and the answer does not wait for it longer than its bound.
    c.node(3).kill9();
    wait_until("node 3 unreachable in /api/v1/cluster, answered within 2 s", Duration::from_secs(20), || {
        let http = http.clone();
        async move {
            let asked = Instant::now();
            let doc = cluster_doc(&http).await?;
            let took = asked.elapsed();
            let n3 = &doc["nodes"][2];
            ensure!(n3["id"] == 3 && n3["reachable"] == false, "node 3: {n3}");
            ensure!(took < Duration::from_secs(2), "the answer took {took:?}");
            Ok(())
        }
    })
    .await?;

    let dir = artifacts();
    std::fs::create_dir_all(&dir)?;
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    run_chromium(
        &chromium,
        profile.path(),
        &url,
        &[&shot, "--window-size=1400,1000", "--virtual-time-budget=4000"],
    )
    .await?;
    let bytes = std::fs::read(&png).with_context(|| format!("read {}", png.display()))?;
    ensure!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{} is not a screenshot", png.display());
    println!("screenshot: {}", png.display());
    Ok(())
}
