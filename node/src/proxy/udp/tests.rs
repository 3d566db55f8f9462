//! In-process tests of the UDP proxy: real `Routing` from a real `ClusterState`, real echo backends and
//! clients on loopback sockets.
//!
//! Addresses: proxies on 127.0.74.x (a second "node" on 127.0.75.x), backends on 127.0.76.x, clients on
//! 127.0.77.x.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::*;
use crate::balance::routing::SharedRouting;
use crate::proxy::counters::{counters_text, value_of};
use crate::proxy::tcp::tests::config;
use crate::proxy::testkit::{context, ip, reconfigure, routing_for, wait_for, wait_until, WAIT};
use crate::shutdown::Trigger;

/// Largest UDP payload over IPv4.
const MAX_V4_PAYLOAD: usize = 65_507;

/// A UDP backend answering each datagram with `"<name>|<sender port>:" + payload`, cut to fit one
/// datagram.
async fn echo_backend(name: &str, addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind(addr).await.expect("bind backend");
    let addr = sock.local_addr().expect("backend addr");
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let mut reply = format!("{name}|{}:", from.port()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            reply.truncate(MAX_V4_PAYLOAD);
            let _ = sock.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

/// A reply as the echo backend formats it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    /// Where the datagram came from (must be the listener's address).
    from: SocketAddr,
    backend: String,
    /// Source port the backend saw: one per flow (its upstream socket).
    upstream_port: u16,
    payload: Vec<u8>,
}

fn parse(from: SocketAddr, data: &[u8]) -> Reply {
    let colon = data.iter().position(|b| *b == b':').expect("reply has a colon");
    let head = String::from_utf8_lossy(&data[..colon]).to_string();
    let (backend, port) = head.split_once('|').expect("reply has name|port");
    Reply {
        from,
        backend: backend.to_string(),
        upstream_port: port.parse().unwrap(),
        payload: data[colon + 1..].to_vec(),
    }
}

/// Send `msg` to `to` and wait for one reply.
async fn ask(client: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Reply {
    client.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (n, from) =
        tokio::time::timeout(WAIT, client.recv_from(&mut buf)).await.expect("a reply in time").expect("recv");
    parse(from, &buf[..n])
}

/// Send `msg` and expect no reply within `window`.
async fn ask_unanswered(client: &UdpSocket, to: SocketAddr, msg: &[u8], window: Duration) {
    client.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; MAX_DATAGRAM];
    if let Ok(r) = tokio::time::timeout(window, client.recv_from(&mut buf)).await {
        let (n, from) = r.expect("recv");
        panic!("unexpected reply {:?}", parse(from, &buf[..n]));
    }
}

async fn client(c: u8, d: u8) -> UdpSocket {
    UdpSocket::bind((ip(c, d), 0)).await.expect("bind client")
}

struct Proxy {
    addr: SocketAddr,
    stop: Trigger,
    task: JoinHandle<()>,
    ctx: Arc<ProxyContext>,
}

async fn start_proxy(addr: SocketAddr, routing: &SharedRouting, limits: Limits) -> Proxy {
    let sock = UdpSocket::bind(addr).await.expect("bind proxy");
    let (stop, rx) = crate::shutdown::channel();
    let ctx = context(addr.ip(), routing);
    let task = tokio::spawn(serve_with("l".into(), sock, Arc::clone(&ctx), rx, limits));
    Proxy { addr, stop, task, ctx }
}

async fn backends(n: u8, third_octet: u8, first: u8) -> (Vec<SocketAddr>, Vec<JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (a, t) =
            echo_backend(&format!("b{}", i + 1), SocketAddr::new(ip(third_octet, first + i), 0)).await;
        addrs.push(a);
        tasks.push(t);
    }
    (addrs, tasks)
}

