//! Data-plane counters of one node, exposed on the admin `/metrics` endpoint.
//!
//! The proxies count into one shared [`DataplaneMetrics`] (`ProxyContext::metrics`): HTTP responses by
//! listener, pool, backend and status class; backend connect failures; TCP connections and UDP flows per
//! backend; UDP datagrams dropped by reason; HTTP requests refused by listener and reason
//! (`lbfleet_http_refused_total`; the reasons are those of `proxy::http::guard`, plus what hyper refuses
//! on its own: `malformed`, `head_too_large`, `header_timeout`, and the body faults `bad_body`,
//! `body_too_large`); connections refused by a cap or a rate limit, HTTP requests refused by a rate
//! limit, and picks that skipped a backend at its connection limit; PROXY protocol headers read by
//! listeners with `accept_proxy_protocol`, by result; bytes received from and sent to clients per
//! listener, pool and backend; retries; open connections per listener; dropped access log lines.
//! The other gauges (in-flight requests, fleet-wide health, this node's check, ejection and usability
//! of each backend, bound listeners, the ring digest as an info metric) are not kept here:
//! [`register_gauges`] reads them at scrape time from the routing snapshot, the committed state and the
//! outlier tracker.
//!
//! Label values: `backend` is the backend's address; an answer of the proxy itself that involved no
//! backend (no pool, no usable backend, a refused request, a redirect) has `backend=""`, and `pool=""`
//! when no pool was chosen either.
//!
//! Each HTTP response is counted and its duration observed (`lbfleet_http_request_duration_seconds`,
//! from the request head received to the response head handed to the client connection) under one
//! [`RequestLabels`]: shared names (`Arc<str>`, resolved once per listener and per routing snapshot) and
//! the backend's address, written out only at scrape time, so a request allocates nothing for its labels.
//!
//! Known limits: the other counters build their label set (a few small strings) to look it up (UDP drop
//! counters are looked up once per listener); series of backends and listeners that left the config
//! stay until the process restarts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::listeners::ListenerStatus;
use super::Routing;
use crate::balance::OutlierTracker;
use lbfleet_api::view::BackendView;

/// A backend's address as a label value (empty for `None`), formatted only when encoded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct AddrLabel(pub Option<SocketAddr>);

impl EncodeLabelValue for AddrLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(addr) => write!(encoder, "{addr}"),
            None => Ok(()),
        }
    }
}

/// A shared name (listener, pool) as a label value: cloning it copies a pointer.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Where one HTTP request went: its listener, pool (`None`: none chosen) and backend (`None`: the
/// proxy answered by itself). Cloning it copies two pointers and an address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Name,
    pub pool: Option<Name>,
    pub backend: AddrLabel,
}

/// [`RequestLabels`] and the status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub listener: Name,
    pub pool: Option<Name>,
    pub backend: AddrLabel,
    pub code_class: &'static str,
}

/// Upper bounds (seconds) of `lbfleet_http_request_duration_seconds`' buckets: 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Builds each series' histogram with [`DURATION_BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram;

impl MetricConstructor<Histogram> for DurationHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(DURATION_BUCKETS)
    }
}

/// The request durations, one histogram per [`RequestLabels`].
#[derive(Clone, Debug)]
struct Durations(Family<RequestLabels, Histogram, DurationHistogram>);

