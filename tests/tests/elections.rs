//! Elections on a loaded machine: with the default Raft timings, a 3-node cluster of real lbnode
//! processes holds no election while its leader lives, even when every core is kept busy by spinning
//! threads and configs are committed all the while. Any election, won or lost, raises the term of
//! the node that starts it, so the test watches every node's term and leader.
//!
//! The defaults trade failover time against this: a shorter election timeout fails over sooner, and
//! one that is too short makes a starved follower campaign against a live leader (README, "Control
//! plane"). This file holds only this test, so no other test of the crate shares its load.
//!
//! Addresses: nodes on 127.0.47.11–13.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use lbfleet_tests::{admin, marked_config, wait_until, Cluster};

/// How long the CPU burners spin.
const BURN: Duration = Duration::from_secs(20);
/// Spinning threads per CPU.
const BURNERS_PER_CPU: usize = 2;
/// Between two looks at every node (and one config write).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Threads that spin until a deadline or until dropped; their CPU time proves the load was real.
struct Burners {
    stop: Arc<AtomicBool>,
    cpu_micros: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Burners {
    fn start(n: usize, for_how_long: Duration) -> Burners {
        let stop = Arc::new(AtomicBool::new(false));
        let cpu_micros = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + for_how_long;
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                let cpu = cpu_micros.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        }
                        std::hint::black_box(x);
                    }
                    cpu.fetch_add(thread_cpu_time().as_micros() as u64, Ordering::Relaxed);
                })
            })
            .collect();
        Burners { stop, cpu_micros, threads }
    }

    /// Stop every thread and return the CPU time they used together.
    fn finish(mut self) -> Duration {
        self.join();
        Duration::from_micros(self.cpu_micros.load(Ordering::Relaxed))
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.join();
    }
}

/// (id, role, term, leader) of every node.
async fn look(addrs: &[String]) -> Result<Vec<(u64, String, u64, Option<u64>)>> {
    let mut out = Vec::new();
    for a in addrs {
        let s = admin::local_status(a).await?;
        out.push((s.id, s.role, s.term, s.leader));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_machine_holds_no_election_while_the_leader_lives() -> Result<()> {
    let mut c = Cluster::start(47, 3, &[])?;
    let leader = c.wait_for_leader(Duration::from_secs(20)).await?;
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr()).collect();
    // A steady start: every node knows the leader and the same term.
    let term = wait_until("every node to name the leader in one term", Duration::from_secs(20), || async {
        let seen = look(&addrs).await?;
        let term = seen[0].2;
        ensure!(seen.iter().all(|(_, _, t, l)| *t == term && *l == Some(leader)), "{seen:?}");
        Ok(term)
    })
    .await?;
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower").grpc_addr();
    let leader_addr = c.node(leader).grpc_addr();

    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burners = Burners::start(cpus * BURNERS_PER_CPU, BURN);
    let started = Instant::now();
    let mut writes = 0u32;
    while started.elapsed() < BURN {
        // A commit through the leader and one forwarded by a follower, alternately: replication and
        // log flushes run under the same load as the heartbeats.
        let via = if writes.is_multiple_of(2) { &leader_addr } else { &follower };
        if let Err(e) = admin::apply_toml(via, &marked_config(writes)).await {
            bail!("write {writes} via {via} failed under load: {e}\n{}", c.logs());
        }
        writes += 1;
        let seen = look(&addrs).await?;
        if !seen
            .iter()
            .all(|(id, role, t, l)| *t == term && *l == Some(leader) && (*id != leader || role == "leader"))
        {
            bail!(
                "an election while leader {leader} of term {term} was alive, {:?} into the load: {seen:?}\n{}",
                started.elapsed(),
                c.logs()
            );
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    let wall = started.elapsed();
    let cpu = burners.finish();
    let seen = look(&addrs).await?;
    ensure!(
        seen.iter().all(|(_, _, t, l)| *t == term && *l == Some(leader)),
        "the term or leader moved by the end of the load: {seen:?}\n{}",
        c.logs()
    );
    // The load was real: the burners got at least most of one core for the whole time.
    ensure!(
        cpu.as_secs_f64() >= 0.6 * wall.as_secs_f64(),
        "the burners used only {cpu:?} of CPU in {wall:?}: the machine was not loaded"
    );
    println!(
        "{writes} writes and no election in {wall:?} with {} spinning threads ({cpu:?} of CPU)",
        cpus * BURNERS_PER_CPU
    );
    // The leader still commits.
    let r = admin::apply_toml(&leader_addr, &marked_config(99_999)).await?;
    ensure!(r.version > 0, "{r:?}");
    Ok(())
}
