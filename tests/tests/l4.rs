//! L4 data plane, end to end: three real lbnode processes, TCP and UDP echo backends running in this
//! test process (real sockets), clients bound to fixed source addresses.
//!
//! What must hold: with a Maglev pool, one client (same source address) reaches the same backend
//! through any node, for TCP and for UDP; and a UDP flow whose node is SIGKILLed keeps its backend when
//! it continues through another node, since every node hashes the flow without its own address.
//!
//! Addresses: the cluster of each test on 127.0.<net>.1N (nets 78 and 79), backends on
//! 127.0.<net>.10x, clients on 127.0.<net>.20x.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use lbfleet_tests::{admin, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;

const ELECTION: Duration = Duration::from_secs(20);
const TCP_PORT: u16 = 7600;
const UDP_PORT: u16 = 7601;

fn ip(net: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, d))
}

/// TCP backend: reads the whole request (until the client's FIN), answers `"<name>:" + request`.
async fn tcp_backend(name: &str, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("bind tcp backend {addr}"))?;
    let addr = l.local_addr()?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_ok() {
                    let mut resp = format!("{name}:").into_bytes();
                    resp.extend_from_slice(&req);
                    let _ = s.write_all(&resp).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    Ok((addr, task))
}

/// UDP backend: answers each datagram with `"<name>:" + payload` to its sender.
async fn udp_backend(name: &str, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let s = UdpSocket::bind(addr).await.with_context(|| format!("bind udp backend {addr}"))?;
    let addr = s.local_addr()?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut resp = format!("{name}:").into_bytes();
            resp.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&resp, from).await;
        }
    });
    Ok((addr, task))
}

/// Backends `b1..=bn` of both kinds on 127.0.<net>.101.., and the config that puts them behind a TCP
/// listener (Maglev on the client's address) and a UDP listener (Maglev on the flow).
async fn backends_and_config(net: u8, n: u8) -> Result<(String, Vec<JoinHandle<()>>)> {
    let mut tasks = Vec::new();
    let mut toml = String::new();
    let mut tcp_pool = "[[pool]]\nname = \"tcp\"\npolicy = \"maglev\"\nhash_key = \"source_addr\"\n\
                        [pool.health]\nkind = \"none\"\n"
        .to_string();
    let mut udp_pool = "[[pool]]\nname = \"udp\"\npolicy = \"maglev\"\nhash_key = \"flow\"\n\
                        [pool.health]\nkind = \"none\"\n"
        .to_string();
    for i in 1..=n {
        let at = SocketAddr::new(ip(net, 100 + i), 0);
        let (t, tt) = tcp_backend(&format!("b{i}"), at).await?;
        let (u, ut) = udp_backend(&format!("b{i}"), at).await?;
        tasks.extend([tt, ut]);
        tcp_pool += &format!("[[pool.backend]]\naddr = \"{t}\"\n");
        udp_pool += &format!("[[pool.backend]]\naddr = \"{u}\"\n");
    }
    toml += &tcp_pool;
    toml += "\n";
    toml += &udp_pool;
    toml += &format!(
        "\n[[listener]]\nname = \"tcp\"\nprotocol = \"tcp\"\nport = {TCP_PORT}\npool = \"tcp\"\n\
         \n[[listener]]\nname = \"udp\"\nprotocol = \"udp\"\nport = {UDP_PORT}\npool = \"udp\"\n"
    );
    Ok((toml, tasks))
}

/// One TCP request from the fixed source `from` to `to`: send, half-close, read the whole answer; the
/// backend's name is what precedes the first colon.
async fn tcp_ask(from: SocketAddr, to: SocketAddr) -> Result<String> {
    let sock = TcpSocket::new_v4()?;
    // The same source address is used towards every node; an earlier connection may be in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(from).with_context(|| format!("bind client {from}"))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .map_err(|_| anyhow!("connect {from} -> {to} timed out"))??;
    s.write_all(b"hello").await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| anyhow!("answer to {from} via {to} timed out"))??;
    let text = String::from_utf8_lossy(&out).to_string();
    let (name, rest) = text.split_once(':').ok_or_else(|| anyhow!("no answer from {to}: {text:?}"))?;
    ensure!(rest == "hello", "answer {text:?}");
    Ok(name.to_string())
}

/// One UDP datagram from `client` to `to`; the reply must come from `to`.
async fn udp_ask(client: &UdpSocket, to: SocketAddr, msg: &str) -> Result<String> {
    client.send_to(msg.as_bytes(), to).await?;
    let mut buf = vec![0u8; 65536];
    let (n, from) =
        tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await.map_err(|_| {
            anyhow!("no reply via {to} to {}", client.local_addr().map(|a| a.to_string()).unwrap_or_default())
        })??;
    ensure!(from == to, "reply came from {from}, not from the node address {to}");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (name, rest) = text.split_once(':').ok_or_else(|| anyhow!("reply {text:?}"))?;
    ensure!(rest == msg, "reply {text:?} to {msg:?}");
    Ok(name.to_string())
}

