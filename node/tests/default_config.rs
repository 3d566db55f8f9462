//! `lbnode --print-default-config`: the binary's output, written to a file, is what `lbnode --config`
//! loads at start, and it holds the built-in defaults.

use std::process::Command;

use lbfleet_node::config::{Cli, NodeConfig};

#[test]
fn printed_default_config_loads_at_start_as_the_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbnode"))
        .arg("--print-default-config")
        .output()
        .expect("lbnode runs");
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, &text).unwrap();

    let loaded = NodeConfig::load(&Cli { config: Some(path.clone()), ..Cli::default() })
        .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{text}"));
    // The same node from flags alone: the printed values are the defaults.
    let flags = Cli {
        id: Some(1),
        ca_file: Some("/etc/lbfleet/ca.pem".into()),
        cert_file: Some("/etc/lbfleet/node-1.pem".into()),
        key_file: Some("/etc/lbfleet/node-1.key".into()),
        ..Cli::default()
    };
    assert_eq!(loaded, NodeConfig::load(&flags).unwrap());

    // Round trip: the flag overrides the file, and the file still loads with a changed field.
    let changed = text.replace("\nheartbeat_ms = 50\n", "\nheartbeat_ms = 150\n");
    assert_ne!(changed, text, "heartbeat_ms = 50 is in the printed config");
    std::fs::write(&path, changed).unwrap();
    let loaded = NodeConfig::load(&Cli { config: Some(path), ..Cli::default() }).unwrap();
    assert_eq!(loaded.raft.heartbeat_ms, 150);
}

/// The text of one `key: |` block of the ConfigMap in docker/k8s/configmap.yaml (4-space indent).
fn configmap_entry(key: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/k8s/configmap.yaml");
    let yaml = std::fs::read_to_string(path).expect("docker/k8s/configmap.yaml");
    let start = format!("  {key}: |");
    let mut lines = yaml.lines().skip_while(|l| *l != start);
    assert!(lines.next().is_some(), "{key} is not in {path}");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect()
}

#[test]
fn the_kubernetes_node_toml_loads_with_the_pod_flags_and_its_cluster_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, configmap_entry("node.toml")).unwrap();
    // What statefulset.yaml passes to pod lbnode-2.
    let flags = [
        "lbnode",
        "--config",
        path.to_str().unwrap(),
        "--id",
        "2",
        "--bind",
        "10.244.1.7",
        "--cert-file",
        "/certs/node-2.pem",
        "--key-file",
        "/certs/node-2.key",
    ];
    let cli = <Cli as clap::Parser>::try_parse_from(flags).expect("flags parse");
    let config = NodeConfig::load(&cli).unwrap_or_else(|e| panic!("the k8s node.toml: {e}"));
    assert_eq!(config.peers.len(), 3);
    assert_eq!(config.advertised().addr, "lbnode-2.lbnode-peers:7400");
    assert_eq!(config.data_dir, std::path::PathBuf::from("/data"));

    let cluster = configmap_entry("cluster.toml");
    lbfleet_api::config::parse(&cluster, lbfleet_api::config::Format::Toml)
        .unwrap_or_else(|e| panic!("the k8s cluster.toml: {e}"));
}
