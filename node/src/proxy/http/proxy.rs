//! One proxied request: route, pick, connect, send, answer.
//!
//! Retries (bounded by [`MAX_ATTEMPTS`] tries in all):
//! - a backend that cannot be connected to (refused, timed out) is skipped for the next one of the
//!   pool's fallback sequence: nothing reached it, and the request is still whole, body included;
//! - a request that a pooled connection gives back unsent (it closed before the request was written) is
//!   sent again on a new connection to the same backend;
//! - an idempotent request without a body (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose pooled connection
//!   failed before a response head arrived is sent once more on a new connection to the same backend
//!   (the backend may have closed an idle keep-alive connection just as the request went out);
//! - nothing else: any other failure answers 502, a response head later than `upstream_response` after
//!   the request was sent in full answers 504.
//!
//! Before anything else, a request passes [`super::guard::check_head`] (limits, `Host`, framing); a
//! refused one is answered 4xx/501, counted by reason and, on HTTP/1, its connection closed. A request
//! body that fails on the client's side while it is forwarded (a bad chunk, more than `max_body`) is
//! answered 400 or 413, not 502, and the backend's connection is closed with the request unfinished.
//! Before any of that, the listener's rate limit and then the matched route's each take a token (from
//! the client IP's bucket, or the one bucket of the listener or route; see [`crate::proxy::admission`]);
//! without one the answer is `429` with `Retry-After`
//! (whole seconds until a token is there, at least 1). A pool's `max_connections_per_backend` limits
//! the requests in flight from this node to each of its backends (each holds one upstream connection
//! for its whole exchange, HTTP/1.1 to backends; idle pooled connections do not count): a backend at
//! its limit is skipped for the next of the fallback sequence, and when every candidate is at its
//! limit the answer is `503` naming them.
//!
//! Answers of the proxy itself carry a short `text/plain` body naming the reason, and `x-lbfleet-node`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use super::activity::{Activity, TaskGuard};
use super::body::{BodyFault, FaultCell, Finish, Release, ReqBody, RespBody, Tracked, UpstreamBody};
use super::guard::{self, Refusal};
use super::headers::{
    add_forwarding_as, add_via, cookie, request_host, requested_upgrade, sticky_set_cookie, strip_hop_by_hop,
};
use super::upstream::{BackendTls, Pooled};
use super::{ConnInfo, Shared};
use crate::balance::key::{candidates, request_key, route_index, sticky_backend};
use crate::balance::{BackendHandle, InFlight};
use crate::proxy::access_log::{bounded_path, AccessLog, Entry, HttpFields};
use crate::proxy::counters::{AddrLabel, DataplaneMetrics, Name, RequestLabels};
use crate::shutdown::Shutdown;

/// Most backend attempts per request (connect failures and retries together).
pub const MAX_ATTEMPTS: usize = 3;

/// Answer a request of a client connection, and count the answer and its duration (from here, where
/// the request head has been received, to the response head handed back to the connection).
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: &ConnInfo,
    shared: &Shared,
) -> Response<Tracked<Exchange>> {
    let started = Instant::now();
    let time = std::time::SystemTime::now();
    let mut seen = Seen::default();
    let resp = respond(req, conn, shared, &mut seen).await;
    let status = resp.status().as_u16();
    let labels = RequestLabels {
        listener: Name(Arc::clone(&shared.label)),
        pool: seen.pool,
        backend: AddrLabel(seen.backend),
    };
    shared.ctx.metrics.http_response(&labels, status, started.elapsed());
    if let Some(reason) = seen.refused {
        shared.ctx.metrics.http_refused(&shared.name, reason);
    }
    let log = match (seen.log.take(), &shared.ctx.access_log) {
        (Some((method, path)), Some(sink)) => Some(Box::new(PendingLog {
            sink: Arc::clone(sink),
            time,
            started,
            client: conn.peer,
            fields: HttpFields {
                method,
                path,
                status,
                backend_head: seen.backend_head.map(|t| t.saturating_duration_since(started).as_secs_f64()),
                retries: seen.retries,
                complete: false,
                tls_version: conn.tls.as_ref().and_then(|t| t.version),
                tls_sni: conn.tls.as_ref().and_then(|t| t.sni.clone()),
            },
        })),
        _ => None,
    };
    let exchange =
        Exchange { metrics: Arc::clone(&shared.ctx.metrics), labels, request_body: seen.body, log };
    resp.map(|body| Tracked::new(body, exchange))
}

