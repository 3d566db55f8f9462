//! Scale hooks: the operator's `scale_out_cmd` / `scale_in_cmd`, run by the leader with `sh -c` after a
//! committed activation or deactivation, with `LBFLEET_POOL` and `LBFLEET_BACKEND` set, bounded in
//! time (killed past [`HOOK_TIMEOUT`]) and in memory (only the last [`OUTPUT_TAIL`] bytes of its
//! combined output are kept).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How long a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How many bytes of a hook's output (stdout then stderr) go to the event log.
pub const OUTPUT_TAIL: usize = 512;

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// `None` when it was killed (by the timeout or a signal) or could not start.
    pub exit_code: Option<i32>,
    /// The tail of its output, or why it did not run to the end.
    pub output: String,
}

/// Run `command` through `sh -c` for `pool`/`backend`, at most `timeout`.
pub async fn run(command: &str, pool: &str, backend: &str, timeout: Duration) -> HookOutcome {
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("LBFLEET_POOL", pool)
        .env("LBFLEET_BACKEND", backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return HookOutcome { exit_code: None, output: format!("cannot start `sh -c`: {e}") },
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (out, err) = tokio::join!(read_tail(stdout), read_tail(stderr));
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((out, err, status)) => {
            let mut text = out;
            text.extend_from_slice(&err);
            let output = tail_text(&text);
            match status {
                Ok(st) => HookOutcome { exit_code: st.code(), output },
                Err(e) => HookOutcome {
                    exit_code: None,
                    output: format!("{output}(cannot wait for the hook: {e})"),
                },
            }
        }
        Err(_) => {
            let _ = child.kill().await;
            HookOutcome {
                exit_code: None,
                output: format!("killed after {}", humantime::format_duration(timeout)),
            }
        }
    }
}

/// Read everything, keeping only the last [`OUTPUT_TAIL`] bytes.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>) -> Vec<u8> {
    let Some(mut reader) = reader else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_TAIL {
                    kept.drain(..kept.len() - OUTPUT_TAIL);
                }
            }
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes as text (lossy), trimmed.
fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hook_sees_its_pool_and_backend_and_reports_its_exit_code() {
        let o = run(
            "echo \"$LBFLEET_POOL $LBFLEET_BACKEND\"; echo oops >&2; exit 3",
            "web",
            "127.0.0.1:9101",
            HOOK_TIMEOUT,
        )
        .await;
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "web 127.0.0.1:9101\noops");
    }

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let o =
            run("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done", "p", "b", HOOK_TIMEOUT).await;
        assert_eq!(o.exit_code, Some(0));
        assert!(o.output.len() <= OUTPUT_TAIL, "{}", o.output.len());
        assert!(o.output.ends_with("line1999"), "{}", o.output);
    }

    #[tokio::test]
    async fn a_hook_past_its_deadline_is_killed() {
        let o = run("exec sleep 30", "p", "b", Duration::from_millis(200)).await;
        assert_eq!(o.exit_code, None);
        assert_eq!(o.output, "killed after 200ms");
    }
}
