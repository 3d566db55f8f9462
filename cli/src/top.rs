//! `lbctl top`: a live per-backend view of the whole fleet.
//!
//! Each refresh reads every member's Prometheus text at `http://HTTP_ADDR/metrics` (the admin HTTP
//! port; no token needed) and sums over the nodes: responses (`lbfleet_http_requests_total`), TCP
//! connections and UDP flows started (`lbfleet_tcp_connections_total`, `lbfleet_udp_flows_total`),
//! errors (5xx responses of a backend and `lbfleet_upstream_connect_failures_total`) as rates per second
//! between two reads, and what is in flight now (`lbfleet_backend_in_flight`). The state is the
//! committed one (`backends --stale` of the node asked) and, from `lbfleet_backend_usable`, the nodes
//! that eject the backend on their own. The members come from `status` on every refresh; a refresh that
//! fails is shown and retried.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lbfleet_api::pb;
use serde::Serialize;

use crate::args::TopArgs;
use crate::client::Admin;
use crate::commands::{print, Global, Stop};
use crate::error::CliError;
use crate::output;

/// Largest `/metrics` body read from one node.
const MAX_METRICS_BYTES: usize = 16 << 20;
/// Longest wait for one node's `/metrics`.
const MAX_SCRAPE_WAIT: Duration = Duration::from_secs(2);

/// One sample of one metric: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus / OpenMetrics text whose name is in `names`; lines that do not parse
/// are skipped.
pub fn parse_metrics(text: &str, names: &[&str]) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| parse_line(l, names)).collect()
}

fn parse_line(line: &str, names: &[&str]) -> Option<Sample> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    if !names.contains(&name) {
        return None;
    }
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (key, r) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &r[close + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// What one node counts for one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    pub connections: f64,
    pub errors: f64,
    pub in_flight: f64,
    /// `lbfleet_backend_usable`; `None` when the node does not report it.
    pub usable: Option<bool>,
}

/// (pool, backend address).
pub type BackendKey = (String, String);

/// One node's counters per backend, from its `/metrics` text.
pub fn counters_of(text: &str) -> BTreeMap<BackendKey, Counters> {
    const NAMES: [&str; 6] = [
        "lbfleet_http_requests_total",
        "lbfleet_tcp_connections_total",
        "lbfleet_udp_flows_total",
        "lbfleet_upstream_connect_failures_total",
        "lbfleet_backend_in_flight",
        "lbfleet_backend_usable",
    ];
    let mut out: BTreeMap<BackendKey, Counters> = BTreeMap::new();
    for s in parse_metrics(text, &NAMES) {
        let (Some(pool), Some(backend)) = (s.labels.get("pool"), s.labels.get("backend")) else { continue };
        if backend.is_empty() {
            continue; // answered by the proxy itself
        }
        let c = out.entry((pool.clone(), backend.clone())).or_default();
        match s.name.as_str() {
            "lbfleet_http_requests_total" => {
                c.requests += s.value;
                if s.labels.get("code_class").is_some_and(|k| k == "5xx") {
                    c.errors += s.value;
                }
            }
            "lbfleet_tcp_connections_total" | "lbfleet_udp_flows_total" => c.connections += s.value,
            "lbfleet_upstream_connect_failures_total" => c.errors += s.value,
            "lbfleet_backend_in_flight" => c.in_flight += s.value,
            _ => c.usable = Some(s.value > 0.0),
        }
    }
    out
}

/// One read of the fleet.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// Per member id: its counters, or why it did not answer.
    pub nodes: BTreeMap<u64, Result<BTreeMap<BackendKey, Counters>, String>>,
    pub backends: Vec<pb::BackendStatus>,
}

/// One row of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopRow {
    pub pool: String,
    pub backend: String,
    pub requests_per_s: f64,
    pub connections_per_s: f64,
    pub errors_per_s: f64,
    pub in_flight: u64,
    /// `up`, `down`, `draining` or `standby` (committed state).
    pub state: &'static str,
    /// Nodes that answered and do not send to this backend on their own (passive ejection, own checks).
    pub ejected_on: Vec<u64>,
}

/// One view: a `top --json` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopView {
    /// RFC 3339 time of the second read.
    pub time: String,
    /// Milliseconds between the two reads the rates are over.
    pub interval_ms: u64,
    pub nodes_answered: usize,
    pub nodes: usize,
    /// Nodes that did not answer, with why.
    pub silent: BTreeMap<u64, String>,
    pub backends: Vec<TopRow>,
}