/// An access log entry waiting for its response body to end.
pub(crate) struct PendingLog {
    sink: Arc<AccessLog>,
    time: std::time::SystemTime,
    started: Instant,
    client: SocketAddr,
    fields: HttpFields,
}

/// One request and its response, once the response body has gone to the client: its bytes counted.
pub(crate) struct Exchange {
    metrics: Arc<DataplaneMetrics>,
    labels: RequestLabels,
    /// The request body forwarded to a backend, if one was.
    request_body: Option<FaultCell>,
    /// The listener logs its requests.
    log: Option<Box<PendingLog>>,
}

impl Finish for Exchange {
    fn done(self, sent: u64, complete: bool) {
        let received = self.request_body.as_ref().map_or(0, |b| b.read());
        self.metrics.traffic(&self.labels, received, sent);
        if let Some(log) = self.log {
            let PendingLog { sink, time, started, client, mut fields } = *log;
            fields.complete = complete;
            sink.send(Entry {
                time,
                kind: "http",
                client,
                listener: self.labels.listener.0,
                pool: self.labels.pool.map(|p| p.0),
                backend: self.labels.backend.0,
                bytes_in: received,
                bytes_out: sent,
                duration: started.elapsed().as_secs_f64(),
                http: Some(fields),
            });
        }
    }
}

/// Which pool and backend a request went to, for the counters.
#[derive(Default)]
struct Seen {
    /// `None` until a pool is chosen.
    pool: Option<Name>,
    /// The backend that answered, or whose failure (502, 504) the proxy answered for.
    backend: Option<SocketAddr>,
    /// Why the proxy refused the request, if it did (the `reason` of `lbfleet_http_refused_total`).
    refused: Option<&'static str>,
    /// The request body as forwarded, to count its bytes.
    body: Option<FaultCell>,
    /// Backend attempts after the first.
    retries: u32,
    /// When the backend's response head arrived.
    backend_head: Option<Instant>,
    /// Method and (bounded) path, when the listener logs its requests.
    log: Option<(String, String)>,
}

impl Seen {
    /// Answer `r` to a request the proxy refuses.
    fn refuse(&mut self, r: Refusal, version: Version, node: &HeaderValue) -> Response<RespBody> {
        self.refused = Some(r.reason);
        refuse(r.status, r.message, node, version)
    }
}

