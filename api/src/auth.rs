//! The trust boundary, as data: who a caller is and what each gRPC method requires. Pure: the node's
//! TLS stack verifies certificates; this module names identities, hashes tokens and decides.
//!
//! - **Nodes** authenticate with a certificate issued by the cluster CA (mutual TLS). A node
//!   certificate names its node with the DNS name `node-<id>.lbfleet` ([`node_name`]) and also carries
//!   [`SERVER_NAME`], the one name every client verifies a node's certificate against (addresses change;
//!   the cluster CA is private, so "a certificate of this cluster" is what matters). A node's identity for
//!   health votes and load reports is the one in its certificate, never a field of the request.
//! - **Operators** authenticate with a bearer token (`authorization: Bearer <token>`). A node keeps only
//!   each token's SHA-256 ([`TokenSet`], read from its tokens file): tokens are 32 random bytes, so a
//!   fast hash is enough, and the file on a node's disk gives nobody a usable token.
//! - **Roles**: [`Role::Read`] for status, get, backends, nodes list, events and watch; [`Role::Admin`]
//!   adds apply, drain and membership changes. A node's certificate counts as admin (nodes forward
//!   operators' requests they have authorized themselves), and only a node may call the Raft service,
//!   submit health votes or report load ([`Requirement::Node`]).
//!
//! [`authorize`] maps a method path and the caller's [`Principal`] to a decision; a method this table
//! does not name is refused.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::NodeId;

/// The DNS name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "lbfleet-node";
/// Suffix of the DNS name that carries a node's identity in its certificate.
pub const NODE_NAME_SUFFIX: &str = ".lbfleet";
/// Longest bearer token accepted (longer ones are refused before hashing).
pub const MAX_TOKEN_LEN: usize = 256;
/// Largest tokens file a node reads.
pub const MAX_TOKENS_FILE_BYTES: usize = 64 * 1024;
/// Most tokens one tokens file may hold.
pub const MAX_TOKENS: usize = 256;
/// Prefix of the tokens `lbctl ca init` makes (so a leaked one is easy to grep for).
pub const TOKEN_PREFIX: &str = "lbf_";

/// The DNS name that carries node `id`'s identity in its certificate.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}{NODE_NAME_SUFFIX}")
}

/// The node id a DNS name of the form `node-<id>.lbfleet` names.
pub fn node_id_from_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix("node-")?.strip_suffix(NODE_NAME_SUFFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|id| *id > 0)
}

/// The node a certificate (DER) names: exactly one `node-<id>.lbfleet` DNS name among its subject
/// alternative names. The caller has already verified the chain to the cluster CA.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or_else(|| "the certificate has no subject alternative names".to_string())?;
    let ids: Vec<NodeId> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => node_id_from_name(d),
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(format!("the certificate names no node (no DNS name node-<id>{NODE_NAME_SUFFIX})")),
        _ => Err(format!("the certificate names {} nodes; a node certificate names one", ids.len())),
    }
}

/// The DER certificates of a PEM document, in order (other blocks are skipped).
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Status, get, backends, nodes list, events, watch.
    Read,
    /// Everything `Read` may, plus apply, drain, undrain, nodes add and remove.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A cluster node, named by its certificate.
    Node(NodeId),
    /// An operator, by the name of the token they presented.
    Operator { name: String, role: Role },
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Node(id) => write!(f, "node {id}"),
            Principal::Operator { name, role } => write!(f, "token \"{name}\" ({role})"),
        }
    }
}

/// What a method needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    Read,
    Admin,
    /// Only a cluster node (Raft, health votes, load reports).
    Node,
}

/// What `path` (`/lbfleet.v1.Admin/ApplyConfig`) requires; `None` for a method not in the table.
pub fn requirement(path: &str) -> Option<Requirement> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "lbfleet.v1.Raft" => {
            matches!(method, "AppendEntries" | "Vote" | "InstallSnapshot" | "Propose" | "ReadIndex")
                .then_some(Requirement::Node)
        }
        "lbfleet.v1.Admin" => match method {
            "Status" | "LocalStatus" | "GetConfig" | "ListNodes" | "ListBackends" | "Watch" | "Events"
            | "LocalLoad" | "LocalDashboard" => Some(Requirement::Read),
            "ApplyConfig" | "AddNode" | "RemoveNode" | "SetDrain" | "SetNodeDrain" => {
                Some(Requirement::Admin)
            }
            "ReportLoad" | "SubmitHealthVote" => Some(Requirement::Node),
            _ => None,
        },
        _ => None,
    }
}

