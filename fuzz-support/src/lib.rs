//! lbfleet-fuzz-support: the checks the cargo-fuzz targets in `fuzz/` run on each input, in a crate
//! of the stable workspace so that `cargo test` replays every committed corpus file through the very
//! same code (`tests/corpus.rs`). Nothing here is used by the production crates.
//!
//! Layout:
//! - [`config`]: target `config` — arbitrary bytes as TOML and as JSON through
//!   `lbfleet_api::config::parse`; a config that parses survives JSON, TOML and postcard unchanged.
//! - [`messages`]: target `raft_messages` — the first byte picks a message kind, the rest is decoded
//!   as the node decodes it (postcard Raft requests, replies and snapshot data; prost Admin
//!   messages); whatever decodes re-encodes to bytes that decode to the same value.
//! - [`proxy_protocol`]: target `proxy_protocol` — bytes from a front through the node's PROXY
//!   protocol decoder (bounded, consistent byte by byte), its encoder round-tripped through it, and
//!   the `ppp` crate as a second decoder that must agree on the addresses.
//! - [`http_headers`]: target `http_headers` — request heads and routes built with `arbitrary`
//!   through the HTTP proxy's header functions and route selection, with their invariants.
//! - [`apply`]: target `apply` — the input drives a sequence of commands and membership changes
//!   (built with `arbitrary`) through `ClusterState::apply`; the state's invariants hold after every
//!   step and a replay on a fresh state gives the same results and the same postcard bytes.
//!
//! Each `check` panics on a broken property; that is how libFuzzer and the replay test see a failure.
//! Inputs the parsers refuse are fine: only panics and broken properties are findings.

pub mod apply;
pub mod config;
pub mod http_headers;
pub mod messages;
pub mod proxy_protocol;

/// What a fuzz target runs on one input; it panics on a finding.
pub type Check = fn(&[u8]);

/// The fuzz targets, by directory name under `fuzz/corpus/`, with their check.
pub const TARGETS: [(&str, Check); 5] = [
    ("config", config::check),
    ("raft_messages", messages::check),
    ("apply", apply::check),
    ("proxy_protocol", proxy_protocol::check),
    ("http_headers", http_headers::check),
];
