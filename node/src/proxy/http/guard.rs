//! Pure: the checks a request head passes before it is proxied, against the listener's
//! [`HttpLimits`] and the framing and `Host` rules of RFC 9112. No I/O; unit-tested below, and the raw
//! socket suite (`hostile_tests.rs`) drives them through the proxy.
//!
//! hyper refuses on its own (before these checks run, with an empty body of its own): a head that does
//! not parse (obs-fold, a space before a colon, a bad request line: 400), a `Content-Length` that is not
//! one decimal number or whose repeated values differ (400), a `Transfer-Encoding` whose last coding is
//! not `chunked` or on an HTTP/1.0 request (400), a head larger than its read buffer or with more header
//! lines than its cap (431), a target above 65,534 bytes (414). The proxy sets hyper's buffer and cap at
//! twice its own limits ([`hyper_buffer`], [`hyper_max_headers`]), so that a head a little over a limit
//! gets the proxy's answer naming the limit, and hyper's refusal stays the bound on memory.
//!
//! `Content-Length` together with `Transfer-Encoding: chunked` is not refused: hyper removes the length
//! from the head before the proxy sees it, decodes the body as chunked (RFC 9112 §6.3: the coding
//! overrides the length) and closes the connection after the answer (`Connection: close`), so nothing
//! after the chunked body is read as a request. The backend gets one request, chunked, without the
//! length. Two `Content-Length` lines of the same value are accepted by hyper and forwarded as one; a
//! list in one line (`5, 5`) is refused by hyper (400).
//!
//! What is checked here, in this order (the first failure is the answer):
//! 1. the request line (method, target, version) within `max_request_line`, else 414;
//! 2. at most `max_headers` header lines, else 431;
//! 3. the head (request line and every header line with its `: ` and CRLF) within `max_request_head`,
//!    else 431;
//! 4. `Host`: more than one → 400; none in an HTTP/1.1 request → 400 (RFC 9112 §3.2); none and no
//!    `:authority` in an HTTP/2 request → 400; an invalid value (empty, not `host[:port]` of RFC 3986) →
//!    400; userinfo in an absolute-form target → 400. An HTTP/1.0 request without `Host` is accepted (RFC
//!    9112 requires it of 1.1 only). When an absolute-form target or `:authority` names a host, it is the
//!    one used and forwarded, whatever `Host` says (RFC 9112 §3.2.2).
//! 5. framing: more than one `Transfer-Encoding` line → 400 (hyper would go by the last); a coding list
//!    ending in `chunked` but not `chunked` alone (`gzip, chunked`) → 501 (RFC 9112 §6.1: a coding the
//!    proxy does not implement). A `Content-Length` beside `Transfer-Encoding` (which hyper removes, see
//!    above) → 400, should one ever get here.
//! 6. a `Content-Length` above `max_body` → 413, before any of the body is read (a chunked body is
//!    counted as it streams, see `body.rs`).
//!
//! Every refusal closes an HTTP/1 client connection: its next bytes are never read as a request.

use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode, Uri, Version};
use lbfleet_api::config::HttpLimits;

/// Why a request is refused: the status, the counter's `reason` label and the text the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, reason, message: message.into() }
    }
}

/// hyper's HTTP/1 read buffer for a listener whose heads may take `max_request_head` bytes: twice that
/// (a head must fit in the buffer whole), and at least the 8 KiB hyper requires.
pub fn hyper_buffer(limits: &HttpLimits) -> usize {
    (2 * limits.max_request_head as usize).max(8 * 1024)
}

/// hyper's cap on HTTP/1 header lines: twice the listener's, so that a few too many get the proxy's
/// answer.
pub fn hyper_max_headers(limits: &HttpLimits) -> usize {
    2 * limits.max_headers as usize
}

/// The length of the request line as sent: `METHOD SP target SP HTTP/x.y`.
pub fn request_line_len(method: &Method, uri: &Uri) -> usize {
    method.as_str().len() + 1 + target_len(uri) + 1 + "HTTP/1.1".len()
}

/// The length of the request target as sent (origin, absolute or authority form).
fn target_len(uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => s.len() + "://".len() + a.as_str().len() + pq,
        (None, Some(a)) if pq == 0 => a.as_str().len(),
        _ => pq.max(1),
    }
}

/// The size of the request head: the request line and every header line, each with its CRLF.
pub fn head_len(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + ": ".len() + v.len() + 2).sum();
    request_line_len(method, uri) + 2 + fields + 2
}

/// Check a request head; `Err` is the answer to give instead of proxying it.
pub fn check_head(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    limits: &HttpLimits,
) -> Result<(), Refusal> {
    let line = request_line_len(method, uri);
    if line > limits.max_request_line as usize {
        return Err(Refusal::new(
            StatusCode::URI_TOO_LONG,
            "request_line_too_long",
            format!("request line of {line} bytes, above the limit of {} bytes", limits.max_request_line),
        ));
    }
    if headers.len() > limits.max_headers as usize {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!("{} header lines, above the limit of {}", headers.len(), limits.max_headers),
        ));
    }
    let head = head_len(method, uri, headers);
    if head > limits.max_request_head as usize {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head_too_large",
            format!("request head of {head} bytes, above the limit of {} bytes", limits.max_request_head),
        ));
    }
    check_host(uri, version, headers)?;
    if version == Version::HTTP_11 || version == Version::HTTP_10 {
        check_framing(headers)?;
    }
    if let (Some(max), Some(len)) = (limits.max_body, content_length(headers)) {
        if len > max {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body of {len} bytes, above the limit of {max} bytes"),
            ));
        }
    }
    Ok(())
}

