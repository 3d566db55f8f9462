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
    let changed = text.replace("\nheartbeat_ms = 100\n", "\nheartbeat_ms = 150\n");
    assert_ne!(changed, text, "heartbeat_ms = 100 is in the printed config");
    std::fs::write(&path, changed).unwrap();
    let loaded = NodeConfig::load(&Cli { config: Some(path), ..Cli::default() }).unwrap();
    assert_eq!(loaded.raft.heartbeat_ms, 150);
}
