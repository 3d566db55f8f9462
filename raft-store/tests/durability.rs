//! What the store keeps across close and reopen of the same directory, and how it refuses a
//! directory that is already open.
//!
//! "Close" here is dropping every handle (sled flushes on the last drop). Losing the process
//! without a close (kill -9) is exercised by the multi-process tests of the `tests` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use lbfleet_api::config::{parse, ClusterConfig, Format};
use lbfleet_raft_store::{
    open, AppliedState, Command, CommandResult, Entry, LbNode, LogId, LogStore, StateMachineStore,
    StoreError, Vote,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<lbfleet_raft_store::TypeConfig>) -> Entry {
    Entry { log_id: log_id(term, index), payload }
}

fn blank(term: u64, index: u64) -> Entry {
    entry(term, index, EntryPayload::Blank)
}

fn lb(i: u64) -> LbNode {
    LbNode { addr: format!("127.0.0.1{i}:7400"), http_addr: format!("127.0.0.1{i}:7401") }
}

fn membership(voters: &[u64]) -> Membership<u64, LbNode> {
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    let nodes: BTreeMap<u64, LbNode> = voters.iter().map(|&i| (i, lb(i))).collect();
    Membership::new(vec![set], nodes)
}

fn config() -> ClusterConfig {
    let text = r#"
[[pool]]
name = "web"
policy = "maglev"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  [pool.health]
  kind = "http"
  path = "/health"
  interval = "1s"
  timeout = "500ms"

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
"#;
    parse(text, Format::Toml).expect("test config is valid")
}

/// A log of every payload kind: membership, blank, config, drain.
fn sample_log() -> Vec<Entry> {
    vec![
        entry(1, 1, EntryPayload::Membership(membership(&[1, 2, 3]))),
        blank(1, 2),
        entry(1, 3, EntryPayload::Normal(Command::ApplyConfig { config: config() })),
        entry(
            2,
            4,
            EntryPayload::Normal(Command::SetDrain {
                pool: "web".into(),
                backend: "127.0.0.1:9002".into(),
                draining: true,
            }),
        ),
    ]
}

fn open_dir(dir: &Path) -> (LogStore, StateMachineStore) {
    open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

#[tokio::test]
async fn vote_log_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(7, 2);
    {
        let (mut log, _sm) = open_dir(dir.path());
        log.save_vote(&vote).await.unwrap();
        log.blocking_append(sample_log()).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
    }

    let (mut log, _sm) = open_dir(dir.path());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, None);
    assert_eq!(st.last_log_id, Some(log_id(2, 4)));
    let got = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(format!("{got:?}"), format!("{:?}", sample_log()));
    // The config (with its durations) decodes to exactly what was written.
    match &got[2].payload {
        EntryPayload::Normal(Command::ApplyConfig { config: c }) => assert_eq!(c, &config()),
        other => panic!("entry 3 is {other:?}"),
    }
}

#[tokio::test]
async fn purge_removes_entries_up_to_the_id_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open_dir(dir.path());
        log.blocking_append((1..=10).map(|i| blank(1, i))).await.unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
        let left = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());
        // Purging an earlier id again changes nothing.
        log.purge(log_id(1, 2)).await.unwrap();
        log.truncate(log_id(1, 9)).await.unwrap();
    }

    let (mut log, _sm) = open_dir(dir.path());
    assert!(log.try_get_log_entries(0..5).await.unwrap().is_empty());
    let left = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![5, 6, 7, 8]);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(st.last_log_id, Some(log_id(1, 8)));

    // Purge everything: the last log id is then the purged one.
    log.purge(log_id(1, 8)).await.unwrap();
    drop((log, _sm));
    let (mut log, _sm) = open_dir(dir.path());
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 8)));
    assert_eq!(st.last_log_id, Some(log_id(1, 8)));
    assert!(log.try_get_log_entries(0..).await.unwrap().is_empty());
}

#[tokio::test]
async fn apply_results_membership_and_published_state() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_dir(dir.path());
    let mut rx = sm.subscribe();
    assert_eq!(*sm.current(), AppliedState::default());

    let results = sm.apply(sample_log()).await.unwrap();
    assert_eq!(
        results,
        vec![
            CommandResult::Ok,
            CommandResult::Ok,
            CommandResult::ConfigApplied { version: 1 },
            CommandResult::Ok
        ]
    );
    assert!(rx.has_changed().unwrap(), "an apply batch notifies subscribers");
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen, sm.current());

    let cur = sm.current();
    assert_eq!(cur.last_applied, Some(log_id(2, 4)));
    assert_eq!(cur.membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(cur.state.voters, BTreeSet::from([1, 2, 3]));
    assert_eq!(
        cur.state.nodes.get(&2),
        Some(&LbNode { addr: "127.0.0.12:7400".into(), http_addr: "127.0.0.12:7401".into() })
    );
    assert_eq!(cur.state.config_version, 1);
    assert!(cur.state.backend("web", "127.0.0.1:9002").unwrap().draining);
    assert_eq!(sm.applied_state().await.unwrap(), (cur.last_applied, cur.membership.clone()));

    // A rejected command is a result, not an error, and still advances last_applied.
    let bad = entry(
        2,
        5,
        EntryPayload::Normal(Command::SetDrain { pool: "api".into(), backend: "x".into(), draining: true }),
    );
    let r = sm.apply([bad]).await.unwrap();
    assert_eq!(r, vec![CommandResult::Rejected { errors: vec!["no pool named \"api\"".into()] }]);
    assert_eq!(sm.current().last_applied, Some(log_id(2, 5)));
    assert_eq!(sm.current().state, cur.state);
}

