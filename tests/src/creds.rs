//! The test process's cluster credentials: one CA with node certificates 1..=9 and an admin and a read
//! token, made once per test process by the real `lbctl ca init`, shared by every cluster the process
//! starts (node identities are ids, not addresses, so clusters on different IPs can share them). A second,
//! foreign CA is made on demand for tests of refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::bin::bin;

/// Node certificates made per CA (ids 1..=NODES).
pub const NODES: u64 = 9;
/// The name every node certificate carries (`lbfleet_api::auth::SERVER_NAME`).
pub use lbfleet_api::auth::SERVER_NAME;

/// One CA directory made by `lbctl ca init`.
pub struct Creds {
    pub dir: PathBuf,
    pub admin_token: String,
    pub read_token: String,
}

impl Creds {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }
    pub fn node_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.toml")
    }

    /// The lbnode flags of node `id`: CA, its certificate and key, the tokens file.
    pub fn node_args(&self, id: u64) -> Vec<String> {
        assert!((1..=NODES).contains(&id), "test credentials exist for nodes 1..={NODES}, not {id}");
        [
            ("--ca-file", self.ca()),
            ("--cert-file", self.node_cert(id)),
            ("--key-file", self.node_key(id)),
            ("--tokens-file", self.tokens()),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    /// TLS of an operator's client: verifies nodes against this CA, presents no certificate.
    pub fn operator_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca())))
            .domain_name(SERVER_NAME)
    }

    /// TLS of node `id` calling a peer: presents node `id`'s certificate.
    pub fn node_tls(&self, id: u64) -> ClientTlsConfig {
        self.operator_tls().identity(Identity::from_pem(read(&self.node_cert(id)), read(&self.node_key(id))))
    }

    /// `authorization` header value of the admin token.
    pub fn admin_bearer(&self) -> String {
        format!("Bearer {}", self.admin_token)
    }

    /// `authorization` header value of the read token.
    pub fn read_bearer(&self) -> String {
        format!("Bearer {}", self.read_token)
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn make(name: &str) -> Creds {
    let dir = std::env::temp_dir().join(format!("lbfleet-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(bin("lbctl"))
        .args(["ca", "init", "--nodes", &NODES.to_string(), "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run lbctl ca init");
    assert!(out.status.success(), "lbctl ca init failed: {}", String::from_utf8_lossy(&out.stderr));
    let token =
        |role: &str| String::from_utf8(read(&dir.join(format!("{role}.token")))).unwrap().trim().to_string();
    Creds { admin_token: token("admin"), read_token: token("read"), dir }
}

/// The credentials of every cluster this test process starts.
pub fn creds() -> &'static Creds {
    static CREDS: OnceLock<Creds> = OnceLock::new();
    CREDS.get_or_init(|| make("creds"))
}

/// Credentials of another cluster: a CA none of this process's nodes trusts.
pub fn foreign() -> &'static Creds {
    static FOREIGN: OnceLock<Creds> = OnceLock::new();
    FOREIGN.get_or_init(|| make("foreign"))
}
