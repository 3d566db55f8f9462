//! `lbctl ca`: the cluster's certificate authority and the operators' tokens, made with rcgen.
//!
//! `lbctl ca init --dir DIR --nodes N` writes, in `DIR`:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the cluster CA (ECDSA P-256, self-signed) | key 0600 |
//! | `node-<id>.pem`, `node-<id>.key` | node `id`'s certificate: DNS names `node-<id>.lbfleet` (its identity) and `lbfleet-node` (what clients verify), client and server use | key 0600 |
//! | `tokens.toml` | the operators' tokens as SHA-256 hashes, for every node's `tokens_file` | 0644 |
//! | `admin.token`, `read.token` | the tokens themselves (roles admin and read), for operators | 0600 |
//!
//! `lbctl ca issue --dir DIR --id N` adds a node certificate signed by the CA in `DIR` (a node to be
//! added later). Extra `--san` names (host names or IP addresses) go into node certificates for
//! clients that verify by address.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lbfleet_api::auth::{hash_token, node_name, Role, TokenEntry, TokenSet, SERVER_NAME, TOKEN_PREFIX};
use lbfleet_api::NodeId;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// Most node certificates one `ca init` makes.
pub const MAX_NODES: u64 = 64;

/// The files of one cluster's CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaDir {
    pub dir: PathBuf,
}

impl CaDir {
    pub fn new(dir: &Path) -> CaDir {
        CaDir { dir: dir.to_path_buf() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn node_cert(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }
    pub fn node_key(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.toml")
    }
    pub fn token(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{role}.token"))
    }

    /// The token of `role`, as written by [`CaDir::init`].
    pub fn read_token(&self, role: Role) -> anyhow::Result<String> {
        let path = self.token(role);
        Ok(fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?.trim().to_string())
    }

    /// Make the CA, node certificates `1..=nodes`, and one admin and one read token.
    pub fn init(&self, nodes: u64, sans: &[String]) -> anyhow::Result<()> {
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("--nodes {nodes} is out of range 1..={MAX_NODES}");
        }
        if self.ca_cert().exists() {
            bail!(
                "{} already holds a CA ({}); issue more node certificates with `lbctl ca issue --dir {} --id N`",
                self.dir.display(),
                self.ca_cert().display(),
                self.dir.display()
            );
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("create {}", self.dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "lbfleet cluster CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        write_file(&self.ca_key(), &key.serialize_pem(), true)?;
        write_file(&self.ca_cert(), &cert.pem(), false)?;
        for id in 1..=nodes {
            self.issue(id, sans)?;
        }
        let mut set = TokenSet::default();
        for (name, role) in [("admin", Role::Admin), ("read", Role::Read)] {
            let token = new_token();
            set.tokens.push(TokenEntry { name: name.into(), role, sha256: hash_token(&token) });
            write_file(&self.token(role), &format!("{token}\n"), true)?;
        }
        write_file(&self.tokens(), &set.to_toml(), false)
    }

    /// [`CaDir::init`] when the directory holds no CA yet; else keep the CA and tokens and issue
    /// the node certificates of `1..=nodes` that are missing. Safe to run on every start.
    pub fn ensure(&self, nodes: u64, sans: &[String]) -> anyhow::Result<()> {
        if !self.ca_cert().exists() {
            return self.init(nodes, sans);
        }
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("--nodes {nodes} is out of range 1..={MAX_NODES}");
        }
        for id in 1..=nodes {
            if !self.node_cert(id).exists() {
                self.issue(id, sans)?;
            }
        }
        if !self.tokens().exists() {
            bail!("{} holds a CA but no tokens.toml", self.dir.display());
        }
        Ok(())
    }

    /// Make node `id`'s certificate and key, signed by the CA in this directory.
    pub fn issue(&self, id: NodeId, sans: &[String]) -> anyhow::Result<()> {
        if id == 0 {
            bail!("--id must be at least 1");
        }
        let ca_pem = fs::read_to_string(self.ca_cert())
            .with_context(|| format!("read the CA certificate {}", self.ca_cert().display()))?;
        let ca_key_pem = fs::read_to_string(self.ca_key())
            .with_context(|| format!("read the CA key {}", self.ca_key().display()))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("parse the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("parse the CA certificate")?;

        let mut names = vec![node_name(id), SERVER_NAME.to_string()];
        names.extend(sans.iter().cloned());
        let mut params = CertificateParams::new(names).context("certificate names (--san)")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("lbnode-{id}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&self.node_key(id), &key.serialize_pem(), true)?;
        write_file(&self.node_cert(id), &cert.pem(), false)
    }
}

/// A new operator token: the prefix and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_makes_node_certificates_that_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(2, &["lbnode-1".into()]).unwrap();
        for id in 1..=2 {
            let pem = fs::read(ca.node_cert(id)).unwrap();
            let der = x509_der(&pem);
            assert_eq!(lbfleet_api::auth::node_id_from_cert(&der), Ok(id));
            let mode = fs::metadata(ca.node_key(id)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let tokens = TokenSet::parse(&fs::read_to_string(ca.tokens()).unwrap()).unwrap();
        let admin = ca.read_token(Role::Admin).unwrap();
        assert!(admin.starts_with(TOKEN_PREFIX) && admin.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(tokens.verify(&admin), Some(("admin".into(), Role::Admin)));
        assert_eq!(tokens.verify(&ca.read_token(Role::Read).unwrap()), Some(("read".into(), Role::Read)));
        assert!(!fs::read_to_string(ca.tokens()).unwrap().contains(&admin), "tokens.toml holds only hashes");
        assert!(ca.init(1, &[]).unwrap_err().to_string().contains("already holds a CA"));
        let before = fs::read(ca.node_cert(1)).unwrap();
        ca.ensure(3, &[]).unwrap();
        assert_eq!(fs::read(ca.node_cert(1)).unwrap(), before, "ensure keeps what exists");
        assert!(ca.node_cert(3).exists());
        assert_eq!(ca.read_token(Role::Admin).unwrap(), admin);
        ca.issue(7, &[]).unwrap();
        assert_eq!(
            lbfleet_api::auth::node_id_from_cert(&x509_der(&fs::read(ca.node_cert(7)).unwrap())),
            Ok(7)
        );
    }

    fn x509_der(pem: &[u8]) -> Vec<u8> {
        lbfleet_api::auth::pem_certificates(pem).into_iter().next().expect("a certificate")
    }
}
