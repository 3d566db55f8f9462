//! Pure header handling of the HTTP proxy: hop-by-hop stripping, forwarding headers, cookies, the
//! sticky-cookie value and the request's host. No I/O; unit-tested below.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Uri, Version};

use crate::balance::key::trim;
pub use crate::balance::key::{cookie, host_without_port, parse_sticky, sticky_value};

/// The pseudonym this proxy uses in `Via`.
pub const VIA_NAME: &str = "lbfleet";

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the historical ones still seen in the wild): they describe one
/// connection, so they are never forwarded, in either direction.
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers a `Connection` option may not remove: they frame or address the message, and a peer could
/// otherwise make the proxy forward a body without its length or a request without its host.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Whether the `Connection` header(s) list `token` (case-insensitive), e.g. `upgrade` or `close`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// Remove the hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim(t)).ok())
        .filter(|n| !protected(n))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

/// What an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` plus `Upgrade: ...`), if anything.
pub fn requested_upgrade(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !connection_has(headers, "upgrade") {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// The `Via` protocol name of an HTTP version (`1.1`, `2`, ...).
pub fn via_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Append `value` to the comma-separated list in header `name` (folding repeated lines into one).
pub fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut out: Vec<u8> = Vec::new();
    for v in headers.get_all(&name) {
        let v = trim(v.as_bytes());
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    if !out.is_empty() {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value.as_bytes());
    // The existing values were valid header bytes; only an invalid `value` can fail, and then the old
    // list is kept unchanged.
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(name, v);
    }
}

/// Add `Via` for a message that came in with `version`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let via = format!("{} {VIA_NAME}", via_version(version));
    append_list(headers, header::VIA, &via);
}

/// Add the forwarding headers to a request going to a backend:
/// `X-Forwarded-For` (client IP appended), `X-Forwarded-Proto: http`, `X-Forwarded-Host` (the host the
/// client asked for, replacing any), `Forwarded` (RFC 7239 element appended) and `Via`.
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, host: Option<&str>, version: Version) {
    add_forwarding_as(headers, client, host, version, Scheme::Http)
}

/// The scheme the client spoke to the listener: `http`, or `https` when the listener terminated TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// [`add_forwarding`] for a client that spoke `scheme` (`X-Forwarded-Proto` and `Forwarded`'s `proto`).
pub fn add_forwarding_as(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&str>,
    version: Version,
    scheme: Scheme,
) {
    let client = canonical_ip(client);
    append_list(headers, HeaderName::from_static("x-forwarded-for"), &client.to_string());
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(scheme.as_str()));
    let xfh = HeaderName::from_static("x-forwarded-host");
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert(xfh, v);
        }
        None => {
            headers.remove(xfh);
        }
    }
    append_list(headers, header::FORWARDED, &forwarded_element_as(client, host, scheme));
    add_via(headers, version);
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One RFC 7239 `Forwarded` element: `for=...;proto=http[;host=...]`. IPv6 addresses are bracketed and
/// quoted; a host that is not a token is quoted; a host with bytes a quoted string cannot carry is left
/// out.
pub fn forwarded_element(client: IpAddr, host: Option<&str>) -> String {
    forwarded_element_as(client, host, Scheme::Http)
}

