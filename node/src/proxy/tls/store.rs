//! The TLS configs of this node's listeners and pools, rebuilt when the committed config or a file
//! they read changes, and swapped atomically ([`ArcSwap`]): a new handshake takes the current one, an
//! established connection keeps the one it was made with.
//!
//! [`TlsStore::refresh`] runs on every applied change and every [`POLL_FILES`]: it reads the
//! material of each terminating listener and each `[pool.tls]` (inline PEM, or files read here,
//! bounded by [`MAX_PEM_BYTES`]), fingerprints it, and rebuilds only what changed. A build that fails
//! (a file missing or unreadable, a bad PEM, a key that does not match) keeps the previous config of
//! that listener or pool serving, logs an error naming the listener and the file once per distinct
//! error, and is reported by [`TlsStore::errors`] until it succeeds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use lbfleet_api::config::tls::{dns_names, load_certified_key, parse_certs, MAX_PEM_BYTES};
use lbfleet_api::config::{Listener, ListenerTls, Pool, PoolTls, TlsMode};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::resolver::SniResolver;

/// How often certificate and CA files are read again to see whether they changed.
pub const POLL_FILES: Duration = Duration::from_secs(5);

/// The TLS protocol versions every listener and backend connection accepts: 1.3 and 1.2.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a pool's backends are spoken to with: its client config and the name sent as SNI and
/// verified (`None`: the backend's IP address); `Err`: the CA bundle could not be loaded.
pub type PoolClient = Result<(Arc<ClientConfig>, Option<String>), String>;

struct Built<T> {
    fingerprint: u64,
    value: Option<T>,
    error: Option<String>,
}

impl<T> Default for Built<T> {
    fn default() -> Self {
        Built { fingerprint: 0, value: None, error: None }
    }
}

/// What was last built for each listener and each pool.
type Builds = (BTreeMap<String, Built<Arc<ServerConfig>>>, BTreeMap<String, Built<PoolClient>>);

/// See the module doc.
#[derive(Default)]
pub struct TlsStore {
    servers: ArcSwap<HashMap<String, Arc<ServerConfig>>>,
    clients: ArcSwap<HashMap<String, PoolClient>>,
    state: Mutex<Builds>,
}

impl std::fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStore").field("listeners", &self.servers.load().len()).finish()
    }
}

fn read_file(path: &str, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {path}: {e}"))?;
    if meta.len() > MAX_PEM_BYTES as u64 {
        return Err(format!("{what} {path}: {} bytes, above the limit of {MAX_PEM_BYTES}", meta.len()));
    }
    std::fs::read(path).map_err(|e| format!("{what} {path}: {e}"))
}

fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest()
}

/// The material of a listener's certificates: (cert PEM, key PEM, where they came from) each.
type Material = Vec<(Vec<u8>, Vec<u8>, String)>;

fn listener_material(tls: &ListenerTls) -> Result<Material, String> {
    let mut out = Vec::with_capacity(tls.certificates.len());
    for (i, c) in tls.certificates.iter().enumerate() {
        let item = match (&c.cert_file, &c.key_file, &c.cert_pem, &c.key_pem) {
            (Some(cf), Some(kf), _, _) => (
                read_file(cf, "cert_file")?,
                read_file(kf, "key_file")?,
                format!("certificate {} (cert_file {cf}, key_file {kf})", i + 1),
            ),
            (_, _, Some(cp), Some(kp)) => (
                cp.as_bytes().to_vec(),
                kp.expose().as_bytes().to_vec(),
                format!("certificate {} (inline)", i + 1),
            ),
            _ => return Err(format!("certificate {}: no certificate given", i + 1)),
        };
        out.push(item);
    }
    Ok(out)
}

