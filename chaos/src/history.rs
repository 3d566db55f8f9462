//! The history of a register workload and its linearizability check.
//!
//! Clients write unique values to one register (the cluster config, whose `chaos` pool carries the
//! value) and read it back through random nodes. Each operation is recorded with its invoke and return
//! times (milliseconds since the run started) and its outcome:
//! - [`Outcome::Ok`]: acknowledged (a write committed; a read returned a value);
//! - [`Outcome::Failed`]: definitely did not happen (refused, nothing sent): left out of the check;
//! - [`Outcome::Unknown`]: may or may not have happened (a write whose answer never came): checked as
//!   an operation that never returns, so the checker may place it anywhere after its invocation, or
//!   nowhere.
//!
//! The verdict comes from [`zones`], an exact check for registers whose writes carry unique values
//! (Gibbons and Korach, "Testing shared memories", SIAM J. Comput. 1997): since every read names the
//! write it saw, the history is linearizable exactly when no read ends before its write begins, no two
//! *forward zones* overlap, and no *backward zone* lies inside a forward zone (see [`zones`]). It runs in
//! O(n log n), so a run of any length gets a verdict, and a failing one names the two values in conflict.
//! [`obvious_violation`] runs first and names the common failures in plainer words (a stale read, a read
//! older than an earlier read).
//!
//! stateright's `LinearizabilityTester` over its `Register` specification (Wing and Gong's search) is
//! the reference: the tests check that both agree on thousands of random histories, and [`check`] also
//! runs it on the real history for at most [`CROSS_CHECK_BUDGET`]. Its search is exponential in the
//! operations in flight at once (an unknown write stays in flight forever), so on a long run it often
//! finds no answer in time; that is reported, not counted as a failure. Should it ever disagree with the
//! zones, the verdict is "not linearizable", with both answers shown.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

/// A value of the register.
pub type Value = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Write(Value),
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged; for a read, the value it returned.
    Ok(Option<Value>),
    /// Definitely not applied (a write), or no answer worth checking (a read).
    Failed,
    /// A write that may have been applied.
    Unknown,
}

/// One operation of one client.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub client: u32,
    pub node: u64,
    pub kind: Kind,
    pub invoke_ms: u64,
    pub return_ms: u64,
    pub outcome: Outcome,
    /// A read's answer: the node that answered and its applied log index then (shown in a violation).
    pub answer: Option<(u64, u64)>,
}

/// How a read was answered, for a violation's message.
fn answered(o: &Op) -> String {
    o.answer.map(|(n, i)| format!(" (answered by node {n} at applied index {i})")).unwrap_or_default()
}

/// Longest stateright's search may run as a cross-check of [`zones`].
pub const CROSS_CHECK_BUDGET: Duration = Duration::from_secs(10);

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub linearizable: bool,
    /// Why not, when it is not.
    pub why: Option<String>,
    /// Operations checked (acknowledged and unknown ones).
    pub checked: usize,
    pub unknown: usize,
    pub failed: usize,
    /// stateright's answer on the same history: `Some(true/false)`, or `None` when its search found
    /// no answer within [`CROSS_CHECK_BUDGET`].
    pub cross_check: Option<bool>,
}

/// Stack of the thread that runs stateright's search (reserved, touched only as deep as it goes).
const SEARCH_STACK: usize = 1 << 30;

/// Check `ops` (any order) against a register that held `initial` when the run started.
pub fn check(ops: &[Op], initial: Value) -> Verdict {
    let failed = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Failed || (o.outcome == Outcome::Unknown && o.kind == Kind::Read))
        .count();
    let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown && o.kind != Kind::Read).count();
    let mut v = Verdict {
        linearizable: true,
        why: None,
        checked: ops.len() - failed,
        unknown,
        failed,
        cross_check: None,
    };
    if let Some(why) = obvious_violation(ops, initial).or_else(|| zones(ops, initial)) {
        v.linearizable = false;
        v.why = Some(why);
    }
    let owned = ops.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    // stateright's search recurses once per operation of the history: a thread's default 2 MiB
    // overflow at a few thousand operations (a minute of a debug build's run).
    let spawned = std::thread::Builder::new().stack_size(SEARCH_STACK).spawn(move || {
        let _ = tx.send(search(&owned, initial));
    });
    v.cross_check = spawned.ok().and_then(|_| rx.recv_timeout(CROSS_CHECK_BUDGET).ok());
    if v.linearizable && v.cross_check == Some(false) {
        v.linearizable = false;
        v.why = Some("the zone check found no violation, but stateright's search found no order: the checkers disagree".into());
    }
    v
}

