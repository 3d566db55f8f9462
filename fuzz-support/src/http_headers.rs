//! Target `http_headers`: a request head from a client (method, URI, header lines, HTTP version, the
//! peer's address) and a listener's routes, all built from the input with `arbitrary`, through the
//! HTTP proxy's pure header functions (`lbfleet_node::proxy::http::headers`) and route selection
//! (`lbfleet_node::balance::key::route_pool`), as `proxy::http` runs them on every request.
//!
//! No function may panic, and:
//! - after `strip_hop_by_hop` no hop-by-hop header and no header a `Connection` line names is left
//!   (but `Host` and `Content-Length`, which frame and address the message, are), and every other
//!   header is kept with all its values in order;
//! - after `add_forwarding` there is one `X-Forwarded-For` line whose last element is the peer (an
//!   IPv4-mapped peer as IPv4) after the earlier elements in order, one `Forwarded` line ending with
//!   the peer's element, `X-Forwarded-Proto: http`, `X-Forwarded-Host` the requested host (or none),
//!   and `Via` ending with this proxy's entry;
//! - `request_host` is the URI's authority, else the first `Host` line trimmed;
//! - the route chosen is the first one that matches, hosts compared case-insensitively and without
//!   their port, and a host's case or port never changes the choice;
//! - a cookie found is a trimmed value of a `name=value` pair of a `Cookie` line; `requested_upgrade`
//!   answers only for HTTP/1.1 with `Connection: upgrade`; sticky values round-trip and any other
//!   value is refused; the hash keys of every kind are computed without panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use lbfleet_api::config::{parse, Format, HashKey, Listener};
use lbfleet_node::balance::key::{l4_key, request_key, route_pool};
use lbfleet_node::proxy::http::headers::{
    add_forwarding, connection_has, cookie, host_without_port, parse_sticky, request_host, requested_upgrade,
    sticky_value, strip_hop_by_hop, via_version, HOP_BY_HOP, VIA_NAME,
};

/// Header names the proxy gives a meaning to, so that the input hits them often.
const NAMES: [&str; 17] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "via",
    "cookie",
    "x-user",
    "x-secret",
];

#[derive(Debug, Arbitrary)]
enum GenName {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum GenValue {
    /// A `Connection`-style list of names, with its separators and case from the input.
    Names(Vec<(u8, u8)>),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum GenIp {
    V4([u8; 4]),
    Mapped([u8; 4]),
    V6([u8; 16]),
}

#[derive(Debug, Arbitrary)]
struct GenRoute {
    host: Option<String>,
    path_prefix: Option<String>,
    pool: u8,
}

#[derive(Debug, Arbitrary)]
struct Input {
    uri: Vec<u8>,
    version: u8,
    headers: Vec<(GenName, GenValue)>,
    peer: GenIp,
    port: u16,
    routes: Vec<GenRoute>,
    cookie_name: String,
    sticky: Vec<u8>,
}

const POOLS: [&str; 3] = ["default", "a", "b"];

/// Build the request from `data` and check it.
pub fn check(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let uri = Uri::try_from(input.uri.as_slice()).unwrap_or_else(|_| Uri::from_static("/"));
    let version = [Version::HTTP_09, Version::HTTP_10, Version::HTTP_11, Version::HTTP_2, Version::HTTP_3]
        [usize::from(input.version % 5)];
    let headers = header_map(&input.headers);
    let peer = SocketAddr::new(
        match input.peer {
            GenIp::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
            GenIp::Mapped(o) => IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()),
            GenIp::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
        },
        input.port,
    );

    let host = request_host(&uri, &headers);
    match uri.authority() {
        Some(a) => assert_eq!(host, Some(a.as_str())),
        None => assert_eq!(host, headers.get("host").and_then(|h| h.to_str().ok()).map(str::trim)),
    }
    let path = uri.path();
    routes(&input.routes, host, path);
    cookies(&headers, &input.cookie_name);
    upgrade(version, &headers);
    sticky(&input.sticky);
    for key in [
        HashKey::SourceIp,
        HashKey::SourceAddr,
        HashKey::Flow,
        HashKey::Path,
        HashKey::Header("x-user".into()),
        HashKey::Cookie(input.cookie_name.clone()),
    ] {
        request_key(&key, &headers, path, peer);
        l4_key(&key, peer, input.port, 6);
    }

    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped);
    stripping(&headers, &stripped);
    let host = host.map(str::to_string);
    let mut forwarded = stripped.clone();
    add_forwarding(&mut forwarded, peer.ip(), host.as_deref(), version);
    forwarding(&stripped, &forwarded, peer.ip(), host.as_deref(), version);
}

