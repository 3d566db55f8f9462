//! `lbctl local up|down` with real processes: stopping what pid files name (and nothing else), refusing a
//! busy directory, and a failed `up` that reports the failing step with its log and cleans up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Result};
use lbfleet_tests::process::{alive, wait_exit};
use lbfleet_tests::{lbctl, wait_until, BackendProc};

fn write_pid(dir: &Path, name: &str, pid: impl std::fmt::Display) {
    std::fs::write(dir.join(format!("{name}.pid")), format!("{pid}\n")).unwrap();
}

fn pid_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pid"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_down_stops_what_the_pid_files_name_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let logs = tempfile::tempdir().unwrap();

    // A real demo backend: exits cleanly on SIGTERM.
    let mut backend = BackendProc::start_on_free_port("down", logs.path()).await.unwrap();
    write_pid(d, "backend-1", backend.pid().expect("backend running"));
    // An "lbnode" that ignores SIGTERM: needs SIGKILL.
    let mut stubborn = Command::new("/bin/sh")
        .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done", "lbnode-stubborn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stubborn.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the trap is installed");
    }
    write_pid(d, "node-1", stubborn.id());
    // A process that is not ours (a recycled pid): must be left alone.
    let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
    write_pid(d, "node-2", stranger.id());
    // A pid that is gone, and garbage.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    write_pid(d, "backend-2", gone_pid);
    write_pid(d, "node-3", "not a pid");

    let out = lbctl(
        &["local", "down", "--dir", d.to_str().unwrap(), "--grace", "1s", "--json"],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes: Vec<(String, String)> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["outcome"].as_str().unwrap().to_string()))
        .collect();
    let expect = |name: &str, outcome: &str| {
        assert!(
            outcomes.iter().any(|(n, o)| n == name && o == outcome),
            "expected {name}: {outcome} in {outcomes:?}"
        )
    };
    expect("backend-1", "stopped");
    expect("node-1", "killed");
    expect("node-2", "not_ours");
    expect("backend-2", "not_running");
    expect("node-3", "invalid_pid_file");
    assert_eq!(outcomes.len(), 5);
    assert_eq!(outcomes[0].0, "node-1", "nodes are listed (and stopped) first");

    let st = backend.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(st.success(), "the demo backend exits 0 on SIGTERM, got {st}");
    let st = wait_exit(&mut stubborn, Duration::from_secs(10)).await.unwrap();
    assert!(!st.success(), "the stubborn process was killed");
    assert!(alive(stranger.id()), "a process that is not ours is never signalled");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    assert!(pid_files(d).is_empty(), "pid files left: {:?}", pid_files(d));

    // Again: nothing to do, still success.
    let out = lbctl(&["local", "down", "--dir", d.to_str().unwrap()], Duration::from_secs(30)).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to stop"));
    let out = lbctl(
        &["local", "down", "--dir", d.join("never-created").to_str().unwrap()],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_refuses_a_directory_with_live_processes() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let backend = BackendProc::start_on_free_port("busy", logs.path()).await?;
    let pid = backend.pid().expect("backend running");
    write_pid(dir.path(), "backend-1", pid);
    let out = lbctl(
        &["local", "up", "--dir", dir.path().to_str().unwrap(), "--lbnode", "/bin/false"],
        Duration::from_secs(30),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step \"check the directory\""), "{stderr}");
    assert!(stderr.contains(&format!("backend-1 (pid {pid})")), "{stderr}");
    assert!(stderr.contains("lbctl local down --dir"), "{stderr}");
    assert_eq!(pid_files(dir.path()), ["backend-1.pid"], "nothing else was started");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_names_a_missing_lbnode() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let out = lbctl(
        &["local", "up", "--dir", dir.path().to_str().unwrap(), "--lbnode", "/nonexistent/lbnode"],
        Duration::from_secs(30),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step \"find lbnode\": lbnode not found at \"/nonexistent/lbnode\""), "{stderr}");
    assert!(pid_files(dir.path()).is_empty());
    Ok(())
}

/// A free 127.0.0.1 port in 9901..=9999 (bound and released), starting from an offset of our pid.
fn free_port() -> u16 {
    let offset = (std::process::id() as u16 + 50) % 99;
    (0..99u16)
        .map(|i| 9901 + (offset + i) % 99)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 9901..=9999")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_reports_a_node_that_dies_with_its_log_and_stops_what_it_started() -> Result<()> {
    for port in [7400, 7401, 8080, 8081] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.11", port)).is_ok(),
            "127.0.0.11:{port} is busy (another local cluster running?); this test needs it free"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    let base = free_port() - 1;
    // `false` stands for an lbnode that exits at once.
    let out = lbctl(
        &[
            "local",
            "up",
            "--nodes",
            "1",
            "--backends",
            "1",
            "--base-port",
            &base.to_string(),
            "--dir",
            d.to_str().unwrap(),
            "--lbnode",
            "/bin/false",
        ],
        Duration::from_secs(60),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("step \"wait for a leader that every node reports\": node-1 exited during startup"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("--- last 20 lines of {}", d.join("node-1.log").display())), "{stderr}");
    assert!(
        stderr.contains("lbctl local up: /bin/false --id 1 --bind 127.0.0.11"),
        "the log tail is shown: {stderr}"
    );
    assert!(stderr.contains("stopped what this run started"), "{stderr}");

    // The demo backend it had started is gone, and so are the pid files; the logs stay.
    assert!(pid_files(&d).is_empty(), "{:?}", pid_files(&d));
    assert!(d.join("backend-1.log").exists() && d.join("node-1.log").exists());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", base + 1).parse().unwrap();
    wait_until("the demo backend to be gone", Duration::from_secs(10), || async {
        let accepted = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
        ensure!(!accepted, "{addr} still accepts connections");
        Ok(())
    })
    .await?;
    let log = std::fs::read_to_string(d.join("backend-1.log")).unwrap();
    assert!(log.contains("demo backend listening") && log.contains("shutting down"), "{log}");
    Ok(())
}
