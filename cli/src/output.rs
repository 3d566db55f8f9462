//! How answers are shown: aligned tables for people, stable JSON shapes for scripts. Pure.
//!
//! The JSON shapes are part of the external contract (tests parse them): `status --json` is
//! [`StatusJson`], `backends --json` is [`BackendsJson`], `nodes --json` is [`NodesJson`], `events --json` is
//! [`EventsJson`], each `watch --json` line is a [`WatchJson`]. The envelopes are lbctl's; what they hold
//! are the views of [`lbfleet_api::view`], the same the node's admin surfaces show.

use lbfleet_api::config::ClusterConfig;
use lbfleet_api::pb;
use lbfleet_api::view::{BackendView, EventView, Member, NodeStatus};
use serde::Serialize;

/// `status --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct StatusJson {
    /// Leader id as seen by the node asked; `null` while unknown.
    pub leader: Option<u64>,
    pub term: u64,
    pub answered_by: u64,
    pub config_version: u64,
    /// Sorted by id; `down` is as committed on the node asked.
    pub nodes: Vec<NodeStatus>,
}

impl From<&pb::StatusResponse> for StatusJson {
    fn from(r: &pb::StatusResponse) -> Self {
        let mut nodes: Vec<NodeStatus> = r.nodes.iter().map(NodeStatus::from).collect();
        nodes.sort_by_key(|n| n.id);
        StatusJson {
            leader: r.leader,
            term: r.term,
            answered_by: r.answered_by,
            config_version: r.config_version,
            nodes,
        }
    }
}

pub fn status_text(r: &pb::StatusResponse) -> String {
    let s = StatusJson::from(r);
    let mut out = format!(
        "leader: {}   term: {}   config version: {}   (answered by node {})\n",
        opt_id(s.leader),
        s.term,
        s.config_version,
        s.answered_by
    );
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.addr.clone(),
                if n.voter { n.role.clone() } else { format!("{} (learner)", n.role) },
                yes_no(n.reachable).to_string(),
                yes_no(n.down).to_string(),
                n.applied_index.to_string(),
                dash_if_empty(&n.ring_digest),
            ]
        })
        .collect();
    out.push_str(&table(&["ID", "ADDR", "ROLE", "REACHABLE", "DOWN", "APPLIED_INDEX", "RING_DIGEST"], &rows));
    for n in &s.nodes {
        if let Some(e) = &n.error {
            out.push_str(&format!("node {}: {e}\n", n.id));
        }
        if n.drained {
            out.push_str(&format!(
                "node {}: drained, it does not announce the VIP (`lbctl undrain-node` on it puts it back)\n",
                n.id
            ));
        }
    }
    let digests: std::collections::BTreeSet<&str> = s
        .nodes
        .iter()
        .filter(|n| n.reachable && !n.ring_digest.is_empty())
        .map(|n| n.ring_digest.as_str())
        .collect();
    if digests.len() > 1 {
        out.push_str(
            "warning: reachable nodes report different ring digests (not converged yet, or diverged)\n",
        );
    }
    out
}

/// `backends --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct BackendsJson {
    pub applied_index: u64,
    pub backends: Vec<BackendView>,
}

impl From<&pb::ListBackendsResponse> for BackendsJson {
    fn from(r: &pb::ListBackendsResponse) -> Self {
        BackendsJson {
            applied_index: r.applied_index,
            backends: r.backends.iter().map(BackendView::from).collect(),
        }
    }
}

pub fn backends_text(r: &pb::ListBackendsResponse) -> String {
    if r.backends.is_empty() {
        return "no backends (no config applied, or every pool is empty)\n".to_string();
    }
    let rows: Vec<Vec<String>> = r
        .backends
        .iter()
        .map(|b| {
            vec![
                b.pool.clone(),
                b.addr.clone(),
                b.weight.to_string(),
                yes_no(b.healthy).to_string(),
                yes_no(b.draining).to_string(),
                yes_no(b.active).to_string(),
                yes_no(b.backup).to_string(),
                yes_no(b.standby).to_string(),
            ]
        })
        .collect();
    table(&["POOL", "ADDR", "WEIGHT", "HEALTHY", "DRAINING", "ACTIVE", "BACKUP", "STANDBY"], &rows)
}