/// A listener's rustls server config from its material (already read).
pub fn build_server(tls: &ListenerTls, material: &Material) -> Result<Arc<ServerConfig>, String> {
    let mut certs = Vec::with_capacity(material.len());
    for ((cert, key, place), c) in material.iter().zip(&tls.certificates) {
        let ck = load_certified_key(cert, key).map_err(|e| format!("{place}: {e}"))?;
        let names = if c.server_names.is_empty() {
            ck.cert.first().map(|d| dns_names(d)).unwrap_or_default()
        } else {
            c.server_names.clone()
        };
        certs.push((ck, names));
    }
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    let resolver = SniResolver::new(certs, tls.default_index());
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A pool's rustls client config: its CA bundle as the only roots, ALPN `alpn`.
pub fn build_client(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem)? {
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn pool_material(tls: &PoolTls) -> Result<Vec<u8>, String> {
    match (&tls.ca_file, &tls.ca_pem) {
        (Some(f), _) => read_file(f, "ca_file"),
        (_, Some(p)) => Ok(p.as_bytes().to_vec()),
        _ => Err("no CA bundle given".into()),
    }
}

impl TlsStore {
    /// The server config of terminating listener `name` (`None`: none could be built yet).
    pub fn server(&self, name: &str) -> Option<Arc<ServerConfig>> {
        self.servers.load().get(name).cloned()
    }

    /// The client config of pool `name`: `None` when the pool has no `[pool.tls]` (plaintext),
    /// `Some(Err)` when it has one that could not be built (no connection may be made).
    pub fn client(&self, name: &str) -> Option<PoolClient> {
        self.clients.load().get(name).cloned()
    }

    /// The listeners and pools whose current TLS material could not be used, with why.
    pub fn errors(&self) -> Vec<(String, String)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let l = state.0.iter().filter_map(|(n, b)| b.error.clone().map(|e| (format!("listener \"{n}\""), e)));
        let p = state.1.iter().filter_map(|(n, b)| b.error.clone().map(|e| (format!("pool \"{n}\""), e)));
        l.chain(p).collect()
    }

    /// Rebuild what changed for these listeners and pools (the committed config); forget the rest.
    pub fn refresh<'a>(
        &self,
        listeners: impl Iterator<Item = &'a Listener>,
        pools: impl Iterator<Item = &'a Pool>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (servers, clients) = &mut *state;
        let mut seen = Vec::new();
        for l in listeners {
            let Some(tls) = l.tls.as_ref().filter(|t| t.mode == TlsMode::Terminate) else { continue };
            seen.push(l.name.clone());
            let entry = servers.entry(l.name.clone()).or_default();
            let built = listener_material(tls).and_then(|m| {
                let cfg_bytes = postcard::to_allocvec(tls).unwrap_or_default();
                let mut parts: Vec<&[u8]> = vec![&cfg_bytes];
                for (c, k, _) in &m {
                    parts.push(c);
                    parts.push(k);
                }
                let fp = fingerprint(&parts);
                if fp == entry.fingerprint && entry.value.is_some() {
                    return Ok(None);
                }
                build_server(tls, &m).map(|c| Some((fp, c)))
            });
            match built {
                Ok(None) => {}
                Ok(Some((fp, cfg))) => {
                    if entry.value.is_some() {
                        tracing::info!(listener = %l.name, "TLS certificates reloaded");
                    }
                    *entry = Built { fingerprint: fp, value: Some(cfg), error: None };
                }
                Err(e) => {
                    if entry.error.as_ref() != Some(&e) {
                        let kept = if entry.value.is_some() {
                            "the previous certificates keep serving"
                        } else {
                            "no TLS handshake can succeed"
                        };
                        tracing::error!(listener = %l.name, "TLS certificates not loaded: {e}; {kept}");
                    }
                    entry.error = Some(e);
                }
            }
        }
        servers.retain(|n, _| seen.contains(n));
        let mut seen = Vec::new();
        for p in pools {
            let Some(tls) = p.tls.as_ref().filter(|t| t.enabled) else { continue };
            seen.push(p.name.clone());
            let entry = clients.entry(p.name.clone()).or_default();
            match pool_material(tls) {
                Ok(ca) => {
                    let fp = fingerprint(&[&ca, tls.server_name.as_deref().unwrap_or("").as_bytes()]);
                    if fp != entry.fingerprint || entry.value.is_none() {
                        let built = build_client(&ca, &[b"http/1.1"]).map(|c| (c, tls.server_name.clone()));
                        if let Err(e) = &built {
                            tracing::error!(pool = %p.name, "backend TLS CA not loaded: {e}");
                        }
                        entry.error = built.as_ref().err().cloned();
                        *entry = Built { fingerprint: fp, error: entry.error.take(), value: Some(built) };
                    }
                }
                Err(e) => {
                    if entry.error.as_ref() != Some(&e) {
                        tracing::error!(pool = %p.name, "backend TLS CA not loaded: {e}");
                    }
                    if entry.value.is_none() {
                        entry.value = Some(Err(e.clone()));
                    }
                    entry.error = Some(e);
                }
            }
        }
        clients.retain(|n, _| seen.contains(n));
        let s: HashMap<String, Arc<ServerConfig>> =
            servers.iter().filter_map(|(n, b)| b.value.clone().map(|v| (n.clone(), v))).collect();
        let c: HashMap<String, PoolClient> =
            clients.iter().filter_map(|(n, b)| b.value.clone().map(|v| (n.clone(), v))).collect();
        self.servers.store(Arc::new(s));
        self.clients.store(Arc::new(c));
    }
}
