//! lbctl tells the truth about outcomes, against real lbnode processes that lost their quorum:
//! a write whose answer never came says "may have been applied" and exits 5, a read that could not be
//! served exits 3, and nothing that may have committed is reported as "not applied".
//!
//! Addresses: nodes on 127.0.190.1N (the harness's layout).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lbfleet_tests::{admin, lbctl, loopback_ok, marked_config, wait_until, Cluster};

const NET: u8 = 190;
const ELECTION: Duration = Duration::from_secs(20);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn last_log_index(addr: &str) -> Result<u64> {
    Ok(admin::local_status(addr).await?.last_log_index.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_exit_5_and_reads_without_quorum_exit_3() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = |marker: u32| -> Result<String> {
        let path = dir.path().join(format!("config-{marker}.toml"));
        std::fs::write(&path, marked_config(marker))?;
        Ok(path.to_string_lossy().into_owned())
    };
    let mut c = Cluster::start(NET, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let addr = c.grpc_addr(leader);
    let ok = lbctl(&["--endpoint", &addr, "apply", "-f", &file(1)?], Duration::from_secs(60)).await?;
    ensure!(ok.status.code() == Some(0), "apply with a quorum: {}", stderr(&ok));

    // Two of three gone: the leader still takes entries into its log but cannot commit them.
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        c.node(id).kill9();
    }

    // The client's deadline (2 s) passes before the node's write timeout (5 s): unknown, exit 5.
    let out =
        lbctl(&["--endpoint", &addr, "--timeout", "2s", "apply", "-f", &file(2)?], Duration::from_secs(60))
            .await?;
    let err = stderr(&out);
    ensure!(out.status.code() == Some(5), "client deadline on a write: exit {:?}: {err}", out.status.code());
    ensure!(err.contains("outcome unknown") && err.contains("may have been applied"), "{err}");
    ensure!(!err.contains("cannot reach"), "the node was reached: {err}");

    // The node's own write timeout passes first: it says so, and lbctl still says unknown, exit 5.
    let out =
        lbctl(&["--endpoint", &addr, "--timeout", "30s", "apply", "-f", &file(3)?], Duration::from_secs(60))
            .await?;
    let err = stderr(&out);
    ensure!(out.status.code() == Some(5), "server deadline on a write: exit {:?}: {err}", out.status.code());
    ensure!(err.contains("no quorum") && err.contains("may have been applied"), "{err}");
    ensure!(!err.contains("Status {") && !err.contains("Membership"), "no Debug dumps: {err}");

    // A linearizable read cannot be served: exit 3, and it says why; the stale read still answers.
    let out =
        lbctl(&["--endpoint", &addr, "--timeout", "30s", "get", "config"], Duration::from_secs(60)).await?;
    let err = stderr(&out);
    ensure!(out.status.code() == Some(3), "read without quorum: exit {:?}: {err}", out.status.code());
    ensure!(err.contains("no quorum"), "{err}");
    ensure!(!err.contains("may have been applied"), "a read changes nothing: {err}");
    let out = lbctl(&["--endpoint", &addr, "get", "config", "--stale"], Duration::from_secs(60)).await?;
    ensure!(out.status.code() == Some(0), "stale read: {}", stderr(&out));

    // The connection is lost after the write reached the leader's log: unknown, exit 5.
    let before = last_log_index(&addr).await?;
    let args = vec!["--endpoint".to_string(), addr.clone(), "--timeout".into(), "60s".into(), "apply".into()];
    let args: Vec<String> = args.into_iter().chain(["-f".to_string(), file(4)?]).collect();
    let pending = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lbctl(&args, Duration::from_secs(90)).await
    });
    wait_until("the write to reach the leader's log", Duration::from_secs(30), || {
        let addr = addr.clone();
        async move {
            let now = last_log_index(&addr).await?;
            ensure!(now > before, "last log index still {now}");
            Ok(())
        }
    })
    .await?;
    c.node(leader).kill9();
    let out = pending.await.context("lbctl task")??;
    let err = stderr(&out);
    ensure!(
        out.status.code() == Some(5),
        "connection lost during a write: exit {:?}: {err}",
        out.status.code()
    );
    ensure!(err.contains("outcome unknown") && err.contains("may have been applied"), "{err}");

    // With every node dead, a write is refused before anything is sent: definitely not applied, exit 2.
    let out = lbctl(&["--endpoint", &addr, "apply", "-f", &file(5)?], Duration::from_secs(60)).await?;
    let err = stderr(&out);
    ensure!(out.status.code() == Some(2), "nothing listening: exit {:?}: {err}", out.status.code());
    ensure!(err.contains("cannot reach") && !err.contains("may have"), "{err}");
    Ok(())
}
