//! TLS in the cluster config: a listener's `[listener.tls]` (terminate or pass through), its
//! `[[listener.sni_route]]` (passthrough: the pool chosen by the ClientHello's SNI) and a pool's
//! `[pool.tls]` (TLS towards its backends).
//!
//! Inline private keys (`key_pem`) are secrets: [`Secret`] serializes as [`REDACTED`] in every
//! human-readable format (the JSON of `get config` and `/api/v1/state`, TOML) and in `Debug`, and as
//! the key itself only in postcard (the Raft log and snapshots). A config that carries [`REDACTED`]
//! back is refused with a message saying to give the key. Inline certificates and keys are parsed and
//! matched here; files are read by each node ([`load_certified_key`] is the one place both go through).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{bounded_duration, shown, Problems, Protocol, MAX_HOST_LEN, MAX_PATH_LEN};

/// Default time a client has to finish its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of `handshake_timeout`.
pub const HANDSHAKE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(300);
/// Most certificates per listener.
pub const MAX_CERTIFICATES: usize = 64;
/// Largest certificate chain, key or CA bundle, inline or in a file, in bytes.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// Most `server_names` of one certificate or one `sni_route`.
pub const MAX_SERVER_NAMES: usize = 100;
/// Most `[[listener.sni_route]]` entries per listener.
pub const MAX_SNI_ROUTES: usize = 256;
/// Most ALPN protocol names per listener, and the longest one (bytes).
pub const MAX_ALPN: usize = 8;
pub const MAX_ALPN_LEN: usize = 32;
/// What a secret serializes as wherever it is shown.
pub const REDACTED: &str = "<redacted>";

/// A secret string (an inline private key): shown as [`REDACTED`], kept in postcard only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(REDACTED)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Terminate TLS at the node, or pass it through to the backend untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    Terminate,
    Passthrough,
}

/// A listener's `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTls {
    pub mode: TlsMode,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Terminate: the certificates, picked by SNI; [`ListenerTls::default_index`] is the default one.
    pub certificates: Vec<TlsCertificate>,
    /// Terminate: ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
}

impl ListenerTls {
    /// The certificate served when no `server_names` match (the one flagged `default`, else the first).
    pub fn default_index(&self) -> usize {
        self.certificates.iter().position(|c| c.default).unwrap_or(0)
    }
}

/// One certificate of a terminating listener: `cert_file` and `key_file` (read on every node, polled
/// for changes) or `cert_pem` and `key_pem` (in the replicated config; the key is a [`Secret`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertificate {
    /// Names it is served for (exact, or `*.example.com` for one label); empty: the DNS names of the
    /// certificate itself.
    pub server_names: Vec<String>,
    pub default: bool,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<Secret>,
}

/// Passthrough: connections whose ClientHello names one of `server_names` go to `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniRoute {
    pub server_names: Vec<String>,
    pub pool: String,
}

impl SniRoute {
    /// The pool of the first route naming `sni` (case-insensitive; `*.example.com` matches one label).
    pub fn pick<'a>(routes: &'a [SniRoute], sni: &str) -> Option<&'a str> {
        routes.iter().find(|r| r.server_names.iter().any(|n| name_matches(n, sni))).map(|r| r.pool.as_str())
    }
}

/// Whether the configured `pattern` (lowercase) covers the SNI name `sni`.
pub fn name_matches(pattern: &str, sni: &str) -> bool {
    let sni = sni.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        match sni.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        }
    } else {
        pattern.eq_ignore_ascii_case(sni)
    }
}

/// A pool's `[pool.tls]`: TLS towards its backends, verified against the CA bundle `ca_file` (read on
/// every node) or `ca_pem`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTls {
    pub enabled: bool,
    pub ca_file: Option<String>,
    pub ca_pem: Option<String>,
    /// SNI and the name verified; `None`: the backend's host (its IP address).
    pub server_name: Option<String>,
}

