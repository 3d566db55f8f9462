//! The operator commands against a real 3-node cluster: `get config --format`, `apply --dry-run`,
//! `config diff`, `top` under real HTTP traffic, `drain --wait` on a terminal and in a pipe, `events
//! --follow` while a backend dies; and the shell
//! completions and manual pages of the real binary.
//!
//! Addresses: nodes on 127.0.203.11..13 (the harness's layout), demo backends on 127.0.203.101:9001
//! and 127.0.203.102:9002, the HTTP listener on port 18080 of every node.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, bin, creds, http_get, lbctl, loopback_ok, wait_until, BackendProc, Cluster};
use serde_json::Value;

const NET: u8 = 203;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
const CMD: Duration = Duration::from_secs(60);
const B1: &str = "127.0.203.101:9001";
const B2: &str = "127.0.203.102:9002";

fn config(backends: &[&str], port: u16) -> String {
    let mut s = "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n".to_string();
    for b in backends {
        s.push_str(&format!("[[pool.backend]]\naddr = \"{b}\"\n"));
    }
    s.push_str(
        "[pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\n\n",
    );
    s.push_str(&format!(
        "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {port}\npool = \"web\"\n"
    ));
    s
}

/// Exit code, stdout and stderr of `lbctl args...`.
async fn run(args: &[&str]) -> Result<(i32, String, String)> {
    let out = lbctl(args, CMD).await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn json(args: &[&str]) -> Result<Value> {
    let (code, out, err) = run(args).await?;
    ensure!(code == 0, "lbctl {args:?} exited {code}: {err}");
    serde_json::from_str(&out).with_context(|| format!("lbctl {args:?}: not JSON: {out}"))
}

/// A running lbctl whose stdout lines arrive on a channel; killed on drop.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn spawn(args: &[&str]) -> Result<Streaming> {
        let c = creds();
        let mut child = Command::new(bin("lbctl"))
            .args(args)
            .env_remove("LBCTL_ENDPOINT")
            .env("LBCTL_CA", c.ca())
            .env("LBCTL_TOKEN", &c.admin_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Streaming { child, lines })
    }

    /// The first line `want` accepts within `timeout`; the lines before it are returned too.
    fn until(&self, what: &str, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(e) => return Err(anyhow!("no line with {what} within {timeout:?} ({e}); saw {seen:#?}")),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_real_cluster() -> Result<()> {
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower").grpc_addr();
    let via = follower.as_str();
    let mut b1 = BackendProc::start("backend-1", B1).await?;
    let _b2 = BackendProc::start("backend-2", B2).await?;
    let base = config(&[B1], 18080);
    admin::apply_toml(via, &base).await.context("apply the first config")?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    // get config: TOML by default or --format toml (even with --json), JSON with --json or --format json.
    let from_json = json(&["--endpoint", via, "get", "config", "--json"]).await?;
    assert_eq!(json(&["--endpoint", via, "get", "config", "--format", "json"]).await?, from_json);
    let (code, toml_text, err) =
        run(&["--endpoint", via, "--json", "get", "config", "--format", "toml"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(toml_text.starts_with("# config version 1 "), "{toml_text}");
    let reparsed = lbfleet_api::config::parse(&toml_text, lbfleet_api::config::Format::Toml)
        .map_err(|e| anyhow!("get config --format toml is not valid TOML: {e}"))?;
    assert_eq!(serde_json::to_value(&reparsed)?, from_json);
    assert_eq!(from_json["pool"][0]["backend"][0]["addr"], B1);

    // apply --dry-run: what would change, and nothing changes.
    let next = file("next.toml", &config(&[B1, B2], 18081));
    let dry = json(&["--endpoint", via, "apply", "--dry-run", "-f", &next, "--json"]).await?;
    assert_eq!(dry["valid"], true);
    assert_eq!(dry["changed"], true);
    assert_eq!((dry["current_version"].as_u64(), dry["version"].as_u64()), (Some(1), Some(2)), "{dry}");
    assert_eq!(dry["answered_by"].as_u64(), c.nodes.iter().find(|n| n.grpc_addr() == via).map(|n| n.id));
    let changes = dry["changes"].as_array().unwrap();
    assert!(changes.iter().any(|x| x["op"] == "added" && x["what"] == "backend" && x["key"] == B2), "{dry}");
    let port = changes.iter().find(|x| x["what"] == "listener").expect("listener changed");
    assert_eq!(port["fields"][0], serde_json::json!({"field": "port", "old": 18080, "new": 18081}));
    let (code, text, err) = run(&["--endpoint", via, "apply", "--dry-run", "-f", &next]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("nothing was applied"), "{text}");
    assert!(text.contains(&format!("+ backend {B2} in pool \"web\"")), "{text}");
    assert!(text.contains("    port: 18080 -> 18081"), "{text}");
    let after = admin::get_config(via, false).await?;
    assert_eq!(after.version, 1, "a dry run changes nothing");
    assert_eq!(serde_json::from_str::<Value>(&after.config_json)?, from_json);

    // The node validates a dry run as an apply: every problem, and node-local hooks, exit 1.
    let bad = file("bad.toml", "[[pool]]\nname = \"web\"\npolicy = \"magic\"\n");
    let (code, _, err) = run(&["--endpoint", via, "apply", "--dry-run", "-f", &bad]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown policy \"magic\""), "{err}");
    let hooked = config(&[B1], 18080).replace(
        "[pool.health]",
        &format!("[[pool.backend]]\naddr = \"{B2}\"\nstandby = true\n[pool.health]"),
    );
    let hooked = hooked.replace(
        "[[listener]]",
        "[pool.scale]\nmin_active = 1\nmax_active = 1\nhigh_watermark = 10\nlow_watermark = 1\nwindow = \"10s\"\n\
         scale_out_hook = \"nope\"\n\n[[listener]]",
    );
    let hooked = file("hooked.toml", &hooked);
    let (code, _, err) = run(&["--endpoint", via, "apply", "--dry-run", "-f", &hooked]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("scale_out_hook \"nope\" is not defined on node"), "{err}");
    let (code, _, err) = run(&["--endpoint", via, "apply", "-f", &hooked]).await?;
    assert_eq!(code, 1, "a real apply refuses it the same way: {err}");
    assert_eq!(admin::get_config(via, false).await?.version, 1);

    // config diff: exit 0 and "no changes" for the committed config, 10 and the changes otherwise.
    let same = file("same.toml", &base);
    let (code, text, err) = run(&["--endpoint", via, "config", "diff", "-f", &same]).await?;
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.ends_with("no changes\n"), "{text}");
    let (code, text, err) = run(&["--endpoint", via, "config", "diff", "-f", &next, "--json"]).await?;
    assert_eq!(code, 10, "{err}");
    let diff: Value = serde_json::from_str(&text)?;
    assert_eq!(diff["changes"], dry["changes"]);
    let (code, text, _) = run(&["--endpoint", via, "config", "diff", "-f", &next]).await?;
    assert_eq!(code, 10);
    assert!(
        text.contains(&format!("+ backend {B2} in pool \"web\"")) && text.ends_with("2 changes\n"),
        "{text}"
    );
    let (code, _, err) = run(&["--endpoint", via, "config", "diff", "-f", &bad]).await?;
    assert_eq!(code, 1, "{err}");

    // Apply the second config: now it is the committed one.
    let (code, _, err) = run(&["--endpoint", via, "apply", "-f", &next]).await?;
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(&["--endpoint", via, "config", "diff", "-f", &next]).await?;
    assert_eq!(code, 0);

    // top under traffic: node 1's listener proxies to both backends.
    let web = format!("{}:18081", c.ip_of(1));
    wait_until(&format!("{web} to proxy"), SERVE, || {
        let web = web.clone();
        async move {
            let (status, _, _) = http_get(&web, "/", &[]).await?;
            ensure!(status == 200, "status {status}");
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let traffic = tokio::spawn({
        let web = web.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(8);
            let mut sent = 0u32;
            while Instant::now() < end && sent < 2_000 {
                let _ = http_get(&web, "/", &[]).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    let started = Instant::now();
    let (code, out, err) =
        run(&["--endpoint", via, "top", "--iterations", "3", "--interval", "1s", "--json"]).await?;
    assert_eq!(code, 0, "{err}");
    let views: Vec<Value> = out.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(views.len(), 3, "{out}");
    assert!(started.elapsed() >= Duration::from_secs(3), "three views one second apart");
    for v in &views {
        assert_eq!((v["nodes_answered"].as_u64(), v["nodes"].as_u64()), (Some(3), Some(3)), "{v}");
        let rows = v["backends"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{v}");
        assert!(rows.iter().all(|r| r["state"] == "up" && r["errors_per_s"] == 0.0), "{v}");
    }
    let rate = |b: &str| -> f64 {
        views
            .iter()
            .flat_map(|v| v["backends"].as_array().unwrap().iter())
            .filter(|r| r["backend"] == b)
            .map(|r| r["requests_per_s"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert!(rate(B1) > 1.0 && rate(B2) > 1.0, "round robin over both under ~30 requests/s: {out}");
    let sent = traffic.await?;
    let (code, text, err) = run(&["--endpoint", via, "top", "--once", "--interval", "200ms"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("3/3 nodes answered"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("POOL  BACKEND")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("web   127.0.203.101:9001") && l.ends_with("up")), "{text}");
    println!("top: {sent} requests sent; peak rates {:.1} and {:.1} requests/s", rate(B1), rate(B2));

    // drain --wait with requests in flight: a progress bar on a terminal, nothing otherwise. Two slow
    // requests through node 1 (round robin: one on each backend).
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { http_get(&web, "/sleep/3000", &[]).await.map(|r| r.0) })
        })
        .collect();
    wait_until("both slow requests in flight", SERVE, || async {
        let v = json(&["--endpoint", via, "top", "--once", "--interval", "100ms", "--json"]).await?;
        let busy = v["backends"].as_array().unwrap().iter().filter(|r| r["in_flight"] == 1).count();
        ensure!(busy == 2, "{v}");
        Ok(())
    })
    .await?;
    let out = lbfleet_tests::lbctl_on_terminal(
        &["--endpoint", via, "drain", "web", B2, "--wait", "--timeout", "20s"],
        CMD,
    )
    .await?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("1 in flight (3/3 nodes answered)") && shown.contains("[#"), "a bar: {shown}");
    assert!(shown.contains(&format!("drained: nothing in flight to {B2}")), "{shown}");
    let (code, out, err) =
        run(&["--endpoint", via, "drain", "web", B1, "--wait", "--timeout", "20s"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("nodes answered") && !err.contains("nodes answered"),
        "no bar in a pipe: {out}{err}"
    );
    assert!(out.contains(&format!("drained: nothing in flight to {B1}")), "{out}");
    for s in slow {
        assert_eq!(s.await?.ok(), Some(200), "a drained backend finishes its requests");
    }
    for b in [B1, B2] {
        let (code, _, err) = run(&["--endpoint", via, "undrain", "web", b]).await?;
        assert_eq!(code, 0, "{err}");
    }

    // events --follow: the events so far, then a new one as it is committed.
    let so_far = json(&["--endpoint", via, "events", "--json"]).await?;
    let last =
        so_far["events"].as_array().unwrap().iter().filter_map(|e| e["index"].as_u64()).max().unwrap_or(0);
    let follow = Streaming::spawn(&["--endpoint", via, "events", "--follow", "--json"])?;
    if last > 0 {
        follow.until("the last event so far", CMD, |l| l.contains(&format!("\"index\":{last},")))?;
    }
    let text_follow =
        Streaming::spawn(&["--endpoint", via, "events", "--follow", "--since", &last.to_string()])?;
    text_follow.until("the header", CMD, |l| l.starts_with("TIME"))?;
    b1.kill9();
    let down = format!("backend {B1} of pool \"web\" is down");
    let what = |l: &str| serde_json::from_str::<Value>(l).map(|v| v["what"].clone()).unwrap_or_default();
    let lines = follow.until("the backend marked down", SERVE, |l| what(l) == down.as_str())?;
    let ev: Value = serde_json::from_str(lines.last().unwrap())?;
    assert!(ev["index"].as_u64().unwrap() > last, "{ev}");
    assert_eq!(ev["what"], down.as_str());
    text_follow.until("the backend marked down", SERVE, |l| l.contains(&down))?;
    // Ctrl-C ends it with exit 0.
    let mut follow = follow;
    lbfleet_tests::process::signal(follow.child.id(), libc::SIGINT);
    let status = wait_exit(&mut follow.child, Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0));

    // top until Ctrl-C outlives the node it asks: the failure is shown, and views resume after a restart.
    let asked = c.grpc_addr(3);
    let top = Streaming::spawn(&["--endpoint", &asked, "top", "--interval", "500ms", "--json"])?;
    let field = |l: &str, f: &str| serde_json::from_str::<Value>(l).map(|v| v[f].clone()).unwrap_or_default();
    top.until("a view", SERVE, |l| field(l, "nodes_answered") == 3)?;
    c.node(3).kill9();
    let lines = top.until("the failure", SERVE, |l| !field(l, "error").is_null())?;
    let failed: Value = serde_json::from_str(lines.last().unwrap())?;
    assert_eq!(failed["error"]["endpoint"], asked.as_str(), "{failed}");
    c.node(3).start()?;
    top.until("a view again", SERVE, |l| field(l, "nodes_answered") == 3)?;
    let mut top = top;
    lbfleet_tests::process::signal(top.child.id(), libc::SIGINT);
    assert_eq!(wait_exit(&mut top.child, Duration::from_secs(10))?.code(), Some(0));
    Ok(())
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        ensure!(Instant::now() < deadline, "lbctl did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lbctl args...` with its standard output in `path` (a completion script is larger than a pipe holds),
/// within a deadline: the exit code and what it wrote.
async fn run_to_file(args: &[&str], path: &std::path::Path) -> Result<(i32, String)> {
    let mut child = Command::new(bin("lbctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(path)?)
        .stderr(Stdio::inherit())
        .spawn()?;
    let status = lbfleet_tests::process::wait_exit(&mut child, CMD).await?;
    Ok((status.code().unwrap_or(-1), std::fs::read_to_string(path)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_scripts_and_manual_pages() -> Result<()> {
    let subcommands =
        ["status", "apply", "get", "config", "backends", "nodes", "drain", "events", "top", "man"];
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("lbctl.bash");
    let (code, script) = run_to_file(&["completions", "bash"], &path).await?;
    assert_eq!(code, 0);
    let check = Command::new("bash").arg("-n").arg(&path).output()?;
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    for s in subcommands {
        assert!(script.contains(&format!("cmd=\"lbctl__subcmd__{s}\"")), "the bash script completes {s}");
    }
    // Sourced, it completes the first word.
    let complete = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}; COMP_WORDS=(lbctl sta); COMP_CWORD=1; COMP_LINE='lbctl sta'; COMP_POINT=9; _lbctl lbctl sta lbctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&complete.stdout).trim(), "status", "{complete:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script) = run_to_file(&["completions", shell], &dir.path().join(shell)).await?;
        assert_eq!(code, 0, "{shell}");
        assert!(script.contains("top") && script.contains("dry-run"), "{shell}");
    }
    let (code, _, _) = run(&["completions", "tcsh"]).await?;
    assert_eq!(code, 64);

    let (code, page) = run_to_file(&["man"], &dir.path().join("lbctl.1")).await?;
    assert_eq!(code, 0);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} in {page}");
    }
    for s in subcommands {
        assert!(page.contains(&format!("lbctl\\-{s}(1)")), "lbctl.1 names {s}");
    }
    let mandir = dir.path().join("man1");
    let listed = json(&["man", "--dir", mandir.to_str().unwrap(), "--json"]).await?;
    let pages: Vec<&str> = listed["pages"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for p in ["lbctl.1", "lbctl-apply.1", "lbctl-config-diff.1", "lbctl-top.1", "lbctl-events.1"] {
        assert!(pages.contains(&p), "{p} in {pages:?}");
        assert!(mandir.join(p).is_file(), "{p} written");
    }
    let apply = std::fs::read_to_string(mandir.join("lbctl-apply.1"))?;
    assert!(apply.contains("dry\\-run"), "{apply}");
    // man renders it.
    if let Ok(out) = Command::new("man").arg("-l").arg(mandir.join("lbctl.1")).env("MANPAGER", "cat").output()
    {
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("SUBCOMMANDS"));
        }
    }
    Ok(())
}
