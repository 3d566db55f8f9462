//! Health votes: making the committed vote of this node agree with its local view.
//!
//! A node proposes a `HealthVote` for a backend when its local view of it changes (Unknown → Up
//! or Down, Up ↔ Down) and, as a reconcile, whenever the committed state lacks this node's vote or
//! records a different one (after a restart, after the leader marked this node down and up again,
//! which drops its votes, or after a vote that was lost for want of a quorum). The pure part is
//! [`wanted_votes`] (what should be sent, given the local views and the committed state) and
//! [`VotePlan`] (what is due now, with per-backend backoff and rate limiting). The I/O is
//! [`submit`]: one proposal through the node's proposer (`crate::raft::Proposer`), which forwards it
//! to the leader when this node does not lead.
//!
//! Votes never block the data plane: they are sent from their own tasks, and the proxies read only
//! the local view and the committed routing snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use lbfleet_api::command::{Command, CommandResult};
use lbfleet_api::config::HealthKind;
use lbfleet_api::state::ClusterState;
use lbfleet_api::NodeId;
use tokio::time::Instant;

use crate::balance::LocalState;
use crate::raft::{Proposed, Proposer};

/// First retry delay after a failed vote; doubles per failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// After a vote was accepted, the same vote is not sent again for this long even if the local copy
/// of the committed state does not show it yet (it may simply not be applied here yet).
pub const RESEND_AFTER_OK: Duration = Duration::from_secs(3);
/// Bound of one vote call (the service forwards it to the leader and waits for the commit).
pub const VOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// (pool, backend key).
pub type BackendKey = (String, String);