/// Ticks per millisecond of [`timeline`].
const TICKS: i64 = 1024;
/// The return of an operation that never returned (an unknown write).
const NEVER: i64 = i64::MAX;

/// Each operation's span in ticks, the order both checkers use (`None`: left out of the check).
///
/// Times are whole milliseconds, so operations of different clients that touch at a millisecond are
/// taken as concurrent: invocations at `t` are at `t * TICKS`, returns at `t * TICKS + TICKS / 2`. One
/// client's operations are sequential however close: an operation invoked at the millisecond its
/// predecessor returned starts one tick after that return (and returns no earlier than it starts).
fn timeline(ops: &[Op]) -> Vec<Option<(i64, i64)>> {
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].client, ops[i].invoke_ms, ops[i].return_ms));
    let mut spans = vec![None; ops.len()];
    // The client's previous operation: (client, invocation, return).
    let mut last: Option<(u32, i64, i64)> = None;
    for i in order {
        let o = &ops[i];
        let mut inv = o.invoke_ms as i64 * TICKS;
        if let Some((client, prev_inv, prev_ret)) = last {
            if client == o.client {
                // After an unknown outcome the client goes on, still after that invocation.
                inv = inv.max(prev_inv + 1);
                if prev_ret != NEVER {
                    inv = inv.max(prev_ret + 1);
                }
            }
        }
        let ret = match o.outcome {
            Outcome::Unknown => NEVER,
            _ => (o.return_ms as i64 * TICKS + TICKS / 2).max(inv),
        };
        last = Some((o.client, inv, ret));
        let checked = !matches!((o.kind, o.outcome), (_, Outcome::Failed) | (Kind::Read, Outcome::Unknown));
        if checked {
            spans[i] = Some((inv, ret));
        }
    }
    spans
}