/// [`forwarded_element`] with `proto=` the client's `scheme`.
pub fn forwarded_element_as(client: IpAddr, host: Option<&str>, scheme: Scheme) -> String {
    let mut s = match client {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    s.push_str(";proto=");
    s.push_str(scheme.as_str());
    if let Some(h) = host.filter(|h| !h.is_empty() && h.bytes().all(|b| (0x20..0x7f).contains(&b))) {
        if h.bytes().all(is_tchar) {
            s.push_str(";host=");
            s.push_str(h);
        } else {
            s.push_str(";host=\"");
            for c in h.chars() {
                if c == '"' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
        }
    }
    s
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Set-Cookie` of the sticky cookie.
pub fn sticky_set_cookie(name: &str, backend_key: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}={}; Path=/; HttpOnly", sticky_value(backend_key))).ok()
}

/// The host the client asked for: the URI's authority (HTTP/2 `:authority`, HTTP/1 absolute-form),
/// else the `Host` header. Port included, as sent.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::trim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash_key_bytes;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other , close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("content-length", "4"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let mut h = map(&[("connection", "content-length, host"), ("content-length", "4"), ("host", "a")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("content-length").unwrap(), "4");
        assert_eq!(h.get("host").unwrap(), "a");
    }

    #[test]
    fn upgrade_needs_the_connection_option_and_http_1_1() {
        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(requested_upgrade(Version::HTTP_11, &h).unwrap(), "websocket");
        assert!(requested_upgrade(Version::HTTP_10, &h).is_none());
        assert!(requested_upgrade(Version::HTTP_2, &h).is_none());
        let h = map(&[("upgrade", "websocket")]);
        assert!(requested_upgrade(Version::HTTP_11, &h).is_none());
        let h = map(&[("connection", "upgrade")]);
        assert!(requested_upgrade(Version::HTTP_11, &h).is_none());
    }

    #[test]
    fn forwarding_headers_append_to_existing_ones() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("forwarded", "for=203.0.113.7"),
            ("via", "1.0 edge"),
        ]);
        add_forwarding(&mut h, "10.1.2.3".parse().unwrap(), Some("shop.example:8080"), Version::HTTP_11);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 198.51.100.1, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example:8080");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=203.0.113.7, for=10.1.2.3;proto=http;host=\"shop.example:8080\""
        );
        assert_eq!(h.get("via").unwrap(), "1.0 edge, 1.1 lbfleet");
    }

    #[test]
    fn forwarding_headers_of_a_tls_client_say_https() {
        let mut h = HeaderMap::new();
        add_forwarding_as(&mut h, "10.0.0.9".parse().unwrap(), None, Version::HTTP_2, Scheme::Https);
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("forwarded").unwrap(), "for=10.0.0.9;proto=https");
    }

    #[test]
    fn forwarding_headers_without_prior_ones_and_over_http2() {
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "2001:db8::1".parse().unwrap(), Some("example.com"), Version::HTTP_2);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert_eq!(h.get("forwarded").unwrap(), "for=\"[2001:db8::1]\";proto=http;host=example.com");
        assert_eq!(h.get("via").unwrap(), "2 lbfleet");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "::ffff:10.0.0.9".parse().unwrap(), None, Version::HTTP_10);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(h.get("forwarded").unwrap(), "for=10.0.0.9;proto=http");
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(h.get("via").unwrap(), "1.0 lbfleet");
    }

    #[test]
    fn forwarded_host_is_escaped_or_dropped() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(forwarded_element(ip, Some("a\"b")), "for=10.0.0.1;proto=http;host=\"a\\\"b\"");
        assert_eq!(forwarded_element(ip, Some("caf\u{e9}")), "for=10.0.0.1;proto=http");
        assert_eq!(forwarded_element(ip, Some("")), "for=10.0.0.1;proto=http");
    }

    #[test]
    fn cookies_are_found_by_exact_name_across_headers() {
        let h = map(&[("cookie", "a=1; lbsid=abc ;b=2"), ("cookie", "c=3; lbsid=second")]);
        assert_eq!(cookie(&h, "lbsid"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "LBSID"), None);
        assert_eq!(cookie(&h, "lb"), None);
        assert_eq!(cookie(&map(&[("cookie", "novalue; x=")]), "x"), Some(&b""[..]));
        assert_eq!(cookie(&HeaderMap::new(), "x"), None);
    }

    #[test]
    fn sticky_values_round_trip_and_reject_junk() {
        let v = sticky_value("127.0.0.1:9001");
        assert_eq!(v.len(), 16);
        assert_eq!(parse_sticky(v.as_bytes()), Some(hash_key_bytes(b"127.0.0.1:9001")));
        assert_eq!(parse_sticky(b"0"), None);
        assert_eq!(parse_sticky(b"zzzzzzzzzzzzzzzz"), None);
        assert_eq!(parse_sticky(b"+123456789abcdef"), None);
        let sc = sticky_set_cookie("lbsid", "127.0.0.1:9001").unwrap();
        assert_eq!(sc.to_str().unwrap(), format!("lbsid={v}; Path=/; HttpOnly"));
    }

    #[test]
    fn host_comes_from_the_authority_then_the_host_header() {
        let h = map(&[("host", " Example.COM:8080 ")]);
        let origin: Uri = "/a?b".parse().unwrap();
        assert_eq!(request_host(&origin, &h), Some("Example.COM:8080"));
        let absolute: Uri = "http://other.example/x".parse().unwrap();
        assert_eq!(request_host(&absolute, &h), Some("other.example"));
        assert_eq!(request_host(&origin, &HeaderMap::new()), None);
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
    }

    #[test]
    fn connection_tokens_are_matched_whole() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
        assert!(!connection_has(&map(&[("connection", "upgraded")]), "upgrade"));
    }
}
