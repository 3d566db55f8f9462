//! What a local cluster is made of: names, addresses, files, lbnode arguments and the demo config.
//! Pure: computed from the `local up` options, no I/O.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// lbnode's gRPC port (Raft + Admin) on each node's IP.
pub const GRPC_PORT: u16 = 7400;
/// lbnode's admin HTTP port on each node's IP.
pub const HTTP_PORT: u16 = 7401;
/// Port of the demo config's HTTP listener on every node.
pub const DEMO_HTTP_PORT: u16 = 8080;
/// Port of the demo config's TCP listener on every node.
pub const DEMO_TCP_PORT: u16 = 8081;

/// One lbnode of the local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub id: u64,
    pub name: String,
    pub ip: Ipv4Addr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub pid: PathBuf,
}

/// One demo backend of the local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub pid: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub dir: PathBuf,
    pub nodes: Vec<NodePlan>,
    pub backends: Vec<BackendPlan>,
    /// `--peers` value shared by every node: `1=127.0.0.11:7400,2=127.0.0.12:7400,...`.
    pub peers: String,
    /// The cluster CA, node certificates and tokens (`DIR/tls`, see [`crate::ca`]).
    pub tls: crate::ca::CaDir,
    /// `DIR/lbctl.env`: the operator's credentials as `export` lines.
    pub env_file: PathBuf,
}

/// Node i binds 127.0.0.1i (127.0.0.11 ... 127.0.0.19, 127.0.0.110 ... 127.0.0.199).
pub fn node_ip(id: u64) -> Option<Ipv4Addr> {
    if id == 0 {
        return None;
    }
    format!("127.0.0.1{id}").parse().ok()
}

pub fn plan(dir: &Path, nodes: u8, backends: u16, base_port: u16) -> Result<Plan, String> {
    let mut node_plans = Vec::with_capacity(nodes as usize);
    for id in 1..=u64::from(nodes) {
        let ip = node_ip(id)
            .ok_or_else(|| format!("node {id} has no 127.0.0.1{id} address; use at most 99 nodes"))?;
        let name = format!("node-{id}");
        node_plans.push(NodePlan {
            id,
            ip,
            grpc: SocketAddr::V4(SocketAddrV4::new(ip, GRPC_PORT)),
            http: SocketAddr::V4(SocketAddrV4::new(ip, HTTP_PORT)),
            data_dir: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            pid: dir.join(format!("{name}.pid")),
            name,
        });
    }
    let mut backend_plans = Vec::with_capacity(backends as usize);
    for k in 1..=backends {
        let port = base_port.checked_add(k).ok_or_else(|| {
            format!("backend {k} would need port {} (above 65535)", u32::from(base_port) + u32::from(k))
        })?;
        let name = format!("backend-{k}");
        backend_plans.push(BackendPlan {
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            log: dir.join(format!("{name}.log")),
            pid: dir.join(format!("{name}.pid")),
            name,
        });
    }
    let peers = node_plans.iter().map(|n| format!("{}={}", n.id, n.grpc)).collect::<Vec<_>>().join(",");
    Ok(Plan {
        dir: dir.to_path_buf(),
        nodes: node_plans,
        backends: backend_plans,
        peers,
        tls: crate::ca::CaDir::new(&dir.join("tls")),
        env_file: dir.join("lbctl.env"),
    })
}

impl Plan {
    /// Arguments of node `n`'s lbnode process (the fixed lbnode command-line contract).
    pub fn lbnode_args(&self, n: &NodePlan, log_level: &str) -> Vec<String> {
        vec![
            "--id".into(),
            n.id.to_string(),
            "--bind".into(),
            n.ip.to_string(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--peers".into(),
            self.peers.clone(),
            "--log-level".into(),
            log_level.to_string(),
            "--ca-file".into(),
            self.tls.ca_cert().display().to_string(),
            "--cert-file".into(),
            self.tls.node_cert(n.id).display().to_string(),
            "--key-file".into(),
            self.tls.node_key(n.id).display().to_string(),
            "--tokens-file".into(),
            self.tls.tokens().display().to_string(),
        ]
    }

    /// The text of `DIR/lbctl.env`: endpoint, CA and the admin token for `lbctl`.
    pub fn env_text(&self, admin_token: &str) -> String {
        let endpoint =
            self.nodes.first().map_or_else(|| "127.0.0.11:7400".to_string(), |n| n.grpc.to_string());
        format!(
            "# Credentials of the local cluster in {dir} (written by `lbctl local up`).\n\
             # Use them with: . {env}\n\
             export LBCTL_ENDPOINT={endpoint}\n\
             export LBCTL_CA={ca}\n\
             export LBCTL_TOKEN={admin_token}\n",
            dir = self.dir.display(),
            env = self.env_file.display(),
            ca = self.tls.ca_cert().display(),
        )
    }

    /// Every address a process of this cluster will listen on, with who listens there (checked free before start).
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, String)> {
        let mut v = Vec::new();
        for b in &self.backends {
            v.push((b.addr, b.name.clone()));
        }
        for n in &self.nodes {
            v.push((n.grpc, format!("{} gRPC", n.name)));
            v.push((n.http, format!("{} admin HTTP", n.name)));
            v.push((SocketAddr::new(n.ip.into(), DEMO_HTTP_PORT), format!("{} listener \"web\"", n.name)));
            v.push((SocketAddr::new(n.ip.into(), DEMO_TCP_PORT), format!("{} listener \"web-tcp\"", n.name)));
        }
        v
    }
}

