//! Target `proxy_protocol`: what a front sends a listener with `accept_proxy_protocol`, through the
//! node's decoder (`lbfleet_node::proxy::proxy_protocol::decode`), and the node's encoder checked
//! against it and against the `ppp` crate as an independent decoder.
//!
//! The first byte picks the mode (`byte % 3`); the rest is its input:
//! - 0, raw bytes: decoding never panics and never takes more than the bound ([`MAX_HEADER_LEN`]) or
//!   than it was given; the verdict is consistent byte by byte (every prefix of an accepted header, or
//!   of a header still incomplete, is "incomplete"; what follows a header does not change it; a refusal
//!   stays a refusal with more bytes), which is what the node's peek-and-consume read relies on;
//!   addresses decoded re-encode with our encoder (v1 and v2) to headers that decode to the same
//!   addresses (IPv4-mapped IPv6 counts as IPv4); `ppp` decodes every header we accept to the same
//!   addresses, and every TCP/UDP-over-IP header `ppp` accepts that the spec allows, we accept alike.
//! - 1, a version 2 header framed from the input (command byte, family byte, then the payload with
//!   its length filled in): the same checks, reaching the address and TLV code without guessing the
//!   signature.
//! - 2, addresses from the input: encode(version, src, dst) followed by the rest of the input decodes
//!   to exactly the header's length and to the same addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lbfleet_node::proxy::proxy_protocol::decode::{decode, Addresses, Header, Transport, MAX_HEADER_LEN};
use lbfleet_node::proxy::proxy_protocol::{encode, Version, V1_MAX_LEN, V2_SIGNATURE};

/// Run the mode the first byte picks on the rest of `data`.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => check_bytes(rest),
        1 => {
            let Some((&ver_cmd, rest)) = rest.split_first() else { return };
            let Some((&fam, payload)) = rest.split_first() else { return };
            let len = payload.len().min(usize::from(u16::MAX));
            let mut wire = V2_SIGNATURE.to_vec();
            wire.extend_from_slice(&[ver_cmd, fam]);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
            wire.extend_from_slice(&payload[..len]);
            check_bytes(&wire);
        }
        _ => check_encoded(rest),
    }
}

fn check_bytes(buf: &[u8]) {
    let verdict = decode(buf);
    match &verdict {
        Ok(Some(h)) => {
            assert!(h.len <= buf.len(), "{h:?} is longer than the {} bytes given", buf.len());
            assert!(h.len <= MAX_HEADER_LEN, "{h:?} is longer than the bound {MAX_HEADER_LEN}");
            if h.version == Version::V1 {
                assert!(h.len <= V1_MAX_LEN, "{h:?}: a version 1 line is at most {V1_MAX_LEN} bytes");
            }
            assert_eq!(decode(&buf[..h.len]), verdict, "the bytes after the header changed it");
            every_prefix_incomplete(&buf[..h.len]);
            re_encodes(h);
            ppp_agrees(&buf[..h.len], h);
        }
        Ok(None) => {
            assert!(buf.len() < MAX_HEADER_LEN, "{} bytes and still incomplete", buf.len());
            every_prefix_incomplete(buf);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.len() < 1024, "an error message of {} bytes", shown.len());
            let mut longer = buf.to_vec();
            longer.extend_from_slice(b"\r\n\0\0");
            assert!(decode(&longer).is_err(), "refused ({e}), then accepted with more bytes");
        }
    }
    ppp_accepts_only_what_we_accept(buf, &verdict);
}