/// `nodes --json` (`leader`, `null` while unknown, and `nodes`) and the answer of `nodes add/remove --json`
/// (`log_index` of the membership change and `nodes`).
#[derive(Debug, Serialize, PartialEq)]
pub struct NodesJson {
    /// Present for a listing only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<Option<u64>>,
    /// Present for a membership change only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
    pub nodes: Vec<Member>,
}

impl NodesJson {
    /// The membership as listed by a node, with the leader it knows.
    pub fn listing(nodes: &[pb::NodeInfo], leader: Option<u64>) -> Self {
        Self::new(nodes, Some(leader), None)
    }

    /// The membership after a change committed at `log_index`.
    pub fn changed(nodes: &[pb::NodeInfo], log_index: u64) -> Self {
        Self::new(nodes, None, Some(log_index))
    }

    fn new(nodes: &[pb::NodeInfo], leader: Option<Option<u64>>, log_index: Option<u64>) -> Self {
        let mut nodes: Vec<Member> = nodes.iter().map(Member::from).collect();
        nodes.sort_by_key(|n| n.id);
        NodesJson { leader, log_index, nodes }
    }
}

pub fn nodes_text(n: &NodesJson) -> String {
    let rows: Vec<Vec<String>> = n
        .nodes
        .iter()
        .map(|m| {
            let mut role = if m.voter { "voter" } else { "learner" }.to_string();
            if n.leader == Some(Some(m.id)) {
                role.push_str(", leader");
            }
            vec![m.id.to_string(), m.addr.clone(), dash_if_empty(&m.http_addr), role]
        })
        .collect();
    let mut out = table(&["ID", "ADDR", "HTTP_ADDR", "MEMBERSHIP"], &rows);
    if let Some(i) = n.log_index {
        out.push_str(&format!("membership committed at log index {i}\n"));
    }
    out
}

/// One `watch --json` line.
#[derive(Debug, Serialize, PartialEq)]
pub struct WatchJson {
    pub applied_index: u64,
    pub config_version: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub summary: String,
}

impl From<&pb::WatchEvent> for WatchJson {
    fn from(e: &pb::WatchEvent) -> Self {
        WatchJson {
            applied_index: e.applied_index,
            config_version: e.config_version,
            leader: e.leader,
            term: e.term,
            summary: e.summary.clone(),
        }
    }
}

pub fn watch_line(e: &pb::WatchEvent) -> String {
    format!(
        "index {}  term {}  leader {}  config v{}  {}",
        e.applied_index,
        e.term,
        opt_id(e.leader),
        e.config_version,
        e.summary
    )
}

/// `events --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct EventsJson {
    pub events: Vec<EventView>,
}

impl From<&pb::EventsResponse> for EventsJson {
    fn from(r: &pb::EventsResponse) -> Self {
        EventsJson { events: r.events.iter().map(EventView::from).collect() }
    }
}

pub fn events_text(r: &pb::EventsResponse) -> String {
    if r.events.is_empty() {
        return "no events\n".to_string();
    }
    let j = EventsJson::from(r);
    let rows: Vec<Vec<String>> = j
        .events
        .iter()
        .map(|e| {
            vec![
                e.time.clone().unwrap_or_else(|| "-".to_string()),
                e.index.to_string(),
                match e.leader {
                    Some(l) => format!("{}/{l}", e.term),
                    None => "-".to_string(),
                },
                e.what.clone(),
                dash_if_empty(&e.why),
            ]
        })
        .collect();
    table(&["TIME", "INDEX", "TERM/LEADER", "WHAT", "WHY"], &rows)
}

/// Column header of `events --follow` (its lines cannot be aligned to events not seen yet).
pub fn event_header() -> String {
    format!("{:<24}  {:<6}  {:<11}  WHAT  (WHY)\n", "TIME", "INDEX", "TERM/LEADER")
}

