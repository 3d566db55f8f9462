//! Sockets from this node to a backend: the HTTP and TCP proxies, the UDP flows and the health probes
//! all leave from the node's own IP (`ProxyContext::bind_ip`), so a backend sees which node a
//! connection came from and a node's probes see the network its traffic sees.
//!
//! The source IP is used only when it is a specific address of the backend's family
//! ([`source_ip`]); otherwise the kernel picks the source as before. TCP sockets bound this way set
//! `IP_BIND_ADDRESS_NO_PORT` (Linux) so the ephemeral port is chosen at connect time, per 4-tuple,
//! instead of at bind time, where each connection would use up one port of the source IP.
//!
//! Known limit: a node bound to a loopback address (127.x) can reach only backends on loopback, since
//! the kernel does not route loopback sources off the host; the health probes behave the same way.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// The address a socket to `backend` should bind, if any: `bind_ip` when it is neither unspecified
/// (0.0.0.0 / ::) nor of a different address family than `backend`.
pub fn source_ip(bind_ip: IpAddr, backend: SocketAddr) -> Option<IpAddr> {
    (!bind_ip.is_unspecified() && bind_ip.is_ipv4() == backend.is_ipv4()).then_some(bind_ip)
}

/// A TCP socket for `backend`, bound to `(bind_ip, 0)` when [`source_ip`] allows, with TCP_NODELAY.
pub fn tcp_socket(bind_ip: IpAddr, backend: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if backend.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source_ip(bind_ip, backend) {
        // Best effort: without it the bind still works, only the port is reserved at bind time.
        if let Err(e) = bind_address_no_port(&socket) {
            tracing::debug!(%ip, "IP_BIND_ADDRESS_NO_PORT not set: {e}");
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// A TCP connection to `backend` from `bind_ip` (see [`tcp_socket`]). Callers bound it with their
/// connect timeout.
pub async fn connect_tcp(bind_ip: IpAddr, backend: SocketAddr) -> io::Result<TcpStream> {
    tcp_socket(bind_ip, backend)?.connect(backend).await
}

/// A non-blocking UDP socket connected to `backend`, bound to `(bind_ip, 0)` when [`source_ip`] allows,
/// else to the unspecified address of the backend's family.
pub fn udp_socket(bind_ip: IpAddr, backend: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local = match source_ip(bind_ip, backend) {
        Some(ip) => ip,
        None if backend.is_ipv4() => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
    s.connect(backend)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is open for the life of `socket`; the option value is a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_ip_only_for_a_specific_address_of_the_same_family() {
        assert_eq!(source_ip(ip("127.0.0.7"), sa("127.0.0.9:80")), Some(ip("127.0.0.7")));
        assert_eq!(source_ip(ip("::1"), sa("[::1]:80")), Some(ip("::1")));
        assert_eq!(source_ip(ip("0.0.0.0"), sa("127.0.0.9:80")), None);
        assert_eq!(source_ip(ip("::"), sa("[::1]:80")), None);
        assert_eq!(source_ip(ip("127.0.0.7"), sa("[::1]:80")), None);
        assert_eq!(source_ip(ip("::1"), sa("127.0.0.9:80")), None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn tcp_socket_binds_the_node_ip_without_reserving_a_port() {
        use std::os::fd::AsRawFd;
        let backend = tokio::net::TcpListener::bind("127.0.57.2:0").await.unwrap();
        let socket = tcp_socket(ip("127.0.57.1"), backend.local_addr().unwrap()).unwrap();
        let bound = socket.local_addr().unwrap();
        assert_eq!(bound.ip(), ip("127.0.57.1"));
        assert_eq!(bound.port(), 0, "the port must be left to connect time");
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointers to live locals of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!((rc, on), (0, 1));
        assert!(socket.nodelay().unwrap());

        let stream = socket.connect(backend.local_addr().unwrap()).await.unwrap();
        let (_, peer) = backend.accept().await.unwrap();
        assert_eq!(peer.ip(), ip("127.0.57.1"));
        assert_ne!(stream.local_addr().unwrap().port(), 0);
    }

    #[test]
    fn udp_socket_sends_from_the_node_ip() {
        let backend = std::net::UdpSocket::bind("127.0.57.4:0").unwrap();
        backend.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        let s = udp_socket(ip("127.0.57.3"), backend.local_addr().unwrap()).unwrap();
        s.send(b"ping").unwrap();
        let (_, peer) = backend.recv_from(&mut buf).unwrap();
        assert_eq!(peer.ip(), ip("127.0.57.3"));
        // Unspecified: the kernel picks the source (not the address a bound socket would use).
        let unbound = udp_socket(ip("0.0.0.0"), backend.local_addr().unwrap()).unwrap();
        unbound.send(b"ping").unwrap();
        let (_, peer) = backend.recv_from(&mut buf).unwrap();
        assert_ne!(peer.ip(), ip("127.0.57.3"));
    }
}
