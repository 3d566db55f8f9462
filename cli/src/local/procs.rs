//! Processes of a local cluster: detached spawning, pid files, liveness, signals, log tails. Linux only
//! (reads `/proc`).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Start `program args...` in its own session (it outlives lbctl and its terminal's signals), stdin from
/// /dev/null, stdout and stderr appended to `log`.
pub fn spawn_detached(program: &Path, args: &[String], log: &Path, cwd: &Path) -> anyhow::Result<Child> {
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log file \"{}\"", log.display()))?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(log_file, "=== {stamp} lbctl local up: {} {}", program.display(), args.join(" "));
    let err_file =
        log_file.try_clone().with_context(|| format!("cannot reopen log file \"{}\"", log.display()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log_file).stderr(err_file).current_dir(cwd);
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("cannot start \"{}\"", program.display()))
}

pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    std::fs::write(path, format!("{pid}\n"))
        .with_context(|| format!("cannot write pid file \"{}\"", path.display()))
}

/// A `DIR/<name>.pid` file.
#[derive(Debug, Clone)]
pub struct PidFile {
    pub name: String,
    pub path: PathBuf,
    /// `None` when the file does not hold a valid pid.
    pub pid: Option<i32>,
}

/// Every `*.pid` file in `dir`: `node-*` first, then the others, each group sorted by name.
pub fn list_pid_files(dir: &Path) -> anyhow::Result<Vec<PidFile>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list \"{}\"", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list \"{}\"", dir.display()))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let pid =
            std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok()).filter(|p| *p > 0);
        out.push(PidFile { name, path, pid });
    }
    out.sort_by(|a, b| (!a.name.starts_with("node-"), &a.name).cmp(&(!b.name.starts_with("node-"), &b.name)));
    Ok(out)
}

/// Whether `pid` is a running (not zombie) process.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) S ...": comm may hold spaces and parentheses, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether `pid` looks like a process of a local cluster in `dir` (guards against a recycled pid).
///
/// Known limit: a pid recycled by another lbnode or demo backend (of another cluster) passes this check.
pub fn looks_like_ours(pid: i32, dir: &Path) -> bool {
    match cmdline(pid) {
        // No /proc entry readable: do not guess.
        None => false,
        Some(c) => c.contains("lbnode") || c.contains("demo-backend") || c.contains(&*dir.to_string_lossy()),
    }
}

/// Send `sig` to `pid`; true when it was delivered.
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: plain kill(2) on a pid read from our own pid file; no memory is involved.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Wait until none of `pids` is alive, or until `deadline` passes. Returns those still alive.
pub async fn wait_gone(pids: &[i32], deadline: Duration) -> Vec<i32> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || tokio::time::Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of a log file (reads at most its last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).and_then(|_| f.read_to_end(&mut buf)).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let lines = super::plan::last_lines(&text, n);
    if lines.is_empty() {
        "(log is empty)".to_string()
    } else {
        lines.join("\n")
    }
}

/// Find an executable: the explicit path, else next to the running lbctl, else on PATH.
pub fn find_executable(name: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        anyhow::bail!("{name} not found at \"{}\"", p.display());
    }
    let here = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(dir) = &here {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "cannot find the {name} binary: not next to lbctl{} and not on PATH; build it with \
         `cargo build -p lbfleet-node` or pass --{name} PATH",
        here.map(|d| format!(" (in {})", d.display())).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn an_unreaped_exited_child_is_a_zombie_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Wait (with a deadline) until the child has exited but is not yet reaped.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !is_zombie(pid) {
            assert!(std::time::Instant::now() < until, "child never exited");
            std::thread::yield_now();
        }
        assert!(!alive(pid));
        child.wait().unwrap();
    }

    #[test]
    fn pid_files_are_listed_nodes_first_and_garbage_is_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backend-1.pid"), "12\n").unwrap();
        std::fs::write(dir.path().join("node-2.pid"), "13").unwrap();
        std::fs::write(dir.path().join("node-1.pid"), "x").unwrap();
        std::fs::write(dir.path().join("node-1.log"), "").unwrap();
        let files = list_pid_files(dir.path()).unwrap();
        let v: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.pid)).collect();
        assert_eq!(v, [("node-1", None), ("node-2", Some(13)), ("backend-1", Some(12))]);
    }

    #[test]
    fn tail_reads_the_end_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 2), "line 9998\nline 9999");
        assert!(tail(&dir.path().join("missing.log"), 2).starts_with("(cannot read"));
    }

    #[test]
    fn find_executable_explicit_and_missing() {
        assert!(find_executable("lbnode", Some(Path::new("/nonexistent/lbnode")))
            .unwrap_err()
            .to_string()
            .contains("not found"));
        let sh = find_executable("sh", None).unwrap();
        assert!(sh.ends_with("sh"));
        let e = find_executable("surely-not-a-binary-name-lbf", None).unwrap_err().to_string();
        assert!(e.contains("cannot find the surely-not-a-binary-name-lbf binary"), "{e}");
    }

    #[test]
    fn detached_child_runs_in_its_own_session_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let script = "echo hello; echo oops >&2; exec sleep 30".to_string();
        let mut child =
            spawn_detached(Path::new("/bin/sh"), &["-c".into(), script], &log, dir.path()).unwrap();
        let pid = child.id() as i32;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("oops") {
            assert!(std::time::Instant::now() < until, "child never wrote its log");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: getsid on a pid we spawned and have not reaped.
        let sid = unsafe { libc::getsid(pid) };
        assert!(signal(pid, libc::SIGKILL));
        child.wait().unwrap();
        assert_eq!(sid, pid, "the child must lead its own session");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("lbctl local up"));
        assert!(text.contains("hello"));
    }
}
