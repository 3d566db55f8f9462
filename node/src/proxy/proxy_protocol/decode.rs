//! The PROXY protocol decoder (HAProxy's `proxy-protocol.txt`, versions 1 and 2) of listeners with
//! `accept_proxy_protocol`: the header a front (an L4 load balancer before this node) sends ahead of
//! the client's bytes, read strictly and within bounds.
//!
//! Pure: [`decode`] looks at the bytes received so far and answers "a complete header of `len` bytes",
//! "not complete yet" (every byte seen belongs to the header: read more) or an [`Error`] naming what is
//! wrong. It never looks past the header, so the caller consumes exactly [`Header::len`] bytes and the
//! client's stream starts right after.
//!
//! What is accepted:
//! - version 1: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, fields separated by exactly one
//!   space, IPv4 addresses as four decimal numbers without leading zeroes, IPv6 addresses in any form
//!   `Ipv6Addr` parses, ports 0..=65535 without leading zeroes, the line at most [`V1_MAX_LEN`]
//!   (107) bytes with its CRLF; a bare CR or LF is refused. `PROXY UNKNOWN` (alone or followed by a
//!   space and anything up to the CRLF) carries no address.
//! - version 2: the 12-byte signature, version 2 with command LOCAL (a connection the front opened
//!   itself, e.g. a health check: its address block, whatever the family, is skipped) or PROXY; with
//!   PROXY the family and transport byte is one the spec defines (`0x00` UNSPEC, `0x11`/`0x12`
//!   TCP/UDP over IPv4, `0x21`/`0x22` over IPv6, `0x31`/`0x32` AF_UNIX), and any other is refused.
//!   UNSPEC and AF_UNIX carry no address this node can use. The length field may not exceed
//!   [`V2_MAX_PAYLOAD`]; it must hold the family's address block, and what follows the addresses
//!   must be whole TLVs (type, 16-bit length, value), which are checked and skipped.
//!
//! Bound: a header is never longer than [`MAX_HEADER_LEN`] (16 + 536 = 552 bytes): the spec asks
//! senders to send the header at once and notes it always fits in one MSS, and 536 bytes is TCP's
//! default MSS over IPv4 (RFC 1122); it holds an AF_UNIX address block and 320 bytes of TLVs.
//!
//! Known limits: TLVs are only checked for framing; none is returned, and a CRC32C TLV is not verified
//! (the spec makes verifying it optional).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Version, V1_MAX_LEN, V2_SIGNATURE};

/// Most bytes of a version 2 header after its 16-byte fixed part (address block and TLVs).
pub const V2_MAX_PAYLOAD: usize = 536;
/// Longest header of either version the decoder accepts, in bytes.
pub const MAX_HEADER_LEN: usize = 16 + V2_MAX_PAYLOAD;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// Bytes the header takes on the wire; the client's stream starts after them.
    pub len: usize,
    pub addresses: Addresses,
}

/// What a header says about the original connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// The client `src` connected to `dst` over `transport`.
    Inet { transport: Transport, src: SocketAddr, dst: SocketAddr },
    /// No address this node can use: the connection's own endpoints stand.
    None(NoAddress),
}

/// Transport of the original connection (version 1 is always TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Why a header carries no usable address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAddress {
    /// Version 1 `PROXY UNKNOWN`.
    Unknown,
    /// Version 2 LOCAL: the front opened the connection itself.
    Local,
    /// Version 2 PROXY with family or transport UNSPEC.
    Unspec,
    /// Version 2 PROXY over AF_UNIX.
    Unix,
}

/// What is wrong with a header. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header: it starts with \"{0}\"")]
    NotProxyProtocol(String),
    #[error("version 1 line without CRLF in its first {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("version 1 line ends with a bare {0} instead of CRLF")]
    V1BareLineEnd(&'static str),
    #[error("version 1 line \"{line}\": {problem}")]
    V1Syntax { line: String, problem: V1Problem },
    #[error("version 2 header of version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("version 2 header with command {0:#x} (expected LOCAL 0x0 or PROXY 0x1)")]
    V2Command(u8),
    #[error("version 2 header with family and transport {0:#04x} (expected 0x00, 0x11, 0x12, 0x21, 0x22, 0x31 or 0x32)")]
    V2Family(u8),
    #[error(
        "version 2 header announces {0} bytes of addresses and TLVs, above the limit of {V2_MAX_PAYLOAD}"
    )]
    V2TooLong(usize),
    #[error("version 2 header announces {len} bytes, too few for the {need}-byte address block of {family}")]
    V2ShortAddresses { family: &'static str, len: usize, need: usize },
    #[error("version 2 header: the TLV at byte {at} of the header runs past its end")]
    V2Tlv { at: usize },
}