impl Default for Durations {
    fn default() -> Self {
        Durations(Family::new_with_constructor(DurationHistogram))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub listener: String,
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// `lbfleet_connections_refused_total`: `listener_cap`, `source_cap` or `rate_limit`;
    /// `lbfleet_http_refused_total`: the refusal's reason (see the module doc).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLabels {
    pub listener: String,
    /// The route's number (1 for the first `[[listener.route]]`); empty for the listener's own limit.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeaderLabels {
    pub listener: String,
    /// `accepted`, or why the connection was closed: `untrusted`, `malformed`, `timeout`, `closed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub listener: Name,
    pub pool: Name,
    /// `connect_failure` (the next backend is tried), `closed_unsent` (a pooled connection closed
    /// before the request was written: sent again on a new one), `replay` (an idempotent bodiless
    /// request sent once more after its pooled connection failed).
    pub reason: &'static str,
}

/// One open client connection (UDP: flow) of a listener, counted in `lbfleet_listener_connections`
/// while it is held.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl OpenConnection {
    pub fn new(gauge: &Gauge) -> OpenConnection {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The counters every proxy task of a node shares.
#[derive(Debug, Default)]
pub struct DataplaneMetrics {
    http_requests: Family<HttpLabels, Counter>,
    http_durations: Durations,
    connect_failures: Family<BackendLabels, Counter>,
    tcp_connections: Family<FlowLabels, Counter>,
    udp_flows: Family<FlowLabels, Counter>,
    udp_dropped: Family<DropLabels, Counter>,
    http_refused: Family<RefusedLabels, Counter>,
    connections_refused: Family<RefusedLabels, Counter>,
    rate_limited: Family<RateLabels, Counter>,
    backend_at_limit: Family<BackendLabels, Counter>,
    proxy_protocol_headers: Family<HeaderLabels, Counter>,
    tls_handshake_failures: Family<ListenerLabels, Counter>,
    received_bytes: Family<RequestLabels, Counter>,
    sent_bytes: Family<RequestLabels, Counter>,
    listener_connections: Family<ListenerLabels, Gauge>,
    retries: Family<RetryLabels, Counter>,
    access_log_dropped: Counter,
}

/// `2xx`, `5xx`, …: the label of a status code's class.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

impl DataplaneMetrics {
    /// One HTTP response with `status`, sent `elapsed` after its request head was received.
    pub fn http_response(&self, request: &RequestLabels, status: u16, elapsed: Duration) {
        self.http_durations.0.get_or_create(request).observe(elapsed.as_secs_f64());
        let labels = HttpLabels {
            listener: request.listener.clone(),
            pool: request.pool.clone(),
            backend: request.backend,
            code_class: code_class(status),
        };
        self.http_requests.get_or_create(&labels).inc();
    }

    /// Bytes received from a client (`received`) and sent to it (`sent`) through `labels`' backend:
    /// HTTP message bodies, TCP stream bytes, UDP datagram payloads.
    pub fn traffic(&self, labels: &RequestLabels, received: u64, sent: u64) {
        self.received_bytes.get_or_create(labels).inc_by(received);
        self.sent_bytes.get_or_create(labels).inc_by(sent);
    }

    /// The counters of [`Self::traffic`] for `labels` (received, sent), to keep and bump without a lookup.
    pub fn traffic_counters(&self, labels: &RequestLabels) -> (Counter, Counter) {
        (self.received_bytes.get_or_create(labels).clone(), self.sent_bytes.get_or_create(labels).clone())
    }

    /// The gauge of `listener`'s open client connections (UDP: flows), for [`OpenConnection`].
    pub fn listener_connections(&self, listener: &str) -> Gauge {
        self.listener_connections.get_or_create(&ListenerLabels { listener: listener.to_string() }).clone()
    }

    /// One more attempt for a request (TCP: a connection) of `listener` in `pool`, for `reason` (see
    /// [`RetryLabels`]).
    pub fn retry(&self, listener: &Name, pool: &Name, reason: &'static str) {
        let labels = RetryLabels { listener: listener.clone(), pool: pool.clone(), reason };
        self.retries.get_or_create(&labels).inc();
    }

    /// The count of access log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self) -> &Counter {
        &self.access_log_dropped
    }

    /// An HTTP request (or a connection, for what hyper refuses before a request exists) of `listener`
    /// refused for `reason` (see `proxy::http::guard`).
    pub fn http_refused(&self, listener: &str, reason: &'static str) {
        let labels = RefusedLabels { listener: listener.to_string(), reason };
        self.http_refused.get_or_create(&labels).inc();
    }

    /// A connection to `backend` of `pool` could not be opened (refused, timed out).
    pub fn connect_failure(&self, pool: &str, backend: SocketAddr) {
        let labels = BackendLabels { pool: pool.to_string(), backend: backend.to_string() };
        self.connect_failures.get_or_create(&labels).inc();
    }

    /// A TCP connection of `listener` was connected to `backend`.
    pub fn tcp_connection(&self, listener: &str, pool: &str, backend: SocketAddr) {
        let labels = FlowLabels {
            listener: listener.to_string(),
            pool: pool.to_string(),
            backend: backend.to_string(),
        };
        self.tcp_connections.get_or_create(&labels).inc();
    }

    /// A UDP flow of `listener` was started towards `backend`.
    pub fn udp_flow(&self, listener: &str, pool: &str, backend: SocketAddr) {
        let labels = FlowLabels {
            listener: listener.to_string(),
            pool: pool.to_string(),
            backend: backend.to_string(),
        };
        self.udp_flows.get_or_create(&labels).inc();
    }

    /// The counter of UDP datagrams of `listener` dropped for `reason`, to keep and bump without a
    /// lookup (the series appears at 0 once asked for).
    pub fn udp_drop_counter(&self, listener: &str, reason: &'static str) -> Counter {
        let labels = DropLabels { listener: listener.to_string(), reason };
        self.udp_dropped.get_or_create(&labels).clone()
    }

    /// A client connection (UDP: a new flow) of `listener` refused for `reason` (`listener_cap`,
    /// `source_cap`, `rate_limit`).
    pub fn connection_refused(&self, listener: &str, reason: &'static str) {
        let labels = RefusedLabels { listener: listener.to_string(), reason };
        self.connections_refused.get_or_create(&labels).inc();
    }

    /// An HTTP request of `listener` answered 429 by the listener's rate limit (`route: None`) or by
    /// that of route number `route` (1-based).
    pub fn rate_limited(&self, listener: &str, route: Option<usize>) {
        let labels = RateLabels {
            listener: listener.to_string(),
            route: route.map(|r| r.to_string()).unwrap_or_default(),
        };
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// A pick skipped `backend` of `pool` because it was at the pool's `max_connections_per_backend`.
    pub fn backend_at_limit(&self, pool: &str, backend: SocketAddr) {
        let labels = BackendLabels { pool: pool.to_string(), backend: backend.to_string() };
        self.backend_at_limit.get_or_create(&labels).inc();
    }

    /// A connection of `listener` (one with `accept_proxy_protocol`) whose PROXY protocol header was
    /// accepted (`result = "accepted"`) or refused (the refusal's label).
    pub fn proxy_protocol_header(&self, listener: &str, result: &'static str) {
        let labels = HeaderLabels { listener: listener.to_string(), result };
        self.proxy_protocol_headers.get_or_create(&labels).inc();
    }

    /// A client TLS handshake on `listener` that failed or timed out, or found no certificate.
    pub fn tls_handshake_failure(&self, listener: &str) {
        self.tls_handshake_failures.get_or_create(&ListenerLabels { listener: listener.to_string() }).inc();
    }

    /// Add the counters to `registry` (which shares them: later increments show in its next encoding).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP responses sent, by listener, pool, backend (empty: answered by the proxy) and status class",
            self.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from an HTTP request's head received to its response head sent (handed to the client \
             connection), by listener, pool and backend (empty: answered by the proxy)",
            prometheus_client::registry::Unit::Seconds,
            self.http_durations.0.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Backend connections that could not be opened",
            self.connect_failures.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections proxied to a backend",
            self.tcp_connections.clone(),
        );
        registry.register("udp_flows", "UDP flows started towards a backend", self.udp_flows.clone());
        registry.register("udp_dropped", "UDP datagrams dropped, by reason", self.udp_dropped.clone());
        registry.register(
            "http_refused",
            "HTTP requests refused by the proxy (hostile or malformed), by listener and reason",
            self.http_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections (UDP: new flows) refused by a connection cap or a rate limit, by reason",
            self.connections_refused.clone(),
        );
        registry.register(
            "rate_limited",
            "HTTP requests answered 429 by a rate limit, by listener and route (empty: the listener's)",
            self.rate_limited.clone(),
        );
        registry.register(
            "backend_at_limit",
            "Picks that skipped a backend at its pool's max_connections_per_backend",
            self.backend_at_limit.clone(),
        );
        registry.register(
            "proxy_protocol_headers",
            "PROXY protocol headers read on listeners with accept_proxy_protocol: accepted, or why the connection was closed",
            self.proxy_protocol_headers.clone(),
        );
        registry.register_with_unit(
            "received",
            "Bytes received from clients (HTTP: request bodies; TCP: stream; UDP: datagram payloads), by listener, pool and backend",
            prometheus_client::registry::Unit::Bytes,
            self.received_bytes.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Bytes sent to clients (HTTP: response bodies; TCP: stream; UDP: datagram payloads), by listener, pool and backend",
            prometheus_client::registry::Unit::Bytes,
            self.sent_bytes.clone(),
        );
        registry.register(
            "listener_connections",
            "Client connections open on the listener (UDP: flows), on this node",
            self.listener_connections.clone(),
        );
        registry.register(
            "retries",
            "Further backend attempts for one request or TCP connection, by listener, pool and reason",
            self.retries.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind (its queue was full)",
            self.access_log_dropped.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed, timed out, or found no usable certificate, by listener",
            self.tls_handshake_failures.clone(),
        );
    }
}