async fn respond(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    shared: &Shared,
    seen: &mut Seen,
) -> Response<RespBody> {
    let node = &shared.node_header;
    let routing = shared.ctx.routing.load();
    let Some(listener) = routing.listener(&shared.name).cloned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("listener \"{}\" removed", shared.name), node);
    };
    let version = req.version();
    if listener.access_log && shared.ctx.access_log.is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        seen.log = Some((req.method().as_str().to_string(), bounded_path(path)));
    }
    let live_nodes = routing.live_nodes();
    let now = std::time::Instant::now();
    let listener_rate = listener.admission.as_ref().and_then(|l| l.rate_limit.as_ref());
    if let Err(l) = shared.admission.take_listener(listener_rate, live_nodes, conn.peer.ip(), now) {
        shared.ctx.metrics.rate_limited(&shared.name, None);
        return too_many(l.reason(&format!("listener \"{}\"", shared.name)), l.wait, node);
    }
    if req.method() == Method::CONNECT {
        let r = Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "connect", "CONNECT is not supported");
        return seen.refuse(r, version, node);
    }
    let limits = listener.limits.clamped();
    if let Err(r) = guard::check_head(req.method(), req.uri(), version, req.headers(), &limits) {
        tracing::debug!(peer = %conn.peer, listener = %shared.name, reason = r.reason, "refused: {}", r.message);
        return seen.refuse(r, version, node);
    }
    let host: Option<String> = request_host(req.uri(), req.headers()).map(str::to_owned);
    let route = route_index(&listener, host.as_deref(), req.uri().path());
    let route_rate = route.and_then(|i| listener.route[i].rate_limit.as_ref());
    if let Some(i) = route {
        if let Err(l) = shared.admission.take_route(i, route_rate, live_nodes, conn.peer.ip(), now) {
            shared.ctx.metrics.rate_limited(&shared.name, Some(i + 1));
            return too_many(
                l.reason(&format!("route {} of listener \"{}\"", i + 1, shared.name)),
                l.wait,
                node,
            );
        }
    }
    let pool_name = route.map_or(listener.pool.as_str(), |i| listener.route[i].pool.as_str());
    let pool_label = Name(routing.pool_label(pool_name));
    seen.pool = Some(pool_label.clone());
    let Some(selector) = routing.pool(pool_name).cloned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("unknown pool \"{pool_name}\""), node);
    };
    let pool_cfg = routing.pool_config(pool_name).cloned();
    drop(routing);
    if selector.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy backend in pool \"{pool_name}\""),
            node,
        );
    }
    let key = match &pool_cfg {
        Some(p) if selector.uses_key() => {
            request_key(&p.hash_key, req.headers(), req.uri().path(), conn.peer)
        }
        _ => 0,
    };
    let sticky_name = pool_cfg.as_ref().and_then(|p| p.sticky_cookie.as_deref());
    // Node-local usability (this node's active check, passive ejection): see `crate::health`.
    let outlier = &shared.ctx.outlier;
    let named = sticky_name
        .and_then(|name| cookie(req.headers(), name))
        .and_then(|value| sticky_backend(&selector, value));
    // The circuit limit: backends at it are left out of the candidates (a hint; `try_track` decides).
    let max_per_backend = pool_cfg.as_ref().and_then(|p| p.max_connections_per_backend);
    let room = |b: &BackendHandle| b.has_room(max_per_backend);
    let sticky = named.filter(|b| outlier.usable_in(pool_name)(b) && room(b));
    let had_sticky = sticky.map(|b| b.addr());
    let mut usable = outlier.usable_in(pool_name);
    let metrics = &shared.ctx.metrics;
    let mut cands = candidates(&selector, key, sticky, MAX_ATTEMPTS, |b| {
        usable(b) && {
            let ok = room(b);
            if !ok {
                metrics.backend_at_limit(pool_name, b.addr());
            }
            ok
        }
    });
    if cands.is_empty() {
        // Every eligible backend is unusable on this node: use the fleet-wide set rather than refuse.
        cands = candidates(&selector, key, named.filter(|b| room(b)), MAX_ATTEMPTS, room);
    }
    if cands.is_empty() && max_per_backend.is_some() {
        let full = candidates(&selector, key, named, MAX_ATTEMPTS, |_| true);
        if !full.is_empty() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                all_at_limit(pool_name, &full, max_per_backend),
                node,
            );
        }
    }
    if cands.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no usable backend in pool \"{pool_name}\""),
            node,
        );
    }
    // The cookie is (re)set whenever the backend that answers is not the one the request named.
    let set_cookie = |resp: &mut Response<RespBody>, answered: SocketAddr| {
        if let Some(name) = sticky_name {
            if had_sticky != Some(answered) {
                if let Some(v) = sticky_set_cookie(name, &answered.to_string()) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
        }
    };

    if listener.redirect {
        let target = cands[0].addr();
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("http://{target}{pq}");
        let mut resp = text(StatusCode::TEMPORARY_REDIRECT, format!("redirecting to {location}"), node);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        set_cookie(&mut resp, target);
        return resp;
    }

    // The request as it goes to a backend.
    let upgrade = requested_upgrade(req.version(), req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let had_te = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let length = guard::content_length(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if had_te {
        // The body is re-framed (chunked) on the way out; a length sent alongside must not survive
        // (the guard refuses both together; this is the second line).
        parts.headers.remove(header::CONTENT_LENGTH);
    } else if let Some(n) = length {
        // One length goes out, whatever the client's line looked like.
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    add_forwarding_as(&mut parts.headers, conn.peer.ip(), host.as_deref(), parts.version, conn.scheme);
    match host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => {
            if parts.uri.authority().is_some() || !parts.headers.contains_key(header::HOST) {
                parts.headers.insert(header::HOST, h);
            }
        }
        // An HTTP/1.0 request without a host: backends are spoken to in HTTP/1.1, which needs one; the
        // address the client connected to is the authority it used.
        None => {
            if let Some(local) = &shared.local_host {
                parts.headers.insert(header::HOST, local.clone());
            }
        }
    }
    if let Some(up) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, up.clone());
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    let replayable = is_idempotent(&parts.method) && hyper::body::Body::is_end_stream(&body);
    let body = if replayable { ReqBody::empty() } else { ReqBody::new(body, limits.max_body) };
    let fault = body.fault();
    seen.body = Some(Arc::clone(&fault));
    let mut pending = Some(Request::from_parts(parts, body));

    let timeouts = listener.timeouts.clamped();
    let backend_tls = match shared.ctx.tls.client(pool_name) {
        None => None,
        Some(Ok((config, server_name))) => Some(BackendTls { config, server_name }),
        Some(Err(e)) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("pool \"{pool_name}\": backend TLS is not usable on this node: {e}"),
                node,
            );
        }
    };
    let mut connect_errors: Vec<String> = Vec::new();
    // A backend that was reached but failed its TLS handshake (a certificate the pool's CA did not
    // sign, a wrong name) answers 502, not 503: it is there, and wrong.
    let mut tls_failed = false;
    let mut at_limit: Vec<Arc<BackendHandle>> = Vec::new();
    let mut idx = 0;
    let mut fresh = false;
    let mut replayed = false;
    let listener_label = Name(Arc::clone(&shared.label));
    // Why the next attempt is made, once one failed (counted when it starts).
    let mut retry: Option<&'static str> = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some(backend) = cands.get(idx) else { break };
        let Some(request) = pending.take() else { break };
        // Counted from before the connect, so connecting requests count against the limit too.
        let Some(inflight) = backend.try_track(max_per_backend) else {
            shared.ctx.metrics.backend_at_limit(pool_name, backend.addr());
            at_limit.push(Arc::clone(backend));
            pending = Some(request);
            idx += 1;
            fresh = false;
            continue;
        };
        if let Some(reason) = retry.take() {
            shared.ctx.metrics.retry(&listener_label, &pool_label, reason);
            seen.retries += 1;
        }
        let acquired = shared
            .upstreams
            .acquire_with(backend.addr(), timeouts.connect, fresh, backend_tls.as_ref())
            .await;
        let mut up = match acquired {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(backend = %backend.addr(), pool = pool_name, "{e}");
                tls_failed |= matches!(e, super::upstream::ConnectError::Tls(_));
                outlier.record_connect_failure(pool_name, backend.addr());
                shared.ctx.metrics.connect_failure(pool_name, backend.addr());
                connect_errors.push(format!("{}: {e}", backend.addr()));
                retry = Some("connect_failure");
                pending = Some(request);
                idx += 1;
                fresh = false;
                continue;
            }
        };
        let replay = (up.reused && replayable && !replayed).then(|| copy_head(&request));
        match send(&mut up.sender, request, &conn.activity, timeouts.upstream_response).await {
            Ok(resp) => {
                seen.backend_head = Some(Instant::now());
                let answered = up.addr;
                seen.backend = Some(answered);
                outlier.record_response(pool_name, answered, resp.status().as_u16());
                let mut resp = match client_upgrade {
                    Some(client_up) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        tunnel_response(resp, client_up, up, inflight, conn, shared)
                    }
                    _ if resp.status() == StatusCode::SWITCHING_PROTOCOLS => text(
                        StatusCode::BAD_GATEWAY,
                        format!("backend {answered} switched protocols without being asked"),
                        node,
                    ),
                    _ => forward_response(resp, up, inflight, shared),
                };
                set_cookie(&mut resp, answered);
                return resp;
            }
            Err(SendError::Unsent(back)) => {
                tracing::debug!(backend = %backend.addr(), "pooled connection closed before the request was written");
                pending = Some(*back);
                fresh = true;
                retry = Some("closed_unsent");
            }
            Err(SendError::Timeout) => {
                // Counts as the 504 the client gets.
                seen.backend = Some(backend.addr());
                outlier.record_response(pool_name, backend.addr(), 504);
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "backend {} did not answer within {}",
                        backend.addr(),
                        humantime::format_duration(timeouts.upstream_response)
                    ),
                    node,
                );
            }
            // The client's body failed: its fault, told apart from a backend's failure.
            Err(SendError::Failed(e)) if fault.fault().is_some() => {
                let r = body_refusal(fault.fault());
                tracing::debug!(peer = %conn.peer, backend = %backend.addr(), "{}; backend request aborted: {e}", r.message);
                return seen.refuse(r, version, node);
            }
            Err(SendError::Failed(e)) => match replay {
                Some(again) => {
                    tracing::debug!(backend = %backend.addr(), "pooled connection failed ({e}); retrying once");
                    replayed = true;
                    pending = Some(again);
                    fresh = true;
                    retry = Some("replay");
                }
                None => {
                    // Counts as the 502 the client gets.
                    seen.backend = Some(backend.addr());
                    outlier.record_response(pool_name, backend.addr(), 502);
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("backend {} failed before answering: {e}", backend.addr()),
                        node,
                    );
                }
            },
        }
    }
    let reason = if connect_errors.is_empty() && !at_limit.is_empty() {
        all_at_limit(pool_name, &at_limit, max_per_backend)
    } else if connect_errors.is_empty() {
        format!("no backend of pool \"{pool_name}\" answered after {MAX_ATTEMPTS} attempts")
    } else {
        connect_errors.extend(at_limit.iter().map(|b| at_limit_text(b, max_per_backend)));
        format!("no backend of pool \"{pool_name}\" could be reached: {}", connect_errors.join("; "))
    };
    let status = if tls_failed { StatusCode::BAD_GATEWAY } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, reason, node)
}