/// Gibbons and Korach's zone check; `Some(why)` when the history is not linearizable.
///
/// The *cluster* of a value is its write and the reads that returned it. Let `lo` be the earliest
/// return and `hi` the latest invocation in a cluster. A linearization places each cluster's operations
/// together (values are unique, so no other write may come between a write and its reads), inside a
/// stretch of time that must cover `[lo, hi]` when `lo < hi` (a *forward zone*: some operation of the
/// cluster ended before another began), or may be a single instant in `[hi, lo]` otherwise (a *backward
/// zone*: all of them overlap). So: two forward zones must not overlap, and a backward zone must not lie
/// inside a forward zone, with no room to place its cluster before or after. Times are those of
/// [`timeline`]. A write whose outcome is unknown never
/// returns; an unknown write nobody read may have happened at any time after its invocation, or never,
/// and constrains nothing. The initial value was written before everything.
pub fn zones(ops: &[Op], initial: Value) -> Option<String> {
    struct Cluster {
        /// The write's invocation and return.
        write: (i64, i64),
        lo: i64,
        hi: i64,
        reads: usize,
    }
    let ms = |t: i64| if t < 0 { "the start".to_string() } else { format!("{} ms", t / TICKS) };
    let spans = timeline(ops);
    let mut clusters: HashMap<Value, Cluster> = HashMap::new();
    clusters.insert(initial, Cluster { write: (-1, -1), lo: -1, hi: -1, reads: 0 });
    for (o, span) in ops.iter().zip(&spans) {
        let (Kind::Write(v), Some((inv, ret))) = (o.kind, *span) else { continue };
        clusters.insert(v, Cluster { write: (inv, ret), lo: ret, hi: inv, reads: 0 });
    }
    for (o, span) in ops.iter().zip(&spans) {
        let (Kind::Read, Outcome::Ok(v), Some((inv, ret))) = (o.kind, o.outcome, *span) else { continue };
        let v = v.unwrap_or(initial);
        let Some(c) = clusters.get_mut(&v) else {
            return Some(format!(
                "client {} read {v} at {}, which no applied write wrote",
                o.client,
                ms(inv)
            ));
        };
        if ret < c.write.0 {
            return Some(format!(
                "client {} read {v} from {} to {}, before the write of {v} began at {}",
                o.client,
                ms(inv),
                ms(ret),
                ms(c.write.0)
            ));
        }
        c.lo = c.lo.min(ret);
        c.hi = c.hi.max(inv);
        c.reads += 1;
    }
    let mut forward: Vec<(i64, i64, Value)> = Vec::new();
    let mut backward: Vec<(i64, i64, Value)> = Vec::new();
    for (&v, c) in &clusters {
        if c.lo < c.hi {
            forward.push((c.lo, c.hi, v));
        } else if c.reads > 0 || c.write.1 != NEVER {
            backward.push((c.hi, c.lo, v));
        }
    }
    // Forward zones, by start: each must begin at or after the latest end so far.
    forward.sort();
    let mut latest: Option<(i64, i64, Value)> = None;
    for &(lo, hi, v) in &forward {
        if let Some((plo, phi, pv)) = latest {
            if lo < phi {
                return Some(format!(
                    "the values {pv} and {v} were each seen over a stretch of time that the other overlaps ({pv}: from {} to {}; {v}: from {} to {}): no single order of the writes explains both",
                    ms(plo), ms(phi), ms(lo), ms(hi)
                ));
            }
        }
        if latest.is_none_or(|(_, phi, _)| hi > phi) {
            latest = Some((lo, hi, v));
        }
    }
    // Forward zones are now disjoint and sorted: a backward zone [b, e] lies inside one when that
    // zone starts before b and ends after e.
    for &(b, e, v) in &backward {
        let i = forward.partition_point(|&(lo, _, _)| lo < b);
        if let Some(&(lo, hi, fv)) = i.checked_sub(1).map(|i| &forward[i]) {
            if e < hi && fv != v {
                return Some(format!(
                    "every operation on {v} happened between {} and {}, while {fv} was both seen by {} and still seen after {}: {v} fits neither before nor after {fv}",
                    ms(b), ms(e), ms(lo), ms(hi)
                ));
            }
        }
    }
    None
}

