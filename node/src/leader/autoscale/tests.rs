use super::*;
use lbfleet_api::command::{Command, CommandResult, LeaderAction};
use lbfleet_api::config::{parse, ClusterConfig, Format};
use lbfleet_api::state::ClusterState;

const P1: &str = "127.0.0.1:9001";
const P2: &str = "127.0.0.1:9002";
const S1: &str = "127.0.0.1:9101";
const S2: &str = "127.0.0.1:9102";
const S3: &str = "127.0.0.1:9103";

/// Pool "web": two primaries, three standbys (listed out of key order), window 5 s, watermarks 20/5.
fn config(min_active: u32, max_active: u32) -> ClusterConfig {
    let t = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n\
         [[pool.backend]]\naddr = \"{P1}\"\n[[pool.backend]]\naddr = \"{P2}\"\n\
         [[pool.backend]]\naddr = \"{S3}\"\nstandby = true\n\
         [[pool.backend]]\naddr = \"{S1}\"\nstandby = true\n\
         [[pool.backend]]\naddr = \"{S2}\"\nstandby = true\n\
         [pool.scale]\nmin_active = {min_active}\nmax_active = {max_active}\nhigh_watermark = 20\n\
         low_watermark = 5\nwindow = \"5s\"\n"
    );
    parse(&t, Format::Toml).unwrap()
}

fn state(min_active: u32, max_active: u32) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply_membership([1, 2, 3].into(), (1..=3).map(|i| (i, Default::default())).collect());
    let r = s.apply(&Command::ApplyConfig { config: config(min_active, max_active) }, 1);
    assert!(matches!(r, CommandResult::ConfigApplied { .. }), "{r:?}");
    s
}

/// Every listed backend at `each` load.
fn load(each: u64, backends: &[&str]) -> BTreeMap<String, u64> {
    backends.iter().map(|b| (b.to_string(), each)).collect()
}

fn step(s: &ClusterState, l: Observation<'_>, now_ms: u64, track: &mut PoolTrack) -> Option<Step> {
    let pool = &s.config.as_ref().unwrap().pool[0];
    decide(pool, &s.backends["web"], l, now_ms, track)
}

fn apply_step(s: &mut ClusterState, st: &Step, term: u64, index: u64) -> CommandResult {
    s.apply(
        &Command::Leader {
            term,
            leader: 1,
            at_ms: 0,
            action: LeaderAction::SetStandby {
                pool: st.pool.clone(),
                backend: st.backend.clone(),
                active: st.active,
            },
            why: st.why.clone(),
        },
        index,
    )
}

#[test]
fn high_load_must_last_a_whole_window_before_a_standby_is_activated() {
    let s = state(2, 5);
    let hot = load(30, &[P1, P2]);
    let mut t = PoolTrack::default();
    for now in [0, 1000, 2000, 3000, 4000, 4999] {
        assert_eq!(step(&s, Some(&hot), now, &mut t), None, "at {now} ms");
    }
    let st = step(&s, Some(&hot), 5000, &mut t).expect("a step after 5 s above");
    assert_eq!((st.backend.as_str(), st.active), (S1, true), "lowest key, not config order");
    assert_eq!(st.why, "avg load 30.0 > high watermark 20 for 5s (2 active backends)");
}

#[test]
fn an_interruption_restarts_the_window() {
    let s = state(2, 5);
    let hot = load(30, &[P1, P2]);
    let calm = load(10, &[P1, P2]);
    let mut t = PoolTrack::default();
    assert_eq!(step(&s, Some(&hot), 0, &mut t), None);
    assert_eq!(step(&s, Some(&hot), 4000, &mut t), None);
    assert_eq!(step(&s, Some(&calm), 4500, &mut t), None, "between the watermarks");
    assert_eq!(step(&s, Some(&hot), 5000, &mut t), None, "window restarted at 5000");
    assert_eq!(step(&s, Some(&hot), 9999, &mut t), None);
    assert!(step(&s, Some(&hot), 10_000, &mut t).is_some());
}

#[test]
fn an_incomplete_picture_decides_nothing_and_restarts_the_window() {
    let s = state(2, 5);
    let hot = load(30, &[P1, P2]);
    let mut t = PoolTrack::default();
    assert_eq!(step(&s, Some(&hot), 0, &mut t), None);
    assert_eq!(step(&s, None, 3000, &mut t), None, "a node's report is stale");
    assert_eq!(step(&s, Some(&hot), 5000, &mut t), None, "the window restarted at 5000");
    assert_eq!(step(&s, Some(&hot), 9000, &mut t), None);
    assert!(step(&s, Some(&hot), 10_000, &mut t).is_some());
}

#[test]
fn one_step_per_window_then_the_next_standby_from_committed_state() {
    let mut s = state(2, 5);
    let mut t = PoolTrack::default();
    let hot = |n| load(n, &[P1, P2, S1, S2, S3]);
    step(&s, Some(&hot(40)), 0, &mut t);
    let first = step(&s, Some(&hot(40)), 5000, &mut t).unwrap();
    assert_eq!(apply_step(&mut s, &first, 2, 2), CommandResult::Ok);
    for now in (6000..10_000).step_by(1000) {
        assert_eq!(step(&s, Some(&hot(40)), now, &mut t), None, "at {now}: same window as the first step");
    }
    let second = step(&s, Some(&hot(40)), 10_000, &mut t).unwrap();
    assert_eq!((second.backend.as_str(), second.active), (S2, true));
    assert!(second.why.contains("(3 active backends)"), "{}", second.why);
}