fn bad_request(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reason, message)
}

/// Rule 4 of the module doc.
fn check_host(uri: &Uri, version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad_request("duplicate_host", "more than one Host header"));
    }
    if let Some(a) = uri.authority() {
        if a.as_str().contains('@') {
            return Err(bad_request("invalid_host", "userinfo in the request target"));
        }
    }
    match host {
        None if version == Version::HTTP_11 => {
            Err(bad_request("missing_host", "HTTP/1.1 request without a Host header"))
        }
        None if version == Version::HTTP_2 && uri.authority().is_none() => {
            Err(bad_request("missing_host", "request without :authority or Host"))
        }
        None => Ok(()),
        Some(h) if !valid_host(h.as_bytes()) => {
            Err(bad_request("invalid_host", format!("invalid Host \"{}\"", shown(h.as_bytes()))))
        }
        Some(_) => Ok(()),
    }
}

/// Rule 5 of the module doc (HTTP/1 only: HTTP/2 frames its bodies itself).
fn check_framing(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else { return Ok(()) };
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(bad_request(
            "content_length_and_transfer_encoding",
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te.next().is_some() {
        return Err(bad_request("transfer_encoding_repeated", "more than one Transfer-Encoding header"));
    }
    if !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
        return Err(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "transfer_encoding_unsupported",
            format!("transfer-encoding \"{}\" is not supported", shown(first.as_bytes())),
        ));
    }
    Ok(())
}

/// The request's `Content-Length`, as hyper accepted it (one number; a repeated equal line is dropped).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes().trim_ascii()).ok()?.parse().ok()
}

/// Whether `b` is a valid `Host` value: `host [ ":" port ]` of RFC 3986, with a non-empty host (an IP
/// literal in brackets, or a reg-name of unreserved, sub-delims and percent-encoded bytes) and a port
/// of at most 5 digits.
pub fn valid_host(b: &[u8]) -> bool {
    let (host, port) = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|c| *c == b']') else { return false };
        let inner = &b[1..end];
        if inner.is_empty() || !inner.iter().all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.') {
            return false;
        }
        match &b[end + 1..] {
            [] => (&b[..=end], None),
            [b':', port @ ..] => (&b[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match b.iter().position(|c| *c == b':') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        }
    };
    if host.is_empty() {
        return false;
    }
    if host[0] != b'[' && !reg_name(host) {
        return false;
    }
    port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// RFC 3986 reg-name: unreserved, sub-delims and `%XX`.
fn reg_name(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c)) {
            return false;
        }
        i += 1;
    }
    true
}