/// What is wrong with a version 1 line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V1Problem {
    #[error("unknown protocol \"{0}\" (expected TCP4, TCP6 or UNKNOWN)")]
    Protocol(String),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {field} \"{value}\"")]
    Invalid { field: &'static str, value: String },
    #[error("fields must be separated by exactly one space")]
    Spacing,
    #[error("unexpected \"{0}\" after the destination port")]
    Trailing(String),
}

const V1_PREFIX: &[u8] = b"PROXY ";

/// Decode the header at the start of `buf`, the bytes received so far: `Ok(Some(header))` when
/// complete, `Ok(None)` when more bytes are needed (then every byte of `buf` belongs to the header and
/// `buf` is shorter than [`MAX_HEADER_LEN`]), or what is wrong.
pub fn decode(buf: &[u8]) -> Result<Option<Header>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return decode_v2(buf);
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return decode_v1(buf);
    }
    Err(Error::NotProxyProtocol(shown(&buf[..buf.len().min(16)])))
}

/// Whether `buf` and `sig` agree on their common length.
fn is_prefix_of(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

/// Bytes as text for an error message: printable ASCII as is, the rest escaped, at most 64 bytes.
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let mut s = cut.escape_ascii().to_string();
    if bytes.len() > cut.len() {
        s.push('…');
    }
    s
}

fn decode_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|b| *b == b'\r' || *b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN { Err(Error::V1TooLong) } else { Ok(None) };
    };
    if window[end] == b'\n' {
        return Err(Error::V1BareLineEnd("LF"));
    }
    match buf.get(end + 1) {
        // The CR is the 107th byte: its LF would be the 108th.
        None if end + 1 >= V1_MAX_LEN => return Err(Error::V1TooLong),
        None => return Ok(None),
        Some(b'\n') if end + 2 > V1_MAX_LEN => return Err(Error::V1TooLong),
        Some(b'\n') => {}
        Some(_) => return Err(Error::V1BareLineEnd("CR")),
    }
    let line = &buf[..end];
    let syntax = |problem| Error::V1Syntax { line: shown(line), problem };
    let addresses = parse_v1_line(&line[V1_PREFIX.len()..]).map_err(syntax)?;
    Ok(Some(Header { version: Version::V1, len: end + 2, addresses }))
}

/// The part of a version 1 line after `PROXY `, without its CRLF.
fn parse_v1_line(rest: &[u8]) -> Result<Addresses, V1Problem> {
    let (protocol, after) = match rest.iter().position(|b| *b == b' ') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let v6 = match protocol {
        b"UNKNOWN" => return Ok(Addresses::None(NoAddress::Unknown)),
        b"TCP4" => false,
        b"TCP6" => true,
        b"" => return Err(V1Problem::Spacing),
        other => return Err(V1Problem::Protocol(shown(other))),
    };
    let mut fields = after.unwrap_or_default().split(|b| *b == b' ');
    let mut next = |name: &'static str| -> Result<&[u8], V1Problem> {
        match fields.next() {
            None => Err(V1Problem::Missing(name)),
            Some([]) if after.is_some_and(|a| !a.is_empty()) => Err(V1Problem::Spacing),
            Some([]) => Err(V1Problem::Missing(name)),
            Some(f) => Ok(f),
        }
    };
    let src = next("source address")?;
    let dst = next("destination address")?;
    let sport = next("source port")?;
    let dport = next("destination port")?;
    if let Some(extra) = fields.next() {
        return Err(if extra.is_empty() { V1Problem::Spacing } else { V1Problem::Trailing(shown(extra)) });
    }
    let src_ip = v1_ip(src, v6, "source address")?;
    let dst_ip = v1_ip(dst, v6, "destination address")?;
    let src = SocketAddr::new(src_ip, v1_port(sport, "source port")?);
    let dst = SocketAddr::new(dst_ip, v1_port(dport, "destination port")?);
    Ok(Addresses::Inet { transport: Transport::Tcp, src, dst })
}

fn v1_ip(field: &[u8], v6: bool, name: &'static str) -> Result<IpAddr, V1Problem> {
    let invalid = || V1Problem::Invalid { field: name, value: shown(field) };
    let text = std::str::from_utf8(field).map_err(|_| invalid())?;
    // std's parsers are strict: IPv4 only as four decimal numbers without leading zeroes.
    if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| invalid())
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| invalid())
    }
}

