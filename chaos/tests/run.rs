//! `lbchaos run` for real: a local 3-node cluster (`lbctl local up`, nodes on 127.0.0.11..13) under
//! kills, pauses, restarts and, as root with iptables, partitions, with a checked register history; a
//! run of the fleet faults (a backend killed, a rolling restart, node 4 added, a node removed) with HTTP
//! traffic and UDP flows; then a control run with stale reads, which the linearizability check must
//! fail. (The verdicts of the fleet faults fail in unit tests: an ejection past its bound, a key or flow
//! split within one stable epoch, a front that withdraws a node late or never.) Where a Docker engine
//! answers (and as root), a short run against docker/compose-3.yml with traffic through the front's VIP
//! and a node killed.
//!
//! The runs use the same addresses one after the other (the tests of this file run serially). On
//! this shared 2-core machine a restarted debug-build node may take longer than the 2 s the verdict
//! allows by default to serve again, so the run here allows 5 s (`--agree-within`).

use std::process::Command;
use std::time::Duration;

use lbfleet_tests::bin;
use lbfleet_tests::process::output_within;

/// One run at a time: both use 127.0.0.11..13.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn partitions_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("iptables").arg("-S").output().is_ok_and(|o| o.status.success())
}

/// `lbchaos run --nodes 3 --duration D --seed S --faults F EXTRA…`: its exit code, its output (printed)
/// and its summary line.
async fn run3(duration: &str, seed: &str, faults: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("lbchaos"));
    cmd.arg("--dir").arg(dir.path().join("cluster"));
    cmd.args(["run", "--nodes", "3", "--duration", duration, "--seed", seed, "--faults", faults]).args(extra);
    cmd.arg("--report").arg(dir.path().join("report.md"));
    let out = output_within(&mut cmd, Duration::from_secs(240)).await.expect("lbchaos within 4 minutes");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    if out.status.code() != Some(0) && !extra.contains(&"--stale") {
        // A failed run that should have passed: its node logs and report stay for whoever reads it.
        println!("kept the run's directory (node logs, report.md): {}", dir.keep().display());
    }
    let last = text.lines().rev().find(|l| l.starts_with("lbchaos:")).unwrap_or("").to_string();
    (out.status.code(), text, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_run_keeps_every_verdict() {
    let _serial = SERIAL.lock().await;
    let faults = if partitions_possible() {
        "kill,pause,partition,restart"
    } else {
        println!("NOTICE: not root or no iptables: this run has no partitions");
        "kill,pause,restart"
    };
    let (code, out, last) = run3("30s", "7", faults, &["--agree-within", "5s"]).await;
    assert_eq!(code, Some(0), "a verdict failed: {last}");
    assert!(
        last.starts_with("lbchaos: PASS") && last.contains("lost=0") && last.contains("linearizable=yes"),
        "{last}"
    );
    assert!(out.contains("fault: "), "faults were injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_kill_rolling_restart_and_membership_changes_keep_every_verdict() {
    let _serial = SERIAL.lock().await;
    let faults = "backend-kill,rolling-restart,node-add,node-remove";
    // One register client: this run is about the fleet faults (the run above checks a concurrent
    // register history), and a sequential history keeps the reference search's cross-check short.
    let (code, out, last) = run3("35s", "7", faults, &["--agree-within", "5s", "--clients", "1"]).await;
    assert_eq!(code, Some(0), "a verdict failed: {last}");
    // Four kinds, drawn from a shuffled bag: each runs once in the first four faults.
    for (kind, line) in [
        ("backend-kill", "ejected by every node after"),
        ("rolling-restart", "restarted and caught up"),
        ("node-add", "node-4 joined"),
        ("node-remove", "joined again with an empty store"),
    ] {
        assert!(out.contains(line), "{kind} did not run to its end ({line:?} missing)");
    }
    assert!(last.contains("split_keys=0") && last.contains("split_flows=0"), "{last}");
    assert!(!last.contains("backend_ejection_worst=-") && last.contains("membership_failures=0"), "{last}");
    assert!(!last.contains(" udp=0 "), "UDP flows were sent: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_under_a_partition_fail_the_linearizability_check() {
    if !partitions_possible() {
        println!("NOTICE: not root or no iptables: skipping the partitioned control run");
        return;
    }
    let _serial = SERIAL.lock().await;
    let (code, _, last) = run3("25s", "2", "partition", &["--stale"]).await;
    assert_eq!(code, Some(1), "the control run must fail: {last}");
    assert!(last.contains("linearizable=no"), "the checker must catch stale reads: {last}");
}

/// `lbchaos run --target compose`: docker/compose-3.yml, client traffic (HTTP and UDP flows) through
/// the front's VIP, one node killed (and a backend), every verdict kept, and the router stops routing
/// to the killed node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_run_through_the_vip_keeps_every_verdict() {
    use lbfleet_tests::compose;
    // SAFETY: geteuid has no preconditions.
    if !compose::docker_available() || unsafe { libc::geteuid() } != 0 {
        println!("NOTICE: no docker engine, no docker-compose or not root; skipping the compose chaos run");
        return;
    }
    let _serial = SERIAL.lock().await;
    compose::build_image(compose::profile()).expect("the image builds");
    let mut cmd = Command::new(bin("lbchaos"));
    cmd.current_dir(compose::repo_root()).args([
        "run",
        "--target",
        "compose",
        "--nodes",
        "3",
        "--duration",
        "15s",
        "--seed",
        "5",
        "--faults",
        "kill,backend-kill",
        "--agree-within",
        "5s",
    ]);
    let out = output_within(&mut cmd, Duration::from_secs(420)).await.expect("lbchaos within 7 minutes");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    let last = text.lines().rev().find(|l| l.starts_with("lbchaos:")).unwrap_or("").to_string();
    assert_eq!(out.status.code(), Some(0), "a verdict failed: {last}");
    assert!(last.starts_with("lbchaos: PASS") && last.contains("lost=0"), "{last}");
    assert!(text.contains("fault: SIGKILL node-"), "a node was killed");
    assert!(text.contains("the front stopped routing to node-"), "the front withdrew the killed node");
    assert!(!last.contains("front_withdrawal_median=-") && !last.contains(" http=0 "), "{last}");
    assert!(!last.contains(" udp=0 "), "UDP flows went through the VIP: {last}");
}