fn header_map(gen: &[(GenName, GenValue)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in gen {
        let name = match name {
            GenName::Known(i) => HeaderName::from_static(NAMES[usize::from(*i) % NAMES.len()]),
            GenName::Raw(b) => match HeaderName::from_bytes(b) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let bytes = match value {
            GenValue::Names(list) => {
                let mut v = Vec::new();
                for (i, (n, sep)) in list.iter().enumerate() {
                    if i > 0 {
                        v.extend_from_slice([&b","[..], b", ", b" ,", b",\t"][usize::from(sep % 4)]);
                    }
                    let n = NAMES[usize::from(*n) % NAMES.len()];
                    v.extend(n.bytes().map(|b| if sep & 4 != 0 { b.to_ascii_uppercase() } else { b }));
                }
                v
            }
            GenValue::Raw(b) => b.clone(),
        };
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            h.append(name, v);
        }
    }
    h
}

/// `Connection` tokens, split and trimmed here independently of the proxy's own code.
fn connection_tokens(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

fn stripping(before: &HeaderMap, after: &HeaderMap) {
    for name in &HOP_BY_HOP {
        assert!(!after.contains_key(name), "hop-by-hop {name} survived: {after:?}");
    }
    let named = connection_tokens(before);
    for name in before.keys() {
        let protected = name == "host" || name == "content-length";
        let removed = HOP_BY_HOP.contains(name) || (named.contains(name) && !protected);
        if removed {
            assert!(!after.contains_key(name), "{name}, named in Connection, survived: {after:?}");
        } else {
            let want: Vec<&HeaderValue> = before.get_all(name).iter().collect();
            let got: Vec<&HeaderValue> = after.get_all(name).iter().collect();
            assert_eq!(got, want, "{name} changed by stripping");
        }
    }
    assert!(after.keys().all(|k| before.contains_key(k)), "stripping added a header");
}

/// The comma-separated, trimmed, non-empty elements of the lines of `name`.
fn elements(h: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|e| e.trim_ascii().to_vec())
        .filter(|e| !e.is_empty())
        .collect()
}

fn forwarding(before: &HeaderMap, after: &HeaderMap, peer: IpAddr, host: Option<&str>, version: Version) {
    let client = peer.to_canonical().to_string();
    assert_eq!(after.get_all("x-forwarded-for").iter().count(), 1, "one X-Forwarded-For line");
    let mut want = elements(before, "x-forwarded-for");
    want.push(client.clone().into_bytes());
    assert_eq!(elements(after, "x-forwarded-for"), want, "X-Forwarded-For must end with the peer {client}");

    assert_eq!(after.get_all("forwarded").iter().count(), 1, "one Forwarded line");
    let fwd = after.get("forwarded").expect("Forwarded").as_bytes();
    let element = lbfleet_node::proxy::http::headers::forwarded_element(peer.to_canonical(), host);
    assert!(fwd.ends_with(element.as_bytes()), "Forwarded {fwd:?} must end with {element}");
    let quoted_for =
        if peer.to_canonical().is_ipv4() { format!("for={client}") } else { format!("for=\"[{client}]\"") };
    assert!(element.starts_with(&format!("{quoted_for};proto=http")), "{element}");

    let proto: Vec<&HeaderValue> = after.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto, [&HeaderValue::from_static("http")]);
    let xfh: Vec<&[u8]> = after.get_all("x-forwarded-host").iter().map(HeaderValue::as_bytes).collect();
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => assert_eq!(xfh, [h.as_bytes()]),
        None => assert!(xfh.is_empty(), "X-Forwarded-Host without a host: {xfh:?}"),
    }
    let via = after.get("via").expect("Via").as_bytes();
    let ours = format!("{} {VIA_NAME}", via_version(version));
    assert!(via.ends_with(ours.as_bytes()), "Via {via:?} must end with {ours}");
    // Every other header is untouched.
    for name in before.keys() {
        if ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "via"]
            .contains(&name.as_str())
        {
            continue;
        }
        let want: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        assert_eq!(after.get_all(name).iter().collect::<Vec<_>>(), want, "{name} changed by add_forwarding");
    }
}