fn v1_port(field: &[u8], name: &'static str) -> Result<u16, V1Problem> {
    let invalid = || V1Problem::Invalid { field: name, value: shown(field) };
    if field.len() > 5 || !field.iter().all(u8::is_ascii_digit) || (field.len() > 1 && field[0] == b'0') {
        return Err(invalid());
    }
    std::str::from_utf8(field).ok().and_then(|s| s.parse().ok()).ok_or_else(invalid)
}

fn decode_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(Error::V2Version(ver_cmd >> 4));
        }
        if ver_cmd & 0x0f > 1 {
            return Err(Error::V2Command(ver_cmd & 0x0f));
        }
    }
    let local = buf.get(12).is_some_and(|b| b & 0x0f == 0);
    // LOCAL: the family is ignored (the spec says to discard the whole address block).
    let family = match buf.get(13) {
        Some(&fam) if !local => Some(v2_family(fam)?),
        _ => None,
    };
    let Some(len) = buf.get(14..16).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Ok(None);
    };
    if len > V2_MAX_PAYLOAD {
        return Err(Error::V2TooLong(len));
    }
    if let Some(f) = family {
        if len < f.block {
            return Err(Error::V2ShortAddresses { family: f.name, len, need: f.block });
        }
    }
    let total = 16 + len;
    let Some(payload) = buf.get(16..total) else { return Ok(None) };
    let addresses = match family {
        None => Addresses::None(NoAddress::Local),
        Some(f) => {
            check_tlvs(payload, f.block)?;
            f.addresses(payload)
        }
    };
    Ok(Some(Header { version: Version::V2, len: total, addresses }))
}

/// A version 2 family and transport byte the spec defines.
#[derive(Clone, Copy)]
struct Family {
    byte: u8,
    name: &'static str,
    /// Length of its address block.
    block: usize,
}

fn v2_family(byte: u8) -> Result<Family, Error> {
    let (name, block) = match byte {
        0x00 => ("UNSPEC", 0),
        0x11 => ("TCP over IPv4", 12),
        0x12 => ("UDP over IPv4", 12),
        0x21 => ("TCP over IPv6", 36),
        0x22 => ("UDP over IPv6", 36),
        0x31 => ("UNIX stream", 216),
        0x32 => ("UNIX datagram", 216),
        other => return Err(Error::V2Family(other)),
    };
    Ok(Family { byte, name, block })
}

impl Family {
    /// The addresses of a PROXY header's `payload` (at least `block` bytes long).
    fn addresses(self, payload: &[u8]) -> Addresses {
        let transport = if self.byte & 0x0f == 2 { Transport::Udp } else { Transport::Tcp };
        let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
        match self.byte >> 4 {
            1 => {
                let ip = |at: usize| {
                    IpAddr::from([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]])
                };
                let src = SocketAddr::new(ip(0), port(8));
                let dst = SocketAddr::new(ip(4), port(10));
                Addresses::Inet { transport, src, dst }
            }
            2 => {
                let ip = |at: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&payload[at..at + 16]);
                    IpAddr::from(o)
                };
                let src = SocketAddr::new(ip(0), port(32));
                let dst = SocketAddr::new(ip(16), port(34));
                Addresses::Inet { transport, src, dst }
            }
            3 => Addresses::None(NoAddress::Unix),
            _ => Addresses::None(NoAddress::Unspec),
        }
    }
}

