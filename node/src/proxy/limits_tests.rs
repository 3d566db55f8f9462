//! In-process tests of connection caps, per-backend limits and rate limits on real sockets: the real
//! HTTP, TCP and UDP proxies ([`super::http::serve_with`], [`super::tcp::serve_with`],
//! [`super::udp::serve`]) on loopback, a routing
//! snapshot built from a real `ClusterState` (three live nodes, see [`state_with`]), real backends
//! (small hyper servers; TCP backends that name themselves and echo) and real clients bound to the
//! source addresses under test.
//!
//! Addresses: proxies on 127.0.170.x, clients on 127.0.171.x (127.0.171.2 and 127.0.171.3 as two
//! sources), backends on 127.0.172.x; TCP and UDP proxies on 127.0.173.x with backends on 127.0.174.x.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::counters::{counters_text, value_of};
use super::testkit::{context, ip, reconfigure, routing_for, wait_for, within, WAIT};
use super::ProxyContext;
use crate::shutdown::Trigger;

// -------------------------------------------------------------------------------------------------
// Backends
// -------------------------------------------------------------------------------------------------

/// An HTTP/1.1 backend answering `x-backend: <name>` and its name as the body; `/hold` answers only
/// once [`HttpBackend::release`] is called. `held` counts requests waiting on `/hold`.
struct HttpBackend {
    addr: SocketAddr,
    name: String,
    held: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpBackend {
    async fn start(name: &str, at: IpAddr) -> HttpBackend {
        let l = TcpListener::bind((at, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let (release, release_rx) = watch::channel(false);
        let (n, h) = (name.to_string(), Arc::clone(&held));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else { continue };
                let (n, h, rx) = (n.clone(), Arc::clone(&h), release_rx.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (n, h) = (n.clone(), Arc::clone(&h));
                        let mut rx = rx.clone();
                        async move {
                            if req.uri().path() == "/hold" {
                                h.fetch_add(1, Ordering::SeqCst);
                                let _ = rx.wait_for(|r| *r).await;
                                h.fetch_sub(1, Ordering::SeqCst);
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(n.clone())));
                            resp.headers_mut().insert("x-backend", n.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpBackend { addr, name: name.to_string(), held, release, task }
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}

/// A TCP backend that sends `<name>\n` on accept, then echoes until the client closes.
async fn echo_backend(name: &str, at: IpAddr) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind((at, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = format!("{name}\n");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { continue };
            let name = name.clone();
            tokio::spawn(async move {
                if s.write_all(name.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

// -------------------------------------------------------------------------------------------------
// Proxies and clients
// -------------------------------------------------------------------------------------------------

struct Proxy {
    addr: SocketAddr,
    ctx: Arc<ProxyContext>,
    _stop: Trigger,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// The listener named in `toml` (`web` for HTTP, `l` for TCP) served on `at`.
    async fn start(protocol: &str, at: IpAddr, toml: &str) -> Proxy {
        let listener = TcpListener::bind((at, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routing = routing_for(toml);
        let ctx = context(at, &routing);
        let (stop, stop_rx) = crate::shutdown::channel();
        let c = Arc::clone(&ctx);
        let task = match protocol {
            "http" => tokio::spawn(super::http::serve_with(
                "web".into(),
                listener,
                c,
                stop_rx,
                super::http::Options::default(),
            )),
            _ => tokio::spawn(super::tcp::serve_with("web".into(), listener, c, stop_rx, WAIT)),
        };
        Proxy { addr, ctx, _stop: stop, task }
    }

    fn counter(&self, series: &str) -> Option<u64> {
        value_of(&counters_text(&self.ctx.metrics), series)
    }
}

/// The listener "web" of `protocol` over the pool "web" of `backends`, with extra lines for each.
fn config(
    protocol: &str,
    policy: &str,
    pool_extra: &str,
    backends: &[SocketAddr],
    listener_extra: &str,
) -> String {
    let mut t = format!(
        "[[pool]]\nname = \"web\"\npolicy = \"{policy}\"\nhash_key = \"source_ip\"\ntable_size = 1009\n\
         {pool_extra}\n[pool.health]\nkind = \"none\"\n"
    );
    for b in backends {
        t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
    }
    t += &format!(
        "\n[[listener]]\nname = \"web\"\nprotocol = \"{protocol}\"\nport = 8080\npool = \"web\"\n{listener_extra}\n"
    );
    t
}

async fn connect_from(src: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    within("connect", s.connect(to)).await.unwrap()
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client connection from `src`.
async fn h1(src: IpAddr, to: SocketAddr) -> H1 {
    let stream = connect_from(src, to).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn send(c: &mut H1, path: &str) -> Got {
    within("client connection ready", c.ready()).await.unwrap();
    let req = Request::get(path).header("host", "test.local").body(Full::new(Bytes::new())).unwrap();
    let resp = within("response", c.send_request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = within("response body", body.collect()).await.unwrap().to_bytes();
    Got { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// One request from `src` on a new connection.
async fn get(src: IpAddr, to: SocketAddr, path: &str) -> Got {
    let mut c = h1(src, to).await;
    send(&mut c, path).await
}

/// A TCP connection from `src` through the proxy: the name of the backend it reached, or `None` when
/// the proxy closed it.
async fn tcp_open(src: IpAddr, to: SocketAddr) -> (Option<String>, BufReader<TcpStream>) {
    let mut s = BufReader::new(connect_from(src, to).await);
    let mut line = String::new();
    let got = within("the backend's name or a close", s.read_line(&mut line)).await;
    match got {
        Ok(n) if n > 0 => (Some(line.trim_end().to_string()), s),
        _ => (None, s),
    }
}

/// `b` still proxies both ways.
async fn tcp_echoes(s: &mut BufReader<TcpStream>) -> bool {
    if s.get_mut().write_all(b"ping\n").await.is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(within("echo", s.read_line(&mut line)).await, Ok(5)) && line == "ping\n"
}

// -------------------------------------------------------------------------------------------------
// Connection caps
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_listener_cap_answers_503_to_the_connection_over_it_and_frees_a_place_on_close() {
    let b = HttpBackend::start("backend-1", ip(172, 1)).await;
    let toml = config("http", "round_robin", "", &[b.addr], "[listener.admission]\nmax_connections = 2\n");
    let p = Proxy::start("http", ip(170, 1), &toml).await;
    let (s2, s3) = (ip(171, 2), ip(171, 3));
    let mut c1 = h1(s2, p.addr).await;
    let mut c2 = h1(s3, p.addr).await;
    assert_eq!(send(&mut c1, "/").await.status, StatusCode::OK);
    assert_eq!(send(&mut c2, "/").await.status, StatusCode::OK);

    let over = get(s2, p.addr, "/").await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE, "{over:?}");
    assert_eq!(
        over.body, "listener \"web\": listener at its connection limit 2; try again later\n",
        "{over:?}"
    );
    assert_eq!(over.header("connection"), "close");
    assert_eq!(over.header("x-lbfleet-node"), "1");
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"listener_cap\"}"), Some(1));

    // The two open connections keep being served.
    for c in [&mut c1, &mut c2] {
        let r = send(c, "/").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "backend-1"));
    }
    // One closes: its place goes to the next connection.
    drop(c1);
    wait_for("a new connection is served once one of the two closed", WAIT, || async {
        (get(s2, p.addr, "/").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(send(&mut c2, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_http2_connection_over_the_cap_gets_503_with_the_reason() {
    let b = HttpBackend::start("backend-1", ip(172, 7)).await;
    let toml = config("http", "round_robin", "", &[b.addr], "[listener.admission]\nmax_connections = 1\n");
    let p = Proxy::start("http", ip(170, 6), &toml).await;
    let mut held = h1(ip(171, 2), p.addr).await;
    assert_eq!(send(&mut held, "/").await.status, StatusCode::OK);
    // h2c with prior knowledge, over the cap.
    let stream = connect_from(ip(171, 3), p.addr).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://test.local/").body(Full::new(Bytes::new())).unwrap();
    let resp = within("h2 response", h2.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = within("h2 body", resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"listener \"web\": listener at its connection limit 1; try again later\n");
    assert_eq!(send(&mut held, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn http_source_cap_refuses_one_address_and_serves_another() {
    let b = HttpBackend::start("backend-1", ip(172, 2)).await;
    let toml = config(
        "http",
        "round_robin",
        "",
        &[b.addr],
        "[listener.admission]\nmax_connections_per_source = 1\n",
    );
    let p = Proxy::start("http", ip(170, 2), &toml).await;
    let (s2, s3) = (ip(171, 2), ip(171, 3));
    let mut first = h1(s2, p.addr).await;
    assert_eq!(send(&mut first, "/").await.status, StatusCode::OK);

    let over = get(s2, p.addr, "/").await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(over.body, "listener \"web\": client address at its connection limit 1; try again later\n");
    // Another source is not affected, nor is the first connection.
    let mut other = h1(s3, p.addr).await;
    assert_eq!(send(&mut other, "/").await.body, "backend-1");
    assert_eq!(send(&mut first, "/").await.status, StatusCode::OK);
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"source_cap\"}"), Some(1));
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"listener_cap\"}"), None);

    // A committed config with a higher cap applies from the next accept, counting what is open.
    let raised = toml.replace("max_connections_per_source = 1", "max_connections_per_source = 2");
    reconfigure(&p.ctx.routing, &raised, 2);
    let mut second = h1(s2, p.addr).await;
    assert_eq!(send(&mut second, "/").await.status, StatusCode::OK);
    assert_eq!(
        get(s2, p.addr, "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a third from 127.0.171.2"
    );
}

#[tokio::test]
async fn tcp_caps_close_connections_over_them_and_serve_the_rest() {
    let (backend, _b) = echo_backend("backend-1", ip(174, 1)).await;
    let toml = config(
        "tcp",
        "round_robin",
        "",
        &[backend],
        "[listener.admission]\nmax_connections = 2\nmax_connections_per_source = 1\n",
    );
    let p = Proxy::start("tcp", ip(173, 1), &toml).await;
    let (first, mut c1) = tcp_open(ip(171, 2), p.addr).await;
    assert_eq!(first.as_deref(), Some("backend-1"));
    // Same source again: over the per-source cap, closed.
    let (again, _) = tcp_open(ip(171, 2), p.addr).await;
    assert_eq!(again, None, "a second connection from 127.0.171.2 was proxied");
    // Another source: served; a third source is over the listener's cap of 2.
    let (other, mut c3) = tcp_open(ip(171, 3), p.addr).await;
    assert_eq!(other.as_deref(), Some("backend-1"));
    let (third, _) = tcp_open(ip(171, 4), p.addr).await;
    assert_eq!(third, None, "a third connection was proxied over max_connections = 2");
    assert!(tcp_echoes(&mut c1).await && tcp_echoes(&mut c3).await, "open connections stopped flowing");
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"source_cap\"}"), Some(1));
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"listener_cap\"}"), Some(1));
    drop(c1);
    wait_for("127.0.171.4 is served once a connection closed", WAIT, || async {
        tcp_open(ip(171, 4), p.addr).await.0.map(|_| ())
    })
    .await;
}

// -------------------------------------------------------------------------------------------------
// Per-backend limit
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_at_its_limit_is_skipped_and_503_names_every_full_one() {
    let a = HttpBackend::start("backend-a", ip(172, 3)).await;
    let b = HttpBackend::start("backend-b", ip(172, 4)).await;
    // Maglev on the client IP: every request of one client has the same first pick.
    let toml = config("http", "maglev", "max_connections_per_backend = 1", &[a.addr, b.addr], "");
    let p = Proxy::start("http", ip(170, 3), &toml).await;
    let src = ip(171, 2);
    let p_addr = p.addr;
    let first = tokio::spawn(async move { get(src, p_addr, "/hold").await });
    wait_for("the first request is held by a backend", WAIT, || async {
        (a.held() + b.held() == 1).then_some(())
    })
    .await;
    let (busy, free) = if a.held() == 1 { (&a, &b) } else { (&b, &a) };
    // The same client's next request would go to the same backend: it is full, so the next one takes it.
    let second = tokio::spawn(async move { get(src, p_addr, "/hold").await });
    wait_for("the second request is held by the other backend", WAIT, || async {
        (free.held() == 1).then_some(())
    })
    .await;
    assert_eq!(busy.held(), 1, "the full backend got a second request");

    let refused = get(src, p.addr, "/").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    let want = |x: &HttpBackend| format!("backend {} at its connection limit 1", x.addr);
    assert!(
        refused.body.starts_with("no backend of pool \"web\" has room: ")
            && refused.body.contains(&want(&a))
            && refused.body.contains(&want(&b)),
        "{refused:?}"
    );
    let at_limit = |x: &HttpBackend| {
        p.counter(&format!("backend_at_limit_total{{pool=\"web\",backend=\"{}\"}}", x.addr)).unwrap_or(0)
    };
    assert!(at_limit(busy) >= 2 && at_limit(free) >= 1, "{}", counters_text(&p.ctx.metrics));

    a.release();
    b.release();
    let (r1, r2) = (within("first", first).await.unwrap(), within("second", second).await.unwrap());
    assert_eq!(r1.status, StatusCode::OK);
    assert_eq!((r1.body.as_str(), r2.body.as_str()), (busy.name.as_str(), free.name.as_str()));
    // Places free again once the exchanges are over.
    wait_for("a request is served after the held ones finished", WAIT, || async {
        (get(src, p_addr, "/").await.status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn tcp_connections_skip_a_full_backend_and_are_closed_when_all_are_full() {
    let (a, _ta) = echo_backend("backend-a", ip(174, 2)).await;
    let (b, _tb) = echo_backend("backend-b", ip(174, 3)).await;
    let toml = config("tcp", "maglev", "max_connections_per_backend = 1", &[a, b], "");
    let p = Proxy::start("tcp", ip(173, 2), &toml).await;
    let src = ip(171, 2);
    let (n1, mut c1) = tcp_open(src, p.addr).await;
    let (n2, mut c2) = tcp_open(src, p.addr).await;
    let (n1, n2) = (n1.expect("first connection proxied"), n2.expect("second connection proxied"));
    assert_ne!(n1, n2, "the second connection went to the full backend");
    let (n3, _) = tcp_open(src, p.addr).await;
    assert_eq!(n3, None, "a third connection was proxied with both backends at their limit");
    assert!(tcp_echoes(&mut c1).await && tcp_echoes(&mut c2).await);
    drop(c1);
    wait_for("a connection is proxied once one closed", WAIT, || async {
        tcp_open(src, p.addr).await.0.filter(|n| *n == n1).map(|_| ())
    })
    .await;
}

// -------------------------------------------------------------------------------------------------
// Rate limits
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn over_the_rate_limit_a_source_gets_429_with_retry_after_and_recovers_after_the_refill() {
    let b = HttpBackend::start("backend-1", ip(172, 5)).await;
    let toml = config(
        "http",
        "round_robin",
        "",
        &[b.addr],
        "[listener.admission.rate_limit]\nrate = 1\nburst = 2\nper = \"source_ip\"\n",
    );
    let p = Proxy::start("http", ip(170, 4), &toml).await;
    let (s2, s3) = (ip(171, 2), ip(171, 3));
    let mut c = h1(s2, p.addr).await;
    assert_eq!(send(&mut c, "/").await.status, StatusCode::OK);
    assert_eq!(send(&mut c, "/").await.status, StatusCode::OK);
    let limited = send(&mut c, "/").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    assert_eq!(limited.header("retry-after"), "1");
    assert_ne!(limited.header("connection"), "close", "a 429 keeps the connection");
    assert_eq!(
        limited.body,
        "rate limit of listener \"web\" exceeded (1 per second, burst 2, per client address); retry after 1s\n"
    );
    // A new connection from the same source is limited alike (curl as the client, where installed);
    // another source is not.
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        println!("NOTICE: curl is not installed; a hyper client instead");
        assert_eq!(get(s2, p.addr, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    } else {
        let url = format!("http://{}/", p.addr);
        let out = within(
            "curl",
            tokio::process::Command::new("curl")
                .args(["-sS", "-i", "--max-time", "15", "--interface", "127.0.171.2", &url])
                .output(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with("http/1.1 429") && text.contains("\r\nretry-after: 1\r\n"), "curl: {text}");
    }
    assert_eq!(get(s3, p.addr, "/").await.body, "backend-1");
    assert!(p.counter("rate_limited_total{listener=\"web\",route=\"\"}").unwrap_or(0) >= 2);
    // After the refill, the first source is served again.
    wait_for("127.0.171.2 is served again after the refill", WAIT, || async {
        (get(s2, p.addr, "/").await.status == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_fleet_wide_route_limit_is_this_nodes_share_and_retry_after_says_when() {
    let b = HttpBackend::start("backend-1", ip(172, 6)).await;
    // One token per second for the whole fleet, one bucket for every client of the route; the state
    // has three live nodes, so this node admits one request per 3 s.
    let route = "[[listener.route]]\npath_prefix = \"/api\"\npool = \"web\"\n[listener.route.rate_limit]\n\
                 rate = 1\nburst = 1\nper = \"listener\"\nscope = \"fleet\"\n";
    let toml = config("http", "round_robin", "", &[b.addr], route);
    let p = Proxy::start("http", ip(170, 5), &toml).await;
    let (s2, s3) = (ip(171, 2), ip(171, 3));
    let t0 = Instant::now();
    assert_eq!(get(s2, p.addr, "/api/a").await.status, StatusCode::OK);
    // One bucket for all: the other source is limited too, with the 3 s of this node's share.
    let limited = get(s3, p.addr, "/api/b").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    assert_eq!(limited.header("retry-after"), "3");
    assert_eq!(
        limited.body,
        "rate limit of route 1 of listener \"web\" exceeded (0.33 per second, burst 1, for all clients: \
         this node's share of a fleet-wide 1 per second, burst 1, over 3 live nodes); retry after 3s\n"
    );
    assert_eq!(p.counter("rate_limited_total{listener=\"web\",route=\"1\"}"), Some(1));
    // Requests outside the route are not limited.
    assert_eq!(get(s3, p.addr, "/other").await.status, StatusCode::OK);
    wait_for("the route admits a request again", WAIT, || async {
        (get(s3, p.addr, "/api/c").await.status == StatusCode::OK).then_some(())
    })
    .await;
    // A token bucket cannot refill faster than its rate: not before 3 s after the first token.
    assert!(t0.elapsed() >= Duration::from_secs(3), "admitted again after {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_tcp_rate_limit_closes_new_connections_over_it() {
    let (backend, _b) = echo_backend("backend-1", ip(174, 4)).await;
    let toml = config(
        "tcp",
        "round_robin",
        "",
        &[backend],
        "[listener.admission.rate_limit]\nrate = 1\nburst = 1\n",
    );
    let p = Proxy::start("tcp", ip(173, 3), &toml).await;
    let (first, mut c1) = tcp_open(ip(171, 2), p.addr).await;
    assert_eq!(first.as_deref(), Some("backend-1"));
    let (second, _) = tcp_open(ip(171, 2), p.addr).await;
    assert_eq!(second, None, "a connection over the rate was proxied");
    assert_eq!(tcp_open(ip(171, 3), p.addr).await.0.as_deref(), Some("backend-1"), "another source");
    assert!(tcp_echoes(&mut c1).await, "an admitted connection is not affected");
    assert_eq!(p.counter("connections_refused_total{listener=\"web\",reason=\"rate_limit\"}"), Some(1));
}

// -------------------------------------------------------------------------------------------------
// UDP flows
// -------------------------------------------------------------------------------------------------

/// A UDP backend answering each datagram with `<name>:` and the datagram.
async fn udp_echo_backend(name: &str, at: IpAddr) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind((at, 0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let name = format!("{name}:");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let mut reply = name.clone().into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

/// Send `msg` from `c` to `to`; the reply if one comes within `window`.
async fn udp_ask(c: &UdpSocket, to: SocketAddr, msg: &str, window: Duration) -> Option<String> {
    c.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(window, c.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn udp_flow_caps_drop_new_flows_over_them_until_a_flow_expires() {
    let (backend, _b) = udp_echo_backend("backend-1", ip(174, 5)).await;
    let toml = config(
        "udp",
        "round_robin",
        "",
        &[backend],
        "[listener.timeouts]\nidle = \"300ms\"\n[listener.admission]\nmax_connections = 2\nmax_connections_per_source = 1\n",
    );
    let routing = routing_for(&toml);
    let ctx = context(ip(173, 4), &routing);
    let sock = UdpSocket::bind((ip(173, 4), 0)).await.unwrap();
    let to = sock.local_addr().unwrap();
    let (_stop, stop_rx) = crate::shutdown::channel();
    let task = tokio::spawn(super::udp::serve("web".into(), sock, Arc::clone(&ctx), stop_rx));
    let client = |d| async move { UdpSocket::bind((ip(171, d), 0)).await.unwrap() };
    let refused = |reason: &str| {
        value_of(
            &counters_text(&ctx.metrics),
            &format!("connections_refused_total{{listener=\"web\",reason=\"{reason}\"}}"),
        )
    };
    let (c1, c1b, c3, c4) = (client(2).await, client(2).await, client(3).await, client(4).await);
    assert_eq!(udp_ask(&c1, to, "one", WAIT).await.as_deref(), Some("backend-1:one"));
    // A second flow of 127.0.171.2 (another port) is over the per-source cap: dropped, counted.
    c1b.send_to(b"two", to).await.unwrap();
    wait_for("the second flow of 127.0.171.2 to be refused", WAIT, || async { refused("source_cap") }).await;
    assert_eq!(udp_ask(&c3, to, "three", WAIT).await.as_deref(), Some("backend-1:three"));
    // A third source is over the listener's 2 flows.
    c4.send_to(b"four", to).await.unwrap();
    wait_for("a third flow to be refused", WAIT, || async { refused("listener_cap") }).await;
    assert_eq!(udp_ask(&c1, to, "again", WAIT).await.as_deref(), Some("backend-1:again"));
    // Once 127.0.171.2's flow idles out, its other port may start one.
    wait_for("127.0.171.2's second port to get a flow after the first expired", WAIT, || async {
        udp_ask(&c1b, to, "later", Duration::from_millis(200)).await.filter(|r| r == "backend-1:later")
    })
    .await;
    task.abort();
}
