//! PROXY protocol headers (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the ones a TCP listener
//! with `proxy_protocol = 1 | 2` sends to the backend before any client byte, so the backend learns the
//! client's address and the address the client connected to, and the ones a listener with
//! `accept_proxy_protocol` reads from the front before it.
//!
//! Layout:
//! - this file: the encoder ([`encode`]), pure: addresses in, bytes out. Only the `PROXY` command over
//!   TCP is produced (a proxied client connection); no TLVs are added to version 2.
//! - [`decode`]: the decoder, pure and strict: bytes in, a header (or "not complete yet", or what is
//!   wrong) out, within [`decode::MAX_HEADER_LEN`] bytes.
//! - [`accept`]: the I/O of a listener with `accept_proxy_protocol`: the trusted-source check and the
//!   bounded read of exactly the header's bytes.
//!
//! Address families of the encoder: when both addresses are IPv4 (IPv4-mapped IPv6 counts as IPv4, as a
//! dual-stack socket reports IPv4 peers) the header says `TCP4` / `0x11`; otherwise both are written as
//! IPv6 (`TCP6` / `0x21`), an IPv4 one in its IPv4-mapped form, as HAProxy does for mixed families.

pub mod accept;
pub mod decode;
#[cfg(test)]
mod listener_tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that opens every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Longest version 1 line the spec allows, CRLF included (its worst case is `PROXY UNKNOWN` followed by
/// two full IPv6 addresses; a `TCP6` line is at most 104 bytes).
pub const V1_MAX_LEN: usize = 107;

/// Which header a listener sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Human-readable line (`PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`).
    V1,
    /// Binary header.
    V2,
}

impl Version {
    /// The version named by a listener's `proxy_protocol` field (`None`, or a value other than 1 and 2,
    /// which the config validation rejects anyway, means no header).
    pub fn from_config(v: Option<u8>) -> Option<Version> {
        match v {
            Some(1) => Some(Version::V1),
            Some(2) => Some(Version::V2),
            _ => None,
        }
    }
}

/// The header of `version` for a TCP connection from `src` (the client) to `dst` (the address the client
/// connected to: this node's listener address).
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        Version::V1 => encode_v1(src, dst).into_bytes(),
        Version::V2 => encode_v2(src, dst),
    }
}

/// Version 1: `PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\r\n`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> String {
    match family(src.ip(), dst.ip()) {
        Family::V4(s, d) => format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()),
        Family::V6(s, d) => format!("PROXY TCP6 {s} {d} {} {}\r\n", src.port(), dst.port()),
    }
}

/// Version 2: signature, `0x21` (version 2, command PROXY), family and transport (`0x11` TCP over IPv4,
/// `0x21` TCP over IPv6), the address block's length (big endian), then source address, destination
/// address, source port, destination port, all in network byte order.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match family(src.ip(), dst.ip()) {
        Family::V4(s, d) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        Family::V6(s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

enum Family {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn family(src: IpAddr, dst: IpAddr) -> Family {
    match (as_v4(src), as_v4(dst)) {
        (Some(s), Some(d)) => Family::V4(s, d),
        _ => Family::V6(as_v6(src), as_v6(dst)),
    }
}

fn as_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_is_the_specs_line() {
        // proxy-protocol.txt, section 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".
        assert_eq!(
            encode(Version::V1, sa("192.168.0.1:56324"), sa("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec()
        );
    }

    #[test]
    fn v1_tcp6_uses_the_compressed_canonical_form() {
        assert_eq!(
            encode_v1(sa("[2001:db8::1]:40000"), sa("[2001:db8:0:0:1::2]:8443")),
            "PROXY TCP6 2001:db8::1 2001:db8::1:0:0:2 40000 8443\r\n"
        );
    }

    #[test]
    fn v1_worst_case_is_the_specs_maximum_length() {
        // Section 2.1: "PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n" is
        // 5 + 1 + 4 + 1 + 39 + 1 + 39 + 1 + 5 + 1 + 5 + 2 = 104 bytes; the TCP4 one is 56.
        let all = SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xffff; 8])), 65535);
        let line = encode_v1(all, all);
        assert_eq!(
            line,
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(line.len(), 104);
        assert!(line.len() <= V1_MAX_LEN);
        let v4 = encode_v1(sa("255.255.255.255:65535"), sa("255.255.255.255:65535"));
        assert_eq!(v4.len(), 56);
    }

    #[test]
    fn v2_tcp4_matches_haproxys_bytes() {
        // A header written by HAProxy for 172.19.0.1:42578 -> 172.19.0.3:80.
        let want: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
            0x21, 0x11, 0x00, 0x0c, // v2 PROXY, TCP over IPv4, 12 bytes follow
            0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, // 172.19.0.1, 172.19.0.3
            0xa6, 0x52, 0x00, 0x50, // 42578, 80
        ];
        assert_eq!(encode(Version::V2, sa("172.19.0.1:42578"), sa("172.19.0.3:80")), want);
    }

    #[test]
    fn v2_tcp6_layout() {
        let got = encode_v2(sa("[2001:db8::1]:40000"), sa("[fe80::a:b]:443"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // TCP over IPv6, 36 bytes follow
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        want.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0x0b]);
        want.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]); // 40000, 443
        assert_eq!(got, want);
        assert_eq!(got.len(), 16 + 36);
    }

    #[test]
    fn ipv4_mapped_addresses_are_written_as_ipv4() {
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped()), 5000);
        assert_eq!(encode_v1(mapped, sa("10.0.0.1:80")), "PROXY TCP4 10.0.0.7 10.0.0.1 5000 80\r\n");
        assert_eq!(encode_v2(mapped, sa("10.0.0.1:80")), encode_v2(sa("10.0.0.7:5000"), sa("10.0.0.1:80")));
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        assert_eq!(
            encode_v1(sa("10.0.0.7:5000"), sa("[2001:db8::1]:80")),
            "PROXY TCP6 ::ffff:10.0.0.7 2001:db8::1 5000 80\r\n"
        );
        let v2 = encode_v2(sa("10.0.0.7:5000"), sa("[2001:db8::1]:80"));
        assert_eq!(&v2[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&v2[16..32], &Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets());
    }

    #[test]
    fn version_from_config() {
        assert_eq!(Version::from_config(None), None);
        assert_eq!(Version::from_config(Some(1)), Some(Version::V1));
        assert_eq!(Version::from_config(Some(2)), Some(Version::V2));
        assert_eq!(Version::from_config(Some(3)), None);
    }
}