/// `[listener.tls]`: terminate TLS (http and tcp listeners) or pass it through (tcp only).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = super::schema::certificates_alias)]
pub struct RawListenerTls {
    /// `terminate` (the node holds the certificates) or `passthrough` (tcp only: the bytes go to
    /// the backend untouched, picked by SNI with `sni_route`). Default `terminate`.
    #[serde(default)]
    #[schemars(schema_with = "super::schema::tls_mode")]
    pub mode: Option<String>,
    /// How long a client has for its handshake (passthrough: its ClientHello). Default "10s"; a
    /// duration in 100ms..=5m (`HANDSHAKE_TIMEOUT_RANGE`).
    #[schemars(length(min = 1))]
    pub handshake_timeout: Option<String>,
    /// Terminate: the certificates, picked by SNI; also written `[[listener.tls.cert]]`. At least
    /// one, at most 64 (`MAX_CERTIFICATES`); passthrough takes none.
    #[serde(default, alias = "cert")]
    #[schemars(length(max = MAX_CERTIFICATES))]
    pub certificates: Vec<RawTlsCertificate>,
    /// Terminate: the ALPN protocols offered, in preference order. Default ["h2", "http/1.1"] for
    /// http (only these two are allowed there), none for tcp; at most 8 (`MAX_ALPN`) of 1 to 32
    /// ASCII bytes (`MAX_ALPN_LEN`). Passthrough takes none.
    #[schemars(length(max = MAX_ALPN), inner(length(min = 1, max = MAX_ALPN_LEN)))]
    pub alpn: Option<Vec<String>>,
}

/// `[[listener.tls.certificates]]`: `cert_file` and `key_file` (read on every node, re-read every
/// 5 s) or `cert_pem` and `key_pem` (inline, in the replicated config).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTlsCertificate {
    /// The names it is served for: exact, or `*.example.com` for one label. Default: the DNS names
    /// of the certificate itself. At most 100 (`MAX_SERVER_NAMES`) of at most 253 bytes.
    #[serde(default)]
    #[schemars(length(max = MAX_SERVER_NAMES), inner(length(min = 1, max = MAX_HOST_LEN)))]
    pub server_names: Vec<String>,
    /// Served when no name matches or the client sends no SNI. Default false (then the first
    /// certificate is the default); at most one per listener.
    #[serde(default)]
    pub default: bool,
    /// The chain (PEM, leaf first), read on every node. 1 to 1024 bytes of path (`MAX_PATH_LEN`);
    /// the file at most 64 KiB (`MAX_PEM_BYTES`). With `key_file`.
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub cert_file: Option<String>,
    /// The private key (PEM) matching `cert_file`. A path as for `cert_file`.
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub key_file: Option<String>,
    /// The chain inline (PEM, leaf first), at most 64 KiB (`MAX_PEM_BYTES`). With `key_pem`.
    #[schemars(length(min = 1, max = MAX_PEM_BYTES))]
    pub cert_pem: Option<String>,
    /// The private key inline (PEM), at most 64 KiB: a secret, shown back as "<redacted>" (which is
    /// refused when applied).
    #[schemars(length(min = 1, max = MAX_PEM_BYTES))]
    pub key_pem: Option<String>,
}

/// `[[listener.sni_route]]` (tcp passthrough): a ClientHello naming one of `server_names` goes to
/// `pool`; the first match wins.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSniRoute {
    /// Names as in a certificate's `server_names` (exact or `*.example.com`). Required: 1 to 100
    /// (`MAX_SERVER_NAMES`).
    #[serde(default)]
    #[schemars(length(min = 1, max = MAX_SERVER_NAMES), inner(length(min = 1, max = MAX_HOST_LEN)))]
    pub server_names: Vec<String>,
    /// The pool those connections go to. Required; a pool of this config.
    #[schemars(length(min = 1))]
    pub pool: Option<String>,
}

/// `[pool.tls]`: TLS 1.2/1.3 towards the pool's backends (and their health checks), verified
/// against a CA bundle.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    /// Default true once the table is there.
    pub enabled: Option<bool>,
    /// The CA bundle (PEM) backends are verified against, read on every node: the only roots
    /// trusted. 1 to 1024 bytes of path, the file at most 64 KiB. One of `ca_file` and `ca_pem` is
    /// required.
    #[schemars(length(min = 1, max = MAX_PATH_LEN))]
    pub ca_file: Option<String>,
    /// The CA bundle inline (PEM), at most 64 KiB (`MAX_PEM_BYTES`).
    #[schemars(length(min = 1, max = MAX_PEM_BYTES))]
    pub ca_pem: Option<String>,
    /// The SNI sent and the name verified. Default: the backend's IP address (which its certificate
    /// must then name). A DNS name or IP, not a wildcard, at most 253 bytes.
    #[schemars(length(min = 1, max = MAX_HOST_LEN))]
    pub server_name: Option<String>,
}