/// The demo config: pool "web" (maglev on source IP, HTTP health check) over every backend, an HTTP listener
/// on 8080 and a TCP listener on 8081, both feeding "web".
pub fn demo_config_toml(backends: &[SocketAddr]) -> String {
    let mut s = String::from(
        "# Demo config written by `lbctl local up`.\n\
         # Apply a changed copy with: lbctl apply -f demo.toml\n\n\
         [[pool]]\n\
         name = \"web\"\n\
         policy = \"maglev\"\n\
         hash_key = \"source_ip\"\n\
         table_size = 65537\n\n\
         \x20 [pool.health]\n\
         \x20 kind = \"http\"\n\
         \x20 path = \"/health\"\n\
         \x20 interval = \"1s\"\n\
         \x20 timeout = \"500ms\"\n\
         \x20 rise = 2\n\
         \x20 fall = 2\n",
    );
    for b in backends {
        s.push_str(&format!("\n  [[pool.backend]]\n  addr = \"{b}\"\n  weight = 1\n"));
    }
    s.push_str(&format!(
        "\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = {DEMO_HTTP_PORT}\npool = \"web\"\n\
         \n[[listener]]\nname = \"web-tcp\"\nprotocol = \"tcp\"\nport = {DEMO_TCP_PORT}\npool = \"web\"\n"
    ));
    s
}

/// One node's answer while waiting for the cluster to form: its leader and term, or why it could not answer.
pub type LeaderView = Result<(Option<u64>, u64), String>;

/// The leader and term every node agrees on, if they all answered and all name the same leader and term.
pub fn agreed_leader(views: &[LeaderView]) -> Option<(u64, u64)> {
    let mut agreed: Option<(u64, u64)> = None;
    for v in views {
        let (Some(leader), term) = v.as_ref().ok()?.to_owned() else { return None };
        match agreed {
            None => agreed = Some((leader, term)),
            Some(a) if a == (leader, term) => {}
            Some(_) => return None,
        }
    }
    agreed
}

