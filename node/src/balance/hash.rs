//! Fixed-seed hashing shared by every node.
//!
//! Every hash that decides where a request goes (a request's key, a backend's place in the Maglev table
//! or on the ring, the table digest) is XXH3 (64-bit) with one of the fixed seeds below. XXH3's output is
//! specified byte for byte and does not depend on the CPU or the process, so every node and every restart
//! computes the same values. std's `DefaultHasher`/`RandomState` are never used for this: they are seeded
//! per process.
//!
//! Changing a seed or the byte layout of a key reshuffles every table in the fleet; the tests pin known
//! values so that such a change cannot slip in unnoticed.

use std::net::{IpAddr, SocketAddr};

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// Seed of request keys ([`hash_key_bytes`] and the helpers built on it).
pub const KEY_SEED: u64 = 0x6c62_666c_6565_742d; // "lbfleet-"
/// Seed of a backend's Maglev `offset` hash.
pub const OFFSET_SEED: u64 = 0x6d61_676c_6576_2d6f; // "maglev-o"
/// Seed of a backend's Maglev `skip` hash.
pub const SKIP_SEED: u64 = 0x6d61_676c_6576_2d73; // "maglev-s"
/// Seed of the points a backend places on the ring-hash (Ketama-style) ring.
pub const RING_SEED: u64 = 0x6b65_7461_6d61_2d70; // "ketama-p"
/// Seed of table and ring digests.
pub const DIGEST_SEED: u64 = 0x6469_6765_7374_2d31; // "digest-1"

/// Hash of a request key given as bytes (a header value, a cookie, a path).
pub fn hash_key_bytes(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

/// Hash of a client IP address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket
/// reports IPv4 clients) hashes like the IPv4 address itself, so both kinds of listener agree.
pub fn hash_ip(ip: IpAddr) -> u64 {
    let mut buf = [0u8; 16];
    hash_key_bytes(ip_bytes(ip, &mut buf))
}

/// Hash of a client IP address and port.
pub fn hash_socket_addr(addr: SocketAddr) -> u64 {
    let mut buf = [0u8; 18];
    let n = ip_bytes(addr.ip(), &mut buf[..16]).len();
    buf[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    hash_key_bytes(&buf[..n + 2])
}

/// Hash of a flow (UDP or TCP) as seen by a listener: client address and port, the listener's port and the
/// IP protocol number (6 TCP, 17 UDP). The node's own address is left out on purpose: each node binds its
/// own IP, and the same flow must hash the same whichever node it reaches.
pub fn hash_flow(client: SocketAddr, listener_port: u16, protocol: u8) -> u64 {
    let mut buf = [0u8; 21];
    let n = ip_bytes(client.ip(), &mut buf[..16]).len();
    buf[n..n + 2].copy_from_slice(&client.port().to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&listener_port.to_be_bytes());
    buf[n + 4] = protocol;
    hash_key_bytes(&buf[..n + 5])
}

/// Canonical bytes of an IP address: 4 bytes for IPv4 (and IPv4-mapped IPv6), 16 for other IPv6.
fn ip_bytes(ip: IpAddr, buf: &mut [u8]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            None => {
                buf[..16].copy_from_slice(&v6.octets());
                &buf[..16]
            }
        },
    }
}

/// A backend key hashed with one of the placement seeds.
pub(crate) fn hash_with_seed(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// Streaming hasher for digests; [`Digest::finish`] gives 16 lowercase hex digits.
pub(crate) struct Digest(Xxh3);

impl Digest {
    pub(crate) fn new(kind: &str) -> Self {
        let mut d = Digest(Xxh3::with_seed(DIGEST_SEED));
        d.bytes(kind.as_bytes());
        d
    }

    /// Length-prefixed bytes, so that ("ab", "c") and ("a", "bc") differ.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }

    pub(crate) fn u32s(&mut self, values: &[u32]) {
        // Little-endian regardless of the host, in chunks to keep the buffer small.
        let mut buf = [0u8; 4 * 256];
        for chunk in values.chunks(256) {
            for (i, v) in chunk.iter().enumerate() {
                buf[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            self.0.update(&buf[..4 * chunk.len()]);
        }
    }

    pub(crate) fn finish(&self) -> String {
        format!("{:016x}", self.0.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn key_hashes_are_pinned() {
        // These values are part of the fleet's contract: every node must compute them alike, across
        // versions. If this test fails, the hash function, a seed or a byte layout changed. The values
        // agree with the reference C implementation of XXH3 (libxxhash 0.8).
        assert_eq!(hash_key_bytes(b""), 0x4fc9_1946_1de5_bb2d, "{:#x}", hash_key_bytes(b""));
        assert_eq!(hash_key_bytes(b"user-42"), 0xf240_2f5a_c19f_56ef, "{:#x}", hash_key_bytes(b"user-42"));
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(hash_ip(ip), 0x479c_8706_106a_cb8c, "{:#x}", hash_ip(ip));
    }

    #[test]
    fn ipv4_mapped_addresses_hash_like_ipv4() {
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(hash_ip(IpAddr::V4(v4)), hash_ip(IpAddr::V6(v4.to_ipv6_mapped())));
        assert_eq!(
            hash_socket_addr(SocketAddr::new(IpAddr::V4(v4), 5000)),
            hash_socket_addr(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 5000))
        );
        assert_ne!(hash_ip(IpAddr::V4(v4)), hash_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn every_part_of_a_flow_counts() {
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let base = hash_flow(a, 53, 17);
        assert_ne!(base, hash_flow(b, 53, 17));
        assert_ne!(base, hash_flow(a, 54, 17));
        assert_ne!(base, hash_flow(a, 53, 6));
        assert_ne!(hash_socket_addr(a), hash_socket_addr(b));
        assert_ne!(hash_socket_addr(a), hash_ip(a.ip()));
    }

    #[test]
    fn digest_is_length_prefixed() {
        let mut x = Digest::new("t");
        x.bytes(b"ab");
        x.bytes(b"c");
        let mut y = Digest::new("t");
        y.bytes(b"a");
        y.bytes(b"bc");
        assert_ne!(x.finish(), y.finish());
        assert_eq!(x.finish().len(), 16);
    }
}