#[tokio::test]
async fn applied_state_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (before, snap_meta, snap_data) = {
        let (_log, mut sm) = open_dir(dir.path());
        sm.apply(sample_log()).await.unwrap();
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 4)));
        assert!(snap.meta.snapshot_id.starts_with("2-4-"), "{}", snap.meta.snapshot_id);
        // Applied after the snapshot: must come back from the applied state, not the snapshot.
        sm.apply([blank(2, 5)]).await.unwrap();
        (sm.current(), snap.meta, snap.snapshot.into_inner())
    };

    let (_log, mut sm) = open_dir(dir.path());
    assert_eq!(sm.current(), before);
    assert_eq!(sm.applied_state().await.unwrap(), (Some(log_id(2, 5)), before.membership.clone()));
    let cur = sm.get_current_snapshot().await.unwrap().expect("snapshot kept across reopen");
    assert_eq!(cur.meta, snap_meta);
    assert_eq!(cur.snapshot.into_inner(), snap_data);

    // The next snapshot gets a new id even at the same log id.
    let again = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(again.meta.snapshot_id.starts_with("2-5-"));
    let first_seq = snap_meta.snapshot_id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    let next_seq = again.meta.snapshot_id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(next_seq > first_seq, "{} after {}", again.meta.snapshot_id, snap_meta.snapshot_id);
}

#[tokio::test]
async fn installed_snapshot_replaces_the_state_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (_llog, mut leader) = open_dir(leader_dir.path());
    leader.apply(sample_log()).await.unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    {
        let (_flog, mut follower) = open_dir(follower_dir.path());
        // Some older state of its own, to be replaced.
        follower.apply([entry(1, 1, EntryPayload::Membership(membership(&[1])))]).await.unwrap();
        let mut rx = follower.subscribe();
        rx.borrow_and_update();

        let mut rcv = follower.begin_receiving_snapshot().await.unwrap();
        *rcv = *snap.snapshot.clone();
        follower.install_snapshot(&snap.meta, rcv).await.unwrap();
        assert!(rx.has_changed().unwrap(), "an install notifies subscribers");
        assert_eq!(follower.current(), leader.current());
        let cur = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, snap.meta);
    }

    let (_flog, mut follower) = open_dir(follower_dir.path());
    assert_eq!(follower.current(), leader.current());
    assert_eq!(follower.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
}

#[tokio::test]
async fn a_snapshot_with_undecodable_data_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_dir(dir.path());
    sm.apply(sample_log()).await.unwrap();
    let before = sm.current();
    let mut meta = sm.get_snapshot_builder().await.build_snapshot().await.unwrap().meta;
    meta.snapshot_id = "9-9-9".into();
    meta.last_log_id = Some(log_id(9, 9));

    let mut rcv = sm.begin_receiving_snapshot().await.unwrap();
    *rcv = std::io::Cursor::new(vec![0xff; 7]);
    let err = sm.install_snapshot(&meta, rcv).await.unwrap_err();
    assert!(err.to_string().contains("9-9-9"), "{err}");
    assert_eq!(sm.current(), before);
    assert_ne!(sm.get_current_snapshot().await.unwrap().unwrap().meta.snapshot_id, "9-9-9");
}

#[test]
fn a_second_open_in_this_process_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_dir(dir.path());
    let err = match open(dir.path()) {
        Ok(_) => panic!("second open of {} succeeded while the first is alive", dir.path().display()),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("already in use"), "{msg}");
    // A clone keeps the database open.
    let clone = first.0.clone();
    drop(first);
    assert!(matches!(open(dir.path()), Err(StoreError::Locked { .. })));
    drop(clone);
    open_dir(dir.path());
}

const HOLD_ENV: &str = "LBFLEET_RAFT_STORE_HOLD_DIR";
const OPENED_MARK: &str = "store-held-open:";

/// Child side of the test below: when started by it (the environment names a directory), opens
/// the store there, says so on stdout and keeps it open until stdin closes.
#[test]
#[ignore = "child side of an_open_by_another_process_is_refused, which starts it"]
fn hold_a_store_open_for_the_cross_process_test() {
    let Ok(dir) = std::env::var(HOLD_ENV) else {
        return;
    };
    let _store = open_dir(Path::new(&dir));
    println!("{OPENED_MARK} {dir}");
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
}

#[test]
fn an_open_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Process::new(exe)
        .args([
            "--exact",
            "hold_a_store_open_for_the_cross_process_test",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait (bounded) until the child reports the store open.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints the test name on the same line before the output.
            if line.contains(OPENED_MARK) {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        panic!("the child process did not open the store within 30 s");
    }

    let err = match open(dir.path()) {
        Ok(_) => panic!("open succeeded while another process holds {}", dir.path().display()),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");

    // Closing the child's stdin lets it exit; then the directory opens.
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child process did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    open_dir(dir.path());
}