fn every_prefix_incomplete(buf: &[u8]) {
    for n in 0..buf.len() {
        assert_eq!(decode(&buf[..n]), Ok(None), "the first {n} of {} bytes are not 'incomplete'", buf.len());
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The addresses of a decoded header, as our encoder would write them again.
fn re_encodes(h: &Header) {
    let Addresses::Inet { src, dst, .. } = h.addresses else { return };
    for version in [Version::V1, Version::V2] {
        let wire = encode(version, src, dst);
        match decode(&wire) {
            Ok(Some(back)) => {
                assert_eq!(
                    (back.version, back.len),
                    (version, wire.len()),
                    "{h:?} re-encoded as {version:?}"
                );
                let Addresses::Inet { transport, src: s, dst: d } = back.addresses else {
                    panic!("{h:?} re-encoded as {version:?} lost its addresses: {back:?}")
                };
                assert_eq!(transport, Transport::Tcp);
                assert_eq!(
                    (canonical(s), canonical(d)),
                    (canonical(src), canonical(dst)),
                    "{h:?} via {version:?}"
                );
            }
            other => panic!("{h:?} re-encoded as {version:?} does not decode: {other:?}"),
        }
    }
}

/// What `ppp` makes of a header we accepted: the same addresses.
fn ppp_agrees(wire: &[u8], h: &Header) {
    let Addresses::Inet { src, dst, .. } = h.addresses else { return };
    let theirs = match h.version {
        Version::V1 => match ppp::v1::Header::try_from(wire) {
            Ok(p) => ppp_v1_addresses(&p.addresses),
            Err(e) => panic!("ppp refuses the version 1 header we accepted ({h:?}): {e}"),
        },
        Version::V2 => match ppp::v2::Header::try_from(wire) {
            Ok(p) => {
                assert_eq!(p.len(), h.len, "ppp and we disagree on the header's length");
                assert!(p.tlvs().all(|t| t.is_ok()), "ppp finds a bad TLV in {h:?}");
                ppp_v2_addresses(&p.addresses)
            }
            Err(e) => panic!("ppp refuses the version 2 header we accepted ({h:?}): {e}"),
        },
    };
    assert_eq!(theirs, Some((src, dst)), "ppp reads other addresses than we do");
}

/// Every header `ppp` accepts with addresses over IP that the spec also allows, we accept alike.
/// (`ppp` is laxer than the spec in places we are not: a `+` before a v1 port, a v1 line ending in
/// ` \n` without CR, a v2 family byte with an UNSPEC half such as `0x10`, a v2 header of any length.)
fn ppp_accepts_only_what_we_accept(buf: &[u8], ours: &Result<Option<Header>, impl std::fmt::Debug>) {
    let theirs = if buf.starts_with(b"PROXY ") {
        let Ok(p) = ppp::v1::Header::try_from(buf) else { return };
        // ppp also takes a space before a bare LF as the line's end (found by this target).
        if p.header.contains('+') || !p.header.ends_with("\r\n") {
            return;
        }
        ppp_v1_addresses(&p.addresses)
    } else if buf.starts_with(&V2_SIGNATURE) {
        let Ok(p) = ppp::v2::Header::try_from(buf) else { return };
        let spec_allows = p.command == ppp::v2::Command::Proxy
            && matches!(buf[13], 0x11 | 0x12 | 0x21 | 0x22)
            && p.length() <= MAX_HEADER_LEN - 16
            && p.tlvs().all(|t| t.is_ok());
        if !spec_allows {
            return;
        }
        ppp_v2_addresses(&p.addresses)
    } else {
        return;
    };
    let Some(theirs) = theirs else { return };
    match ours {
        Ok(Some(Header { addresses: Addresses::Inet { src, dst, .. }, .. })) => {
            assert_eq!((*src, *dst), theirs, "ppp reads other addresses than we do")
        }
        other => panic!("ppp accepts {theirs:?}, we answer {other:?}"),
    }
}

fn ppp_v1_addresses(a: &ppp::v1::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        ppp::v1::Addresses::Tcp4(v) => Some((
            SocketAddr::new(v.source_address.into(), v.source_port),
            SocketAddr::new(v.destination_address.into(), v.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(v) => Some((
            SocketAddr::new(v.source_address.into(), v.source_port),
            SocketAddr::new(v.destination_address.into(), v.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn ppp_v2_addresses(a: &ppp::v2::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        ppp::v2::Addresses::IPv4(v) => Some((
            SocketAddr::new(v.source_address.into(), v.source_port),
            SocketAddr::new(v.destination_address.into(), v.destination_port),
        )),
        ppp::v2::Addresses::IPv6(v) => Some((
            SocketAddr::new(v.source_address.into(), v.source_port),
            SocketAddr::new(v.destination_address.into(), v.destination_port),
        )),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}

/// Addresses taken from the input (IPv4, IPv6, IPv4-mapped, mixed), encoded, then decoded.
fn check_encoded(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut take = |n: usize| -> Vec<u8> { (0..n).map(|_| bytes.next().unwrap_or(0)).collect() };
    let kinds = take(1)[0];
    let mut addr = |kind: u8| -> SocketAddr {
        let ip = match kind % 3 {
            0 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(4)).expect("4 bytes"))),
            1 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(16)).expect("16 bytes"))),
            _ => IpAddr::V6(Ipv4Addr::from(<[u8; 4]>::try_from(take(4)).expect("4 bytes")).to_ipv6_mapped()),
        };
        let port = take(2);
        SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]))
    };
    let src = addr(kinds);
    let dst = addr(kinds >> 2);
    let version = if kinds & 0x80 == 0 { Version::V1 } else { Version::V2 };
    let header = encode(version, src, dst);
    let mut wire = header.clone();
    wire.extend(data.iter().skip(24));
    match decode(&wire) {
        Ok(Some(h)) => {
            assert_eq!((h.version, h.len), (version, header.len()), "{src} -> {dst}");
            let Addresses::Inet { transport: Transport::Tcp, src: s, dst: d } = h.addresses else {
                panic!("{src} -> {dst} as {version:?} decoded without addresses: {h:?}")
            };
            assert_eq!((canonical(s), canonical(d)), (canonical(src), canonical(dst)));
            ppp_agrees(&header, &h);
        }
        other => panic!("our own {version:?} header for {src} -> {dst} does not decode: {other:?}"),
    }
}