/// The rates from `prev` to `cur`, for the backends `cur` has; a counter that went down (a node
/// restarted) counts from zero.
pub fn view(prev: &Snapshot, cur: &Snapshot, time: String) -> TopView {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64().max(1e-3);
    let empty = BTreeMap::new();
    let rate = |now: f64, before: f64| if now >= before { (now - before) / secs } else { now / secs };
    let mut silent = BTreeMap::new();
    let mut rows = Vec::new();
    for b in &cur.backends {
        let key = (b.pool.clone(), b.addr.clone());
        let mut row = TopRow {
            pool: b.pool.clone(),
            backend: b.addr.clone(),
            requests_per_s: 0.0,
            connections_per_s: 0.0,
            errors_per_s: 0.0,
            in_flight: 0,
            state: if !b.healthy {
                "down"
            } else if b.draining {
                "draining"
            } else if b.standby && !b.active {
                "standby"
            } else {
                "up"
            },
            ejected_on: Vec::new(),
        };
        for (id, now) in &cur.nodes {
            let Ok(now) = now else { continue };
            let before = match prev.nodes.get(id) {
                Some(Ok(m)) => m,
                _ => &empty,
            };
            let c = now.get(&key).copied().unwrap_or_default();
            let p = before.get(&key).copied().unwrap_or_default();
            row.requests_per_s += rate(c.requests, p.requests);
            row.connections_per_s += rate(c.connections, p.connections);
            row.errors_per_s += rate(c.errors, p.errors);
            row.in_flight += c.in_flight.max(0.0) as u64;
            if c.usable == Some(false) {
                row.ejected_on.push(*id);
            }
        }
        rows.push(row);
    }
    for (id, r) in &cur.nodes {
        if let Err(e) = r {
            silent.insert(*id, e.clone());
        }
    }
    TopView {
        time,
        interval_ms: (secs * 1000.0).round() as u64,
        nodes_answered: cur.nodes.len() - silent.len(),
        nodes: cur.nodes.len(),
        silent,
        backends: rows,
    }
}

