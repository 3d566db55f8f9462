//! UDP flows through the data plane during a run: datagrams to the UDP listener [`UDP_LISTENER`] (port
//! [`UDP_PORT`]) of random nodes, whose pool [`UDP_POOL`] is Maglev on `hash_key = "flow"` over the
//! demo backends; each backend (`lbctl demo-backend --udp`) answers a datagram with its name, a newline
//! and the datagram.
//!
//! A *flow* is one client socket (a fixed source port): each client keeps [`FLOWS_PER_CLIENT`] of
//! them and sends each datagram from a random one to a random target; when the first try gets no
//! answer within [`REPLY_TIMEOUT`], the same flow tries another target once. Locally the targets are
//! the nodes and the source is 127.0.3.C; on compose the one target is the VIP (the router's ECMP
//! hash picks the node, so the retry goes to the VIP again and reaches another node only once the
//! router has dropped a failed one) and the source is the host's address towards it. Every
//! datagram's result and the backend that answered are recorded as a [`Request`] (key: the source
//! port). A flow is opened anew (new sockets, new ports) whenever the backend epoch changes, so the
//! same-flow check (one flow, one backend, from every node, within a stable epoch) never counts a flow
//! whose node kept its old backend for affinity after the set changed back.
//!
//! The config the run adds for this: [`config_toml`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

use crate::run::{epoch_of, Shared};
use crate::traffic::Request;

/// The UDP listener's port on every node.
pub const UDP_PORT: u16 = 8082;
/// The pool (and listener) the run adds for its UDP flows.
pub const UDP_POOL: &str = "chaos-udp";
pub const UDP_LISTENER: &str = "chaos-udp";
/// Flows (sockets) each client keeps open at a time.
pub const FLOWS_PER_CLIENT: usize = 8;
/// How long a try waits for the answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// Most datagrams one client sends in a run.
pub const MAX_DATAGRAMS_PER_CLIENT: usize = 50_000;
/// Pause between datagrams of one client.
const PACE: Duration = Duration::from_millis(10);

/// The pool and listener of the UDP flows, over `backends` (`IP:PORT`, the demo backends).
pub fn config_toml(backends: &[String]) -> String {
    let mut s = format!(
        "[[pool]]\nname = \"{UDP_POOL}\"\npolicy = \"maglev\"\nhash_key = \"flow\"\n\
         [pool.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
    );
    for b in backends {
        s.push_str(&format!("[[pool.backend]]\naddr = \"{b}\"\n"));
    }
    s.push_str(&format!(
        "[[listener]]\nname = \"{UDP_LISTENER}\"\nprotocol = \"udp\"\nport = {UDP_PORT}\npool = \"{UDP_POOL}\"\n"
    ));
    s
}

/// The backend named by a demo backend's answer to `sent`: the text before the newline, when the
/// rest is the datagram sent.
pub fn backend_of(answer: &[u8], sent: &[u8]) -> Option<String> {
    let nl = answer.iter().position(|b| *b == b'\n')?;
    (answer[nl + 1..] == *sent).then(|| String::from_utf8_lossy(&answer[..nl]).into_owned())
}

/// One datagram from `socket` to `target` and the backend that answered it within [`REPLY_TIMEOUT`]
/// (late answers to earlier datagrams are skipped).
pub async fn exchange(socket: &UdpSocket, target: SocketAddr, payload: &[u8]) -> Option<String> {
    let attempt = async {
        socket.send_to(payload, target).await.ok()?;
        let mut buf = [0u8; 1024];
        loop {
            // An error (an ICMP unreachable reported on the socket) is not an answer: keep waiting.
            if let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if from == target {
                    if let Some(b) = backend_of(&buf[..n], payload) {
                        return Some(b);
                    }
                }
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, attempt).await.ok().flatten()
}

/// `FLOWS_PER_CLIENT` new sockets on `source`, port chosen by the kernel.
async fn open_flows(source: IpAddr) -> Vec<(u16, UdpSocket)> {
    let mut out = Vec::new();
    for _ in 0..FLOWS_PER_CLIENT {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(source, 0)).await {
            if let Ok(a) = s.local_addr() {
                out.push((a.port(), s));
            }
        }
    }
    out
}

/// Where the UDP clients send: each node's listener (the local target), or the VIP (compose).
#[derive(Debug, Clone)]
pub struct Targets {
    pub addrs: Vec<SocketAddr>,
    /// The clients' sources: [`Targets::source`].
    pub local: bool,
}

impl Targets {
    /// Every node's UDP listener.
    pub fn nodes(ips: &[Ipv4Addr]) -> Targets {
        Targets { addrs: ips.iter().map(|ip| SocketAddr::new((*ip).into(), UDP_PORT)).collect(), local: true }
    }

    /// The front's VIP only.
    pub fn vip(vip: IpAddr) -> Targets {
        Targets { addrs: vec![SocketAddr::new(vip, UDP_PORT)], local: false }
    }

    /// Client `id`'s source address: 127.0.3.ID locally, else whatever the host's route picks.
    pub fn source(&self, id: u8) -> IpAddr {
        if self.local {
            Ipv4Addr::new(127, 0, 3, id).into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        }
    }
}

/// A UDP client: until the run stops, a datagram from one of its flows to a random target.
pub async fn client(shared: Arc<Shared>, targets: Targets, id: u8, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let source = targets.source(id);
    let addrs = &targets.addrs;
    let mut flows: Vec<(u16, UdpSocket)> = Vec::new();
    let mut opened_in = u64::MAX;
    for seq in 0..MAX_DATAGRAMS_PER_CLIENT {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let before = shared.backend_epoch();
        if before != opened_in || flows.is_empty() {
            flows = open_flows(source).await;
            opened_in = before;
            if flows.is_empty() {
                tokio::time::sleep(PACE).await;
                continue;
            }
        }
        let (port, socket) = &flows[rng.random_range(0..flows.len())];
        let node = rng.random_range(0..addrs.len());
        let at_ms = shared.ms();
        let payload = format!("lbchaos {id} {seq}");
        let first = exchange(socket, addrs[node], payload.as_bytes()).await;
        let retry = match first {
            Some(_) => None,
            None => {
                let other = if addrs.len() > 1 {
                    (node + 1 + rng.random_range(0..addrs.len() - 1)) % addrs.len()
                } else {
                    node
                };
                Some((other, exchange(socket, addrs[other], payload.as_bytes()).await))
            }
        };
        let epoch = epoch_of(before, shared.backend_epoch());
        let r = Request { at_ms, key: u32::from(*port), epoch, first, retry };
        shared.datagrams.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        tokio::time::sleep(PACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_backend_only_when_it_echoes_the_datagram() {
        assert_eq!(backend_of(b"backend-2\nlbchaos 1 7", b"lbchaos 1 7").as_deref(), Some("backend-2"));
        assert_eq!(backend_of(b"backend-2\nlbchaos 1 6", b"lbchaos 1 7"), None);
        assert_eq!(backend_of(b"no newline", b"x"), None);
    }

    #[test]
    fn the_udp_config_parses() {
        let text = config_toml(&["127.0.0.1:9001".into(), "127.0.0.1:9002".into()]);
        let c = lbfleet_api::config::parse(&text, lbfleet_api::config::Format::Toml).expect("valid config");
        assert_eq!(c.pool(UDP_POOL).map(|p| p.backend.len()), Some(2));
        assert_eq!(c.listener.len(), 1);
    }
}