/// Start a 3-node cluster on `net`, apply `toml`, and wait until every node proxies both listeners.
async fn cluster_serving(net: u8, toml: &str) -> Result<Cluster> {
    let mut c = Cluster::start(net, 3, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let via = c.nodes[0].grpc_addr();
    wait_until("the config to be applied", ELECTION, || async { Ok(admin::apply_toml(&via, toml).await?) })
        .await?;
    let probe_from = SocketAddr::new(ip(net, 250), 0);
    for n in &c.nodes {
        let (tcp, udp) =
            (SocketAddr::new(IpAddr::V4(n.ip), TCP_PORT), SocketAddr::new(IpAddr::V4(n.ip), UDP_PORT));
        wait_until(&format!("node {} to proxy tcp and udp", n.id), ELECTION, || async move {
            tcp_ask(probe_from, tcp).await?;
            let s = UdpSocket::bind(probe_from).await?;
            udp_ask(&s, udp, "probe").await?;
            Ok(())
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    }
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_reaches_the_same_backend_through_every_node() -> Result<()> {
    let net = 78;
    let (toml, _backends) = backends_and_config(net, 3).await?;
    let c = cluster_serving(net, &toml).await?;
    let nodes: Vec<IpAddr> = c.nodes.iter().map(|n| IpAddr::V4(n.ip)).collect();

    // TCP: each client (fixed source IP and port) through node 1, 2 and 3.
    let mut tcp_spread = BTreeMap::new();
    for i in 0..8u16 {
        let from = SocketAddr::new(ip(net, 201), 41_000 + i);
        let mut seen = Vec::new();
        for node in &nodes {
            seen.push(tcp_ask(from, SocketAddr::new(*node, TCP_PORT)).await?);
        }
        ensure!(
            seen.iter().all(|b| *b == seen[0]),
            "tcp client {from} reached {seen:?} through nodes 1, 2, 3"
        );
        *tcp_spread.entry(seen[0].clone()).or_insert(0) += 1;
    }
    // UDP: each client flow through node 1, 2 and 3, twice around.
    let mut udp_spread = BTreeMap::new();
    for i in 0..8u16 {
        let client = UdpSocket::bind(SocketAddr::new(ip(net, 202), 42_000 + i)).await?;
        let mut seen = Vec::new();
        for round in 0..2 {
            for node in &nodes {
                seen.push(udp_ask(&client, SocketAddr::new(*node, UDP_PORT), &format!("r{round}")).await?);
            }
        }
        let from = client.local_addr()?;
        ensure!(seen.iter().all(|b| *b == seen[0]), "udp flow {from} reached {seen:?} through nodes 1, 2, 3");
        *udp_spread.entry(seen[0].clone()).or_insert(0) += 1;
    }
    eprintln!("clients per backend: tcp {tcp_spread:?}, udp {udp_spread:?}");
    ensure!(tcp_spread.len() >= 2, "8 tcp clients all on one backend: {tcp_spread:?}");
    ensure!(udp_spread.len() >= 2, "8 udp flows all on one backend: {udp_spread:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_keeps_its_backend_when_its_node_is_killed() -> Result<()> {
    let net = 79;
    let (toml, _backends) = backends_and_config(net, 3).await?;
    let mut c = cluster_serving(net, &toml).await?;
    let node_addr = |c: &Cluster, id: u64| -> Result<SocketAddr> {
        let n = c.nodes.iter().find(|n| n.id == id).ok_or_else(|| anyhow!("no node {id}"))?;
        Ok(SocketAddr::new(IpAddr::V4(n.ip), UDP_PORT))
    };
    let (n1, n2, n3) = (node_addr(&c, 1)?, node_addr(&c, 2)?, node_addr(&c, 3)?);

    // Six flows, all carried by node 1 for a while.
    let mut flows = Vec::new();
    for i in 0..6u16 {
        let client = UdpSocket::bind(SocketAddr::new(ip(net, 201), 43_000 + i)).await?;
        let backend = udp_ask(&client, n1, "before-0").await?;
        for k in 1..5 {
            let again = udp_ask(&client, n1, &format!("before-{k}")).await?;
            ensure!(again == backend, "flow moved from {backend} to {again} on node 1");
        }
        flows.push((client, backend));
    }

    c.node(1).kill9();
    ensure!(!c.node(1).is_running(), "node 1 still running after SIGKILL");
    if udp_ask(&flows[0].0, n1, "to-the-dead").await.is_ok() {
        bail!("node 1 answered after SIGKILL");
    }

    // The same flows (same client source address) continue through the survivors.
    for (client, backend) in &flows {
        let from = client.local_addr()?;
        for (k, via) in [n2, n3, n2, n3].into_iter().enumerate() {
            let now = udp_ask(client, via, &format!("after-{k}")).await?;
            ensure!(now == *backend, "flow {from} was on {backend}, continues on {now} via {via}");
        }
    }
    let spread: std::collections::BTreeSet<&String> = flows.iter().map(|(_, b)| b).collect();
    ensure!(spread.len() >= 2, "six flows all on one backend: {spread:?}");
    Ok(())
}