/// The counters alone as OpenMetrics text (tests read them this way).
#[cfg(test)]
pub(crate) fn counters_text(metrics: &DataplaneMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode counters");
    text
}

/// The value of the series `series` (name and labels exactly as rendered) in `text`.
#[cfg(test)]
pub(crate) fn value_of(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// What the scrape-time gauges are read from.
pub struct GaugeSources<'a> {
    pub routing: &'a Routing,
    /// Every configured backend with its committed state.
    pub backends: &'a [BackendView],
    pub outlier: &'a OutlierTracker,
    pub listeners: &'a [ListenerStatus],
}

/// Add the gauges, computed now from `src`, to `registry`.
pub fn register_gauges(registry: &mut Registry, src: &GaugeSources<'_>) {
    let in_flight: Family<BackendLabels, Gauge> = Family::default();
    for name in src.routing.pool_digests().keys() {
        let Some(sel) = src.routing.pool(name) else { continue };
        for b in sel.backends() {
            let labels = BackendLabels { pool: name.to_string(), backend: b.key().to_string() };
            in_flight.get_or_create(&labels).set(i64::try_from(b.inflight()).unwrap_or(i64::MAX));
        }
    }
    let healthy: Family<BackendLabels, Gauge> = Family::default();
    let usable: Family<BackendLabels, Gauge> = Family::default();
    for b in src.backends {
        let labels = BackendLabels { pool: b.pool.clone(), backend: b.addr.clone() };
        healthy.get_or_create(&labels).set(i64::from(b.healthy));
        if let Ok(addr) = b.addr.parse::<SocketAddr>() {
            usable.get_or_create(&labels).set(i64::from(src.outlier.is_usable(&b.pool, addr)));
        }
    }
    // This node's own view: its active check (absent while unknown) and passive ejection.
    let check_up: Family<BackendLabels, Gauge> = Family::default();
    let ejected: Family<BackendLabels, Gauge> = Family::default();
    let ejections: Family<BackendLabels, Counter> = Family::default();
    for b in src.outlier.snapshot() {
        let labels = BackendLabels { pool: b.pool, backend: b.addr };
        let up = match b.active {
            "up" => Some(1),
            "down" => Some(0),
            _ => None,
        };
        if let Some(up) = up {
            check_up.get_or_create(&labels).set(up);
        }
        ejected.get_or_create(&labels).set(i64::from(b.ejected_ms.is_some()));
        ejections.get_or_create(&labels).inc_by(b.ejections_total);
    }
    let ring = Info::new(vec![("digest".to_string(), src.routing.ring_digest().to_string())]);
    let bound: Family<ListenerLabels, Gauge> = Family::default();
    for l in src.listeners {
        bound.get_or_create(&ListenerLabels { listener: l.name.clone() }).set(i64::from(l.bound));
    }
    registry.register(
        "backend_in_flight",
        "Requests, connections and flows in progress on each eligible backend, on this node",
        in_flight,
    );
    registry.register("backend_healthy", "1 if the backend is healthy fleet-wide (committed state)", healthy);
    registry.register(
        "backend_usable",
        "1 if this node may send to the backend (its own checks and passive ejection)",
        usable,
    );
    registry.register(
        "backend_check_up",
        "This node's active health check of the backend: 1 up, 0 down (absent while unknown or unchecked)",
        check_up,
    );
    registry.register("backend_ejected", "1 while the backend is passively ejected on this node", ejected);
    registry.register(
        "backend_ejections",
        "Passive ejections of the backend on this node (consecutive 5xx or connect failures)",
        ejections,
    );
    registry.register("listener_bound", "1 if the listener's socket is bound on this node", bound);
    registry.register(
        "ring",
        "Digest of this node's routing tables (every pool's ring or eligible set): equal on nodes that route alike",
        ring,
    );
}