/// A listener with routes from the input, through the config validation an operator's would take.
fn listener(gen: &[GenRoute]) -> Option<Listener> {
    let routes: Vec<serde_json::Value> = gen
        .iter()
        .take(16)
        .filter(|r| r.host.is_some() || r.path_prefix.is_some())
        .map(|r| {
            let mut o = serde_json::Map::new();
            if let Some(h) = &r.host {
                o.insert("host".into(), h.clone().into());
            }
            if let Some(p) = &r.path_prefix {
                o.insert("path_prefix".into(), p.clone().into());
            }
            o.insert("pool".into(), POOLS[usize::from(r.pool) % 3].into());
            serde_json::Value::Object(o)
        })
        .collect();
    let pools: Vec<serde_json::Value> = POOLS.iter().map(|p| serde_json::json!({ "name": p })).collect();
    let config = serde_json::json!({
        "pool": pools,
        "listener": [{ "name": "l", "protocol": "http", "port": 8080, "pool": "default", "route": routes }],
    });
    let mut c = parse(&config.to_string(), Format::Json).ok()?;
    c.listener.pop()
}

fn routes(gen: &[GenRoute], host: Option<&str>, path: &str) {
    let Some(l) = listener(gen) else { return };
    let chosen = route_pool(&l, host, path);
    // The first route that matches, found here on its own terms.
    let bare = host.map(host_without_port);
    if let Some(h) = host {
        assert!(h.starts_with(bare.unwrap_or_default()), "{h:?} without its port is not a prefix");
    }
    let first = l.route.iter().find(|r| {
        let host_ok = r.host.as_ref().is_none_or(|w| bare.is_some_and(|b| b.eq_ignore_ascii_case(w)));
        host_ok && r.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
    });
    assert_eq!(chosen, first.map_or(l.pool.as_str(), |r| r.pool.as_str()), "host {host:?} path {path:?}");
    if let Some(h) = host {
        assert_eq!(
            route_pool(&l, Some(&h.to_ascii_uppercase()), path),
            chosen,
            "host case changed the route"
        );
        assert_eq!(
            route_pool(&l, Some(&h.to_ascii_lowercase()), path),
            chosen,
            "host case changed the route"
        );
        if !h.contains(':') && !h.starts_with('[') {
            assert_eq!(route_pool(&l, Some(&format!("{h}:8080")), path), chosen, "a port changed the route");
        }
    }
}

fn cookies(h: &HeaderMap, name: &str) {
    let Some(v) = cookie(h, name) else { return };
    assert_eq!(v, v.trim_ascii(), "cookie value not trimmed");
    assert!(!v.contains(&b';'), "cookie value across pairs");
    let found = h.get_all("cookie").iter().flat_map(|l| l.as_bytes().split(|b| *b == b';')).any(|pair| {
        let pair = pair.trim_ascii();
        pair.iter()
            .position(|b| *b == b'=')
            .is_some_and(|eq| pair[..eq].trim_ascii() == name.as_bytes() && pair[eq + 1..].trim_ascii() == v)
    });
    assert!(found, "cookie {name} = {v:?} is not a pair of the Cookie lines");
}

fn upgrade(version: Version, h: &HeaderMap) {
    let got = requested_upgrade(version, h);
    if got.is_some() {
        assert_eq!(version, Version::HTTP_11);
        assert!(connection_has(h, "upgrade"));
        assert_eq!(got.as_ref(), h.get("upgrade"));
    } else if version == Version::HTTP_11 && connection_has(h, "upgrade") {
        assert!(h.get("upgrade").is_none(), "an upgrade asked for and not seen");
    }
}

fn sticky(value: &[u8]) {
    let key = String::from_utf8_lossy(value);
    let v = sticky_value(&key);
    assert_eq!(parse_sticky(v.as_bytes()), Some(lbfleet_node::balance::hash_key_bytes(key.as_bytes())));
    let parsed = parse_sticky(value);
    let well_formed = value.len() == 16 && value.iter().all(u8::is_ascii_hexdigit);
    assert_eq!(parsed.is_some(), well_formed, "{value:?}");
}