/// A violation that needs no search, if there is one (values are unique per write).
pub fn obvious_violation(ops: &[Op], initial: Value) -> Option<String> {
    // When each value's write began and ended (`None`: may never have ended, an unknown outcome).
    let mut writes: HashMap<Value, (u64, Option<u64>)> = HashMap::new();
    writes.insert(initial, (0, Some(0)));
    for o in ops {
        if let Kind::Write(v) = o.kind {
            match o.outcome {
                Outcome::Ok(_) => {
                    writes.insert(v, (o.invoke_ms, Some(o.return_ms)));
                }
                Outcome::Unknown => {
                    writes.insert(v, (o.invoke_ms, None));
                }
                Outcome::Failed => {}
            }
        }
    }
    // Acknowledged writes by return time, with the latest invocation among those returned so far:
    // a write invoked after `v`'s write returned and itself returned before a read began overwrote `v`.
    let mut done: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && matches!(o.outcome, Outcome::Ok(_)))
        .map(|o| (o.return_ms, o.invoke_ms))
        .collect();
    done.sort();
    let mut latest = 0u64;
    let prefix: Vec<(u64, u64)> = done
        .iter()
        .map(|&(ret, inv)| {
            latest = latest.max(inv);
            (ret, latest)
        })
        .collect();
    let overwritten_before = |t: u64| -> Option<u64> {
        let i = prefix.partition_point(|(ret, _)| *ret < t);
        i.checked_sub(1).map(|i| prefix[i].1)
    };
    let mut reads: Vec<(&Op, Value)> = Vec::new();
    for o in ops {
        let (Kind::Read, Outcome::Ok(v)) = (o.kind, o.outcome) else { continue };
        let v = v.unwrap_or(initial);
        let Some(&(_, w_ret)) = writes.get(&v) else {
            return Some(format!(
                "client {} read {v} at {} ms, which no applied write wrote",
                o.client, o.invoke_ms
            ));
        };
        if let (Some(w_ret), Some(newer)) = (w_ret, overwritten_before(o.invoke_ms)) {
            if newer > w_ret {
                return Some(format!(
                    "client {} read {v} at {} ms through node {}{}, but a write begun at {newer} ms, after {v} was written, had completed before the read began",
                    o.client, o.invoke_ms, o.node, answered(o)
                ));
            }
        }
        reads.push((o, v));
    }
    // Reads by return time, with the latest write invocation seen so far: a later read must not see a
    // value whose write returned before that one began.
    reads.sort_by_key(|(o, _)| o.return_ms);
    let mut seen: Vec<(u64, u64, Value)> = Vec::new();
    let mut latest = (0u64, initial);
    for (o, v) in &reads {
        let inv = writes[v].0;
        if inv >= latest.0 {
            latest = (inv, *v);
        }
        seen.push((o.return_ms, latest.0, latest.1));
    }
    for (o, v) in &reads {
        let Some(w_ret) = writes[v].1 else { continue };
        let i = seen.partition_point(|(ret, _, _)| *ret < o.invoke_ms);
        if let Some(&(_, newer, nv)) = i.checked_sub(1).map(|i| &seen[i]) {
            if newer > w_ret {
                return Some(format!(
                    "client {} read {v} at {} ms through node {}{}, after another read had already returned {nv}, written later",
                    o.client, o.invoke_ms, o.node, answered(o)
                ));
            }
        }
    }
    None
}

