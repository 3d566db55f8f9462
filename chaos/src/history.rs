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
//! The check is stateright's `LinearizabilityTester` over its `Register` specification, fed the
//! invocations and returns in time order (Wing and Gong's search: every acknowledged operation must take
//! effect at one instant between its invocation and its return, in an order a single register allows).
//! A client whose operation ended unknown continues as a new tester thread, as Jepsen does with a
//! crashed process: the unknown operation stays in flight forever.
//!
//! That search is exponential when a history is *not* linearizable (it must rule out every order), so
//! [`check`] first looks for the violations a register with unique values makes easy to prove
//! ([`obvious_violation`]: a read of a value no applied write wrote, a read of a value overwritten before
//! the read began, a read older than what an earlier read already saw), and bounds the search by
//! [`SEARCH_BUDGET`]; a search that runs out of time is no verdict, and counts as a failure.

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
}

/// Longest the linearizability search may run.
pub const SEARCH_BUDGET: Duration = Duration::from_secs(60);

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
}

/// Check `ops` (any order) against a register that held `initial` when the run started.
pub fn check(ops: &[Op], initial: Value) -> Verdict {
    let counted = |v: &mut Verdict| {
        v.failed = ops
            .iter()
            .filter(|o| {
                o.outcome == Outcome::Failed || (o.outcome == Outcome::Unknown && o.kind == Kind::Read)
            })
            .count();
        v.unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown && o.kind != Kind::Read).count();
        v.checked = ops.len() - v.failed;
    };
    if let Some(why) = obvious_violation(ops, initial) {
        let mut v = Verdict { linearizable: false, why: Some(why), checked: 0, unknown: 0, failed: 0 };
        counted(&mut v);
        return v;
    }
    let owned = ops.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(search(&owned, initial));
    });
    match rx.recv_timeout(SEARCH_BUDGET) {
        Ok(v) => v,
        Err(_) => {
            let mut v = Verdict {
                linearizable: false,
                why: Some(format!("the search found no verdict within {SEARCH_BUDGET:?}")),
                checked: 0,
                unknown: 0,
                failed: 0,
            };
            counted(&mut v);
            v
        }
    }
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
                    "client {} read {v} at {} ms through node {}, but a write begun at {newer} ms, after {v} was written, had completed before the read began",
                    o.client, o.invoke_ms, o.node
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
                    "client {} read {v} at {} ms through node {}, after another read had already returned {nv}, written later",
                    o.client, o.invoke_ms, o.node
                ));
            }
        }
    }
    None
}

/// stateright's search over the whole history.
fn search(ops: &[Op], initial: Value) -> Verdict {
    #[derive(Clone, Copy)]
    enum Ev {
        Invoke(usize),
        Return(usize),
    }
    // Returns sort before invokes at the same millisecond: two operations that touch at a millisecond
    // boundary are taken as sequential, the stricter reading.
    let mut events: Vec<(u64, u8, usize, Ev)> = Vec::new();
    let (mut unknown, mut failed) = (0, 0);
    for (i, op) in ops.iter().enumerate() {
        match op.outcome {
            Outcome::Failed => {
                failed += 1;
                continue;
            }
            Outcome::Unknown if matches!(op.kind, Kind::Read) => {
                failed += 1;
                continue;
            }
            Outcome::Unknown => unknown += 1,
            Outcome::Ok(_) => events.push((op.return_ms, 0, i, Ev::Return(i))),
        }
        events.push((op.invoke_ms, 1, i, Ev::Invoke(i)));
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
    let linearizable = valid && tester.is_consistent();
    let why = (!linearizable).then(|| "no order of the operations fits a single register".to_string());
    Verdict { linearizable, why, checked: ops.len() - failed, unknown, failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, kind: Kind, invoke_ms: u64, return_ms: u64, outcome: Outcome) -> Op {
        Op { client, node: 1, kind, invoke_ms, return_ms, outcome }
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

    #[test]
    fn the_initial_value_counts() {
        assert!(check(&[r(1, 7, 0, 5)], 7).linearizable);
        assert!(!check(&[r(1, 8, 0, 5)], 7).linearizable);
    }
}