/// The TLVs after the address block: whole ones (type, 16-bit big-endian length, value) to the end.
/// With UNSPEC the address block's length is unknown, so nothing is checked.
fn check_tlvs(payload: &[u8], block: usize) -> Result<(), Error> {
    if block == 0 {
        return Ok(());
    }
    let mut at = block;
    while at < payload.len() {
        let Some(l) = payload.get(at + 1..at + 3) else { return Err(Error::V2Tlv { at: 16 + at }) };
        let next = at + 3 + usize::from(u16::from_be_bytes([l[0], l[1]]));
        if next > payload.len() {
            return Err(Error::V2Tlv { at: 16 + at });
        }
        at = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{encode, encode_v1};
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn inet(src: &str, dst: &str) -> Addresses {
        Addresses::Inet { transport: Transport::Tcp, src: sa(src), dst: sa(dst) }
    }

    fn ok(buf: &[u8]) -> Header {
        match decode(buf) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", buf.escape_ascii().to_string()),
        }
    }

    fn err(buf: &[u8]) -> Error {
        match decode(buf) {
            Err(e) => e,
            other => panic!("{:?} should be refused: {other:?}", buf.escape_ascii().to_string()),
        }
    }

    /// Every strict prefix of a header is "not complete yet".
    fn every_prefix_is_incomplete(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(decode(&header[..n]), Ok(None), "{} of {} bytes", n, header.len());
        }
    }

    #[test]
    fn v1_lines_of_the_spec_decode_and_stop_at_the_crlf() {
        let mut wire = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n".to_vec();
        let h = ok(&wire);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.len, 47);
        assert_eq!(h.addresses, inet("192.168.0.1:56324", "192.168.0.11:443"));
        wire.truncate(h.len);
        every_prefix_is_incomplete(&wire);

        let v6 = ok(b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.7 0 65535\r\n");
        assert_eq!(v6.addresses, inet("[2001:db8::1]:0", "[::ffff:10.0.0.7]:65535"));
        let all = SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xffff; 8])), 65535);
        assert_eq!(ok(encode_v1(all, all).as_bytes()).len, 104);
    }

    #[test]
    fn v1_unknown_carries_no_address_and_its_rest_is_ignored() {
        assert_eq!(ok(b"PROXY UNKNOWN\r\n").addresses, Addresses::None(NoAddress::Unknown));
        assert_eq!(ok(b"PROXY UNKNOWN\r\n").len, 15);
        let worst = format!("PROXY UNKNOWN {0} {0} 65535 65535\r\n", "ffff:".repeat(7) + "ffff");
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(ok(worst.as_bytes()).len, V1_MAX_LEN);
        assert_eq!(ok(b"PROXY UNKNOWN whatever \x01\xff\r\n").addresses, Addresses::None(NoAddress::Unknown));
        assert!(matches!(
            err(b"PROXY UNKNOWNX\r\n"),
            Error::V1Syntax { problem: V1Problem::Protocol(_), .. }
        ));
    }

    #[test]
    fn v1_lines_that_break_the_grammar_are_refused_naming_the_field() {
        let problem = |line: &[u8]| match err(line) {
            Error::V1Syntax { problem, .. } => problem,
            other => panic!("{other:?}"),
        };
        let invalid = |field: &'static str, value: &str| V1Problem::Invalid { field, value: value.into() };
        assert_eq!(problem(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), V1Problem::Protocol("TCP5".into()));
        assert_eq!(problem(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), invalid("source address", "01.2.3.4"));
        assert_eq!(problem(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), invalid("source address", "::1"));
        assert_eq!(problem(b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n"), invalid("destination address", "5.6.7.8"));
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), invalid("source port", "080"));
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"), invalid("destination port", "65536"));
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n"), invalid("destination port", "+2"));
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), V1Problem::Missing("destination port"));
        assert_eq!(problem(b"PROXY TCP4\r\n"), V1Problem::Missing("source address"));
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), V1Problem::Spacing);
        assert_eq!(problem(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), V1Problem::Spacing);
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), V1Problem::Spacing);
        assert_eq!(problem(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), V1Problem::Trailing("3".into()));
        assert_eq!(
            problem(b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n"),
            invalid("destination address", "5.6.7.\\xff")
        );
    }

    #[test]
    fn v1_line_ends_and_length_are_strict() {
        assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), Error::V1BareLineEnd("LF"));
        assert_eq!(err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), Error::V1BareLineEnd("CR"));
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(decode(&long.as_bytes()[..V1_MAX_LEN - 1]), Ok(None));
        assert_eq!(err(&long.as_bytes()[..V1_MAX_LEN]), Error::V1TooLong);
        // A CR as the 107th byte leaves no room for its LF.
        let cr_last = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
        assert_eq!(cr_last.len(), V1_MAX_LEN + 1);
        assert_eq!(err(&cr_last.as_bytes()[..V1_MAX_LEN]), Error::V1TooLong);
        assert_eq!(err(cr_last.as_bytes()), Error::V1TooLong);
    }

    #[test]
    fn other_protocols_are_refused_at_their_first_wrong_byte() {
        assert_eq!(err(b"GET / HTTP/1.1\r\n"), Error::NotProxyProtocol("GET / HTTP/1.1\\r\\n".into()));
        assert!(matches!(err(b"PROXZ"), Error::NotProxyProtocol(_)));
        assert!(matches!(err(b"\x16\x03\x01"), Error::NotProxyProtocol(_)));
        assert!(matches!(err(b"\r\n\r\n\x00\r\nQUIX"), Error::NotProxyProtocol(_)));
        assert_eq!(decode(b"PROX"), Ok(None));
        assert_eq!(decode(b"\r\n\r\n\x00"), Ok(None));
    }

    fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, fam]);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn v2_headers_of_our_encoder_decode_to_their_addresses() {
        for (src, dst) in [("172.19.0.1:42578", "172.19.0.3:80"), ("[2001:db8::1]:40000", "[fe80::a:b]:443")]
        {
            let mut wire = encode(Version::V2, sa(src), sa(dst));
            let len = wire.len();
            every_prefix_is_incomplete(&wire);
            wire.extend_from_slice(b"client bytes");
            let h = ok(&wire);
            assert_eq!((h.version, h.len, h.addresses), (Version::V2, len, inet(src, dst)));
        }
    }

    #[test]
    fn v2_udp_local_unspec_and_unix() {
        let v4 = [10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0, 53];
        let udp = ok(&v2(0x21, 0x12, &v4));
        let want =
            Addresses::Inet { transport: Transport::Udp, src: sa("10.0.0.1:5000"), dst: sa("10.0.0.2:53") };
        assert_eq!(udp.addresses, want);
        // LOCAL: the block is skipped whatever it holds, even a family the spec does not define.
        assert_eq!(ok(&v2(0x20, 0x00, &[])).addresses, Addresses::None(NoAddress::Local));
        assert_eq!(ok(&v2(0x20, 0x11, &v4)).addresses, Addresses::None(NoAddress::Local));
        assert_eq!(ok(&v2(0x20, 0x77, &[1, 2])).len, 18);
        assert_eq!(ok(&v2(0x21, 0x00, &[9; 7])).addresses, Addresses::None(NoAddress::Unspec));
        let unix = ok(&v2(0x21, 0x31, &[b'/'; 216]));
        assert_eq!((unix.addresses, unix.len), (Addresses::None(NoAddress::Unix), 232));
    }

    #[test]
    fn v2_tlvs_are_skipped_when_whole_and_refused_when_cut() {
        let mut p = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        p.extend_from_slice(&[0x04, 0x00, 0x00]); // NOOP, empty
        p.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']); // AUTHORITY "a.b"
        let h = ok(&v2(0x21, 0x11, &p));
        assert_eq!((h.len, h.addresses), (16 + p.len(), inet("10.0.0.1:1", "10.0.0.2:2")));
        let mut cut = p.clone();
        cut.extend_from_slice(&[0x05, 0x00]);
        assert_eq!(err(&v2(0x21, 0x11, &cut)), Error::V2Tlv { at: 16 + p.len() });
        let mut over = p.clone();
        over.extend_from_slice(&[0x05, 0x00, 0x09, 1, 2]);
        assert_eq!(err(&v2(0x21, 0x11, &over)), Error::V2Tlv { at: 16 + p.len() });
    }

    #[test]
    fn v2_fields_the_spec_does_not_define_are_refused() {
        assert_eq!(err(&v2(0x11, 0x11, &[0; 12])[..13]), Error::V2Version(1));
        assert_eq!(err(&v2(0x22, 0x11, &[0; 12])[..13]), Error::V2Command(2));
        for fam in [0x01, 0x10, 0x13, 0x23, 0x30, 0x41, 0xff] {
            assert_eq!(err(&v2(0x21, fam, &[0; 12])[..14]), Error::V2Family(fam));
        }
        let short = err(&v2(0x21, 0x21, &[0; 12]));
        assert_eq!(short, Error::V2ShortAddresses { family: "TCP over IPv6", len: 12, need: 36 });
        // Refused from the length field on, before the payload arrives.
        let mut long = v2(0x21, 0x11, &[]);
        long[14..16].copy_from_slice(&537u16.to_be_bytes());
        assert_eq!(err(&long), Error::V2TooLong(537));
        // The longest accepted: the addresses and one NOOP TLV padding to the limit.
        let mut longest = vec![0; 12];
        longest.extend_from_slice(&[0x04, 0x02, 0x09]);
        longest.resize(V2_MAX_PAYLOAD, 0);
        assert_eq!(ok(&v2(0x21, 0x11, &longest)).len, MAX_HEADER_LEN);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = err(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n");
        assert_eq!(
            e.to_string(),
            "version 1 line \"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\": invalid source port \"99999\""
        );
        assert_eq!(
            err(&v2(0x21, 0x13, &[])).to_string(),
            "version 2 header with family and transport 0x13 (expected 0x00, 0x11, 0x12, 0x21, 0x22, 0x31 or 0x32)"
        );
    }
}
