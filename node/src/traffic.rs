//! Recent traffic of one node for the dashboard: request and error rates and latency quantiles per
//! backend and per listener, computed from deltas of the node's own counters.
//!
//! A sampler task ([`run_sampler`]) encodes the data-plane counters ([`DataplaneMetrics`]) every
//! [`SAMPLE_INTERVAL`], parses the text ([`parse`]) into totals per [`Key`] and keeps the last
//! [`HISTORY_POINTS`] + 1 samples in a [`TrafficBook`]. [`TrafficBook::windows`] turns them into rates
//! over the last [`WINDOW_POINTS`] intervals, one rate point per interval for the sparklines, and the
//! request durations observed in the window (bucket counts of `lbfleet_http_request_duration_seconds`,
//! when the node has that histogram). The parsing and the window arithmetic are plain functions over
//! plain data, tested below. The same task feeds this node's [`crate::observed::Observer`].
//!
//! What counts: requests are HTTP responses (`lbfleet_http_requests_total`) plus TCP connections and UDP
//! flows (`lbfleet_tcp_connections_total`, `lbfleet_udp_flows_total`); errors are 5xx responses plus
//! backend connect failures (`lbfleet_upstream_connect_failures_total`, backends only: a failed connect
//! that the client gets as a 502 counts in both). Listener totals include the answers the proxy gave by
//! itself.
//!
//! Limits: only the first [`MAX_TRACKED_BACKENDS`] backends and [`MAX_TRACKED_LISTENERS`] listeners of
//! the committed config (in config order) are tracked, so the book holds at most
//! `(HISTORY_POINTS + 1) × (MAX_TRACKED_BACKENDS + MAX_TRACKED_LISTENERS)` totals; the dashboard says
//! how many it left out. Known cost: each sample encodes and parses the whole counter text of the node
//! (a few hundred kB with thousands of backends).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lbfleet_api::config::ClusterConfig;
use lbfleet_api::view::backend_views;
use prometheus_client::registry::Registry;

use crate::observed::{Facts, SharedObserver};
use crate::proxy::counters::DataplaneMetrics;
use crate::raft::RaftNode;
use crate::shutdown::Shutdown;

/// How often the counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Rate points kept per series (one per sample interval): the sparklines' length.
pub const HISTORY_POINTS: usize = 60;
/// Rates and latency quantiles are over this many sample intervals.
pub const WINDOW_POINTS: usize = 10;
/// Most backends tracked (the first ones of the committed config).
pub const MAX_TRACKED_BACKENDS: usize = 200;
/// Most listeners tracked (the first ones of the committed config).
pub const MAX_TRACKED_LISTENERS: usize = 100;

/// What a series is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Backend { pool: String, backend: String },
    Listener(String),
}

/// Counter totals of one key at one sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// Cumulative duration bucket counts by upper bound (seconds), ascending; `+Inf` is `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl Totals {
    fn add_bucket(&mut self, le: f64, count: u64) {
        match self.buckets.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }
}

/// One series over the recent window, as the dashboard reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Durations observed in the window: (upper bound, count in that bucket alone), ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Requests and errors per second, one point per sample interval, oldest first.
    pub requests_history: Vec<f32>,
    pub errors_history: Vec<f32>,
}