/// One line of `events --follow`.
pub fn event_line(e: &EventView) -> String {
    let term_leader = match e.leader {
        Some(l) => format!("{}/{l}", e.term),
        None => "-".to_string(),
    };
    let time = e.time.as_deref().unwrap_or("-");
    let why = if e.why.is_empty() { String::new() } else { format!("  ({})", e.why) };
    format!("{time:<24}  {:<6}  {term_leader:<11}  {}{why}", e.index, e.what)
}

/// `apply --dry-run --json` and `config diff --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct DiffJson {
    /// Always true: the node validated the file as an apply would (a refusal is an error instead).
    pub valid: bool,
    /// The node that validated it and read the committed config.
    pub answered_by: u64,
    /// Version of the committed config (0: none applied yet).
    pub current_version: u64,
    /// The version applying the file would make.
    pub version: u64,
    /// Applied index at which the committed config was read.
    pub applied_index: u64,
    /// Whether applying would change anything.
    pub changed: bool,
    pub changes: Vec<crate::diff::Change>,
}

impl DiffJson {
    pub fn new(r: &pb::ApplyConfigResponse, changes: Vec<crate::diff::Change>) -> DiffJson {
        DiffJson {
            valid: true,
            answered_by: r.answered_by,
            current_version: r.current_version,
            version: r.version,
            applied_index: r.log_index,
            changed: !changes.is_empty(),
            changes,
        }
    }
}

/// The fleet-wide picture of one draining backend at one poll of `drain --wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    /// In-flight requests plus connections to the backend, summed over the nodes that answered.
    pub in_flight: u64,
    /// Nodes that answered (not marked down).
    pub answered: usize,
    /// Nodes expected to answer (members not marked down).
    pub expected: usize,
    /// Nodes that have not applied the drain yet.
    pub behind: Vec<u64>,
    /// Nodes (not marked down) that did not answer.
    pub silent: Vec<u64>,
}

impl DrainProgress {
    /// Drained: every node expected answered, has applied the drain, and has nothing in flight.
    pub fn done(&self) -> bool {
        self.in_flight == 0 && self.behind.is_empty() && self.silent.is_empty()
    }
}

/// Where the `drain --wait` bar stands: (finished, total), `start` being what was in flight at the first
/// poll. Full once drained; empty, never negative, while more is in flight than at the start.
pub fn drain_progress_position(start: u64, p: &DrainProgress) -> (u64, u64) {
    let total = start.max(1);
    if p.done() {
        return (total, total);
    }
    (start.saturating_sub(p.in_flight).min(total), total)
}

/// The text beside the `drain --wait` bar: the count now, and the nodes it does not cover yet.
pub fn drain_progress_message(p: &DrainProgress) -> String {
    let mut line = format!("{} in flight ({}/{} nodes answered)", p.in_flight, p.answered, p.expected);
    if !p.behind.is_empty() {
        line.push_str(&format!(", drain not applied yet on node {}", join_ids(&p.behind)));
    }
    if !p.silent.is_empty() {
        line.push_str(&format!(", no answer from node {}", join_ids(&p.silent)));
    }
    line
}

/// `1, 2, 3`.
pub fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The config the server returned (JSON of [`ClusterConfig`]), decoded. `None` when none was ever applied.
pub fn decode_config(config_json: &str) -> Result<Option<ClusterConfig>, String> {
    if config_json.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(config_json)
        .map(Some)
        .map_err(|e| format!("the server sent a config lbctl cannot read: {e}"))
}

/// `get config` as TOML: a comment header with the version (so the output can be applied again), then the config.
pub fn config_toml(r: &pb::GetConfigResponse, config: Option<&ClusterConfig>) -> String {
    match config {
        None => format!(
            "# no config has been applied yet (applied index {}, answered by node {})\n",
            r.applied_index, r.answered_by
        ),
        Some(c) => format!(
            "# config version {} (applied index {}, answered by node {})\n{}",
            r.version,
            r.applied_index,
            r.answered_by,
            c.to_toml()
        ),
    }
}