/// stateright's search over the whole history: whether some order fits a single register.
fn search(ops: &[Op], initial: Value) -> bool {
    #[derive(Clone, Copy)]
    enum Ev {
        Invoke(usize),
        Return(usize),
    }
    // Invokes sort before returns at the same tick: operations that touch are concurrent, as in
    // [`zones`].
    let mut events: Vec<(i64, u8, usize, Ev)> = Vec::new();
    for (i, span) in timeline(ops).into_iter().enumerate() {
        let Some((inv, ret)) = span else { continue };
        if ret != NEVER {
            events.push((ret, 1, i, Ev::Return(i)));
        }
        events.push((inv, 0, i, Ev::Invoke(i)));
    }
    events.sort_by_key(|e| (e.0, e.1, e.2));

    // Tester thread of each client; a new one after each unknown outcome.
    let mut thread_of: BTreeMap<u32, u64> = BTreeMap::new();
    let mut next_thread = 0u64;
    let mut thread_for_op: BTreeMap<usize, u64> = BTreeMap::new();
    let mut tester = LinearizabilityTester::new(Register(initial));
    let mut valid = true;
    for (_, _, _, ev) in events {
        let r = match ev {
            Ev::Invoke(i) => {
                let op = &ops[i];
                let t = *thread_of.entry(op.client).or_insert_with(|| {
                    next_thread += 1;
                    next_thread
                });
                thread_for_op.insert(i, t);
                if op.outcome == Outcome::Unknown {
                    // This thread never returns: the client goes on as a new one.
                    thread_of.remove(&op.client);
                }
                let reg_op = match op.kind {
                    Kind::Write(v) => RegisterOp::Write(v),
                    Kind::Read => RegisterOp::Read,
                };
                tester.on_invoke(t, reg_op).map(|_| ())
            }
            Ev::Return(i) => {
                let op = &ops[i];
                let t = thread_for_op[&i];
                let ret = match (op.kind, op.outcome) {
                    (Kind::Write(_), _) => RegisterRet::WriteOk,
                    (Kind::Read, Outcome::Ok(v)) => RegisterRet::ReadOk(v.unwrap_or(initial)),
                    (Kind::Read, _) => unreachable!("only acknowledged operations return"),
                };
                tester.on_return(t, ret).map(|_| ())
            }
        };
        if r.is_err() {
            valid = false;
            break;
        }
    }
    valid && tester.is_consistent()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, kind: Kind, invoke_ms: u64, return_ms: u64, outcome: Outcome) -> Op {
        Op { client, node: 1, kind, invoke_ms, return_ms, outcome, answer: None }
    }
    fn w(client: u32, v: Value, a: u64, b: u64) -> Op {
        op(client, Kind::Write(v), a, b, Outcome::Ok(None))
    }
    fn r(client: u32, v: Value, a: u64, b: u64) -> Op {
        op(client, Kind::Read, a, b, Outcome::Ok(Some(v)))
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let h = [w(1, 1, 0, 10), r(2, 1, 11, 20), w(1, 2, 21, 30), r(2, 2, 31, 40)];
        assert!(check(&h, 0).linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        // Client 2 starts reading after the write of 2 returned, and still sees 1: a stale read.
        let h = [w(1, 1, 0, 10), w(1, 2, 11, 20), r(2, 1, 21, 30)];
        assert!(!check(&h, 0).linearizable);
        // Overlapping the write instead, either value is fine.
        let h = [w(1, 1, 0, 10), w(1, 2, 11, 20), r(2, 1, 15, 30)];
        assert!(check(&h, 0).linearizable);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        // Never seen: fine. Seen later: fine. Seen, then the older value again: not.
        let base = [w(1, 1, 0, 10), op(1, Kind::Write(2), 11, 500, Outcome::Unknown)];
        let mut h = base.to_vec();
        h.push(r(2, 1, 600, 610));
        assert!(check(&h, 0).linearizable);
        let mut h = base.to_vec();
        h.push(r(2, 2, 600, 610));
        assert!(check(&h, 0).linearizable);
        h.push(r(2, 1, 620, 630));
        assert!(!check(&h, 0).linearizable);
        // The client goes on after its unknown write, on a new tester thread.
        let mut h = base.to_vec();
        h.push(w(1, 3, 501, 520));
        h.push(r(2, 3, 600, 610));
        let v = check(&h, 0);
        assert!(v.linearizable);
        assert_eq!((v.unknown, v.checked), (1, 4));
    }

    #[test]
    fn failed_operations_are_left_out() {
        let h = [w(1, 1, 0, 10), op(1, Kind::Write(2), 11, 20, Outcome::Failed), r(2, 1, 30, 40)];
        let v = check(&h, 0);
        assert!(v.linearizable);
        assert_eq!(v.failed, 1);
        // Had the failed write been applied, the read would show it: "failed" must mean not applied.
        let h = [w(1, 1, 0, 10), op(1, Kind::Write(2), 11, 20, Outcome::Failed), r(2, 2, 30, 40)];
        assert!(!check(&h, 0).linearizable);
    }

    #[test]
    fn obvious_violations_are_found_without_a_search_and_named() {
        let h = [w(1, 1, 0, 10), w(1, 2, 11, 20), r(2, 1, 21, 30)];
        let why = obvious_violation(&h, 0).expect("stale");
        assert!(why.contains("read 1 at 21 ms"), "{why}");
        assert!(obvious_violation(&[r(1, 9, 0, 5)], 0).unwrap().contains("no applied write"));
        // A newer value seen, then an older one by a later read.
        let h = [w(1, 1, 0, 10), w(1, 2, 11, 100), r(2, 2, 20, 30), r(3, 1, 40, 50)];
        let why = obvious_violation(&h, 0).expect("read went back in time");
        assert!(why.contains("another read had already returned 2"), "{why}");
        assert!(!check(&h, 0).linearizable);
        // Linearizable histories raise nothing.
        let h = [w(1, 1, 0, 10), w(1, 2, 11, 100), r(2, 2, 20, 30), r(3, 2, 40, 50)];
        assert_eq!(obvious_violation(&h, 0), None);
        assert!(check(&h, 0).linearizable);
    }

    /// A random history of `clients` clients: linearizable as made (each operation takes effect at a
    /// random instant of its span; some writes end unknown, applied or not), then perhaps spoiled by
    /// changing what one read returned. Times are small so that operations often touch at a millisecond.
    fn random_history(rng: &mut rand::rngs::StdRng, clients: u32) -> Vec<Op> {
        use rand::Rng;
        let mut ops: Vec<(f64, Op, bool)> = Vec::new();
        let mut next_value = 1;
        for client in 1..=clients {
            let mut t = rng.random_range(0..5u64);
            for _ in 0..rng.random_range(1..5) {
                let invoke_ms = t;
                let return_ms = t + rng.random_range(0..12u64);
                let at = invoke_ms as f64 + rng.random::<f64>() * (return_ms - invoke_ms) as f64;
                let (kind, applied, outcome) = if rng.random_bool(0.5) {
                    next_value += 1;
                    match rng.random_range(0..6) {
                        0 => (Kind::Write(next_value), true, Outcome::Unknown),
                        1 => (Kind::Write(next_value), false, Outcome::Unknown),
                        2 => (Kind::Write(next_value), false, Outcome::Failed),
                        _ => (Kind::Write(next_value), true, Outcome::Ok(None)),
                    }
                } else {
                    (Kind::Read, true, Outcome::Ok(None))
                };
                ops.push((
                    at,
                    Op { client, node: 1, kind, invoke_ms, return_ms, outcome, answer: None },
                    applied,
                ));
                t = return_ms + rng.random_range(0..4u64);
            }
        }
        ops.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut value = 0;
        for (_, op, applied) in &mut ops {
            match op.kind {
                Kind::Write(v) if *applied => value = v,
                Kind::Write(_) => {}
                Kind::Read => op.outcome = Outcome::Ok(Some(value)),
            }
        }
        let mut ops: Vec<Op> = ops.into_iter().map(|(_, op, _)| op).collect();
        if rng.random_bool(0.6) {
            let reads: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].kind == Kind::Read).collect();
            if !reads.is_empty() {
                let i = reads[rng.random_range(0..reads.len())];
                ops[i].outcome = Outcome::Ok(Some(rng.random_range(0..=next_value)));
            }
        }
        ops
    }

    #[test]
    fn the_zone_check_agrees_with_staterights_search_on_random_histories() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut yes, mut no) = (0, 0);
        for n in 0..4000 {
            let h = random_history(&mut rng, 2 + n % 3);
            let obvious = obvious_violation(&h, 0);
            let fast = obvious.clone().or_else(|| zones(&h, 0));
            let reference = search(&h, 0);
            assert_eq!(
                fast.is_none(),
                reference,
                "history {n}: zones say {fast:?}, stateright says {reference}: {h:?}"
            );
            if let Some(why) = obvious {
                assert!(
                    !reference,
                    "history {n}: an obvious violation ({why}) in a linearizable history: {h:#?}"
                );
            }
            if reference {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both answers must be common, or the comparison proves little.
        assert!(yes > 1000 && no > 500, "{yes} linearizable, {no} not");
    }

    #[test]
    fn zones_name_the_conflict() {
        // 1 is read after 2 was read, both forward zones: they overlap.
        let h = [w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 1, 11, 12), r(3, 2, 13, 14), r(4, 1, 15, 16)];
        let why = zones(&h, 0).expect("not linearizable");
        assert!(why.contains("the values"), "{why}");
        // A read of a value whose write began only after the read ended.
        let why = zones(&[r(1, 1, 0, 5), w(2, 1, 6, 9)], 0).expect("read before write");
        assert!(why.contains("before the write of 1 began"), "{why}");
        // A long history of sequential writes and reads is checked at once.
        let mut h = Vec::new();
        for i in 0..20_000u64 {
            h.push(w(1, i + 1, 10 * i, 10 * i + 3));
            h.push(r(2, i + 1, 10 * i + 4, 10 * i + 9));
        }
        assert_eq!(zones(&h, 0), None);
        h.push(r(3, 5, 200_001, 200_002));
        assert!(zones(&h, 0).is_some());
    }

    #[test]
    fn the_initial_value_counts() {
        assert!(check(&[r(1, 7, 0, 5)], 7).linearizable);
        assert!(!check(&[r(1, 8, 0, 5)], 7).linearizable);
    }
}