/// Why a call was refused: `Unauthenticated` (no or bad credentials) or `PermissionDenied` (valid
/// credentials, not enough for this method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated(String),
    PermissionDenied(String),
}

impl Denied {
    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(m) | Denied::PermissionDenied(m) => m,
        }
    }
}

/// The caller's credentials as the server saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A client certificate chaining to the cluster CA, and the node it names (or why it names none).
    NodeCert(Result<NodeId, String>),
    /// A bearer token: the matching entry of the tokens file, or `None` when no entry matches.
    Token(Option<(String, Role)>),
    None,
}

/// Decide whether the caller may call `path`; the [`Principal`] on success.
pub fn authorize(path: &str, credentials: Credentials) -> Result<Principal, Denied> {
    let method = path.rsplit('/').next().unwrap_or(path);
    let Some(needed) = requirement(path) else {
        return Err(Denied::PermissionDenied(format!("{path}: no such method on this node")));
    };
    let principal = match credentials {
        Credentials::NodeCert(Ok(id)) => Principal::Node(id),
        Credentials::NodeCert(Err(why)) => {
            return Err(Denied::Unauthenticated(format!(
                "client certificate refused: {why}"
            )))
        }
        Credentials::Token(Some((name, role))) => Principal::Operator { name, role },
        Credentials::Token(None) => {
            return Err(Denied::Unauthenticated(
                "the bearer token is not valid for this cluster (no token with its hash on this node)".into(),
            ))
        }
        Credentials::None => {
            return Err(Denied::Unauthenticated(match needed {
                Requirement::Node => {
                    format!("missing client certificate: {method} is for cluster nodes (mutual TLS with a certificate from the cluster CA)")
                }
                Requirement::Read | Requirement::Admin => format!(
                    "missing bearer token: {method} needs a token with the {} role (lbctl --token or LBCTL_TOKEN)",
                    if needed == Requirement::Admin { Role::Admin } else { Role::Read }
                ),
            }))
        }
    };
    let allowed = match (&principal, needed) {
        (Principal::Node(_), _) => true,
        (Principal::Operator { .. }, Requirement::Node) => false,
        (Principal::Operator { role, .. }, Requirement::Admin) => *role == Role::Admin,
        (Principal::Operator { .. }, Requirement::Read) => true,
    };
    if allowed {
        return Ok(principal);
    }
    Err(Denied::PermissionDenied(match needed {
        Requirement::Node => format!("{method} is for cluster nodes only; {principal} cannot call it"),
        _ => format!("{principal} cannot call {method}: it needs the admin role"),
    }))
}

/// The token in an `authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Lowercase hex SHA-256 of a token, as a tokens file stores it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (shown in logs and errors, never the token).
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
}

/// The tokens a node accepts, hashed: the TOML file `tokens_file` names,
/// `[[token]] name = "ops" role = "admin" sha256 = "…"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSet {
    #[serde(rename = "token", default)]
    pub tokens: Vec<TokenEntry>,
}