#[test]
fn max_active_bounds_scale_out() {
    let mut s = state(2, 3);
    let mut t = PoolTrack::default();
    let hot = load(100, &[P1, P2, S1, S2, S3]);
    step(&s, Some(&hot), 0, &mut t);
    let st = step(&s, Some(&hot), 5000, &mut t).unwrap();
    apply_step(&mut s, &st, 1, 2);
    for now in (5000..60_000).step_by(1000) {
        assert_eq!(step(&s, Some(&hot), now, &mut t), None, "3 active = max_active at {now}");
    }
}

#[test]
fn low_load_deactivates_the_highest_activated_standby_but_never_below_min_or_a_primary() {
    let mut s = state(3, 5);
    for (i, b) in [S1, S2].iter().enumerate() {
        let st = Step { pool: "web".into(), backend: b.to_string(), active: true, why: String::new() };
        assert_eq!(apply_step(&mut s, &st, 1, 2 + i as u64), CommandResult::Ok);
    }
    let idle = load(1, &[P1, P2, S1, S2]);
    let mut t = PoolTrack::default();
    assert_eq!(step(&s, Some(&idle), 0, &mut t), None);
    let st = step(&s, Some(&idle), 5000, &mut t).unwrap();
    assert_eq!((st.backend.as_str(), st.active), (S2, false));
    assert_eq!(st.why, "avg load 1.0 < low watermark 5 for 5s (4 active backends)");
    apply_step(&mut s, &st, 1, 4);
    for now in (6000..60_000).step_by(1000) {
        assert_eq!(step(&s, Some(&idle), now, &mut t), None, "3 active = min_active at {now}");
    }

    // With min_active 2 it would go further, but only standbys: the primaries stay.
    let mut s = state(2, 5);
    let mut t = PoolTrack::default();
    for now in (0..60_000).step_by(1000) {
        assert_eq!(step(&s, Some(&load(0, &[P1, P2])), now, &mut t), None, "no standby is active");
    }
    s.backends.get_mut("web").unwrap().get_mut(P1).unwrap().draining = true;
    let mut t = PoolTrack::default();
    for now in (0..60_000).step_by(1000) {
        assert_eq!(step(&s, Some(&load(0, &[P1, P2])), now, &mut t), None, "1 active < min_active");
    }
}

#[test]
fn unhealthy_draining_and_backup_backends_do_not_count_as_active_nor_get_activated() {
    let mut s = state(1, 5);
    let web = s.backends.get_mut("web").unwrap();
    web.get_mut(P2).unwrap().healthy = false;
    web.get_mut(S1).unwrap().draining = true;
    web.get_mut(S2).unwrap().healthy = false;
    // P2's load does not count: it is not active. Average over P1 alone is 25.
    let l: BTreeMap<String, u64> = [(P1.to_string(), 25), (P2.to_string(), 1000)].into();
    let mut t = PoolTrack::default();
    step(&s, Some(&l), 0, &mut t);
    let st = step(&s, Some(&l), 5000, &mut t).unwrap();
    assert_eq!(st.backend, S3, "S1 drains and S2 is down");
    assert!(st.why.starts_with("avg load 25.0 >"), "{}", st.why);
}

#[test]
fn a_pool_without_scale_is_left_alone() {
    let mut s = state(2, 5);
    s.config.as_mut().unwrap().pool[0].scale = None;
    let mut t = PoolTrack::default();
    for now in (0..30_000).step_by(1000) {
        assert_eq!(step(&s, Some(&load(1000, &[P1, P2])), now, &mut t), None);
    }
}

/// Leader A (term 2) activates S1 and is deposed; leader B (term 3) starts with a fresh track, sees
/// the committed state and activates S2, not S1 again; A's late second decision is refused by `apply`.
#[test]
fn no_standby_is_activated_twice_across_a_leader_change() {
    let mut s = state(2, 5);
    let hot = load(50, &[P1, P2, S1]);
    let mut a = PoolTrack::default();
    step(&s, Some(&hot), 0, &mut a);
    let first = step(&s, Some(&hot), 5000, &mut a).unwrap();
    assert_eq!(first.backend, S1);
    assert_eq!(apply_step(&mut s, &first, 2, 2), CommandResult::Ok);

    let mut b = PoolTrack::default();
    assert_eq!(step(&s, Some(&hot), 6000, &mut b), None, "B's window starts with B");
    let second = step(&s, Some(&hot), 11_000, &mut b).unwrap();
    assert_eq!(second.backend, S2, "B derives the active set from committed state");
    assert_eq!(apply_step(&mut s, &second, 3, 3), CommandResult::Ok);

    // A, unaware, decides again in its old term: refused, and nothing changes.
    let late = Step { pool: "web".into(), backend: S3.into(), active: true, why: "late".into() };
    assert!(matches!(apply_step(&mut s, &late, 2, 4), CommandResult::Rejected { .. }));
    let active: Vec<&str> =
        s.backends["web"].iter().filter(|(_, st)| st.active).map(|(k, _)| k.as_str()).collect();
    assert_eq!(active, vec![P1, P2, S1, S2]);
    let activations = s.events.iter().filter(|e| e.what.starts_with("activated")).count();
    assert_eq!(activations, 2, "{:?}", s.events);
}