/// The labels of one exposition line (`name{a="1",b="x"} 3`), unescaped; `None` when malformed.
fn labels(s: &str) -> Option<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((name.trim_start_matches(',').trim(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// Totals per key from a Prometheus / OpenMetrics text (this node's counters; a metric name may carry
/// the `lbfleet_` prefix or not). Keys outside `tracked` (when given) are skipped.
pub fn parse(text: &str, tracked: Option<&HashSet<Key>>) -> HashMap<Key, Totals> {
    let mut out: HashMap<Key, Totals> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let value = if value.is_finite() && value > 0.0 { value as u64 } else { 0 };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => match labels(l.strip_suffix('}').unwrap_or(l)) {
                Some(l) => (n, l),
                None => continue,
            },
            None => (series, Vec::new()),
        };
        let name = name.strip_prefix("lbfleet_").unwrap_or(name);
        let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        let (listener, pool, backend) = (get("listener"), get("pool"), get("backend"));
        let mut keys = Vec::with_capacity(2);
        if !listener.is_empty() {
            keys.push(Key::Listener(listener.to_string()));
        }
        if !backend.is_empty() {
            keys.push(Key::Backend { pool: pool.to_string(), backend: backend.to_string() });
        }
        for key in keys {
            if tracked.is_some_and(|t| !t.contains(&key)) {
                continue;
            }
            let is_listener = matches!(key, Key::Listener(_));
            let t = out.entry(key).or_default();
            match name {
                "http_requests_total" => {
                    t.requests += value;
                    if get("code_class") == "5xx" {
                        t.errors += value;
                    }
                }
                "tcp_connections_total" | "udp_flows_total" => t.requests += value,
                "upstream_connect_failures_total" if !is_listener => t.errors += value,
                "http_request_duration_seconds_bucket" => {
                    let le = match get("le") {
                        "+Inf" => f64::INFINITY,
                        l => match l.parse::<f64>() {
                            Ok(l) => l,
                            Err(_) => continue,
                        },
                    };
                    t.add_bucket(le, value);
                }
                _ => {}
            }
        }
    }
    // Keys that only matched unrelated metrics carry nothing.
    out.retain(|_, t| *t != Totals::default());
    out
}

/// The keys to track for `config`: its first backends and listeners, within the limits.
pub fn tracked_keys(config: Option<&ClusterConfig>) -> HashSet<Key> {
    let Some(c) = config else { return HashSet::new() };
    let backends = c
        .pool
        .iter()
        .flat_map(|p| {
            p.backend.iter().map(move |b| Key::Backend { pool: p.name.clone(), backend: b.addr.to_string() })
        })
        .take(MAX_TRACKED_BACKENDS);
    let listeners = c.listener.iter().take(MAX_TRACKED_LISTENERS).map(|l| Key::Listener(l.name.clone()));
    backends.chain(listeners).collect()
}

/// Non-cumulative counts of the durations observed between two cumulative bucket sets.
fn bucket_delta(old: &[(f64, u64)], new: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let cumulative: Vec<(f64, u64)> = new
        .iter()
        .map(|(le, n)| {
            let o = old.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
            (*le, n.saturating_sub(o))
        })
        .collect();
    let mut prev = 0;
    cumulative
        .into_iter()
        .map(|(le, c)| {
            let own = c.saturating_sub(prev);
            prev = prev.max(c);
            (le, own)
        })
        .collect()
}

/// The `q` quantile (0..=1) of non-cumulative duration buckets, interpolated linearly inside its bucket
/// as Prometheus' `histogram_quantile` does; `None` when nothing was observed. A quantile in the `+Inf`
/// bucket is the largest finite bound.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower, mut seen) = (0.0, 0u64);
    for (le, c) in buckets {
        if *c > 0 && (seen + c) as f64 >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (rank - seen as f64) / *c as f64;
            return Some(lower + (le - lower) * within.clamp(0.0, 1.0));
        }
        seen += c;
        if le.is_finite() {
            lower = *le;
        }
    }
    Some(lower)
}

/// The last samples of one node, oldest first.
#[derive(Debug, Default)]
pub struct TrafficBook {
    samples: VecDeque<(Instant, HashMap<Key, Totals>)>,
}

/// A node's book, shared by the sampler and the admin servers.
pub type SharedTrafficBook = Arc<Mutex<TrafficBook>>;

impl TrafficBook {
    /// Add a sample taken at `at`, dropping the oldest beyond [`HISTORY_POINTS`] + 1.
    pub fn push(&mut self, at: Instant, totals: HashMap<Key, Totals>) {
        self.samples.push_back((at, totals));
        while self.samples.len() > HISTORY_POINTS + 1 {
            self.samples.pop_front();
        }
    }

    /// Whether rates can be computed (two samples at least).
    pub fn ready(&self) -> bool {
        self.samples.len() >= 2
    }

    /// Whether the newest sample has duration buckets (the node has the histogram).
    pub fn has_latency(&self) -> bool {
        self.samples.back().is_some_and(|(_, s)| s.values().any(|t| !t.buckets.is_empty()))
    }

    /// Every key of the newest sample over the recent window (see the module doc).
    pub fn windows(&self) -> HashMap<Key, Window> {
        let n = self.samples.len();
        let Some((newest_at, newest)) = self.samples.back() else { return HashMap::new() };
        let start = n - 1 - (n - 1).min(WINDOW_POINTS);
        let (start_at, start_totals) = &self.samples[start];
        let secs = newest_at.saturating_duration_since(*start_at).as_secs_f64();
        let empty = Totals::default();
        newest
            .iter()
            .map(|(key, t)| {
                let old = start_totals.get(key).unwrap_or(&empty);
                let rate =
                    |new: u64, old: u64| if secs > 0.0 { new.saturating_sub(old) as f64 / secs } else { 0.0 };
                let mut w = Window {
                    requests_per_s: rate(t.requests, old.requests),
                    errors_per_s: rate(t.errors, old.errors),
                    buckets: bucket_delta(&old.buckets, &t.buckets),
                    ..Window::default()
                };
                for pair in self.samples.iter().collect::<Vec<_>>().windows(2) {
                    let ((a_at, a), (b_at, b)) = (pair[0], pair[1]);
                    let dt = b_at.saturating_duration_since(*a_at).as_secs_f64();
                    let (a, b) = (a.get(key).unwrap_or(&empty), b.get(key).unwrap_or(&empty));
                    let per_s = |new: u64, old: u64| {
                        if dt > 0.0 {
                            (new.saturating_sub(old) as f64 / dt) as f32
                        } else {
                            0.0
                        }
                    };
                    w.requests_history.push(per_s(b.requests, a.requests));
                    w.errors_history.push(per_s(b.errors, a.errors));
                }
                (key.clone(), w)
            })
            .collect()
    }
}

