//! `lbnode --print-default-config`: a complete node.toml, every field of [`FileConfig`] with its
//! default and a comment stating what it means and its bounds.
//!
//! The text is built from the same constants [`NodeConfig::resolve`] checks against, so the bounds it
//! states are the ones enforced. Fields with a default are set to it; fields without one (`peers`,
//! `admin_http`, `vip`, …) are shown commented out with an example. `id` and the three TLS files have
//! no default and are required: they are set to example values, so that the printed file is itself a
//! valid node.toml (the tests parse and resolve it).

use super::*;

/// The complete node.toml with the built-in defaults.
pub fn default_config_toml() -> String {
    let hb = HEARTBEAT_MS_RANGE;
    let snap = SNAPSHOT_LOGS_RANGE;
    let write = WRITE_TIMEOUT_MS_RANGE;
    let threads = DATAPLANE_THREADS_RANGE;
    let (idle_lo, idle_hi) = (UPSTREAM_IDLE_RANGE.start(), UPSTREAM_IDLE_RANGE.end());
    let grace = WITHDRAW_GRACE_MS_RANGE;
    let d = RaftTiming::default();
    let grpc_max = crate::limits::GRPC_MAX_CONNECTIONS;
    let http_max = crate::limits::ADMIN_HTTP_MAX_CONNECTIONS;
    let hook_min = humantime::format_duration(*HOOK_TIMEOUT_RANGE.start());
    let hook_max = humantime::format_duration(*HOOK_TIMEOUT_RANGE.end());
    let hook_default = humantime::format_duration(DEFAULT_HOOK_TIMEOUT);
    format!(
        r#"# node.toml: the local config of one lbnode (lbnode --config node.toml).
# Every field but hooks is also a flag (`--grpc-port` for grpc_port); a flag given on the command line wins over
# the file. Fields set below hold their built-in default; commented ones have no default (an example
# is shown). At most {MAX_FILE_BYTES} bytes; an unknown field is refused.

# Node id in the Raft group, 1 or more (0 is reserved). Required, no default: the value here is an
# example. Each node has its own.
id = 1

# IP address the gRPC and admin HTTP servers bind, and the data-plane listeners (bind:port of each
# listener of the cluster config).
bind = "127.0.0.1"

# Directory of the Raft log and state machine (sled). Default: ./lbnode-<id>. Not empty; one process
# per directory.
data_dir = "lbnode-1"

# The initial members: `id=grpc_host:port`, or `id=grpc_host:port@http_host:port` when the admin
# HTTP address is not the gRPC host with this node's http_port. A string with commas or a list.
# Ids and addresses unique, ports 1..=65535. The lowest id of the list initializes a new cluster
# once; a node started without peers waits to be added (`lbctl nodes add`). Default: none.
# peers = ["1=127.0.0.11:7400", "2=127.0.0.12:7400", "3=127.0.0.13:7400"]

# gRPC port (Raft and the admin API on one server), 1..=65535.
grpc_port = {DEFAULT_GRPC_PORT}

# Admin HTTP port (/healthz, /metrics, /api/v1/state, dashboard), 1..=65535.
http_port = {DEFAULT_HTTP_PORT}

# Full admin HTTP listen address IP:port (port not 0, not the gRPC address); replaces
# bind:http_port. Default: bind:http_port.
# admin_http = "127.0.0.1:7401"

# Log filter when RUST_LOG is not set: error, warn, info, debug, trace or a tracing filter
# ("info,openraft=warn"). Not empty.
log_level = "info"

# Log line format on stderr: "text" (human-readable) or "json" (one JSON object per line).
log_format = "text"

# Where the access log of listeners with `access_log = true` (cluster config) goes: "stdout",
# a file path (created if missing, appended to; at most 4096 bytes), or "off" for none on this node.
access_log = "stdout"

# Raft heartbeat interval, milliseconds, {hb_lo}..={hb_hi}. With openraft 0.9 a leader's crash is
# detected after election_max_ms (its lease) plus the election timeout each node draws once in
# election_min_ms..election_max_ms; a follower that misses every heartbeat for election_min_ms +
# election_max_ms campaigns against a live leader.
heartbeat_ms = {heartbeat}

# Lower bound of the election timeout, milliseconds: above heartbeat_ms, at most {MAX_ELECTION_MS}.
election_min_ms = {election_min}

# Upper bound of the election timeout, milliseconds: above election_min_ms, at most {MAX_ELECTION_MS}.
election_max_ms = {election_max}

# Take a snapshot after this many log entries since the last one, {snap_lo}..={snap_hi}.
snapshot_logs = {snapshot}

# How long a write waits for commitment before "no quorum" is answered, milliseconds,
# {write_lo}..={write_hi}.
write_timeout_ms = {DEFAULT_WRITE_TIMEOUT_MS}

# Worker threads of the data plane's own runtime (the proxies), {threads_lo}..={threads_hi}.
# Default: the number of CPUs (at most {threads_hi}).
# dataplane_threads = 2

# Idle HTTP connections each listener keeps to each backend for later requests (the oldest is
# closed beyond it; none is kept idle longer than 30 s), {idle_lo}..={idle_hi}; 0 keeps none.
upstream_idle_per_backend = {DEFAULT_UPSTREAM_IDLE}

# The cluster CA's certificate (PEM); every peer's certificate must chain to it. Required, no
# default (make the CA and the node certificates with `lbctl ca init --dir DIR --nodes N`).
ca_file = "/etc/lbfleet/ca.pem"

# This node's certificate (PEM) from the cluster CA, naming node-<id>.lbfleet. Required, no default.
cert_file = "/etc/lbfleet/node-1.pem"

# This node's private key (PEM). Required, no default.
key_file = "/etc/lbfleet/node-1.key"

# The operators' tokens, hashed (`[[token]]` entries with name, role and sha256; `lbctl ca init`
# writes tokens.toml). Default: none, and then only cluster nodes may call the admin API.
# tokens_file = "/etc/lbfleet/tokens.toml"

# Most open gRPC connections, 1..={MAX_CONNECTIONS_CAP}; further ones wait in the accept queue.
grpc_max_connections = {grpc_max}

# Most open admin HTTP connections, 1..={MAX_CONNECTIONS_CAP}; further ones wait in the accept queue.
admin_http_max_connections = {http_max}

# The virtual IP of the front: TCP and HTTP listeners accept on it too (they bind the wildcard
# address), UDP listeners bind a second socket on it (replies leave from the VIP), and the BGP
# speaker announces it while this node can serve. A unicast address (not unspecified, multicast or
# loopback). Default: none.
# vip = "172.28.1.1"

# Add the VIP (/32 or /128) to the loopback interface at start (needs CAP_NET_ADMIN and a vip).
vip_loopback = false

# The BGP speaker (BIRD 2's `bird`, an absolute path) run beside this node as its child; needs
# bgp_config and a vip. Default: none.
# bgp_speaker = "/usr/sbin/bird"

# The speaker's config; it must define the static protocol `lbfleet_vip`, disabled at start. Needs
# bgp_speaker. Default: none.
# bgp_config = "/etc/bird/node.conf"

# BIRD's control socket, through which the VIP is announced and withdrawn; 1..={MAX_SOCKET_PATH} bytes,
# needs a vip. Default: <data_dir>/bird.ctl when bgp_speaker is set, else none.
# bgp_socket = "/run/bird/bird.ctl"

# How long the node keeps accepting after it withdrew the VIP at shutdown, milliseconds,
# {grace_lo}..={grace_hi}.
bgp_withdraw_grace_ms = {DEFAULT_WITHDRAW_GRACE_MS}

# Scale hooks, by name (file only, never flags): the commands the leader may run for a pool's
# scale_out_hook / scale_in_hook. At most {MAX_HOOKS}; a name is 1 to {name_len} of A-Z a-z 0-9 - _ .
# `command`: the program (an absolute path) and its arguments, run without a shell, at most
# {MAX_HOOK_ARGS} arguments of at most {MAX_HOOK_ARG_LEN} bytes each, with LBFLEET_POOL and LBFLEET_BACKEND
# set. `timeout`: {hook_min}..={hook_max}, default {hook_default}. Default: no hooks.
# [hooks.add-web]
# command = ["/usr/local/bin/add-backend", "--pool", "web"]
# timeout = "{hook_default}"
"#,
        hb_lo = hb.start(),
        hb_hi = hb.end(),
        heartbeat = d.heartbeat_ms,
        election_min = d.election_min_ms,
        election_max = d.election_max_ms,
        snap_lo = snap.start(),
        snap_hi = snap.end(),
        snapshot = d.snapshot_logs,
        write_lo = write.start(),
        write_hi = write.end(),
        threads_lo = threads.start(),
        threads_hi = threads.end(),
        grace_lo = grace.start(),
        grace_hi = grace.end(),
        name_len = lbfleet_api::config::MAX_NAME_LEN,
    )
}