/// The answer to a request whose body failed on the client's side.
fn body_refusal(fault: Option<&BodyFault>) -> Refusal {
    match fault {
        Some(BodyFault::TooLarge(max)) => Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body above the limit of {max} bytes"),
        ),
        Some(BodyFault::Client(why)) => {
            Refusal::new(StatusCode::BAD_REQUEST, "bad_body", format!("bad request body: {why}"))
        }
        None => Refusal::new(StatusCode::BAD_REQUEST, "bad_body", "bad request body"),
    }
}

enum SendError {
    /// The connection closed before the request was written; here it is, untouched.
    Unsent(Box<Request<ReqBody>>),
    /// No response head within the upstream response timeout.
    Timeout,
    Failed(hyper::Error),
}

/// Send `req` and wait for the response head: without limit while the request body is still being sent
/// (the client idle timeout bounds a stalled upload), then at most `timeout`.
async fn send(
    sender: &mut SendRequest<ReqBody>,
    mut req: Request<ReqBody>,
    activity: &Arc<Activity>,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    let sent: oneshot::Receiver<()> = req.body_mut().sent_signal();
    let fut = sender.try_send_request(req);
    tokio::pin!(fut);
    tokio::pin!(sent);
    let early = tokio::select! {
        biased;
        r = &mut fut => Some(r),
        _ = &mut sent => None,
    };
    let r = match early {
        Some(r) => r,
        None => {
            let _waiting = activity.waiting();
            match tokio::time::timeout(timeout, &mut fut).await {
                Ok(r) => r,
                Err(_) => return Err(SendError::Timeout),
            }
        }
    };
    r.map_err(|mut e| match e.take_message() {
        Some(req) => SendError::Unsent(Box::new(req)),
        None => SendError::Failed(e.into_error()),
    })
}

