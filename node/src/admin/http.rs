//! The admin HTTP server (hyper 1; HTTP/1.1 and HTTP/2 on one port):
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok <role>` while the node serves |
//! | `GET /api/v1/state` | JSON: node id, role, leader, term, applied index, config version, config, backends, nodes, ring digest, this node's `local_health`, committed `health_votes` |
//! | `GET /metrics` | Prometheus / OpenMetrics text (see [`super::metrics`]) |
//! | `GET /api/v1/cluster` | JSON: the whole cluster as the dashboard shows it, gathered from every member (see [`super::dashboard`]) |
//! | `GET /` | a self-contained HTML dashboard (assets in the binary) that polls `/api/v1/cluster` |
//!
//! `/healthz` and `/metrics` are open; `/api/v1/state`, `/api/v1/cluster` and the dashboard need an operator token (any
//! role): `Authorization: Bearer <token>`, or once from a browser `/?token=<token>`, which answers with a
//! redirect that stores the token in an HttpOnly, SameSite=Strict cookie (see [`crate::auth::http_auth`]);
//! without one the answer is `401` naming what is missing.
//!
//! Any other path is `404`; another method on a known path is `405`; a request with a body over
//! [`limits::ADMIN_HTTP_MAX_BODY_BYTES`] is `413`. Everything is answered from this node's local
//! view, without contacting other nodes, except `/api/v1/cluster`, which asks every other member
//! (each bounded by `STATUS_TIMEOUT`, all at once).
//!
//! Connections come from [`Acceptor`] (a connection cap, back-off when out of descriptors); each
//! is bounded by a header read timeout (HTTP/1), an idle timeout (no bytes either way, both
//! protocols: also a client that never sends anything) and size limits, see `crate::limits`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use lbfleet_api::state::ClusterState;
use serde_json::json;

use lbfleet_api::view::{backend_views, Member, NodeStatus as LocalView};

use crate::accept::Acceptor;
use crate::auth::{http_auth, HttpAuth, TOKEN_COOKIE};
use crate::balance::Routing;
use crate::cluster::Cluster;
use crate::limits;
use crate::proxy::counters::GaugeSources;
use crate::proxy::http::activity::{Activity, IdleIo};
use crate::proxy::listeners::ListenerStatus;
use crate::shutdown::Shutdown;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serve until `shutdown` becomes true, then let open connections finish (at most 2 s). The
/// connection cap, header and idle timeouts and size limits are `crate::limits`' `ADMIN_HTTP_*`.
pub async fn serve(mut acceptor: Acceptor, cluster: Cluster, mut shutdown: Shutdown) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits::ADMIN_HTTP_HEADER_TIMEOUT)
        .max_buf_size(limits::ADMIN_HTTP_MAX_HEADER_BYTES)
        .max_headers(limits::ADMIN_HTTP_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits::ADMIN_HTTP_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(limits::ADMIN_HTTP_MAX_HEADER_BYTES as u32);
    loop {
        tokio::select! {
            (conn, peer) = acceptor.accept() => {
                let cluster = cluster.clone();
                let service = hyper::service::service_fn(move |req| {
                    let answer = match body_too_large(&req) {
                        Some(r) => Answer::Now(r),
                        None => handle(&cluster, &req),
                    };
                    let cluster = cluster.clone();
                    async move {
                        Ok::<_, Infallible>(match answer {
                            Answer::Now(r) => r,
                            Answer::Cluster => {
                                let doc = super::dashboard::cluster_json(&cluster).await;
                                text(StatusCode::OK, "application/json", format!("{doc:#}\n"))
                            }
                        })
                    }
                });
                let activity = Arc::new(Activity::default());
                let io = TokioIo::new(IdleIo::new(conn, Arc::clone(&activity)));
                let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
                tokio::spawn(async move {
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(%peer, "admin HTTP connection ended with an error: {e}");
                        },
                        _ = activity.idle_for(limits::ADMIN_HTTP_IDLE_TIMEOUT) => {
                            tracing::debug!(%peer, "admin HTTP connection idle for {:?}; closed",
                                limits::ADMIN_HTTP_IDLE_TIMEOUT);
                        }
                    }
                });
            }
            _ = shutdown.wait() => break,
        }
    }
    drop(acceptor);
    if tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await.is_err() {
        tracing::warn!("admin HTTP connections still open after 2s; closing them");
    }
}

/// `413` for a request announcing a body above [`limits::ADMIN_HTTP_MAX_BODY_BYTES`], or one of
/// unknown length (every path is read-only; the body is never read). The connection is closed.
fn body_too_large<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let length =
        req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|t| t.parse::<u64>().ok()));
    let too_large = match length {
        Some(Some(n)) => n > limits::ADMIN_HTTP_MAX_BODY_BYTES,
        Some(None) => true,
        None => req.headers().contains_key(TRANSFER_ENCODING),
    };
    if !too_large {
        return None;
    }
    let mut r = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        "text/plain; charset=utf-8",
        format!("request bodies are limited to {} bytes here\n", limits::ADMIN_HTTP_MAX_BODY_BYTES),
    );
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// What to answer: now, or the cluster document (which asks the other members first).
enum Answer {
    Now(Response<Full<Bytes>>),
    Cluster,
}

fn handle(cluster: &Cluster, req: &Request<Incoming>) -> Answer {
    let path = req.uri().path();
    let known =
        matches!(path, "/" | "/index.html" | "/healthz" | "/api/v1/state" | "/api/v1/cluster" | "/metrics");
    if !known {
        return Answer::Now(text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found: {path}\n"),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            format!("{} is read-only\n", path),
        );
        r.headers_mut().insert("allow", HeaderValue::from_static("GET, HEAD"));
        return Answer::Now(r);
    }
    if matches!(path, "/" | "/index.html" | "/api/v1/state" | "/api/v1/cluster") {
        if let Some(refusal) = needs_token(cluster, req) {
            return Answer::Now(refusal);
        }
    }
    if path == "/api/v1/cluster" {
        return Answer::Cluster;
    }
    let view = cluster.local_view();
    Answer::Now(match path {
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", format!("ok {}\n", view.role)),
        "/api/v1/state" => {
            let metrics = cluster.raft.metrics();
            let routing = cluster.dataplane.routing.load();
            let model = cluster.raft.model();
            let mut body =
                state_json(&view, &model, &crate::raft::handle::members(&metrics.membership_config));
            add_dataplane(&mut body, &routing, &cluster.listener_statuses());
            body["local_health"] = json!(cluster.dataplane.outlier.snapshot());
            body["health_votes"] = crate::health::committed_votes_json(&model);
            text(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        "/metrics" => {
            let backends = backend_views(&cluster.raft.model());
            let healthy = backends.iter().filter(|b| b.healthy).count();
            let raft = super::metrics::RaftExtra {
                voters: cluster.raft.metrics().membership_config.membership().voter_ids().count(),
                committed_index: cluster.raft.committed_index(),
                drained: cluster.drain.is_drained(),
            };
            let routing = cluster.dataplane.routing.load();
            let listeners = cluster.listener_statuses();
            let dataplane = super::metrics::Dataplane {
                counters: &cluster.dataplane.metrics,
                gauges: GaugeSources {
                    routing: &routing,
                    backends: &backends,
                    outlier: &cluster.dataplane.outlier,
                    listeners: &listeners,
                },
            };
            text(
                StatusCode::OK,
                super::metrics::CONTENT_TYPE,
                super::metrics::render(&view, &raft, backends.len(), healthy, &dataplane),
            )
        }
        _ => text(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.to_string()),
    })
}

/// `None` when the request carries a valid token; else the answer: a redirect that stores a token
/// given in the query as an HttpOnly cookie, or `401` naming what is missing.
fn needs_token(cluster: &Cluster, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let why = match http_auth(req.headers(), req.uri().query(), &cluster.tokens) {
        HttpAuth::Ok => return None,
        HttpAuth::SetCookie(token) => {
            let mut r = text(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "token accepted\n".into());
            let cookie = format!("{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert("set-cookie", v);
            }
            let location = HeaderValue::from_str(req.uri().path()).unwrap_or(HeaderValue::from_static("/"));
            r.headers_mut().insert("location", location);
            return Some(r);
        }
        HttpAuth::Missing => {
            "missing token: this page needs a token with the read role: send `Authorization: Bearer <token>`, \
             or open /?token=<token> once in a browser"
        }
        HttpAuth::Invalid => "the token is not valid for this cluster",
    };
    let mut r = text(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", format!("{why}\n"));
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"lbfleet\""));
    Some(r)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// The `/api/v1/state` document.
pub fn state_json(view: &LocalView, state: &ClusterState, nodes: &[Member]) -> serde_json::Value {
    json!({
        "node_id": view.id,
        "addr": view.addr,
        "http_addr": view.http_addr,
        "role": view.role,
        "voter": view.voter,
        "leader": view.leader,
        "term": view.term,
        "applied_index": view.applied_index,
        "last_log_index": view.last_log_index,
        "snapshot_index": view.snapshot_index,
        "purged_index": view.purged_index,
        "config_version": view.config_version,
        "ring_digest": view.ring_digest,
        "config": state.config,
        "backends": backend_views(state),
        "nodes": nodes,
    })
}

/// The data plane's part of `/api/v1/state`: per-pool digests and eligible backends, listeners.
pub fn add_dataplane(doc: &mut serde_json::Value, routing: &Routing, listeners: &[ListenerStatus]) {
    let pools: serde_json::Map<String, serde_json::Value> = routing
        .pool_digests()
        .into_iter()
        .map(|(name, digest)| {
            let sel = routing.pool(name);
            let eligible: Vec<String> =
                sel.map(|p| p.backends().iter().map(|b| b.key().to_string()).collect()).unwrap_or_default();
            let policy = sel.map(|p| p.policy().as_str()).unwrap_or("unknown");
            (name.to_string(), json!({ "digest": digest, "policy": policy, "eligible": eligible }))
        })
        .collect();
    doc["routing_index"] = json!(routing.applied_index());
    doc["pools"] = serde_json::Value::Object(pools);
    doc["listeners"] = json!(listeners);
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};

    #[test]
    fn state_json_has_the_documented_fields() {
        let mut state = ClusterState::default();
        let config = parse(
            "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n",
            Format::Toml,
        )
        .unwrap();
        state.apply(&Command::ApplyConfig { config }, 1);
        let view = LocalView {
            id: 1,
            addr: "127.0.0.11:7400".into(),
            http_addr: "127.0.0.11:7401".into(),
            role: "leader".into(),
            reachable: true,
            error: None,
            term: 2,
            leader: Some(1),
            applied_index: 5,
            last_log_index: 5,
            snapshot_index: 0,
            purged_index: 0,
            voter: true,
            config_version: 1,
            ring_digest: "abc".into(),
            down: false,
            drained: false,
        };
        let nodes =
            vec![Member { id: 1, addr: view.addr.clone(), http_addr: view.http_addr.clone(), voter: true }];
        let v = state_json(&view, &state, &nodes);
        assert_eq!(v["node_id"], 1);
        assert_eq!(v["role"], "leader");
        assert_eq!(v["leader"], 1);
        assert_eq!(v["config"]["pool"][0]["name"], "web");
        assert_eq!(v["backends"][0]["addr"], "127.0.0.1:9001");
        assert_eq!(v["backends"][0]["healthy"], true);
        assert_eq!(v["nodes"][0]["voter"], true);
        assert_eq!(v["ring_digest"], "abc");
    }

    #[test]
    fn the_dashboard_is_self_contained() {
        assert!(DASHBOARD.contains("/api/v1/cluster"));
        assert!(!DASHBOARD.contains("http://") && !DASHBOARD.contains("https://"), "no external assets");
    }
}