/// A certificate chain and its key, parsed and checked to match. The errors name what is wrong
/// but never quote the key.
pub fn load_certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if cert_pem.len() > MAX_PEM_BYTES {
        return Err(format!(
            "the certificate is {} bytes, above the limit of {MAX_PEM_BYTES}",
            cert_pem.len()
        ));
    }
    if key_pem.len() > MAX_PEM_BYTES {
        return Err(format!("the key is {} bytes, above the limit of {MAX_PEM_BYTES}", key_pem.len()));
    }
    let chain = parse_certs(cert_pem).map_err(|e| format!("the certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key: no PEM private key in it ({e})"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the key: unsupported private key ({e})"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| format!("the key does not match the certificate ({e})"))?;
    Ok(Arc::new(ck))
}

/// Every certificate of a PEM bundle (at least one).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        out.push(c.map_err(|e| format!("bad PEM ({e})"))?);
    }
    if out.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(out)
}

/// The DNS names (subject alternative names, else the common name) of a DER certificate, lowercase.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase),
        );
    }
    names
}

fn check_server_names(p: &mut Problems, place: &str, names: &[String]) -> Vec<String> {
    if names.len() > MAX_SERVER_NAMES {
        p.push(place, format!("{} server_names, above the limit of {MAX_SERVER_NAMES}", names.len()));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let bare = n.strip_prefix("*.").unwrap_or(n);
        let ok = n.len() <= MAX_HOST_LEN
            && !bare.is_empty()
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            && !bare.starts_with('.')
            && !bare.ends_with('.');
        if ok {
            out.push(n.to_ascii_lowercase());
        } else {
            p.push(
                place,
                format!("invalid server name \"{}\": a DNS name, or *.name for one label", shown(n)),
            );
        }
    }
    out
}

fn check_path(p: &mut Problems, place: &str, field: &str, v: &str) -> bool {
    if v.is_empty() || v.len() > MAX_PATH_LEN || v.contains('\0') {
        p.push(place, format!("{field} must be a path of 1 to {MAX_PATH_LEN} bytes"));
        false
    } else {
        true
    }
}