/// The data-plane counters as text, for [`parse`].
fn counters_text(metrics: &DataplaneMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!("cannot encode the counters for the dashboard: {e}");
    }
    text
}

/// Sample `metrics` into `book` every [`SAMPLE_INTERVAL`] until `shutdown`.
pub async fn run_sampler(
    raft: RaftNode,
    metrics: Arc<crate::proxy::ProxyContext>,
    book: SharedTrafficBook,
    observer: SharedObserver,
    mut shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let model = raft.model();
        let tracked = tracked_keys(model.config.as_ref());
        let totals = parse(&counters_text(&metrics.metrics), Some(&tracked));
        book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Instant::now(), totals);
        let m = raft.metrics();
        let facts = Facts {
            leader: m.current_leader,
            term: m.current_term,
            applied_index: raft.applied_index(),
            draining: backend_views(&model)
                .into_iter()
                .filter(|b| b.draining)
                .map(|b| (b.pool, b.addr))
                .collect(),
        };
        observer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(crate::load::now_ms(), facts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE lbfleet_http_requests counter\n\
        lbfleet_http_requests_total{listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\",code_class=\"2xx\"} 7\n\
        lbfleet_http_requests_total{listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\",code_class=\"5xx\"} 3\n\
        lbfleet_http_requests_total{listener=\"front\",pool=\"\",backend=\"\",code_class=\"5xx\"} 1\n\
        upstream_connect_failures_total{pool=\"web\",backend=\"127.0.0.1:9001\"} 2\n\
        tcp_connections_total{listener=\"t\\\"q\",pool=\"web\",backend=\"127.0.0.1:9002\"} 4\n\
        lbfleet_http_request_duration_seconds_bucket{le=\"0.005\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 6\n\
        lbfleet_http_request_duration_seconds_bucket{le=\"+Inf\",listener=\"front\",pool=\"web\",backend=\"127.0.0.1:9001\"} 10\n\
        lbfleet_node_up{node=\"1\"} 1\n\
        garbage{listener=\"front 9\n\
        # EOF\n";

    fn backend(b: &str) -> Key {
        Key::Backend { pool: "web".into(), backend: b.into() }
    }

    #[test]
    fn parse_sums_requests_errors_and_buckets_per_backend_and_listener() {
        let t = parse(TEXT, None);
        let b1 = &t[&backend("127.0.0.1:9001")];
        assert_eq!((b1.requests, b1.errors), (10, 5), "3 5xx and 2 connect failures");
        assert_eq!(b1.buckets, vec![(0.005, 6), (f64::INFINITY, 10)]);
        let front = &t[&Key::Listener("front".into())];
        assert_eq!((front.requests, front.errors), (11, 4), "the proxy's own 5xx counts for the listener");
        assert_eq!(t[&Key::Listener("t\"q".into())].requests, 4, "escaped label values");
        assert_eq!(t[&backend("127.0.0.1:9002")].requests, 4);
        assert_eq!(t.len(), 4, "{t:?}");
    }

    #[test]
    fn parse_keeps_only_tracked_keys() {
        let tracked: HashSet<Key> = [Key::Listener("front".into())].into_iter().collect();
        let t = parse(TEXT, Some(&tracked));
        assert_eq!(t.keys().collect::<Vec<_>>(), vec![&Key::Listener("front".into())]);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let b = [(0.01, 50), (0.1, 40), (1.0, 10), (f64::INFINITY, 0)];
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(0.1, 0)], 0.5), None);
        assert_eq!(quantile(&[(0.1, 1), (f64::INFINITY, 9)], 0.99), Some(0.1), "+Inf gives the last bound");
    }

    #[test]
    fn windows_give_rates_history_and_window_buckets() {
        let mut book = TrafficBook::default();
        let t0 = Instant::now();
        let totals = |req: u64, err: u64, fast: u64, all: u64| {
            let t = Totals { requests: req, errors: err, buckets: vec![(0.01, fast), (f64::INFINITY, all)] };
            [(backend("a"), t)].into_iter().collect::<HashMap<_, _>>()
        };
        assert!(!book.ready());
        for i in 0..=(HISTORY_POINTS as u64 + 5) {
            book.push(t0 + Duration::from_secs(i), totals(i * 20, i * 2, i * 10, i * 20));
        }
        assert!(book.ready() && book.has_latency());
        let w = &book.windows()[&backend("a")];
        assert!((w.requests_per_s - 20.0).abs() < 1e-9 && (w.errors_per_s - 2.0).abs() < 1e-9, "{w:?}");
        assert_eq!(w.requests_history.len(), HISTORY_POINTS, "bounded history");
        assert!(w.requests_history.iter().all(|p| (*p - 20.0).abs() < 1e-6));
        let n = WINDOW_POINTS as u64;
        assert_eq!(w.buckets, vec![(0.01, 10 * n), (f64::INFINITY, 10 * n)], "non-cumulative, window only");
    }
}
