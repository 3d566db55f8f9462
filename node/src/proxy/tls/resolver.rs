//! Pure: which certificate a ClientHello's SNI gets ([`SniResolver`], rustls' `ResolvesServerCert`).
//!
//! Built once per listener config (or certificate file change) from the certificates and their
//! names: exact names first, then `*.suffix` wildcards (one label), then the default certificate (a
//! ClientHello without SNI, or with a name no certificate covers, gets the default).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates of one listener, by name.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl SniResolver {
    /// `certs`: each certificate with the names it is served for (lowercase; `*.x` for wildcards);
    /// a name given twice goes to the first certificate that gives it. `default` indexes `certs`,
    /// which is not empty.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>, default: usize) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut keys = Vec::with_capacity(certs.len());
        for (i, (ck, names)) in certs.into_iter().enumerate() {
            for n in names {
                let n = n.to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(n).or_insert(i),
                };
            }
            keys.push(ck);
        }
        let default = default.min(keys.len().saturating_sub(1));
        SniResolver { certs: keys, exact, wildcard, default }
    }

    /// The index of the certificate for `sni` (`None`: no SNI).
    pub fn index_for(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return self.default };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&sni) {
            return i;
        }
        if let Some((_, rest)) = sni.split_once('.') {
            if let Some(&i) = self.wildcard.get(rest) {
                return i;
            }
        }
        self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.index_for(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        lbfleet_api::config::tls::load_certified_key(
            c.cert.pem().as_bytes(),
            c.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let r = SniResolver::new(
            vec![
                (key("a.test"), vec!["a.test".into()]),
                (key("b.test"), vec!["b.test".into(), "*.b.test".into()]),
                (key("c.test"), vec!["c.test".into(), "A.TEST".into()]),
            ],
            2,
        );
        assert_eq!(r.index_for(Some("a.test")), 0);
        assert_eq!(r.index_for(Some("A.Test.")), 0, "case and the root dot do not matter");
        assert_eq!(r.index_for(Some("b.test")), 1);
        assert_eq!(r.index_for(Some("x.b.test")), 1);
        assert_eq!(r.index_for(Some("y.x.b.test")), 2, "a wildcard covers one label");
        assert_eq!(r.index_for(Some("unknown.test")), 2);
        assert_eq!(r.index_for(None), 2);
    }
}