/// A backend's response on its way to the client: hop-by-hop headers out, `Via` and the node in.
fn forward_response(
    resp: Response<Incoming>,
    conn: Pooled,
    inflight: InFlight,
    shared: &Shared,
) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, parts.version);
    parts.headers.insert("x-lbfleet-node", shared.node_header.clone());
    let release = Release { upstreams: Arc::clone(&shared.upstreams), conn, inflight };
    Response::from_parts(parts, RespBody::Upstream(UpstreamBody::new(body, release)))
}

/// A backend's 101 answer to an upgrade: pass it on, and once both sides have switched, splice the two
/// connections until either closes, the client connection is idle too long, or shutdown forces it.
fn tunnel_response(
    mut resp: Response<Incoming>,
    client_up: OnUpgrade,
    conn: Pooled,
    inflight: InFlight,
    client: &ConnInfo,
    shared: &Shared,
) -> Response<RespBody> {
    let backend_up = hyper::upgrade::on(&mut resp);
    let upgrade_to = resp.headers().get(header::UPGRADE).cloned();
    let (mut parts, _body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, parts.version);
    parts.headers.insert("x-lbfleet-node", shared.node_header.clone());
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade_to {
        parts.headers.insert(header::UPGRADE, u);
    }
    let guard = shared.tasks.enter();
    let activity = Arc::clone(&client.activity);
    let idle = client.idle;
    let force = shared.force.clone();
    let addr = conn.addr;
    tokio::spawn(splice(client_up, backend_up, addr, activity, idle, force, (guard, inflight, conn)));
    Response::from_parts(parts, RespBody::empty())
}

