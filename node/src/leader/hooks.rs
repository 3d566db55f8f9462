//! Scale hooks: the named commands of this node's local config (`[hooks.NAME]`, see
//! [`crate::config`]) that a pool's `scale_out_hook` / `scale_in_hook` refers to. The leader runs one
//! after a committed activation or deactivation: its argv directly (no shell, no PATH search), with
//! `LBFLEET_POOL` and `LBFLEET_BACKEND` set and stdin closed, bounded in time (killed past the hook's
//! `timeout`) and in memory (only the last [`OUTPUT_TAIL`] bytes of its combined output are kept).

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::config::Hook;

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

/// Run `hook` for `pool`/`backend`, at most `hook.timeout`.
pub async fn run(hook: &Hook, pool: &str, backend: &str) -> HookOutcome {
    let Some((program, args)) = hook.argv.split_first() else {
        return HookOutcome { exit_code: None, output: format!("hook `{}` has no command", hook.name) };
    };
    let child = Command::new(program)
        .args(args)
        .env("LBFLEET_POOL", pool)
        .env("LBFLEET_BACKEND", backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return HookOutcome { exit_code: None, output: format!("cannot start {program}: {e}") },
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (out, err) = tokio::join!(read_tail(stdout), read_tail(stderr));
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(hook.timeout, work).await {
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
                output: format!("killed after {}", humantime::format_duration(hook.timeout)),
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
    use std::time::Duration;

    use super::*;
    use crate::config::DEFAULT_HOOK_TIMEOUT;

    fn hook(argv: &[&str], timeout: Duration) -> Hook {
        Hook { name: "h".into(), argv: argv.iter().map(|a| a.to_string()).collect(), timeout }
    }

    fn sh(script: &str) -> Hook {
        hook(&["/bin/sh", "-c", script], DEFAULT_HOOK_TIMEOUT)
    }

    #[tokio::test]
    async fn a_hook_sees_its_pool_and_backend_and_reports_its_exit_code() {
        let o = run(
            &sh("echo \"$LBFLEET_POOL $LBFLEET_BACKEND\"; echo oops >&2; exit 3"),
            "web",
            "127.0.0.1:9101",
        )
        .await;
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "web 127.0.0.1:9101\noops");
    }

    #[tokio::test]
    async fn arguments_reach_the_program_as_they_are_without_a_shell() {
        let o =
            run(&hook(&["/bin/echo", "$LBFLEET_POOL", "a;b", "`x`"], DEFAULT_HOOK_TIMEOUT), "web", "b").await;
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.output, "$LBFLEET_POOL a;b `x`");
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_reported() {
        let o = run(&hook(&["/nonexistent/add-backend"], DEFAULT_HOOK_TIMEOUT), "p", "b").await;
        assert_eq!(o.exit_code, None);
        assert!(o.output.starts_with("cannot start /nonexistent/add-backend: "), "{}", o.output);
    }

    #[tokio::test]
    async fn only_the_tail_of_a_long_output_is_kept() {
        let o = run(&sh("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"), "p", "b").await;
        assert_eq!(o.exit_code, Some(0));
        assert!(o.output.len() <= OUTPUT_TAIL, "{}", o.output.len());
        assert!(o.output.ends_with("line1999"), "{}", o.output);
    }

    #[tokio::test]
    async fn a_hook_past_its_deadline_is_killed() {
        let o = run(&hook(&["/bin/sleep", "30"], Duration::from_millis(200)), "p", "b").await;
        assert_eq!(o.exit_code, None);
        assert_eq!(o.output, "killed after 200ms");
    }
}