/// Wait until no flow holds any backend of pool `p` (every flow expired).
async fn wait_no_flows(routing: &SharedRouting) {
    let sel = Arc::clone(routing.load().pool("p").expect("pool p"));
    wait_for("every flow to expire", WAIT, || async {
        sel.backends().iter().all(|b| b.inflight() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn echo_reply_comes_back_from_the_listener_address() {
    let (b, _t) = backends(1, 76, 1).await;
    let routing = routing_for(&config("udp", 7201, "round_robin", "source_addr", &b, ""));
    let p = start_proxy(SocketAddr::new(ip(74, 1), 7201), &routing, Limits::default()).await;
    let c = client(77, 1).await;

    let r = ask(&c, p.addr, b"hello").await;
    assert_eq!(r.from, p.addr, "the reply must come from the address the client sent to");
    assert_eq!((r.backend.as_str(), r.payload.as_slice()), ("b1", &b"hello"[..]));
    // The flow counts as in flight on its backend.
    assert_eq!(routing.load().pool("p").unwrap().backends()[0].inflight(), 1);

    // An empty datagram and the largest one pass both ways.
    let r = ask(&c, p.addr, b"").await;
    assert_eq!((r.from, r.payload.len()), (p.addr, 0));
    let big: Vec<u8> = (0..MAX_V4_PAYLOAD).map(|i| (i % 253) as u8).collect();
    let r = ask(&c, p.addr, &big).await;
    assert_eq!(r.from, p.addr);
    let prefix = format!("b1|{}:", r.upstream_port).len();
    assert_eq!(r.payload.len(), MAX_V4_PAYLOAD - prefix);
    assert!(r.payload[..] == big[..MAX_V4_PAYLOAD - prefix]);
}

#[tokio::test]
async fn a_flow_keeps_its_backend_and_upstream_socket() {
    let (b, _t) = backends(3, 76, 10).await;
    // Round robin would move every datagram if the flow table did not pin the flow.
    let routing = routing_for(&config("udp", 7202, "round_robin", "source_addr", &b, ""));
    let p = start_proxy(SocketAddr::new(ip(74, 2), 7202), &routing, Limits::default()).await;
    let mut first_of = Vec::new();
    for d in 10..13u8 {
        let c = client(77, d).await;
        let first = ask(&c, p.addr, b"0").await;
        for i in 1..10u8 {
            let r = ask(&c, p.addr, &[b'0' + i]).await;
            assert_eq!((&r.backend, r.upstream_port), (&first.backend, first.upstream_port), "datagram {i}");
        }
        first_of.push(first.backend);
    }
    let distinct: BTreeSet<_> = first_of.iter().collect();
    assert_eq!(distinct.len(), 3, "three new flows under round robin: {first_of:?}");
}

#[tokio::test]
async fn a_flow_expires_after_the_idle_timeout() {
    let (b, _t) = backends(2, 76, 20).await;
    let idle = "[listener.timeouts]\nidle = \"300ms\"";
    let routing = routing_for(&config("udp", 7203, "round_robin", "source_addr", &b, idle));
    let p = start_proxy(SocketAddr::new(ip(74, 3), 7203), &routing, Limits::default()).await;
    let c = client(77, 20).await;
    let first = ask(&c, p.addr, b"a").await;
    assert_eq!(ask(&c, p.addr, b"b").await.upstream_port, first.upstream_port);
    wait_no_flows(&routing).await;
    // A new flow: a new upstream socket, and round robin has moved on to the other backend.
    let next = ask(&c, p.addr, b"c").await;
    assert_ne!(next.upstream_port, first.upstream_port);
    assert_ne!(next.backend, first.backend);
}

#[tokio::test]
async fn full_flow_table_drops_new_flows_until_one_expires() {
    let (b, _t) = backends(1, 76, 30).await;
    let idle = "[listener.timeouts]\nidle = \"2s\"";
    let routing = routing_for(&config("udp", 7204, "round_robin", "source_addr", &b, idle));
    let limits = Limits { max_flows: 2, ..Limits::default() };
    let p = start_proxy(SocketAddr::new(ip(74, 4), 7204), &routing, limits).await;
    let (c1, c2, c3) = (client(77, 30).await, client(77, 31).await, client(77, 32).await);
    ask(&c1, p.addr, b"1").await;
    ask(&c2, p.addr, b"2").await;
    ask_unanswered(&c3, p.addr, b"3", Duration::from_millis(300)).await;
    // Existing flows still work while the table is full.
    ask(&c1, p.addr, b"1").await;
    wait_no_flows(&routing).await;
    assert_eq!(ask(&c3, p.addr, b"3").await.payload, b"3");
    let text = counters_text(&p.ctx.metrics);
    let flows = format!("udp_flows_total{{listener=\"l\",pool=\"p\",backend=\"{}\"}}", b[0]);
    assert_eq!(value_of(&text, &flows), Some(3), "{text}");
    let full = "udp_dropped_total{listener=\"l\",reason=\"table_full\"}";
    assert!(value_of(&text, full).is_some_and(|n| n >= 1), "{text}");
    assert_eq!(value_of(&text, "udp_dropped_total{listener=\"l\",reason=\"no_backend\"}"), Some(0), "{text}");
}

#[tokio::test]
async fn two_nodes_map_the_same_flow_to_the_same_backend() {
    let (b, _t) = backends(4, 76, 40).await;
    let cfg = config("udp", 7205, "maglev", "flow", &b, "");
    // Two proxies ("nodes") on two IPs, same port, each with a routing snapshot built on its own from
    // the same committed state.
    let (ra, rb) = (routing_for(&cfg), routing_for(&cfg));
    let pa = start_proxy(SocketAddr::new(ip(74, 5), 7205), &ra, Limits::default()).await;
    let pb = start_proxy(SocketAddr::new(ip(75, 5), 7205), &rb, Limits::default()).await;
    let mut on = BTreeMap::new();
    for i in 0..24u8 {
        let c = client(77, 40 + i % 4).await;
        let via_a = ask(&c, pa.addr, b"x").await;
        let via_b = ask(&c, pb.addr, b"x").await;
        assert_eq!(via_a.from, pa.addr);
        assert_eq!(via_b.from, pb.addr);
        assert_eq!(
            via_a.backend,
            via_b.backend,
            "client {} reached different backends",
            c.local_addr().unwrap()
        );
        *on.entry(via_a.backend).or_insert(0) += 1;
    }
    assert!(on.len() >= 2, "24 flows all on one backend: {on:?}");
}

#[tokio::test]
async fn backend_removed_by_config_change_re_picks_only_its_flows() {
    let (b, _t) = backends(2, 76, 50).await;
    let routing = routing_for(&config("udp", 7206, "maglev", "flow", &b, ""));
    let p = start_proxy(SocketAddr::new(ip(74, 6), 7206), &routing, Limits::default()).await;
    let mut clients = Vec::new();
    for i in 0..12u8 {
        let c = client(77, 50 + i % 3).await;
        let r = ask(&c, p.addr, b"x").await;
        clients.push((c, r));
    }
    assert!(clients.iter().any(|(_, r)| r.backend == "b1") && clients.iter().any(|(_, r)| r.backend == "b2"));

    // b1 leaves the pool.
    reconfigure(&routing, &config("udp", 7206, "maglev", "flow", &b[1..], ""), 2);
    for (c, before) in &clients {
        let after = ask(c, p.addr, b"y").await;
        assert_eq!(after.backend, "b2");
        if before.backend == "b2" {
            assert_eq!(
                after.upstream_port, before.upstream_port,
                "a flow on a remaining backend stays as it is"
            );
        }
    }
}

#[tokio::test]
async fn stop_keeps_existing_flows_refuses_new_ones_and_returns_when_they_expire() {
    let (b, _t) = backends(1, 76, 60).await;
    let idle = "[listener.timeouts]\nidle = \"1s\"";
    let routing = routing_for(&config("udp", 7207, "round_robin", "source_addr", &b, idle));
    let p = start_proxy(SocketAddr::new(ip(74, 7), 7207), &routing, Limits::default()).await;
    let (old, new) = (client(77, 60).await, client(77, 61).await);
    let first = ask(&old, p.addr, b"a").await;
    p.stop.trigger();
    let r = ask(&old, p.addr, b"b").await;
    assert_eq!(r.upstream_port, first.upstream_port);
    ask_unanswered(&new, p.addr, b"c", Duration::from_millis(300)).await;
    tokio::time::timeout(WAIT, p.task).await.expect("serve returns once the flows expired").unwrap();
}

#[tokio::test]
async fn removed_listener_takes_no_new_flows_and_drops_old_ones() {
    let (b, _t) = backends(1, 76, 70).await;
    let routing = routing_for(&config("udp", 7208, "round_robin", "source_addr", &b, ""));
    let p = start_proxy(SocketAddr::new(ip(74, 8), 7208), &routing, Limits::default()).await;
    let (old, new) = (client(77, 70).await, client(77, 71).await);
    ask(&old, p.addr, b"a").await;
    let sel = Arc::clone(routing.load().pool("p").unwrap());
    let without =
        "[[pool]]\nname = \"p\"\n[pool.health]\nkind = \"none\"\n[[pool.backend]]\naddr = \"127.0.0.1:9\"\n";
    reconfigure(&routing, without, 2);
    ask_unanswered(&new, p.addr, b"b", Duration::from_millis(300)).await;
    ask_unanswered(&old, p.addr, b"c", Duration::from_millis(300)).await;
    wait_for("the old flow to be dropped", WAIT, || async {
        (sel.backends()[0].inflight() == 0).then_some(())
    })
    .await;
}

/// Fixed: one datagram from each of as many sources as the node had open files made as many flows,
/// each holding a socket for its idle timeout, until the node had no descriptor left for its admin
/// servers, new client connections or backend connections.
#[tokio::test]
async fn flows_of_every_listener_stop_at_the_node_file_budget_until_one_expires() {
    let (b, _t) = backends(1, 76, 100).await;
    let idle = "[listener.timeouts]\nidle = \"2s\"";
    let routing = routing_for(&config("udp", 7210, "round_robin", "source_addr", &b, idle));
    let base = Arc::into_inner(context(ip(74, 10), &routing)).expect("one owner");
    let ctx = Arc::new(ProxyContext { udp_flows: Arc::new(FlowBudget::new(2)), ..base });
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for host in [10, 11] {
        let addr = SocketAddr::new(ip(74, host), 7210);
        let sock = UdpSocket::bind(addr).await.expect("bind proxy");
        let (stop, rx) = crate::shutdown::channel();
        tokio::spawn(serve_with("l".into(), sock, Arc::clone(&ctx), rx, Limits::default()));
        addrs.push(addr);
        stops.push(stop);
    }
    let (c1, c2, c3) = (client(77, 100).await, client(77, 101).await, client(77, 102).await);
    ask(&c1, addrs[0], b"1").await;
    ask(&c2, addrs[1], b"2").await;
    assert_eq!(ctx.udp_flows.used(), 2);
    // Neither listener's table is full, but the node's budget is used up.
    ask_unanswered(&c3, addrs[0], b"3", Duration::from_millis(300)).await;
    ask_unanswered(&c3, addrs[1], b"3", Duration::from_millis(300)).await;
    // Existing flows still work.
    assert_eq!(ask(&c1, addrs[0], b"1").await.payload, b"1");
    wait_no_flows(&routing).await;
    wait_until("the flows to give their budget back", || ctx.udp_flows.used() == 0).await;
    assert_eq!(ask(&c3, addrs[0], b"3").await.payload, b"3");
    let text = counters_text(&ctx.metrics);
    let over = "udp_dropped_total{listener=\"l\",reason=\"file_limit\"}";
    assert!(value_of(&text, over).is_some_and(|n| n >= 2), "{text}");
    assert_eq!(value_of(&text, "udp_dropped_total{listener=\"l\",reason=\"table_full\"}"), Some(0), "{text}");
    drop(stops);
}

#[test]
fn the_budget_is_half_the_open_files_and_a_socket_refused_for_want_of_them_is_local() {
    assert_eq!(flow_file_budget(20_000), 10_000);
    assert_eq!(flow_file_budget(1_048_576), 524_288);
    assert!(FlowBudget::for_this_process().max() >= 1);
    let local =
        [libc::EADDRINUSE, libc::EADDRNOTAVAIL, libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
    for errno in local {
        assert!(refused_locally(&io::Error::from_raw_os_error(errno)), "{errno}");
    }
    for errno in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::EHOSTUNREACH, libc::EACCES] {
        assert!(!refused_locally(&io::Error::from_raw_os_error(errno)), "{errno}");
    }
}

#[test]
fn idle_is_capped() {
    assert_eq!(effective_idle(Duration::from_secs(10)), Duration::from_secs(10));
    assert_eq!(effective_idle(Duration::from_secs(3600)), UDP_IDLE_CAP);
}

#[tokio::test]
async fn flow_sockets_leave_from_the_proxy_bind_ip() {
    let backend = UdpSocket::bind((ip(76, 90), 0)).await.expect("bind backend");
    let routing =
        routing_for(&config("udp", 7209, "round_robin", "source_addr", &[backend.local_addr().unwrap()], ""));
    let p = start_proxy(SocketAddr::new(ip(74, 9), 7209), &routing, Limits::default()).await;
    let c = client(77, 90).await;
    c.send_to(b"ping", p.addr).await.expect("send");
    let mut buf = vec![0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, backend.recv_from(&mut buf))
        .await
        .expect("datagram in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip(), ip(74, 9), "the flow socket must be bound to the proxy's IP");
    // The reply still reaches the client through the flow.
    backend.send_to(b"pong", from).await.expect("reply");
    let (n, via) =
        tokio::time::timeout(WAIT, c.recv_from(&mut buf)).await.expect("reply in time").expect("recv");
    assert_eq!((&buf[..n], via), (&b"pong"[..], p.addr));
}

#[tokio::test]
async fn with_a_vip_a_udp_listener_also_answers_on_it_from_it() {
    let (b, _t) = backends(1, 76, 200).await;
    let routing = routing_for(&config("udp", 7290, "round_robin", "source_addr", &b, ""));
    let (node, vip) = (ip(74, 200), ip(75, 200));
    let ctx = Arc::new(ProxyContext { vip: Some(vip), ..ProxyContext::new(1, node) });
    ctx.routing.store(routing.load_full());
    let mut set = crate::proxy::listeners::ListenerSet::with_udp_ip(node, node).with_udp_vip(ctx.vip);
    set.reconcile(&ctx, &ctx.routing.load()).await;
    assert!(set.statuses().iter().all(|s| s.bound), "{:?}", set.statuses());
    let c = client(77, 200).await;
    for to in [SocketAddr::new(vip, 7290), SocketAddr::new(node, 7290)] {
        let r = ask(&c, to, b"hello").await;
        assert_eq!(r.from, to, "the reply leaves from the address the datagram was sent to");
        assert_eq!((r.backend.as_str(), r.payload.as_slice()), ("b1", &b"hello"[..]));
    }
    set.shutdown().await;
}