async fn splice(
    client_up: OnUpgrade,
    backend_up: OnUpgrade,
    backend: SocketAddr,
    activity: Arc<Activity>,
    idle: Duration,
    mut force: Shutdown,
    _held: (TaskGuard, InFlight, Pooled),
) {
    let (c, b) = match tokio::try_join!(client_up, backend_up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%backend, "upgrade did not complete: {e}");
            return;
        }
    };
    let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(%backend, "tunnel ended: {e}");
            }
        }
        _ = activity.idle_for(idle) => tracing::debug!(%backend, "tunnel idle for {idle:?}; closed"),
        _ = force.wait() => {}
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: repeating them has the effect of sending them once.
fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// A copy of a bodiless request, to send it again.
fn copy_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut r = Request::new(ReqBody::empty());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// `uri` in origin form (`/path?query`), as an HTTP/1.1 request to a backend carries it.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(_) if uri.authority().is_none() && uri.scheme().is_none() => uri.clone(),
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// An answer of the proxy itself: a short text naming the reason.
pub fn text(status: StatusCode, reason: String, node: &HeaderValue) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::text(format!("{reason}\n")));
    *resp.status_mut() = status;
    let h: &mut HeaderMap = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("x-lbfleet-node", node.clone());
    resp
}

/// `backend 127.0.0.1:9001 at its connection limit 2`.
fn at_limit_text(b: &BackendHandle, max: Option<u32>) -> String {
    format!("backend {} at its connection limit {}", b.addr(), max.unwrap_or(0))
}

/// The 503 reason when every backend tried was at its connection limit.
fn all_at_limit(pool: &str, full: &[Arc<BackendHandle>], max: Option<u32>) -> String {
    let each: Vec<String> = full.iter().map(|b| at_limit_text(b, max)).collect();
    format!("no backend of pool \"{pool}\" has room: {}", each.join("; "))
}

/// `429 Too Many Requests` with `Retry-After`: whole seconds until `wait` is over, at least 1.
fn too_many(reason: String, wait: Duration, node: &HeaderValue) -> Response<RespBody> {
    let secs = crate::balance::rate::retry_after_secs(wait);
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, format!("{reason}; retry after {secs}s"), node);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// [`text`] for a request the proxy will not read further: an HTTP/1 connection closes after it (HTTP/2
/// has no `Connection` header; the stream ends with the answer).
fn refuse(status: StatusCode, reason: String, node: &HeaderValue, version: Version) -> Response<RespBody> {
    let mut resp = text(status, reason, node);
    if version < Version::HTTP_2 {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
