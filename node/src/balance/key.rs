//! Pure request-to-backend decisions of the proxies: which pool an HTTP request goes to (routes), which
//! key a hash policy hashes (HTTP: [`request_key`]; TCP and UDP: [`l4_key`]), which backend a sticky
//! cookie names (and the cookie value that names one), and the bounded list of backends to try.
//! No I/O; unit-tested below against real selectors built from a `ClusterState`.
//!
//! Hash keys (pool `hash_key`):
//! - `source_ip`: the client's IP as the listener socket sees it (forwarding headers are not trusted);
//! - `source_addr`: the client's IP and port;
//! - `header:NAME`: the first value of header NAME, as bytes;
//! - `cookie:NAME`: the value of cookie NAME, as bytes;
//! - `path`: the URI path, without the query.
//!
//! A missing or empty header or cookie falls back to the source IP, so such clients still stick to a
//! backend and still agree across nodes. `flow` is UDP only (validation refuses it on HTTP listeners);
//! should it reach this code it hashes like `source_addr`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{self, HeaderMap};
use lbfleet_api::config::{HashKey, Listener};

use super::hash::{hash_flow, hash_ip, hash_key_bytes, hash_socket_addr};
use super::{BackendHandle, PoolSelector};

/// The pool of the first route of `listener` matching the request, else the listener's pool.
/// A route's host matches the request host without its port, case-insensitively; its path prefix is a
/// plain byte prefix of the path. A route with neither matches everything.
pub fn route_pool<'a>(listener: &'a Listener, host: Option<&str>, path: &str) -> &'a str {
    route_index(listener, host, path).map_or(listener.pool.as_str(), |i| listener.route[i].pool.as_str())
}

/// The index in `listener.route` of the first route matching the request ([`route_pool`]).
pub fn route_index(listener: &Listener, host: Option<&str>, path: &str) -> Option<usize> {
    let host = host.map(host_without_port);
    listener.route.iter().position(|r| {
        let host_ok = match (&r.host, host) {
            (None, _) => true,
            (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
            (Some(_), None) => false,
        };
        host_ok && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    })
}

/// The 64-bit key a hash policy hashes for this request.
pub fn request_key(key: &HashKey, headers: &HeaderMap, path: &str, client: SocketAddr) -> u64 {
    let bytes = match key {
        HashKey::SourceIp => None,
        HashKey::SourceAddr | HashKey::Flow => return hash_socket_addr(client),
        HashKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => cookie(headers, name),
        HashKey::Path => Some(path.as_bytes()),
    };
    match bytes {
        Some(b) if !b.is_empty() => hash_key_bytes(b),
        _ => hash_ip(client.ip()),
    }
}

/// The eligible backend a sticky-cookie value names, if any.
pub fn sticky_backend<'a>(selector: &'a PoolSelector, value: &[u8]) -> Option<&'a Arc<BackendHandle>> {
    let want = parse_sticky(value)?;
    // Known limit: a linear scan hashing each backend key (a few ns each); fine for pools of hundreds.
    selector.backends().iter().find(|b| hash_key_bytes(b.key().as_bytes()) == want)
}

/// Up to `max` distinct backends to try, in order: the sticky backend (if any) first, then the pool's
/// fallback sequence for `key`, keeping only backends for which `usable` holds.
pub fn candidates<F>(
    selector: &PoolSelector,
    key: u64,
    sticky: Option<&Arc<BackendHandle>>,
    max: usize,
    usable: F,
) -> Vec<Arc<BackendHandle>>
where
    F: FnMut(&BackendHandle) -> bool,
{
    let mut out: Vec<Arc<BackendHandle>> = Vec::with_capacity(max);
    if let Some(s) = sticky {
        out.push(Arc::clone(s));
    }
    if out.len() < max {
        for b in selector.pick_usable(key, usable) {
            if sticky.is_some_and(|s| s.addr() == b.addr()) {
                continue;
            }
            out.push(Arc::clone(b));
            if out.len() >= max {
                break;
            }
        }
    }
    out.truncate(max);
    out
}

/// The request key of a connection from `client` to a listener on `listener_port`, for a pool hashing
/// on `hash_key`. HTTP-only keys (header, cookie, path) cannot be read at L4 (the config validation
/// refuses them on tcp/udp listeners) and fall back to the client IP.
pub fn l4_key(hash_key: &HashKey, client: SocketAddr, listener_port: u16, protocol: u8) -> u64 {
    match hash_key {
        HashKey::SourceAddr => hash_socket_addr(client),
        HashKey::Flow => hash_flow(client, listener_port, protocol),
        HashKey::SourceIp | HashKey::Header(_) | HashKey::Cookie(_) | HashKey::Path => hash_ip(client.ip()),
    }
}

/// `b` without leading and trailing ASCII whitespace.
pub fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// The value of cookie `name` (case-sensitive) in the request's `Cookie` header(s), the first if repeated.
/// Surrounding double quotes are kept: the value is used as opaque bytes.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
    })
}

/// The sticky-cookie value naming a backend: 16 hex digits of the fleet-wide key hash of its key (its
/// address string). Every node computes the same value, so any node honours a cookie another node set.
pub fn sticky_value(backend_key: &str) -> String {
    format!("{:016x}", hash_key_bytes(backend_key.as_bytes()))
}