impl TokenSet {
    /// Parse and check a tokens file: at most [`MAX_TOKENS_FILE_BYTES`] and [`MAX_TOKENS`] entries,
    /// unique non-empty names, 64-hex-digit hashes.
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        if text.len() > MAX_TOKENS_FILE_BYTES {
            return Err(format!("{} bytes is over the limit of {MAX_TOKENS_FILE_BYTES}", text.len()));
        }
        let set: TokenSet = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if set.tokens.len() > MAX_TOKENS {
            return Err(format!("{} tokens is over the limit of {MAX_TOKENS}", set.tokens.len()));
        }
        for (i, t) in set.tokens.iter().enumerate() {
            if t.name.trim().is_empty() || t.name.len() > 64 {
                return Err(format!("token {}: name must be 1 to 64 characters", i + 1));
            }
            if set.tokens[..i].iter().any(|o| o.name == t.name) {
                return Err(format!("token \"{}\" is listed twice", t.name));
            }
            if t.sha256.len() != 64
                || !t.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("token \"{}\": sha256 must be 64 lowercase hex digits", t.name));
            }
        }
        Ok(set)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a token set serializes")
    }

    /// The name and role of the entry `token` hashes to, compared in constant time per entry.
    pub fn verify(&self, token: &str) -> Option<(String, Role)> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let hash = hash_token(token);
        let mut found = None;
        for t in &self.tokens {
            let same = t.sha256.len() == hash.len()
                && t.sha256.bytes().zip(hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same && found.is_none() {
                found = Some((t.name.clone(), t.role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_odd_names_name_nobody() {
        assert_eq!(node_id_from_name(&node_name(3)), Some(3));
        for bad in [
            "node-0.lbfleet",
            "node-.lbfleet",
            "node-3",
            "node-3.lbfleet.evil",
            "node-x.lbfleet",
            "lbfleet-node",
        ] {
            assert_eq!(node_id_from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_method_of_the_proto_has_a_requirement() {
        let proto = include_str!("../proto/lbfleet.proto");
        let mut service = "";
        let mut seen = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap().trim();
                let path = format!("/lbfleet.v1.{service}/{method}");
                assert!(requirement(&path).is_some(), "{path} has no requirement");
                seen += 1;
            }
        }
        assert!(seen >= 19, "found {seen} methods");
        assert_eq!(requirement("/lbfleet.v1.Admin/Nope"), None);
        assert_eq!(requirement("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn roles_decide_who_may_call_what() {
        let read = || Credentials::Token(Some(("viewer".into(), Role::Read)));
        let admin = || Credentials::Token(Some(("ops".into(), Role::Admin)));
        let apply = "/lbfleet.v1.Admin/ApplyConfig";
        let status = "/lbfleet.v1.Admin/Status";
        let vote = "/lbfleet.v1.Admin/SubmitHealthVote";
        let append = "/lbfleet.v1.Raft/AppendEntries";

        assert!(authorize(status, read()).is_ok());
        assert!(
            matches!(authorize(apply, read()), Err(Denied::PermissionDenied(m)) if m.contains("admin role"))
        );
        assert!(authorize(apply, admin()).is_ok());
        assert!(matches!(authorize(vote, admin()), Err(Denied::PermissionDenied(_))));
        assert!(matches!(authorize(append, admin()), Err(Denied::PermissionDenied(_))));
        assert_eq!(authorize(append, Credentials::NodeCert(Ok(2))), Ok(Principal::Node(2)));
        assert_eq!(authorize(apply, Credentials::NodeCert(Ok(2))), Ok(Principal::Node(2)));
        assert!(
            matches!(authorize(status, Credentials::None), Err(Denied::Unauthenticated(m)) if m.contains("missing bearer token"))
        );
        assert!(
            matches!(authorize(append, Credentials::None), Err(Denied::Unauthenticated(m)) if m.contains("missing client certificate"))
        );
        assert!(
            matches!(authorize(status, Credentials::Token(None)), Err(Denied::Unauthenticated(m)) if m.contains("not valid"))
        );
        assert!(matches!(
            authorize(append, Credentials::NodeCert(Err("names no node".into()))),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(authorize("/x.Y/Z", admin()), Err(Denied::PermissionDenied(_))));
    }

    #[test]
    fn tokens_are_checked_against_their_hashes() {
        let set = TokenSet {
            tokens: vec![
                TokenEntry { name: "ops".into(), role: Role::Admin, sha256: hash_token("lbf_secret") },
                TokenEntry { name: "viewer".into(), role: Role::Read, sha256: hash_token("lbf_view") },
            ],
        };
        let back = TokenSet::parse(&set.to_toml()).unwrap();
        assert_eq!(back, set);
        assert!(!back.to_toml().contains("lbf_secret"));
        assert_eq!(back.verify("lbf_secret"), Some(("ops".into(), Role::Admin)));
        assert_eq!(back.verify("lbf_view"), Some(("viewer".into(), Role::Read)));
        assert_eq!(back.verify("lbf_secreT"), None);
        assert_eq!(back.verify(""), None);
        assert_eq!(back.verify(&"x".repeat(MAX_TOKEN_LEN + 1)), None);
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        assert!(TokenSet::parse("[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"00\"\n").is_err());
        let short = "[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"00\"\n";
        assert!(TokenSet::parse(short).unwrap_err().contains("64 lowercase hex"));
        let h = hash_token("t");
        let twice = format!("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{h}\"\n[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{h}\"\n");
        assert!(TokenSet::parse(&twice).unwrap_err().contains("listed twice"));
        assert!(TokenSet::parse(&" ".repeat(MAX_TOKENS_FILE_BYTES + 1)).unwrap_err().contains("limit"));
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
