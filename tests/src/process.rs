//! Processes: liveness, signals, waiting for an exit, running a command to completion. Linux only
//! (reads `/proc`).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::wait::wait_until;

/// Whether `pid` names a running process; a zombie (exited, not yet reaped) counts as gone.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
        return false;
    };
    // "pid (comm) S ...": comm may hold spaces and parentheses, so the state follows the last ')'.
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Send `sig` to `pid`; true when it was delivered.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) touches no memory; callers name processes they started or found in pid files.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Wait until `child` exits and return its status; after `timeout` it is killed (and reaped) and the
/// wait fails.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = child.id();
    let exited = wait_until(&format!("process {pid} to exit"), timeout, || {
        let status = child.try_wait();
        async move { status?.ok_or_else(|| anyhow!("still running")) }
    })
    .await;
    if exited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Run `cmd` to completion (stdin from /dev/null, stdout and stderr collected) within `deadline`; a
/// command that outlives it is killed and the error shows what it printed.
pub async fn output_within(cmd: &mut Command, deadline: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let exited = wait_exit(&mut child, deadline).await;
    let out = child.wait_with_output().with_context(|| format!("collect the output of {cmd:?}"))?;
    if let Err(e) = exited {
        bail!(
            "{cmd:?}: {e:#}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