/// Parse a sticky-cookie value (exactly 16 hex digits).
pub fn parse_sticky(value: &[u8]) -> Option<u64> {
    if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let s = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// `host` without its port: `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        // A bare IPv6 address (not valid in Host, but seen) has several colons: leave it whole.
        Some(i) if !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format, Pool};
    use lbfleet_api::state::ClusterState;

    use super::sticky_value;

    fn config(text: &str) -> lbfleet_api::config::ClusterConfig {
        parse(text, Format::Toml).unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTED: &str = r#"
[[pool]]
name = "web"
[[pool.backend]]
addr = "127.0.0.1:9001"
[[pool]]
name = "api"
[[pool.backend]]
addr = "127.0.0.1:9002"
[[pool]]
name = "static"
[[pool.backend]]
addr = "127.0.0.1:9003"
[[pool]]
name = "admin"
[[pool.backend]]
addr = "127.0.0.1:9004"

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
  [[listener.route]]
  host = "API.example.com"
  pool = "api"
  [[listener.route]]
  host = "www.example.com"
  path_prefix = "/admin"
  pool = "admin"
  [[listener.route]]
  path_prefix = "/static/"
  pool = "static"
"#;

    #[test]
    fn first_matching_route_wins_else_the_listener_pool() {
        let c = config(ROUTED);
        let l = &c.listener[0];
        assert_eq!(route_pool(l, Some("api.example.com"), "/static/x"), "api");
        assert_eq!(route_pool(l, Some("api.EXAMPLE.com:8080"), "/"), "api");
        assert_eq!(route_pool(l, Some("www.example.com"), "/admin/users"), "admin");
        assert_eq!(route_pool(l, Some("www.example.com"), "/static/a.css"), "static");
        assert_eq!(route_pool(l, Some("other.example.com"), "/admin"), "web");
        assert_eq!(route_pool(l, None, "/static/"), "static");
        assert_eq!(route_pool(l, None, "/static"), "web");
        assert_eq!(route_pool(l, None, "/"), "web");
        assert_eq!(route_pool(l, Some("api.example.com.evil"), "/"), "web");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_hash_the_configured_part_and_fall_back_to_the_source_ip() {
        let client: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        let ip_key = hash_ip(client.ip());
        let h = headers(&[("x-user", "alice"), ("cookie", "sid=s1; other=2")]);
        let header = HashKey::Header("x-user".into());
        assert_eq!(request_key(&header, &h, "/p", client), hash_key_bytes(b"alice"));
        assert_eq!(request_key(&header, &HeaderMap::new(), "/p", client), ip_key);
        assert_eq!(request_key(&header, &headers(&[("x-user", "")]), "/p", client), ip_key);
        let ck = HashKey::Cookie("sid".into());
        assert_eq!(request_key(&ck, &h, "/p", client), hash_key_bytes(b"s1"));
        assert_eq!(request_key(&HashKey::Cookie("nope".into()), &h, "/p", client), ip_key);
        assert_eq!(request_key(&HashKey::Path, &h, "/p/q", client), hash_key_bytes(b"/p/q"));
        assert_eq!(request_key(&HashKey::SourceIp, &h, "/p", client), ip_key);
        assert_eq!(request_key(&HashKey::SourceAddr, &h, "/p", client), hash_socket_addr(client));
        let other_port: SocketAddr = "10.0.0.7:40001".parse().unwrap();
        assert_eq!(request_key(&HashKey::SourceIp, &h, "/p", other_port), ip_key);
        assert_ne!(request_key(&HashKey::SourceAddr, &h, "/p", other_port), hash_socket_addr(client));
    }

    fn selector(policy: &str, n: u16) -> PoolSelector {
        let mut t = format!("[[pool]]\nname = \"web\"\npolicy = \"{policy}\"\ntable_size = 1009\n");
        for i in 1..=n {
            t += &format!("[[pool.backend]]\naddr = \"127.0.0.1:{}\"\n", 9000 + i);
        }
        let c = config(&t);
        let pool: Pool = c.pool[0].clone();
        let mut s = ClusterState::default();
        s.apply(&Command::ApplyConfig { config: c }, 1);
        PoolSelector::from_state(&pool, &s, None).unwrap()
    }

    #[test]
    fn sticky_cookie_names_an_eligible_backend_by_its_key_hash() {
        let sel = selector("round_robin", 4);
        let b = sticky_backend(&sel, sticky_value("127.0.0.1:9003").as_bytes()).unwrap();
        assert_eq!(b.addr(), "127.0.0.1:9003".parse().unwrap());
        assert!(sticky_backend(&sel, sticky_value("127.0.0.1:9999").as_bytes()).is_none());
        assert!(sticky_backend(&sel, b"2").is_none());
    }

    #[test]
    fn candidates_put_the_sticky_backend_first_without_repeating_it() {
        let sel = selector("maglev", 5);
        let key = hash_key_bytes(b"k");
        let plain: Vec<SocketAddr> =
            candidates(&sel, key, None, 3, |_| true).iter().map(|b| b.addr()).collect();
        let all: Vec<SocketAddr> = sel.pick(key).map(|b| b.addr()).collect();
        assert_eq!(plain, all[..3]);
        let sticky = sel.backends().iter().find(|b| b.addr() == all[1]).unwrap();
        let with: Vec<SocketAddr> =
            candidates(&sel, key, Some(sticky), 3, |_| true).iter().map(|b| b.addr()).collect();
        assert_eq!(with, [all[1], all[0], all[2]]);
        let skipping: Vec<SocketAddr> =
            candidates(&sel, key, None, 3, |b| b.addr() != all[0]).iter().map(|b| b.addr()).collect();
        assert_eq!(skipping, all[1..4]);
        assert_eq!(candidates(&sel, key, None, 10, |_| true).len(), 5);
        assert_eq!(candidates(&sel, key, Some(sticky), 1, |_| true).len(), 1);
    }
}