/// `[listener.tls]` of the listener at `place`.
pub(super) fn validate_listener_tls(
    p: &mut Problems,
    place: &str,
    protocol: Protocol,
    raw: &RawListenerTls,
) -> Option<ListenerTls> {
    let tplace = format!("{place} tls");
    if protocol == Protocol::Udp {
        p.push(place, "tls is only for http and tcp listeners");
        return None;
    }
    let mode = match raw.mode.as_deref() {
        None | Some("terminate") => TlsMode::Terminate,
        Some("passthrough") if protocol == Protocol::Tcp => TlsMode::Passthrough,
        Some("passthrough") => {
            p.push(&tplace, "mode passthrough is only for tcp listeners (an http listener terminates TLS)");
            return None;
        }
        Some(other) => {
            p.push(&tplace, format!("unknown mode \"{}\" (expected terminate or passthrough)", shown(other)));
            return None;
        }
    };
    let handshake_timeout = bounded_duration(
        p,
        &tplace,
        "handshake_timeout",
        &raw.handshake_timeout,
        DEFAULT_HANDSHAKE_TIMEOUT,
        HANDSHAKE_TIMEOUT_RANGE,
    )
    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    if mode == TlsMode::Passthrough {
        if !raw.certificates.is_empty() || raw.alpn.is_some() {
            p.push(&tplace, "passthrough takes no certificates and no alpn (the backends terminate TLS)");
        }
        return Some(ListenerTls { mode, handshake_timeout, certificates: Vec::new(), alpn: Vec::new() });
    }
    let alpn = match &raw.alpn {
        None if protocol == Protocol::Http => vec!["h2".to_string(), "http/1.1".to_string()],
        None => Vec::new(),
        Some(list) => {
            if list.len() > MAX_ALPN {
                p.push(&tplace, format!("{} alpn protocols, above the limit of {MAX_ALPN}", list.len()));
            }
            for a in list {
                let known = ["h2", "http/1.1"].contains(&a.as_str());
                if protocol == Protocol::Http && !known {
                    p.push(
                        &tplace,
                        format!("alpn \"{}\": an http listener speaks h2 and http/1.1 only", shown(a)),
                    );
                } else if a.is_empty() || a.len() > MAX_ALPN_LEN || !a.is_ascii() {
                    p.push(&tplace, format!("alpn \"{}\": 1 to {MAX_ALPN_LEN} ASCII bytes", shown(a)));
                }
            }
            list.clone()
        }
    };
    if raw.certificates.is_empty() {
        p.push(&tplace, "needs at least one certificate ([[listener.tls.certificates]])");
    }
    if raw.certificates.len() > MAX_CERTIFICATES {
        p.push(
            &tplace,
            format!("{} certificates, above the limit of {MAX_CERTIFICATES}", raw.certificates.len()),
        );
        return None;
    }
    if raw.certificates.iter().filter(|c| c.default).count() > 1 {
        p.push(&tplace, "more than one certificate has default = true");
    }
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (i, rc) in raw.certificates.iter().enumerate() {
        let cplace = format!("{tplace} certificate {}", i + 1);
        let server_names = check_server_names(p, &cplace, &rc.server_names);
        let source = match (&rc.cert_file, &rc.key_file, &rc.cert_pem, &rc.key_pem) {
            (Some(cf), Some(kf), None, None) => {
                let ok = check_path(p, &cplace, "cert_file", cf) & check_path(p, &cplace, "key_file", kf);
                ok.then(|| (Some(cf.clone()), Some(kf.clone()), None, None))
            }
            (None, None, Some(cp), Some(kp)) => {
                if kp == REDACTED {
                    p.push(
                        &cplace,
                        format!(
                            "key_pem is \"{REDACTED}\" (as get config shows it): give the key itself, \
                             or a key_file"
                        ),
                    );
                    None
                } else {
                    match load_certified_key(cp.as_bytes(), kp.as_bytes()) {
                        Ok(_) => Some((None, None, Some(cp.clone()), Some(Secret(kp.clone())))),
                        Err(e) => {
                            p.push(&cplace, e);
                            None
                        }
                    }
                }
            }
            _ => {
                p.push(&cplace, "give cert_file and key_file, or cert_pem and key_pem");
                None
            }
        };
        if let Some((cert_file, key_file, cert_pem, key_pem)) = source {
            certificates.push(TlsCertificate {
                server_names,
                default: rc.default,
                cert_file,
                key_file,
                cert_pem,
                key_pem,
            });
        }
    }
    Some(ListenerTls { mode, handshake_timeout, certificates, alpn })
}

/// `[[listener.sni_route]]` of the listener at `place` (a passthrough listener only).
pub(super) fn validate_sni_routes(
    p: &mut Problems,
    place: &str,
    tls: Option<&ListenerTls>,
    raw: &[RawSniRoute],
) -> Vec<SniRoute> {
    if raw.is_empty() {
        return Vec::new();
    }
    if tls.map(|t| t.mode) != Some(TlsMode::Passthrough) {
        p.push(place, "sni_route is only for tcp listeners with tls mode = \"passthrough\"");
        return Vec::new();
    }
    if raw.len() > MAX_SNI_ROUTES {
        p.push(place, format!("{} sni_route entries, above the limit of {MAX_SNI_ROUTES}", raw.len()));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let rplace = format!("{place} sni_route {}", i + 1);
        if r.server_names.is_empty() {
            p.push(&rplace, "needs server_names");
        }
        let server_names = check_server_names(p, &rplace, &r.server_names);
        match &r.pool {
            None => p.push(&rplace, "missing pool"),
            Some(pool) => out.push(SniRoute { server_names, pool: pool.clone() }),
        }
    }
    out
}