/// Human description of the views, for a timeout message: `node-1: leader 1 term 2; node-2: no leader; ...`.
pub fn describe_views(names: &[String], views: &[LeaderView]) -> String {
    names
        .iter()
        .zip(views)
        .map(|(name, v)| match v {
            Ok((Some(l), t)) => format!("{name}: leader {l} term {t}"),
            Ok((None, t)) => format!("{name}: no leader (term {t})"),
            Err(e) => format!("{name}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// What `local up` prints with `--json`, and the source of its text summary.
#[derive(Debug, Serialize, PartialEq)]
pub struct UpSummary {
    pub dir: String,
    pub leader: u64,
    pub term: u64,
    pub config_version: u64,
    pub config_file: String,
    /// `lbctl.env`: source it to use `lbctl` against this cluster.
    pub env_file: String,
    pub nodes: Vec<NodeSummary>,
    pub listeners: Vec<ListenerSummary>,
    pub backends: Vec<BackendSummary>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NodeSummary {
    pub id: u64,
    pub name: String,
    pub pid: u32,
    pub grpc: String,
    pub http: String,
    pub log: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ListenerSummary {
    pub name: String,
    pub protocol: String,
    pub port: u16,
    pub addrs: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendSummary {
    pub name: String,
    pub pid: u32,
    pub addr: String,
    pub log: String,
}

impl UpSummary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "local cluster is up in {}: {} node{}, {} backend{}; leader node {} (term {}), config version {}\n\n",
            self.dir,
            self.nodes.len(),
            plural(self.nodes.len()),
            self.backends.len(),
            plural(self.backends.len()),
            self.leader,
            self.term,
            self.config_version
        );
        s.push_str("nodes:\n");
        let rows: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    format!("pid {}", n.pid),
                    format!("grpc {}", n.grpc),
                    format!("admin http://{}/", n.http),
                    format!("log {}", n.log),
                ]
            })
            .collect();
        s.push_str(&indent(&crate::output::table(&["", "", "", "", ""], &rows)));
        s.push_str("listeners (on every node):\n");
        for l in &self.listeners {
            let scheme = if l.protocol == "http" { "http://" } else { "" };
            let addrs: Vec<String> = l.addrs.iter().map(|a| format!("{scheme}{a}")).collect();
            s.push_str(&format!("  {} ({} :{})  {}\n", l.name, l.protocol, l.port, addrs.join("  ")));
        }
        s.push_str("backends:\n");
        let rows: Vec<Vec<String>> = self
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.name.clone(),
                    format!("pid {}", b.pid),
                    format!("http://{}/", b.addr),
                    format!("log {}", b.log),
                ]
            })
            .collect();
        s.push_str(&indent(&crate::output::table(&["", "", "", ""], &rows)));
        s.push_str(&format!("config: {}\n", self.config_file));
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        let first = self.nodes.first().map_or("127.0.0.11:7400", |n| n.grpc.as_str());
        let web = self.listeners.first().and_then(|l| l.addrs.first()).cloned().unwrap_or_default();
        s.push_str(&format!(
            "credentials: {env} (endpoint {first}, the cluster CA and the admin token)\n\
             \ntry:\n  . {env}\n  lbctl status\n  lbctl backends\n  \
             curl -si http://{web}/\n  lbctl apply -f {}\n  lbctl local down --dir {}\n",
            self.config_file,
            self.dir,
            env = self.env_file,
        ));
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Indent a table by two spaces, dropping its (empty) header line.
fn indent(table: &str) -> String {
    table.lines().skip(1).map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::config::{parse, Format, HashKey, HealthKind, Policy, Protocol};

    #[test]
    fn node_addresses_follow_127_0_0_1n() {
        assert_eq!(node_ip(1), Some(Ipv4Addr::new(127, 0, 0, 11)));
        assert_eq!(node_ip(9), Some(Ipv4Addr::new(127, 0, 0, 19)));
        assert_eq!(node_ip(10), Some(Ipv4Addr::new(127, 0, 0, 110)));
        assert_eq!(node_ip(99), Some(Ipv4Addr::new(127, 0, 0, 199)));
        assert_eq!(node_ip(100), None);
        assert_eq!(node_ip(0), None);
    }

    #[test]
    fn plan_names_files_and_ports() {
        let p = plan(Path::new("/tmp/c"), 3, 2, 9000).unwrap();
        assert_eq!(p.peers, "1=127.0.0.11:7400,2=127.0.0.12:7400,3=127.0.0.13:7400");
        let n2 = &p.nodes[1];
        assert_eq!(n2.name, "node-2");
        assert_eq!(n2.grpc.to_string(), "127.0.0.12:7400");
        assert_eq!(n2.http.to_string(), "127.0.0.12:7401");
        assert_eq!(n2.data_dir, Path::new("/tmp/c/node-2"));
        assert_eq!(n2.log, Path::new("/tmp/c/node-2.log"));
        assert_eq!(n2.pid, Path::new("/tmp/c/node-2.pid"));
        assert_eq!(p.backends[1].name, "backend-2");
        assert_eq!(p.backends[1].addr.to_string(), "127.0.0.1:9002");
        assert_eq!(p.backends[1].pid, Path::new("/tmp/c/backend-2.pid"));
        assert_eq!(
            p.lbnode_args(n2, "debug"),
            [
                "--id",
                "2",
                "--bind",
                "127.0.0.12",
                "--data-dir",
                "/tmp/c/node-2",
                "--peers",
                "1=127.0.0.11:7400,2=127.0.0.12:7400,3=127.0.0.13:7400",
                "--log-level",
                "debug",
                "--ca-file",
                "/tmp/c/tls/ca.pem",
                "--cert-file",
                "/tmp/c/tls/node-2.pem",
                "--key-file",
                "/tmp/c/tls/node-2.key",
                "--tokens-file",
                "/tmp/c/tls/tokens.toml",
            ]
        );
        let env = p.env_text("lbf_x");
        assert!(env.contains("export LBCTL_ENDPOINT=127.0.0.11:7400\n"), "{env}");
        assert!(env.contains("export LBCTL_CA=/tmp/c/tls/ca.pem\n"), "{env}");
        assert!(env.contains("export LBCTL_TOKEN=lbf_x\n"), "{env}");
        assert_eq!(p.listen_addrs().len(), 2 + 3 * 4);
        assert!(plan(Path::new("/tmp/c"), 1, 2, 65534).unwrap_err().contains("above 65535"));
    }

    #[test]
    fn demo_config_is_valid_and_as_specified() {
        let p = plan(Path::new("/tmp/c"), 3, 3, 9000).unwrap();
        let addrs: Vec<SocketAddr> = p.backends.iter().map(|b| b.addr).collect();
        let cfg = parse(&demo_config_toml(&addrs), Format::Toml).unwrap();
        assert_eq!(cfg.pool.len(), 1);
        let pool = &cfg.pool[0];
        assert_eq!(
            (pool.name.as_str(), pool.policy, &pool.hash_key),
            ("web", Policy::Maglev, &HashKey::SourceIp)
        );
        assert_eq!(pool.health.kind, HealthKind::Http);
        assert_eq!(pool.health.path, "/health");
        assert_eq!(pool.backend.iter().map(|b| b.addr).collect::<Vec<_>>(), addrs);
        let l: Vec<_> =
            cfg.listener.iter().map(|l| (l.name.as_str(), l.protocol, l.port, l.pool.as_str())).collect();
        assert_eq!(l, [("web", Protocol::Http, 8080, "web"), ("web-tcp", Protocol::Tcp, 8081, "web")]);
    }

    #[test]
    fn leader_agreement() {
        let ok = |l: Option<u64>, t: u64| -> LeaderView { Ok((l, t)) };
        assert_eq!(agreed_leader(&[ok(Some(1), 2), ok(Some(1), 2), ok(Some(1), 2)]), Some((1, 2)));
        assert_eq!(agreed_leader(&[ok(Some(1), 2), ok(None, 2), ok(Some(1), 2)]), None);
        assert_eq!(agreed_leader(&[ok(Some(1), 2), ok(Some(2), 3)]), None);
        assert_eq!(agreed_leader(&[ok(Some(1), 2), ok(Some(1), 3)]), None, "same leader, stale term");
        assert_eq!(agreed_leader(&[ok(Some(1), 2), Err("connection refused".into())]), None);
        assert_eq!(agreed_leader(&[]), None);
        let names = vec!["node-1".to_string(), "node-2".to_string(), "node-3".to_string()];
        assert_eq!(
            describe_views(&names, &[ok(Some(1), 2), ok(None, 2), Err("connection refused".into())]),
            "node-1: leader 1 term 2; node-2: no leader (term 2); node-3: connection refused"
        );
    }

    #[test]
    fn last_lines_of_a_log() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a", 5), ["a"]);
        assert!(last_lines("", 3).is_empty());
    }

    #[test]
    fn summary_text_lists_every_endpoint() {
        let s = UpSummary {
            dir: "/tmp/c".into(),
            leader: 1,
            term: 2,
            config_version: 1,
            config_file: "/tmp/c/demo.toml".into(),
            env_file: "/tmp/c/lbctl.env".into(),
            nodes: vec![NodeSummary {
                id: 1,
                name: "node-1".into(),
                pid: 10,
                grpc: "127.0.0.11:7400".into(),
                http: "127.0.0.11:7401".into(),
                log: "/tmp/c/node-1.log".into(),
            }],
            listeners: vec![ListenerSummary {
                name: "web".into(),
                protocol: "http".into(),
                port: 8080,
                addrs: vec!["127.0.0.11:8080".into()],
            }],
            backends: vec![BackendSummary {
                name: "backend-1".into(),
                pid: 11,
                addr: "127.0.0.1:9001".into(),
                log: "/tmp/c/backend-1.log".into(),
            }],
            warnings: vec!["backend-1 not healthy yet".into()],
        };
        let t = s.text();
        for needle in [
            "1 node, 1 backend; leader node 1 (term 2)",
            "node-1  pid 10  grpc 127.0.0.11:7400  admin http://127.0.0.11:7401/  log /tmp/c/node-1.log",
            "web (http :8080)  http://127.0.0.11:8080",
            "backend-1  pid 11  http://127.0.0.1:9001/",
            "warning: backend-1 not healthy yet",
            "credentials: /tmp/c/lbctl.env",
            ". /tmp/c/lbctl.env\n  lbctl status",
            "curl -si http://127.0.0.11:8080/",
            "lbctl local down --dir /tmp/c",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }
}
