//! What an operator may put in the replicated config, end to end on real processes:
//!
//! - a config over one of the documented limits (document size, pool count, a duration, the total
//!   table slots, a table size) is refused by `lbctl apply` with the documented message; the old config
//!   keeps serving (a request through a listener still reaches its backend) and every node stays up;
//! - a config carrying a raw command (`scale_out_cmd`) or naming a hook that the receiving node does
//!   not define is refused and nothing runs; a hook defined in the nodes' local config and named by the
//!   config does run on scale-out.
//!
//! Every test uses its own 127.0.<net>.0/24 (121..=122 belong to this file).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use lbfleet_api::config::{
    MAX_CONFIG_BYTES, MAX_IDLE_TIMEOUT, MAX_POOLS, MAX_TABLE_SIZE, MAX_TOTAL_TABLE_SLOTS, MIN_TABLE_SIZE,
};
use lbfleet_tests::{admin, http_get, pb, wait_until, BackendProc, Cluster};
use tokio::net::TcpStream;

const ELECTION: Duration = Duration::from_secs(20);

/// `lbctl apply -f FILE` against `endpoint`: (exit code, stdout, stderr).
async fn apply_file(endpoint: &str, file: &Path) -> Result<(i32, String, String)> {
    let file = file.display().to_string();
    let out = lbfleet_tests::lbctl(&["--endpoint", endpoint, "apply", "-f", &file], Duration::from_secs(60))
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Write `text` to `dir/name` and apply it with lbctl through `endpoint`; the apply must be refused with
/// exit code 1 and a message containing `want`.
async fn refused(endpoint: &str, dir: &Path, name: &str, text: &str, want: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    let (code, out, err) = apply_file(endpoint, &path).await?;
    ensure!(code == 1, "{name}: exit code {code}, stdout: {out}\nstderr: {err}");
    ensure!(err.contains("config rejected"), "{name}: {err}");
    ensure!(err.contains(want), "{name}: {want:?} missing from {err}");
    Ok(err)
}

async fn config_version(addr: &str) -> Result<u64> {
    Ok(admin::status(addr).await?.config_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_over_the_limits_are_refused_and_the_old_one_keeps_serving() -> Result<()> {
    const NET: u8 = 121;
    const PORT: u16 = 18121;
    let backend_addr = format!("127.0.{NET}.101:9001");
    let _backend = BackendProc::start("backend-1", &backend_addr).await?;
    let mut c = Cluster::start(NET, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let good = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"{backend_addr}\"\n\
         [pool.health]\nkind = \"none\"\n\
         [[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {PORT}\npool = \"web\"\n"
    );
    let via = c.grpc_addr(2);
    wait_until("the good config applied", ELECTION, || async { Ok(admin::apply_toml(&via, &good).await?) })
        .await?;
    let fronts: Vec<String> = (1..=3).map(|id| format!("{}:{PORT}", c.ip_of(id))).collect();
    let serves = |fronts: Vec<String>| async move {
        for front in &fronts {
            let (status, _, body) = http_get(front, "/", &[]).await?;
            ensure!(status == 200, "{front}: status {status}");
            ensure!(body.starts_with(b"backend-1"), "{front}: {:?}", String::from_utf8_lossy(&body));
        }
        Ok(())
    };
    wait_until("every node to proxy to backend-1", ELECTION, || serves(fronts.clone())).await?;
    let version = config_version(&via).await?;

    assert_eq!(MAX_IDLE_TIMEOUT, Duration::from_secs(86_400), "the message below says 1day");
    let dir = tempfile::tempdir()?;
    let mut too_big = good.clone();
    while too_big.len() <= MAX_CONFIG_BYTES {
        too_big.push_str("# padding padding padding padding padding padding padding padding padding\n");
    }
    let many_pools: String = (0..=MAX_POOLS).map(|i| format!("[[pool]]\nname = \"p{i}\"\n")).collect();
    let long_idle = format!("{good}[listener.timeouts]\nidle = \"500years\"\n");
    let slots = (MAX_TOTAL_TABLE_SLOTS / MAX_TABLE_SIZE + 1) as usize;
    let big_tables: String = (0..slots)
        .map(|i| format!("[[pool]]\nname = \"p{i}\"\npolicy = \"maglev\"\ntable_size = {MAX_TABLE_SIZE}\n"))
        .collect();
    let huge_table = good.replace("policy = \"maglev\"", "policy = \"maglev\"\ntable_size = 16777259");
    let cases = [
        (
            "size.toml",
            too_big.clone(),
            format!("the config is {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes", too_big.len()),
        ),
        ("count.toml", many_pools, format!("{} pools, above the limit of {MAX_POOLS}", MAX_POOLS + 1)),
        (
            "duration.toml",
            long_idle,
            "listener \"web\" timeouts: idle 500years out of range 1ms..=1day".to_string(),
        ),
        (
            "slots.toml",
            big_tables,
            format!(
                "{} table slots over all pools, above the limit of {MAX_TOTAL_TABLE_SLOTS}",
                slots as u64 * MAX_TABLE_SIZE
            ),
        ),
        (
            "table.toml",
            huge_table,
            format!("pool \"web\": table_size 16777259 out of range {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}"),
        ),
    ];
    for (i, (name, text, want)) in cases.iter().enumerate() {
        // Through each node in turn: followers and the leader refuse alike.
        let endpoint = c.grpc_addr(1 + (i as u64 % 3));
        refused(&endpoint, dir.path(), name, text, want).await?;
        // Nothing was committed, every node is up, and the old config still serves through each of them.
        ensure!(config_version(&endpoint).await? == version, "{name}: the config version moved");
        ensure!(c.running() == vec![1, 2, 3], "{name}: a node is down\n{}", c.logs());
        serves(fronts.clone()).await.map_err(|e| anyhow!("{name}: {e:#}"))?;
    }
    let shown = admin::get_config(&via, false).await?.config_json;
    ensure!(shown.contains(&backend_addr) && !shown.contains("p0"), "{shown}");
    Ok(())
}

/// Open connections through `front` until node `grpc` counts `n` in flight to pool `web`.
async fn load(front: &str, grpc: &str, n: u64) -> Result<Vec<TcpStream>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(front).await?);
    }
    wait_until(&format!("{n} connections counted"), ELECTION, || async {
        let r = admin::connect(grpc).await?.local_load(pb::LocalLoadRequest {}).await?.into_inner();
        let seen: u64 =
            r.backends.iter().filter(|b| b.pool == "web").map(|b| b.in_flight + b.connections).sum();
        ensure!(seen == n, "{seen}");
        Ok(())
    })
    .await?;
    Ok(conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_command_or_an_unknown_hook_is_refused_and_nothing_runs() -> Result<()> {
    const NET: u8 = 122;
    const PORT: u16 = 18122;
    let (b1, b2, s1) = ("127.0.122.101:9001", "127.0.122.102:9001", "127.0.122.103:9001");
    let _procs = (
        BackendProc::start("b1", b1).await?,
        BackendProc::start("b2", b2).await?,
        BackendProc::start("s1", s1).await?,
    );
    let dir = tempfile::tempdir()?;
    let ran = dir.path().join("named-hook-ran");
    let forbidden = dir.path().join("raw-command-ran");
    // Every node defines `add-web`, which records that it ran; none defines `nope`.
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        format!(
            "[hooks.add-web]\ncommand = [\"/bin/sh\", \"-c\", \"echo $LBFLEET_POOL $LBFLEET_BACKEND >> {}\"]\n\
             timeout = \"10s\"\n",
            ran.display()
        ),
    )?;
    let node_toml = node_toml.display().to_string();
    let mut c = Cluster::start(NET, 3, &["--config", &node_toml])?;
    c.wait_for_leader(ELECTION).await?;

    // A standby behind two primaries; ten connections over two primaries are well above the high
    // watermark, so the first step of any accepted scale section comes within its window.
    let config = |scale: &str| {
        format!(
            "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n\
             [[pool.backend]]\naddr = \"{b1}\"\n[[pool.backend]]\naddr = \"{b2}\"\n\
             [[pool.backend]]\naddr = \"{s1}\"\nstandby = true\n\
             [pool.health]\nkind = \"none\"\n\
             [pool.scale]\nmin_active = 2\nmax_active = 3\nhigh_watermark = 3\nlow_watermark = 1\nwindow = \"1s\"\n\
             {scale}\n\
             [[listener]]\nname = \"tcp\"\nprotocol = \"tcp\"\nport = {PORT}\npool = \"web\"\n"
        )
    };
    let grpc = c.grpc_addr(1);
    let raw = config(&format!("scale_out_cmd = \"touch {}\"", forbidden.display()));
    let err = refused(
        &grpc,
        dir.path(),
        "raw.toml",
        &raw,
        "scale_out_cmd is no longer accepted: the replicated config cannot carry commands",
    )
    .await?;
    ensure!(
        err.contains("[hooks.NAME]") && err.contains("scale_out_hook = \"NAME\""),
        "says what to do: {err}"
    );
    for id in 1..=3 {
        let via = c.grpc_addr(id);
        refused(
            &via,
            dir.path(),
            &format!("unknown-{id}.toml"),
            &config("scale_out_hook = \"nope\""),
            &format!("scale_out_hook \"nope\" is not defined on node {id} (it defines add-web)"),
        )
        .await?;
    }
    ensure!(config_version(&grpc).await? == 0, "nothing was committed");

    // Now a config naming the defined hook: under load, the leader activates the standby and runs it.
    let good = config("scale_out_hook = \"add-web\"");
    wait_until("the config naming add-web applied", ELECTION, || async {
        Ok(admin::apply_toml(&grpc, &good).await?)
    })
    .await?;
    let front = format!("{}:{PORT}", c.ip_of(1));
    wait_until("node 1 to proxy TCP", ELECTION, || async {
        drop(TcpStream::connect(&front).await?);
        Ok(())
    })
    .await?;
    let conns = load(&front, &grpc, 10).await?;
    wait_until("the named hook to run", Duration::from_secs(40), || async {
        let text = std::fs::read_to_string(&ran)?;
        ensure!(text == format!("web {s1}\n"), "{text:?}");
        Ok(())
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    drop(conns);
    // The scale machinery has run since the refused configs; the raw command never did.
    ensure!(!forbidden.exists(), "the raw command ran");
    // The hook's exit is recorded after its process ends, which is after it wrote the file.
    let want = format!("hook `add-web` for backend {s1} of pool \"web\" exited with 0");
    wait_until("the hook's exit in the event log", ELECTION, || async {
        let events = admin::connect(&grpc)
            .await?
            .events(pb::EventsRequest { since_index: 0, limit: 0, stale: false })
            .await?
            .into_inner()
            .events;
        ensure!(events.iter().any(|e| e.what == want), "{events:#?}");
        Ok(())
    })
    .await?;
    Ok(())
}