/// `get config --json`: the config itself (same schema as `apply`), or `null` when none was applied.
pub fn config_json(config: Option<&ClusterConfig>) -> String {
    match config {
        None => "null\n".to_string(),
        Some(c) => format!("{}\n", c.to_json()),
    }
}

/// Left-aligned columns separated by two spaces; every line ends with a newline.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn to_json_line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode JSON: {e}\"}}"))
}

pub fn to_json_pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode JSON: {e}\"}}"))
        + "\n"
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn opt_id(id: Option<u64>) -> String {
    id.map_or_else(|| "none".to_string(), |i| i.to_string())
}

fn dash_if_empty(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: &str, reachable: bool, digest: &str) -> pb::NodeStatus {
        pb::NodeStatus {
            id,
            addr: format!("127.0.0.1{id}:7400"),
            http_addr: format!("127.0.0.1{id}:7401"),
            role: role.to_string(),
            reachable,
            applied_index: 10 + id,
            ring_digest: digest.to_string(),
            term: 2,
            leader: Some(1),
            voter: true,
            config_version: 1,
            error: if reachable { String::new() } else { "connection refused".to_string() },
            down: !reachable,
            ..Default::default()
        }
    }

    fn status() -> pb::StatusResponse {
        pb::StatusResponse {
            leader: Some(1),
            term: 2,
            answered_by: 2,
            nodes: vec![
                node(3, "", false, ""),
                node(1, "leader", true, "ab12"),
                node(2, "follower", true, "ab12"),
            ],
            config_version: 1,
        }
    }

    #[test]
    fn status_json_has_the_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&to_json_pretty(&StatusJson::from(&status()))).unwrap();
        assert_eq!(v["leader"], 1);
        assert_eq!(v["term"], 2);
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        for n in nodes {
            for k in ["id", "addr", "role", "reachable", "applied_index", "ring_digest"] {
                assert!(n.get(k).is_some(), "node lacks {k}: {n}");
            }
        }
        let keys: std::collections::BTreeSet<&str> =
            nodes[0].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            std::collections::BTreeSet::from([
                "id",
                "addr",
                "http_addr",
                "role",
                "reachable",
                "voter",
                "applied_index",
                "ring_digest",
                "term",
                "leader",
                "config_version",
                "error",
                "down",
                "drained",
                "last_log_index",
                "snapshot_index",
                "purged_index",
            ]),
            "the fields lbctl printed before, and the node status view's log indexes"
        );
        assert_eq!(nodes[0]["id"], 1, "sorted by id");
        assert_eq!(nodes[0]["error"], serde_json::Value::Null);
        assert_eq!(nodes[2]["role"], "unknown");
        assert_eq!(nodes[2]["reachable"], false);
        assert_eq!(nodes[2]["error"], "connection refused");
        assert_eq!(nodes[2]["down"], true);
        assert_eq!(nodes[0]["down"], false);
    }

    #[test]
    fn status_json_leader_is_null_while_unknown() {
        let mut s = status();
        s.leader = None;
        let v: serde_json::Value = serde_json::from_str(&to_json_line(&StatusJson::from(&s))).unwrap();
        assert!(v["leader"].is_null());
    }

    #[test]
    fn status_table() {
        let text = status_text(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: 1   term: 2   config version: 1   (answered by node 2)");
        assert_eq!(lines[1], "ID  ADDR             ROLE      REACHABLE  DOWN  APPLIED_INDEX  RING_DIGEST");
        assert_eq!(lines[2], "1   127.0.0.11:7400  leader    yes        no    11             ab12");
        assert_eq!(lines[4], "3   127.0.0.13:7400  unknown   no         yes   13             -");
        assert_eq!(lines[5], "node 3: connection refused");
        assert_eq!(lines.len(), 6);
        assert!(!text.contains("warning"));
        let mut s = status();
        s.nodes[2].drained = true;
        let text = status_text(&s);
        assert!(
            text.lines().any(|l| l.starts_with("node 2: drained, it does not announce the VIP")),
            "{text}"
        );
    }

    #[test]
    fn status_table_warns_on_digest_disagreement() {
        let mut s = status();
        s.nodes[2].ring_digest = "ffff".into();
        assert!(status_text(&s).contains("different ring digests"));
    }

    #[test]
    fn backends_table_and_json() {
        let r = pb::ListBackendsResponse {
            backends: vec![pb::BackendStatus {
                pool: "web".into(),
                addr: "127.0.0.1:9001".into(),
                weight: 2,
                healthy: true,
                draining: false,
                active: true,
                backup: false,
                standby: false,
            }],
            applied_index: 7,
        };
        assert_eq!(
            backends_text(&r),
            "POOL  ADDR            WEIGHT  HEALTHY  DRAINING  ACTIVE  BACKUP  STANDBY\n\
             web   127.0.0.1:9001  2       yes      no        yes     no      no\n"
        );
        let v: serde_json::Value = serde_json::from_str(&to_json_line(&BackendsJson::from(&r))).unwrap();
        assert_eq!(v["backends"][0]["addr"], "127.0.0.1:9001");
        assert_eq!(v["backends"][0]["healthy"], true);
        assert_eq!(v["applied_index"], 7);
        assert!(backends_text(&pb::ListBackendsResponse::default()).starts_with("no backends"));
    }

    #[test]
    fn nodes_table_marks_leader_and_learners() {
        let nodes = vec![
            pb::NodeInfo { id: 2, addr: "b:7400".into(), http_addr: "".into(), voter: false },
            pb::NodeInfo { id: 1, addr: "a:7400".into(), http_addr: "a:7401".into(), voter: true },
        ];
        let n = NodesJson::listing(&nodes, Some(1));
        assert_eq!(
            nodes_text(&n),
            "ID  ADDR    HTTP_ADDR  MEMBERSHIP\n1   a:7400  a:7401     voter, leader\n2   b:7400  -          learner\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&to_json_line(&NodesJson::listing(&nodes, None))).unwrap();
        assert!(v.get("log_index").is_none());
        assert!(v["leader"].is_null() && v.get("leader").is_some(), "an unknown leader is null, not absent");
        assert_eq!(v["nodes"][0]["id"], 1);

        let c = NodesJson::changed(&nodes, 9);
        assert!(
            nodes_text(&c).ends_with("2   b:7400  -          learner\nmembership committed at log index 9\n")
        );
        let v: serde_json::Value = serde_json::from_str(&to_json_line(&c)).unwrap();
        assert!(v.get("leader").is_none(), "a membership change does not claim to know the leader");
        assert_eq!(v["log_index"], 9);
    }

    #[test]
    fn watch_lines() {
        let e = pb::WatchEvent {
            applied_index: 12,
            config_version: 3,
            leader: None,
            term: 4,
            summary: "apply_config v3".into(),
        };
        assert_eq!(watch_line(&e), "index 12  term 4  leader none  config v3  apply_config v3");
        let v: serde_json::Value = serde_json::from_str(&to_json_line(&WatchJson::from(&e))).unwrap();
        assert_eq!(v["applied_index"], 12);
        assert!(v["leader"].is_null());
        assert!(!to_json_line(&WatchJson::from(&e)).contains('\n'));
    }

    #[test]
    fn events_table_and_json() {
        let r = pb::EventsResponse {
            events: vec![
                pb::EventRecord {
                    index: 7,
                    at_ms: 1_700_000_000_123,
                    leader: Some(2),
                    term: 3,
                    what: "node 3 marked down".into(),
                    why: "no answer".into(),
                },
                pb::EventRecord {
                    index: 9,
                    at_ms: 0,
                    leader: None,
                    term: 0,
                    what: "backend 127.0.0.1:9001 of pool \"web\" is down".into(),
                    why: String::new(),
                },
            ],
        };
        assert_eq!(
            events_text(&r),
            "TIME                      INDEX  TERM/LEADER  WHAT                                          WHY\n\
             2023-11-14T22:13:20.123Z  7      3/2          node 3 marked down                            no answer\n\
             -                         9      -            backend 127.0.0.1:9001 of pool \"web\" is down  -\n"
        );
        let v: serde_json::Value = serde_json::from_str(&to_json_pretty(&EventsJson::from(&r))).unwrap();
        assert_eq!(v["events"][0]["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["events"][0]["leader"], 2);
        assert!(v["events"][1]["leader"].is_null() && v["events"][1]["time"].is_null());
        assert_eq!(events_text(&pb::EventsResponse::default()), "no events\n");
    }

    #[test]
    fn follow_lines() {
        let e = EventView::from(&pb::EventRecord {
            index: 7,
            at_ms: 1_700_000_000_123,
            leader: Some(2),
            term: 3,
            what: "node 3 marked down".into(),
            why: "no answer".into(),
        });
        assert_eq!(
            event_line(&e),
            "2023-11-14T22:13:20.123Z  7       3/2          node 3 marked down  (no answer)"
        );
        assert!(event_header().starts_with("TIME                      INDEX   TERM/LEADER  WHAT"));
        let v: serde_json::Value = serde_json::from_str(&to_json_line(&e)).unwrap();
        assert_eq!(v["index"], 7);
    }

    #[test]
    fn drain_progress_fills_as_requests_finish() {
        let mut p = DrainProgress { in_flight: 10, answered: 3, expected: 3, ..Default::default() };
        assert_eq!(drain_progress_position(10, &p), (0, 10));
        assert_eq!(drain_progress_message(&p), "10 in flight (3/3 nodes answered)");
        p.in_flight = 5;
        assert_eq!(drain_progress_position(10, &p), (5, 10));
        p.in_flight = 0;
        p.silent = vec![3];
        p.answered = 2;
        assert!(!p.done(), "a silent node may still hold requests");
        assert_eq!(drain_progress_position(10, &p), (10, 10));
        assert!(drain_progress_message(&p).ends_with("(2/3 nodes answered), no answer from node 3"));
        p.silent.clear();
        p.behind = vec![1, 2];
        assert!(!p.done());
        assert!(drain_progress_message(&p).contains("drain not applied yet on node 1, 2"));
        p.behind.clear();
        assert!(p.done());
        assert_eq!(drain_progress_position(0, &p), (1, 1), "nothing in flight at all: full");
        // More in flight than at the start: the bar is empty, never negative.
        let more = DrainProgress { in_flight: 20, answered: 1, expected: 1, ..Default::default() };
        assert_eq!(drain_progress_position(10, &more), (0, 10));
    }

    const DEMO: &str = r#"
[[pool]]
name = "web"
policy = "maglev"
hash_key = "source_ip"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [pool.health]
  kind = "http"
[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
"#;

    #[test]
    fn config_round_trips_from_server_json_to_toml_that_parses_again() {
        use lbfleet_api::config::{parse, Format};
        let cfg = parse(DEMO, Format::Toml).unwrap();
        let r = pb::GetConfigResponse {
            config_json: cfg.to_json(),
            version: 3,
            applied_index: 9,
            answered_by: 1,
        };
        let decoded = decode_config(&r.config_json).unwrap().unwrap();
        assert_eq!(decoded, cfg);
        let toml_text = config_toml(&r, Some(&decoded));
        assert!(toml_text.starts_with("# config version 3 (applied index 9, answered by node 1)\n"));
        assert_eq!(parse(&toml_text, Format::Toml).unwrap(), cfg);
        assert_eq!(parse(&config_json(Some(&decoded)), Format::Json).unwrap(), cfg);
    }

    #[test]
    fn config_absent_or_garbled() {
        let r = pb::GetConfigResponse {
            config_json: String::new(),
            version: 0,
            applied_index: 3,
            answered_by: 2,
        };
        assert_eq!(decode_config(&r.config_json).unwrap(), None);
        assert!(config_toml(&r, None).starts_with("# no config has been applied yet"));
        assert_eq!(config_json(None), "null\n");
        assert!(decode_config("{\"pool\": 1}").unwrap_err().contains("cannot read"));
    }

    #[test]
    fn table_aligns_unicode_by_chars() {
        let t = table(&["A", "B"], &[vec!["é".into(), "x".into()], vec!["long".into(), "y".into()]]);
        assert_eq!(t, "A     B\né     x\nlong  y\n");
    }
}