/// The view for people.
pub fn view_text(v: &TopView) -> String {
    let mut out = format!(
        "{}   rates over {}   {}/{} nodes answered\n",
        v.time,
        humantime::format_duration(Duration::from_millis(v.interval_ms)),
        v.nodes_answered,
        v.nodes
    );
    if v.backends.is_empty() {
        out.push_str("no backends (no config applied, or every pool is empty)\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .backends
            .iter()
            .map(|r| {
                let mut state = r.state.to_string();
                if !r.ejected_on.is_empty() {
                    state.push_str(&format!(", ejected on node {}", output::join_ids(&r.ejected_on)));
                }
                vec![
                    r.pool.clone(),
                    r.backend.clone(),
                    format!("{:.1}", r.requests_per_s),
                    format!("{:.1}", r.connections_per_s),
                    format!("{:.1}", r.errors_per_s),
                    r.in_flight.to_string(),
                    state,
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["POOL", "BACKEND", "REQ/S", "CONN/S", "ERR/S", "IN_FLIGHT", "STATE"],
            &rows,
        ));
    }
    for (id, e) in &v.silent {
        out.push_str(&format!("node {id}: {e}\n"));
    }
    out
}

/// Read every member's counters and the committed backend states.
async fn snapshot(admin: &Admin, wait: Duration) -> Result<Snapshot, CliError> {
    let status = admin.status().await?;
    let backends = admin.list_backends(true).await?.backends;
    let mut tasks = tokio::task::JoinSet::new();
    for n in &status.nodes {
        let (id, addr) = (n.id, n.http_addr.clone());
        tasks.spawn(async move { (id, scrape(&addr, wait).await) });
    }
    let mut nodes = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((id, r)) = done {
            nodes.insert(id, r);
        }
    }
    Ok(Snapshot { at: Instant::now(), nodes, backends })
}

async fn scrape(http_addr: &str, wait: Duration) -> Result<BTreeMap<BackendKey, Counters>, String> {
    if http_addr.is_empty() {
        return Err("no admin HTTP address known".to_string());
    }
    let addr = tokio::net::lookup_host(http_addr)
        .await
        .map_err(|e| format!("cannot resolve {http_addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{http_addr} resolves to no address"))?;
    let answer = crate::probe::http_get_limited(addr, "/metrics", wait, MAX_METRICS_BYTES)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if answer.status != 200 {
        return Err(format!("GET http://{http_addr}/metrics answered {}", answer.status));
    }
    Ok(counters_of(&String::from_utf8_lossy(&answer.body)))
}

/// `top`: a view every `interval` until Ctrl-C, or `--once` / `--iterations N`. Until Ctrl-C, a refresh
/// that fails (the node asked is gone, the cluster has no leader for `status`) is shown in place of the
/// view and retried at the next one; the rates resume one interval after a refresh succeeds again. With
/// a count, the first failure ends `top` with its exit code.
pub async fn run(g: &Global, t: &TopArgs) -> Result<(), CliError> {
    let admin = g.connect().await?;
    let mut stop = Stop::new()?;
    let limit = if t.once { Some(1) } else { t.iterations };
    let tty = !g.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let wait = g.timeout.min(MAX_SCRAPE_WAIT).min(t.interval.max(Duration::from_millis(500)));
    let mut ticks = tokio::time::interval(t.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut prev = Some(snapshot(&admin, wait).await?);
    let mut shown = 0u64;
    let now = || humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let clear = if tty { "\x1b[H\x1b[2J" } else { "" };
    loop {
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let cur = match snapshot(&admin, wait).await {
            Ok(cur) => cur,
            Err(e) if limit.is_none() => {
                prev = None;
                if g.json {
                    let line = serde_json::json!({ "time": now(), "error": e.to_json() });
                    print(&(output::to_json_line(&line) + "\n"))?;
                } else {
                    let why = e.render().join("; ");
                    let every = humantime::format_duration(t.interval);
                    print(&format!(
                        "{clear}{}   {why}; retrying every {every}\n{}",
                        now(),
                        if tty { "" } else { "\n" }
                    ))?;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(before) = prev.take() else {
            prev = Some(cur);
            continue;
        };
        let v = view(&before, &cur, now());
        if g.json {
            print(&(output::to_json_line(&v) + "\n"))?;
        } else {
            print(&format!("{clear}{}{}", view_text(&v), if tty { "" } else { "\n" }))?;
        }
        shown += 1;
        if limit.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        prev = Some(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP lbfleet_http_requests HTTP responses sent
# TYPE lbfleet_http_requests counter
lbfleet_http_requests_total{listener=\"web\",pool=\"web\",backend=\"127.0.0.1:9001\",code_class=\"2xx\",node=\"1\"} 10
lbfleet_http_requests_total{listener=\"web\",pool=\"web\",backend=\"127.0.0.1:9001\",code_class=\"5xx\",node=\"1\"} 2
lbfleet_http_requests_total{listener=\"web\",pool=\"\",backend=\"\",code_class=\"5xx\",node=\"1\"} 7
lbfleet_upstream_connect_failures_total{pool=\"web\",backend=\"127.0.0.1:9002\",node=\"1\"} 3
lbfleet_tcp_connections_total{listener=\"t\",pool=\"web\",backend=\"127.0.0.1:9002\",node=\"1\"} 4
lbfleet_backend_in_flight{pool=\"web\",backend=\"127.0.0.1:9001\",node=\"1\"} 5
lbfleet_backend_usable{pool=\"web\",backend=\"127.0.0.1:9002\",node=\"1\"} 0
lbfleet_raft_term{node=\"1\"} 3
# EOF
";

    fn key(b: &str) -> BackendKey {
        ("web".to_string(), b.to_string())
    }

    #[test]
    fn parses_labels_with_escapes_and_skips_what_it_does_not_want() {
        let s = parse_metrics("m{a=\"x\\\"y\",b=\"1\\\\2\"} 1.5 123\nm 2\nother 3\nm{broken 4\n", &["m"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["a"], "x\"y");
        assert_eq!(s[0].labels["b"], "1\\2");
        assert_eq!(s[0].value, 1.5);
        assert!(s[1].labels.is_empty());
    }

    #[test]
    fn counters_per_backend() {
        let c = counters_of(TEXT);
        assert_eq!(c.len(), 2, "the proxy's own answers (backend \"\") are not a backend");
        let a = c[&key("127.0.0.1:9001")];
        assert_eq!((a.requests, a.errors, a.in_flight, a.usable), (12.0, 2.0, 5.0, None));
        let b = c[&key("127.0.0.1:9002")];
        assert_eq!((b.connections, b.errors, b.usable), (4.0, 3.0, Some(false)));
    }

    fn backend(addr: &str, healthy: bool, draining: bool) -> pb::BackendStatus {
        pb::BackendStatus {
            pool: "web".into(),
            addr: addr.into(),
            weight: 1,
            healthy,
            draining,
            active: true,
            backup: false,
            standby: false,
        }
    }

    #[test]
    fn rates_sum_over_nodes_and_survive_a_restart() {
        let t0 = Instant::now();
        let at = |n: f64, inflight: f64| {
            BTreeMap::from([(
                key("127.0.0.1:9001"),
                Counters { requests: n, in_flight: inflight, ..Default::default() },
            )])
        };
        let backends = vec![backend("127.0.0.1:9001", true, false), backend("127.0.0.1:9002", false, true)];
        let prev = Snapshot {
            at: t0,
            nodes: BTreeMap::from([(1, Ok(at(100.0, 0.0))), (2, Ok(at(50.0, 0.0))), (3, Ok(at(9.0, 0.0)))]),
            backends: backends.clone(),
        };
        let cur = Snapshot {
            at: t0 + Duration::from_secs(2),
            nodes: BTreeMap::from([
                (1, Ok(at(120.0, 2.0))),
                (2, Ok(at(4.0, 1.0))),
                (3, Err("connection refused".to_string())),
            ]),
            backends,
        };
        let v = view(&prev, &cur, "t".into());
        assert_eq!(v.interval_ms, 2000);
        assert_eq!((v.nodes_answered, v.nodes), (2, 3));
        // node 1: 20 in 2 s; node 2 restarted: 4 in 2 s.
        assert_eq!(v.backends[0].requests_per_s, 12.0);
        assert_eq!(v.backends[0].in_flight, 3);
        assert_eq!(v.backends[0].state, "up");
        assert_eq!(v.backends[1].state, "down");
        let text = view_text(&v);
        assert!(text.contains("web   127.0.0.1:9001  12.0   0.0     0.0    3          up"), "{text}");
        assert!(text.ends_with("node 3: connection refused\n"), "{text}");
    }
}