/// `[pool.tls]` of the pool at `place`.
pub(super) fn validate_pool_tls(p: &mut Problems, place: &str, raw: &RawPoolTls) -> Option<PoolTls> {
    let tplace = format!("{place} tls");
    let ca = match (&raw.ca_file, &raw.ca_pem) {
        (Some(f), None) => check_path(p, &tplace, "ca_file", f).then(|| (Some(f.clone()), None)),
        (None, Some(pem)) => {
            if pem.len() > MAX_PEM_BYTES {
                p.push(&tplace, format!("ca_pem is {} bytes, above the limit of {MAX_PEM_BYTES}", pem.len()));
                None
            } else {
                match parse_certs(pem.as_bytes()) {
                    Ok(_) => Some((None, Some(pem.clone()))),
                    Err(e) => {
                        p.push(&tplace, format!("ca_pem: {e}"));
                        None
                    }
                }
            }
        }
        _ => {
            p.push(&tplace, "give ca_file or ca_pem (the CA bundle backends are verified against)");
            None
        }
    };
    let server_name = match &raw.server_name {
        None => None,
        Some(n) => {
            let names = check_server_names(p, &tplace, std::slice::from_ref(n));
            if n.starts_with("*.") {
                p.push(&tplace, "server_name cannot be a wildcard");
            }
            names.into_iter().next()
        }
    };
    ca.map(|(ca_file, ca_pem)| PoolTls { enabled: raw.enabled.unwrap_or(true), ca_file, ca_pem, server_name })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ClusterConfig, Format};

    fn cert(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn q(s: &str) -> String {
        format!("\"{}\"", s.replace('\n', "\\n"))
    }

    fn config(listener: &str) -> String {
        format!(
            "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n\
             [[pool]]\nname = \"q\"\n[[pool.backend]]\naddr = \"127.0.0.1:9002\"\n\
             [[listener]]\nname = \"l\"\nport = 8443\npool = \"p\"\n{listener}"
        )
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, Format::Toml).unwrap_err().messages()
    }

    #[test]
    fn inline_certificates_parse_with_defaults_and_the_key_is_redacted_when_shown() {
        let (a, b) = (cert("a.test"), cert("b.test"));
        let text = config(&format!(
            "protocol = \"http\"\n[listener.tls]\n\
             [[listener.tls.cert]]\nserver_names = [\"A.test\"]\ncert_pem = {}\nkey_pem = {}\n\
             [[listener.tls.cert]]\ndefault = true\ncert_pem = {}\nkey_pem = {}\n",
            q(&a.0),
            q(&a.1),
            q(&b.0),
            q(&b.1)
        ));
        let c = parse(&text, Format::Toml).unwrap();
        let tls = c.listener[0].tls.as_ref().unwrap();
        assert_eq!(tls.mode, super::TlsMode::Terminate);
        assert_eq!(tls.handshake_timeout, super::DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(tls.certificates[0].server_names, ["a.test"]);
        assert_eq!(tls.default_index(), 1);
        assert_eq!(super::dns_names(&super::parse_certs(b.0.as_bytes()).unwrap()[0]), ["b.test"]);

        let shown = c.to_json();
        assert!(shown.contains(super::REDACTED) && !shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
        // The Raft log (postcard) keeps the key.
        let stored: ClusterConfig = postcard::from_bytes(&postcard::to_allocvec(&c).unwrap()).unwrap();
        assert_eq!(stored, c);
        // What get config shows cannot be applied back as it is.
        let again = problems_json(&shown);
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(
            again[0].starts_with("listener \"l\" tls certificate 1: key_pem is \"<redacted>\""),
            "{again:?}"
        );
        assert!(again[0].contains("give the key itself"), "{again:?}");
    }

    fn problems_json(text: &str) -> Vec<String> {
        parse(text, Format::Json).unwrap_err().messages()
    }

    #[test]
    fn bad_pem_and_mismatched_keys_are_refused_naming_the_certificate() {
        let (a, b) = (cert("a.test"), cert("b.test"));
        let tls = |c: &str, k: &str| {
            config(&format!(
                "protocol = \"http\"\n[listener.tls]\n[[listener.tls.certificates]]\ncert_pem = {}\nkey_pem = {}\n",
                q(c),
                q(k)
            ))
        };
        let e = problems(&tls(&a.0, &b.1));
        assert!(
            e[0].starts_with("listener \"l\" tls certificate 1: the key does not match the certificate"),
            "{e:?}"
        );
        let e = problems(&tls("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", &a.1));
        assert!(e[0].starts_with("listener \"l\" tls certificate 1: the certificate: "), "{e:?}");
        let e = problems(&tls(&a.0, "not a key"));
        assert!(e[0].contains("the key: no PEM private key"), "{e:?}");
        assert!(!e[0].contains("not a key"), "a key is never quoted back: {e:?}");
        let big = "x".repeat(super::MAX_PEM_BYTES + 1);
        let e = problems(&tls(&big, &a.1));
        assert!(e[0].contains("above the limit of 65536"), "{e:?}");
    }

    #[test]
    fn listener_tls_rules() {
        let file = "[[listener.tls.certificates]]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n";
        let cases = [
            (
                format!("protocol = \"udp\"\n[listener.tls]\n{file}"),
                "listener \"l\": tls is only for http and tcp listeners",
            ),
            (
                "protocol = \"http\"\n[listener.tls]\nmode = \"passthrough\"\n".to_string(),
                "listener \"l\" tls: mode passthrough is only for tcp listeners (an http listener terminates TLS)",
            ),
            (
                "protocol = \"http\"\n[listener.tls]\n".to_string(),
                "listener \"l\" tls: needs at least one certificate ([[listener.tls.certificates]])",
            ),
            (
                format!("protocol = \"http\"\n[listener.tls]\nalpn = [\"spdy/3\"]\n{file}"),
                "listener \"l\" tls: alpn \"spdy/3\": an http listener speaks h2 and http/1.1 only",
            ),
            (
                format!("protocol = \"http\"\n[listener.tls]\nhandshake_timeout = \"1h\"\n{file}"),
                "listener \"l\" tls: handshake_timeout 1h out of range 100ms..=5m",
            ),
            (
                "protocol = \"http\"\n[listener.tls]\n[[listener.tls.certificates]]\ncert_file = \"/c.pem\"\n"
                    .to_string(),
                "listener \"l\" tls certificate 1: give cert_file and key_file, or cert_pem and key_pem",
            ),
            (
                "protocol = \"tcp\"\n[[listener.sni_route]]\nserver_names = [\"a.test\"]\npool = \"q\"\n".to_string(),
                "listener \"l\": sni_route is only for tcp listeners with tls mode = \"passthrough\"",
            ),
            (
                "protocol = \"tcp\"\n[listener.tls]\nmode = \"passthrough\"\n\
                 [[listener.sni_route]]\nserver_names = [\"a test\"]\npool = \"nope\"\n"
                    .to_string(),
                "listener \"l\" sni_route 1: invalid server name \"a test\": a DNS name, or *.name for one label",
            ),
        ];
        for (listener, want) in cases {
            let e = problems(&config(&listener));
            assert_eq!(e[0], want, "{listener}");
        }
        let e = problems(&config(
            "protocol = \"tcp\"\n[listener.tls]\nmode = \"passthrough\"\n\
             [[listener.sni_route]]\nserver_names = [\"a.test\"]\npool = \"nope\"\n",
        ));
        assert_eq!(e, ["listener \"l\": sni_route 1 pool \"nope\" does not exist"]);
        let many = file.repeat(super::MAX_CERTIFICATES + 1);
        let e = problems(&config(&format!("protocol = \"http\"\n[listener.tls]\n{many}")));
        assert_eq!(e, ["listener \"l\" tls: 65 certificates, above the limit of 64"]);
        let c = parse(
            &config(
                "protocol = \"tcp\"\n[listener.tls]\nmode = \"passthrough\"\n\
                 [[listener.sni_route]]\nserver_names = [\"*.b.test\"]\npool = \"q\"\n",
            ),
            Format::Toml,
        )
        .unwrap();
        let routes = &c.listener[0].sni_route;
        assert_eq!(super::SniRoute::pick(routes, "x.B.test"), Some("q"));
        assert_eq!(super::SniRoute::pick(routes, "b.test"), None);
    }

    #[test]
    fn pool_tls_needs_a_ca_bundle() {
        let pool = |tls: &str| {
            format!(
                "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddr = \"127.0.0.1:9001\"\n[pool.tls]\n{tls}\n"
            )
        };
        let e = problems(&pool("server_name = \"b.test\""));
        assert_eq!(
            e,
            ["pool \"p\" tls: give ca_file or ca_pem (the CA bundle backends are verified against)"]
        );
        let e = problems(&pool("ca_pem = \"nothing\""));
        assert_eq!(e, ["pool \"p\" tls: ca_pem: no PEM certificate in it"]);
        let c = parse(&pool("ca_file = \"/etc/ca.pem\""), Format::Toml).unwrap();
        let t = c.pool[0].tls.as_ref().unwrap();
        assert!(t.enabled && t.server_name.is_none() && t.ca_file.as_deref() == Some("/etc/ca.pem"));
    }
}