/// Bytes from a client shown in a message: printable ASCII as is, the rest escaped, at most 64 bytes.
fn shown(b: &[u8]) -> String {
    let mut s: String =
        b.iter().take(64).flat_map(|c| std::ascii::escape_default(*c)).map(char::from).collect();
    if b.len() > 64 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(
        uri: &str,
        version: Version,
        pairs: &[(&str, &str)],
        limits: &HttpLimits,
    ) -> Result<(), Refusal> {
        check_head(&Method::GET, &uri.parse().unwrap(), version, &map(pairs), limits)
    }

    fn reason(r: Result<(), Refusal>) -> (u16, &'static str) {
        let r = r.expect_err("refused");
        (r.status.as_u16(), r.reason)
    }

    #[test]
    fn sizes_are_counted_as_sent() {
        // "GET /abc HTTP/1.1" is 17 bytes; "host: a\r\n" 9; the blank line 2.
        let uri: Uri = "/abc".parse().unwrap();
        assert_eq!(request_line_len(&Method::GET, &uri), 17);
        assert_eq!(head_len(&Method::GET, &uri, &map(&[("host", "a")])), 17 + 2 + 9 + 2);
        let abs: Uri = "http://example.com:8080/x?y".parse().unwrap();
        assert_eq!(target_len(&abs), "http://example.com:8080/x?y".len());
        let authority: Uri = "example.com:443".parse().unwrap();
        assert_eq!(target_len(&authority), "example.com:443".len());
        let d = HttpLimits::default();
        assert_eq!(hyper_buffer(&d), 64 * 1024);
        assert_eq!(hyper_max_headers(&d), 200);
        assert_eq!(hyper_buffer(&HttpLimits { max_request_head: 1024, ..d }), 8 * 1024);
    }

    #[test]
    fn limits_refuse_with_414_then_431() {
        let l =
            HttpLimits { max_request_head: 1024, max_headers: 3, max_request_line: 100, max_body: Some(10) };
        let ok = [("host", "a")];
        assert_eq!(check("/", Version::HTTP_11, &ok, &l), Ok(()));
        // "GET " + target + " HTTP/1.1": 13 bytes around the target.
        let at_limit = format!("/{}", "a".repeat(100 - 13 - 1));
        assert_eq!(check(&at_limit, Version::HTTP_11, &ok, &l), Ok(()));
        let over = format!("{at_limit}a");
        assert_eq!(reason(check(&over, Version::HTTP_11, &ok, &l)), (414, "request_line_too_long"));
        let four = [("host", "a"), ("x", "1"), ("x", "2"), ("y", "3")];
        assert_eq!(reason(check("/", Version::HTTP_11, &four, &l)), (431, "too_many_headers"));
        let big = "v".repeat(1024);
        assert_eq!(
            reason(check("/", Version::HTTP_11, &[("host", "a"), ("x", &big)], &l)),
            (431, "head_too_large")
        );
        let r = check("/", Version::HTTP_11, &[("host", "a"), ("x", &big)], &l).unwrap_err();
        assert_eq!(r.message, "request head of 1056 bytes, above the limit of 1024 bytes");
        // The body limit applies to a declared length.
        assert_eq!(check("/", Version::HTTP_11, &[("host", "a"), ("content-length", "10")], &l), Ok(()));
        let r = check("/", Version::HTTP_11, &[("host", "a"), ("content-length", "11")], &l);
        assert_eq!(reason(r), (413, "body_too_large"));
        let r = check("http://a/", Version::HTTP_2, &[("content-length", "11")], &l);
        assert_eq!(reason(r), (413, "body_too_large"));
    }

    #[test]
    fn host_rules() {
        let d = HttpLimits::default();
        assert_eq!(reason(check("/", Version::HTTP_11, &[], &d)), (400, "missing_host"));
        assert_eq!(check("/", Version::HTTP_10, &[], &d), Ok(()));
        assert_eq!(
            reason(check("/", Version::HTTP_11, &[("host", "a"), ("host", "a")], &d)),
            (400, "duplicate_host")
        );
        assert_eq!(
            reason(check("/", Version::HTTP_10, &[("host", "a"), ("host", "b")], &d)),
            (400, "duplicate_host")
        );
        assert_eq!(reason(check("/", Version::HTTP_11, &[("host", "")], &d)), (400, "invalid_host"));
        assert_eq!(reason(check("/", Version::HTTP_11, &[("host", "a b")], &d)), (400, "invalid_host"));
        assert_eq!(
            reason(check("http://u@a/", Version::HTTP_11, &[("host", "a")], &d)),
            (400, "invalid_host")
        );
        // Absolute form: the target's host wins, but HTTP/1.1 still needs a Host line.
        assert_eq!(check("http://a/", Version::HTTP_11, &[("host", "b")], &d), Ok(()));
        assert_eq!(reason(check("http://a/", Version::HTTP_11, &[], &d)), (400, "missing_host"));
        // HTTP/2: `:authority` or `host`.
        assert_eq!(check("http://a/", Version::HTTP_2, &[], &d), Ok(()));
        assert_eq!(check("/", Version::HTTP_2, &[("host", "a")], &d), Ok(()));
        assert_eq!(reason(check("/", Version::HTTP_2, &[], &d)), (400, "missing_host"));
    }

    #[test]
    fn host_syntax() {
        for ok in [
            "a",
            "example.com",
            "Example.COM:8080",
            "a:",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]",
            "xn--caf-dma.example",
            "a%20b",
            "a_b~c!$&'()*+,;=",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "a/b",
            "a:b:c",
            "a:123456",
            "a:8o",
            "[::1",
            "[]",
            "[::1]x",
            "[zz]",
            "a%2",
            "a%zz",
            "a@b",
            "a\"b",
            "caf\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn framing_rules() {
        let d = HttpLimits::default();
        let h = |pairs: &[(&str, &str)]| {
            let mut all = vec![("host", "a")];
            all.extend_from_slice(pairs);
            check_head(&Method::POST, &"/".parse().unwrap(), Version::HTTP_11, &map(&all), &d)
        };
        assert_eq!(h(&[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(h(&[("transfer-encoding", "Chunked")]), Ok(()));
        assert_eq!(h(&[("content-length", "5")]), Ok(()));
        assert_eq!(
            reason(h(&[("content-length", "5"), ("transfer-encoding", "chunked")])),
            (400, "content_length_and_transfer_encoding")
        );
        assert_eq!(
            reason(h(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")])),
            (400, "transfer_encoding_repeated")
        );
        assert_eq!(
            reason(h(&[("transfer-encoding", "gzip, chunked")])),
            (501, "transfer_encoding_unsupported")
        );
        assert_eq!(content_length(&map(&[("content-length", "5, 5")])), None);
        assert_eq!(content_length(&map(&[("content-length", " 7 ")])), Some(7));
        assert_eq!(content_length(&HeaderMap::new()), None);
        assert_eq!(shown(b"a\tb"), "a\\tb");
        assert_eq!(shown(&[b'x'; 65]).chars().count(), 65);
    }
}
