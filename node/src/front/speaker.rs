//! The BGP speaker (BIRD) as this node's child: `program -f -c config -s socket`, restarted after
//! [`RESTART_DELAY`] when it exits on its own, stopped with SIGTERM by [`Speaker::stop`].
//!
//! The child dies with the node: it is started with `PR_SET_PDEATHSIG` (SIGTERM), so a SIGKILLed
//! lbnode takes its BIRD with it and the BGP session drops, which withdraws the VIP at the router.
//! The kernel sends that signal when the *thread* that forked the child ends, so the child is forked
//! and waited for on a thread of its own that lives exactly as long as the child.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pause before a speaker that exited (or failed to start) is started again.
pub const RESTART_DELAY: Duration = Duration::from_secs(2);
/// How long [`Speaker::stop`] waits for the speaker to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A running speaker and the thread that watches it.
#[derive(Debug)]
pub struct Speaker {
    pid: Arc<AtomicI32>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Speaker {
    /// Start `program -f -c config -s socket` (its output goes to this node's stdout and stderr).
    pub fn start(program: PathBuf, config: PathBuf, socket: PathBuf) -> std::io::Result<Speaker> {
        let pid = Arc::new(AtomicI32::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pid, stopping) = (Arc::clone(&pid), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("bgp-speaker".into())
                .spawn(move || watch(program, config, socket, pid, stopping))?
        };
        Ok(Speaker { pid, stopping, thread: Some(thread) })
    }

    /// SIGTERM to the speaker (SIGKILL after [`STOP_TIMEOUT`]) and wait for its thread.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + STOP_TIMEOUT;
        signal(&self.pid, libc::SIGTERM);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() > deadline {
                tracing::warn!("the BGP speaker did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
                signal(&self.pid, libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopping.store(true, Ordering::SeqCst);
            signal(&self.pid, libc::SIGTERM);
        }
    }
}

fn signal(pid: &AtomicI32, sig: libc::c_int) {
    let pid = pid.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) takes plain integers; the pid is our child's, reaped only by our thread.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Start, wait for and restart the speaker until `stopping`.
fn watch(program: PathBuf, config: PathBuf, socket: PathBuf, pid: Arc<AtomicI32>, stopping: Arc<AtomicBool>) {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    while !stopping.load(Ordering::SeqCst) {
        let mut cmd = Command::new(&program);
        cmd.arg("-f").arg("-c").arg(&config).arg("-s").arg(&socket).stdin(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The node may have died before the prctl: then nobody would signal us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                pid.store(child.id() as i32, Ordering::SeqCst);
                tracing::info!(pid = child.id(), program = %program.display(), config = %config.display(), "BGP speaker started");
                let status = child.wait();
                pid.store(0, Ordering::SeqCst);
                if stopping.load(Ordering::SeqCst) {
                    tracing::info!("BGP speaker stopped");
                    break;
                }
                match status {
                    Ok(s) => tracing::error!(
                        "the BGP speaker exited ({s}); starting it again in {RESTART_DELAY:?}"
                    ),
                    Err(e) => tracing::error!("cannot wait for the BGP speaker: {e}"),
                }
            }
            Err(e) => tracing::error!(
                "cannot start the BGP speaker {} (bgp_speaker): {e}; trying again in {RESTART_DELAY:?}",
                program.display()
            ),
        }
        let until = Instant::now() + RESTART_DELAY;
        while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