/// Votes this node should send: local views that are Up or Down and that the committed state does
/// not record as this node's current vote, and an up vote replacing a down vote of this node for a
/// backend whose pool no longer checks health (`kind = "none"`). Nothing when this node is not a member or is marked down
/// (such votes are refused by `apply`; they are sent again once the node is back).
pub fn wanted_votes(
    node: NodeId,
    views: &BTreeMap<BackendKey, LocalState>,
    state: &ClusterState,
) -> Vec<(BackendKey, bool)> {
    let member = state.voters.contains(&node) || state.nodes.contains_key(&node);
    if !member || state.down_nodes.contains(&node) {
        return Vec::new();
    }
    let mut out: Vec<(BackendKey, bool)> = views
        .iter()
        .filter_map(|(key, view)| {
            let healthy = view.healthy()?;
            let committed = state.backend(&key.0, &key.1)?;
            let recorded = committed.votes.get(&node).map(|v| v.healthy);
            (recorded != Some(healthy)).then(|| (key.clone(), healthy))
        })
        .collect();
    // `kind = "none"`: always healthy. A down vote left from before the checks were turned off is
    // withdrawn (otherwise it would keep counting); no vote is sent where none is on record.
    let unchecked = state.config.iter().flat_map(|c| &c.pool).filter(|p| p.health.kind == HealthKind::None);
    for pool in unchecked {
        for b in &pool.backend {
            let key = (pool.name.clone(), b.key());
            let recorded =
                state.backend(&key.0, &key.1).and_then(|st| st.votes.get(&node)).map(|v| v.healthy);
            if recorded == Some(false) && !views.contains_key(&key) {
                out.push((key, true));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Default)]
struct Pending {
    in_flight: bool,
    /// The value of the last vote sent (or being sent).
    sent: Option<bool>,
    /// Do not send `sent` again before this.
    next_try: Option<Instant>,
    backoff: Duration,
}

/// Per-backend pacing of votes: one call in flight per backend; a failed call is retried with
/// exponential backoff; an accepted vote is not repeated for [`RESEND_AFTER_OK`]; a *different* value
/// goes out as soon as no call is in flight.
#[derive(Debug, Default)]
pub struct VotePlan {
    pending: BTreeMap<BackendKey, Pending>,
}

impl VotePlan {
    /// Which of `wanted` to send at `now`; marks them in flight.
    pub fn due(&mut self, wanted: Vec<(BackendKey, bool)>, now: Instant) -> Vec<(BackendKey, bool)> {
        let mut out = Vec::new();
        for (key, healthy) in wanted {
            let p = self.pending.entry(key.clone()).or_default();
            if p.in_flight {
                continue;
            }
            let same = p.sent == Some(healthy);
            if same && p.next_try.is_some_and(|t| now < t) {
                continue;
            }
            if !same {
                p.backoff = Duration::ZERO;
            }
            p.in_flight = true;
            p.sent = Some(healthy);
            out.push((key, healthy));
        }
        out
    }

    /// Record the outcome of a call made for `key`.
    pub fn finished(&mut self, key: &BackendKey, ok: bool, now: Instant) {
        let Some(p) = self.pending.get_mut(key) else { return };
        p.in_flight = false;
        if ok {
            p.backoff = Duration::ZERO;
            p.next_try = Some(now + RESEND_AFTER_OK);
        } else {
            p.backoff = (p.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            p.next_try = Some(now + p.backoff);
        }
    }

    /// The earliest time after `now` at which a pause ends (a retry may become due), if any.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.pending.values().filter(|p| !p.in_flight).filter_map(|p| p.next_try).filter(|t| *t > now).min()
    }

    /// Forget backends that are no longer checked.
    pub fn retain(&mut self, keep: impl Fn(&BackendKey) -> bool) {
        self.pending.retain(|k, p| p.in_flight || keep(k));
    }
}

/// Propose one vote of this node; `Ok` with the log index once it is committed and counted.
pub async fn submit(
    proposer: &Proposer,
    node: NodeId,
    key: &BackendKey,
    healthy: bool,
) -> Result<u64, String> {
    let observed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let cmd =
        Command::HealthVote { node, pool: key.0.clone(), backend: key.1.clone(), healthy, observed_at_ms };
    match tokio::time::timeout(VOTE_TIMEOUT, proposer.propose(cmd)).await {
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(VOTE_TIMEOUT))),
        Ok(Ok(Proposed { result: CommandResult::Rejected { errors }, .. })) => Err(errors.join("; ")),
        Ok(Ok(p)) => Ok(p.log_index),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::{Command, LeaderAction};
    use lbfleet_api::config::{parse, Format};
    use lbfleet_api::state::LbNode;

    fn key(b: &str) -> BackendKey {
        ("web".to_string(), b.to_string())
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply_membership([1, 2, 3].into(), (1..=3).map(|i| (i, LbNode::default())).collect());
        let config = parse(
            "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
             [[pool.backend]]\naddr = \"127.0.0.1:9002\"\n",
            Format::Toml,
        )
        .unwrap();
        s.apply(&Command::ApplyConfig { config }, 1);
        s
    }

    fn vote(node: NodeId, b: &str, healthy: bool) -> Command {
        Command::HealthVote { node, pool: "web".into(), backend: b.into(), healthy, observed_at_ms: 0 }
    }

    #[test]
    fn only_views_the_committed_state_does_not_record_are_wanted() {
        let mut s = state();
        let views: BTreeMap<BackendKey, LocalState> = [
            (key("127.0.0.1:9001"), LocalState::Down),
            (key("127.0.0.1:9002"), LocalState::Unknown),
            (key("127.0.0.1:9999"), LocalState::Down),
        ]
        .into();
        assert_eq!(wanted_votes(1, &views, &s), vec![(key("127.0.0.1:9001"), false)]);
        s.apply(&vote(1, "127.0.0.1:9001", false), 2);
        assert!(wanted_votes(1, &views, &s).is_empty(), "already recorded");
        // Another node's vote does not count as ours.
        assert_eq!(wanted_votes(2, &views, &s).len(), 1);
        // Up with no vote on record: sent once, so the committed state holds every node's view.
        let up: BTreeMap<_, _> = [(key("127.0.0.1:9002"), LocalState::Up)].into();
        assert_eq!(wanted_votes(1, &up, &s), vec![(key("127.0.0.1:9002"), true)]);
    }

    #[test]
    fn a_node_marked_down_and_up_again_votes_anew() {
        let mut s = state();
        let views: BTreeMap<_, _> = [(key("127.0.0.1:9001"), LocalState::Down)].into();
        s.apply(&vote(1, "127.0.0.1:9001", false), 2);
        let mark = |down| Command::Leader {
            term: 1,
            leader: 2,
            at_ms: 0,
            action: LeaderAction::SetNodeDown { id: 1, down },
            why: String::new(),
        };
        s.apply(&mark(true), 3);
        assert!(wanted_votes(1, &views, &s).is_empty(), "a down node's votes are refused");
        s.apply(&mark(false), 4);
        assert_eq!(wanted_votes(1, &views, &s), vec![(key("127.0.0.1:9001"), false)]);
        assert!(wanted_votes(7, &views, &s).is_empty(), "not a member");
    }

    #[test]
    fn plan_backs_off_on_failure_and_rate_limits_repeats() {
        let mut plan = VotePlan::default();
        let t0 = Instant::now();
        let w = vec![(key("a"), false)];
        assert_eq!(plan.due(w.clone(), t0), w);
        assert!(plan.due(w.clone(), t0).is_empty(), "one call in flight per backend");
        plan.finished(&key("a"), false, t0);
        assert!(plan.due(w.clone(), t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(plan.next_wakeup(t0), Some(t0 + MIN_BACKOFF));
        let t1 = t0 + MIN_BACKOFF;
        assert_eq!(plan.due(w.clone(), t1), w);
        plan.finished(&key("a"), false, t1);
        assert_eq!(plan.next_wakeup(t1), Some(t1 + MIN_BACKOFF * 2), "doubles");
        // A different value goes out at once.
        let flipped = vec![(key("a"), true)];
        assert_eq!(plan.due(flipped.clone(), t1), flipped);
        plan.finished(&key("a"), true, t1);
        assert!(plan.due(flipped.clone(), t1 + Duration::from_secs(1)).is_empty(), "accepted: no repeat yet");
        assert_eq!(plan.due(flipped.clone(), t1 + RESEND_AFTER_OK), flipped, "reconcile after the pause");
        plan.finished(&key("a"), false, t1 + RESEND_AFTER_OK);
        let mut t = t1 + RESEND_AFTER_OK;
        for _ in 0..20 {
            t = plan.next_wakeup(t).unwrap();
            plan.due(flipped.clone(), t);
            plan.finished(&key("a"), false, t);
        }
        let t = plan.next_wakeup(t).unwrap();
        plan.due(flipped.clone(), t);
        plan.finished(&key("a"), false, t);
        assert_eq!(plan.next_wakeup(t), Some(t + MAX_BACKOFF), "capped");
        // A pause that is over does not wake anyone (nothing to wait for).
        plan.finished(&key("a"), true, t);
        assert_eq!(plan.next_wakeup(t + RESEND_AFTER_OK), None);
    }

    #[test]
    fn turning_checks_off_withdraws_a_down_vote() {
        let mut s = state();
        s.apply(&vote(1, "127.0.0.1:9001", false), 2);
        s.apply(&vote(2, "127.0.0.1:9001", false), 3);
        assert!(!s.backend("web", "127.0.0.1:9001").unwrap().healthy);
        let mut config = s.config.clone().unwrap();
        config.pool[0].health.kind = HealthKind::None;
        s.apply(&Command::ApplyConfig { config }, 4);
        let none = BTreeMap::new();
        assert_eq!(wanted_votes(1, &none, &s), vec![(key("127.0.0.1:9001"), true)]);
        assert!(wanted_votes(3, &none, &s).is_empty(), "no vote on record: nothing to withdraw");
    }
}
