use super::*;

/// The TLS flags every node needs (the files are not read here).
const TLS: &[&str] = &["--ca-file", "ca.pem", "--cert-file", "node.pem", "--key-file", "node.key"];

fn cli(args: &[&str]) -> Cli {
    let mut all = vec!["lbnode"];
    all.extend_from_slice(TLS);
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("flags parse")
}

fn file(text: &str) -> FileConfig {
    toml::from_str(text).expect("file parses")
}

fn problems(err: ConfigError) -> Vec<FieldProblem> {
    match err {
        ConfigError::Invalid(p) => p,
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn peers_parse_with_default_and_explicit_http_addresses() {
    let peers =
        parse_peers("2=127.0.0.12:7400, 1=127.0.0.11:7400@127.0.0.11:8401,3=node-3:7400", 7401).unwrap();
    assert_eq!(
        peers,
        vec![
            Peer { id: 1, addr: "127.0.0.11:7400".into(), http_addr: "127.0.0.11:8401".into() },
            Peer { id: 2, addr: "127.0.0.12:7400".into(), http_addr: "127.0.0.12:7401".into() },
            Peer { id: 3, addr: "node-3:7400".into(), http_addr: "node-3:7401".into() },
        ]
    );
}

#[test]
fn peers_accept_ipv6_and_trailing_commas() {
    let peers = parse_peers("1=[::1]:7400,", 7401).unwrap();
    assert_eq!(peers, vec![Peer { id: 1, addr: "[::1]:7400".into(), http_addr: "[::1]:7401".into() }]);
    assert!(parse_peers("", 7401).unwrap().is_empty());
}

#[test]
fn bad_peer_entries_name_the_entry_and_the_problem() {
    let cases = [
        ("1:127.0.0.1:7400", "not of the form id=host:port"),
        ("x=127.0.0.1:7400", "node id \"x\" is not a number"),
        ("0=127.0.0.1:7400", "node id must be at least 1"),
        ("1=127.0.0.1", "has no port"),
        ("1=127.0.0.1:99999", "invalid port \"99999\""),
        ("1=127.0.0.1:0", "port 0"),
        ("1=:7400", "invalid host"),
        ("1=bad host:7400", "invalid host"),
        ("1=127.0.0.1:7400@127.0.0.1", "HTTP address \"127.0.0.1\" has no port"),
        ("1=a:7400,1=b:7400", "node id 1 is listed twice"),
        ("1=a:7400,2=a:7400", "address \"a:7400\" is listed for node 1 and node 2"),
    ];
    for (text, want) in cases {
        let err = parse_peers(text, 7401).expect_err(text);
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn defaults_fill_everything_but_the_id() {
    let c = NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "3"])).unwrap();
    assert_eq!(c.id, 3);
    assert_eq!(c.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(c.grpc_listen(), "127.0.0.1:7400".parse().unwrap());
    assert_eq!(c.admin_http, "127.0.0.1:7401".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("lbnode-3"));
    assert_eq!(c.raft, RaftTiming::default());
    assert_eq!(c.write_timeout, Duration::from_secs(5));
    assert!(c.peers.is_empty());
}

#[test]
fn flags_override_the_file_field_by_field() {
    let f = file(
        r#"
        id = 1
        bind = "127.0.0.11"
        grpc_port = 7500
        http_port = 7501
        heartbeat_ms = 50
        peers = ["1=127.0.0.11:7500", "2=127.0.0.12:7500"]
        "#,
    );
    let c = NodeConfig::resolve(f, &cli(&["--id", "2", "--bind", "127.0.0.12", "--election-min-ms", "300"]))
        .unwrap();
    assert_eq!(c.id, 2);
    assert_eq!(c.grpc_listen(), "127.0.0.12:7500".parse().unwrap());
    assert_eq!(c.admin_http, "127.0.0.12:7501".parse().unwrap());
    assert_eq!(c.raft.heartbeat_ms, 50);
    assert_eq!(c.raft.election_min_ms, 300);
    assert_eq!(c.peers.len(), 2);
    // Peers without `@http` get the configured HTTP port.
    assert_eq!(c.peers[1].http_addr, "127.0.0.12:7501");
    assert_eq!(
        c.advertised(),
        LbNode { addr: "127.0.0.12:7500".into(), http_addr: "127.0.0.12:7501".into() }
    );
}

#[test]
fn admin_http_flag_replaces_bind_and_http_port() {
    let c =
        NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1", "--admin-http", "127.0.0.1:9999"]))
            .unwrap();
    assert_eq!(c.admin_http, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.advertised().http_addr, "127.0.0.1:9999");
}

#[test]
fn every_bad_field_is_reported_by_name() {
    let args = [
        "--bind",
        "localhost",
        "--grpc-port",
        "0",
        "--heartbeat-ms",
        "600",
        "--election-max-ms",
        "200",
        "--peers",
        "1=a",
        "--admin-http",
        "nowhere",
        "--write-timeout-ms",
        "0",
    ];
    let p = problems(NodeConfig::resolve(FileConfig::default(), &cli(&args)).unwrap_err());
    let fields: Vec<_> = p.iter().map(|p| p.field).collect();
    for want in [
        "id",
        "bind",
        "grpc_port",
        "admin_http",
        "peers",
        "election_min_ms",
        "election_max_ms",
        "write_timeout_ms",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    let text = ConfigError::Invalid(p).to_string();
    assert!(text.contains("bind: \"localhost\" is not an IP address"), "{text}");
}

#[test]
fn admin_http_on_the_grpc_address_is_refused() {
    let err =
        NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1", "--http-port", "7400"])).unwrap_err();
    assert_eq!(problems(err)[0].field, "admin_http");
}

#[test]
fn unknown_file_fields_are_refused() {
    let err = toml::from_str::<FileConfig>("id = 1\ngrpcport = 7400\n").unwrap_err();
    assert!(err.to_string().contains("grpcport"), "{err}");
}

#[test]
fn missing_config_file_names_the_path() {
    let c = cli(&["--config", "/nonexistent/lbnode.toml", "--id", "1"]);
    let err = NodeConfig::load(&c).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/lbnode.toml"), "{err}");
}

#[test]
fn peers_string_in_the_file_is_accepted() {
    let f = file(
        "id = 1\npeers = \"1=127.0.0.11:7400,2=127.0.0.12:7400@127.0.0.12:9000\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"n.pem\"\nkey_file = \"n.key\"\ntokens_file = \"t.toml\"\n",
    );
    let c = NodeConfig::resolve(f, &Cli::default()).unwrap();
    assert_eq!(c.tls.tokens.as_deref(), Some(std::path::Path::new("t.toml")));
    assert_eq!(c.peers[1].http_addr, "127.0.0.12:9000");
}

#[test]
fn a_node_without_tls_files_is_refused_naming_each_one() {
    let p = problems(
        NodeConfig::resolve(FileConfig::default(), &Cli::try_parse_from(["lbnode", "--id", "1"]).unwrap())
            .unwrap_err(),
    );
    let fields: Vec<&str> = p.iter().map(|p| p.field).collect();
    assert_eq!(fields, ["ca_file", "cert_file", "key_file"]);
    assert!(p[0].message.contains("lbctl ca init"), "{}", p[0].message);
}

#[test]
fn hooks_come_from_the_file_as_named_argvs() {
    let f = file(
        r#"
        id = 1
        [hooks.add-web]
        command = ["/usr/local/bin/add-backend", "--pool", "web"]
        timeout = "30s"
        [hooks.del-web]
        command = ["/usr/local/bin/del-backend"]
        "#,
    );
    let c = NodeConfig::resolve(f, &cli(&[])).unwrap();
    assert_eq!(c.hooks.len(), 2);
    let add = c.hooks.get("add-web").unwrap();
    assert_eq!(add.argv, ["/usr/local/bin/add-backend", "--pool", "web"]);
    assert_eq!(add.timeout, Duration::from_secs(30));
    assert_eq!(c.hooks.get("del-web").unwrap().timeout, DEFAULT_HOOK_TIMEOUT);
    assert_eq!(c.hooks.names(), ["add-web".to_string(), "del-web".to_string()].into());
    assert!(NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1"])).unwrap().hooks.is_empty());
}

#[test]
fn bad_hooks_are_refused_one_problem_each() {
    let long_arg = "x".repeat(MAX_HOOK_ARG_LEN + 1);
    let many_args: Vec<String> = (0..=MAX_HOOK_ARGS).map(|i| format!("\"{i}\"")).collect();
    let f = file(&format!(
        r#"
        id = 1
        [hooks."rm -rf"]
        command = ["/bin/rm"]
        [hooks.empty]
        command = []
        [hooks.relative]
        command = ["add-backend", "--pool", "web"]
        [hooks.slow]
        command = ["/bin/true"]
        timeout = "1h"
        [hooks.never]
        command = ["/bin/true"]
        timeout = "soon"
        [hooks.long]
        command = ["/bin/echo", "{long_arg}"]
        [hooks.many]
        command = ["/bin/echo", {}]
        [hooks.ok]
        command = ["/bin/true"]
        "#,
        many_args.join(", ")
    ));
    let p = problems(NodeConfig::resolve(f, &cli(&[])).unwrap_err());
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    let want = [
        "hooks: hooks.empty: command must name a program",
        "hooks: hooks.long: argument 2 is 4097 bytes long, above the limit of 4096",
        "hooks: hooks.many: command has 66 arguments, above the limit of 64",
        "hooks: hooks.never: invalid timeout \"soon\"",
        "hooks: hooks.relative: the program \"add-backend\" must be an absolute path",
        "hooks: hooks.rm -rf: invalid hook name",
        "hooks: hooks.slow: timeout 1h is out of range 1s..=10m",
    ];
    for w in want {
        assert!(text.iter().any(|t| t.starts_with(w)), "missing {w:?} in {text:#?}");
    }
    assert_eq!(text.len(), want.len(), "{text:#?}");
}

#[test]
fn the_number_of_hooks_is_bounded() {
    let text: String =
        (0..=MAX_HOOKS).map(|i| format!("[hooks.h{i}]\ncommand = [\"/bin/true\"]\n")).collect();
    let p = problems(NodeConfig::resolve(file(&format!("id = 1\n{text}")), &cli(&[])).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].to_string(), format!("hooks: {} hooks, above the limit of {MAX_HOOKS}", MAX_HOOKS + 1));
}

#[test]
fn hooks_cannot_be_given_as_raw_commands() {
    let err = toml::from_str::<FileConfig>("[hooks.x]\ncmd = \"echo hi\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `cmd`"), "{err}");
}

#[test]
fn numeric_fields_are_bounded() {
    let args = [
        "--id",
        "1",
        "--heartbeat-ms",
        "10001",
        "--election-min-ms",
        "60001",
        "--election-max-ms",
        "60002",
        "--snapshot-logs",
        "1000001",
        "--write-timeout-ms",
        "300001",
        "--dataplane-threads",
        "257",
        "--upstream-idle-per-backend",
        "65537",
    ];
    let p = problems(NodeConfig::resolve(FileConfig::default(), &cli(&args)).unwrap_err());
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "heartbeat_ms: 10001 is out of range 1..=10000",
            "election_min_ms: 60001 is above the limit of 60000",
            "election_max_ms: 60002 is above the limit of 60000",
            "snapshot_logs: 1000001 is out of range 1..=1000000",
            "write_timeout_ms: 300001 is out of range 1..=300000",
            "dataplane_threads: 257 is out of range 1..=256",
            "upstream_idle_per_backend: 65537 is out of range 0..=65536",
        ]
    );
    let ok = ["--id", "1", "--snapshot-logs", "1000000", "--write-timeout-ms", "300000"];
    assert!(NodeConfig::resolve(FileConfig::default(), &cli(&ok)).is_ok());
}

#[test]
fn a_config_file_above_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let mut text = "id = 1\n".to_string();
    text.push_str(&"# padding\n".repeat(MAX_FILE_BYTES as usize / 10 + 1));
    std::fs::write(&path, text).unwrap();
    let err = NodeConfig::load(&cli(&["--config", path.to_str().unwrap()])).unwrap_err();
    assert!(
        err.to_string().ends_with(&format!("the file is larger than the limit of {MAX_FILE_BYTES} bytes")),
        "{err}"
    );
}

#[test]
fn without_a_vip_the_node_has_no_front() {
    let c = NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1"])).unwrap();
    assert_eq!(c.front, FrontConfig { withdraw_grace: Duration::from_millis(1000), ..Default::default() });
}

#[test]
fn a_speaker_gets_its_socket_in_the_data_dir_and_the_default_grace() {
    let c = NodeConfig::resolve(
        FileConfig::default(),
        &cli(&[
            "--id",
            "2",
            "--data-dir",
            "/data",
            "--vip",
            "172.28.1.1",
            "--vip-loopback",
            "--bgp-speaker",
            "/usr/sbin/bird",
            "--bgp-config",
            "/etc/bird/node.conf",
        ]),
    )
    .unwrap();
    assert_eq!(c.front.vip, Some("172.28.1.1".parse().unwrap()));
    assert!(c.front.vip_loopback);
    assert_eq!(
        c.front.speaker,
        Some(Speaker { program: "/usr/sbin/bird".into(), config: "/etc/bird/node.conf".into() })
    );
    assert_eq!(c.front.socket, Some(PathBuf::from("/data/bird.ctl")));
    assert_eq!(c.front.withdraw_grace, Duration::from_secs(1));
}

#[test]
fn the_file_sets_the_front_and_flags_override_it() {
    let f = file(
        "vip = \"10.0.0.1\"\nbgp_socket = \"/run/bird/bird.ctl\"\nbgp_withdraw_grace_ms = 250\nvip_loopback = true\n",
    );
    let c = NodeConfig::resolve(f.clone(), &cli(&["--id", "1"])).unwrap();
    assert_eq!(c.front.vip, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(c.front.socket, Some(PathBuf::from("/run/bird/bird.ctl")));
    assert_eq!(c.front.speaker, None, "an external BIRD is only controlled");
    assert_eq!(c.front.withdraw_grace, Duration::from_millis(250));
    let c = NodeConfig::resolve(f, &cli(&["--id", "1", "--vip", "10.0.0.2", "--bgp-withdraw-grace-ms", "0"]))
        .unwrap();
    assert_eq!(c.front.vip, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(c.front.withdraw_grace, Duration::ZERO);
}

#[test]
fn bad_front_fields_are_refused_one_problem_each() {
    let long = format!("/{}", "s".repeat(200));
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--vip", "nonsense"], "vip", "not an IP address"),
        (&["--vip", "0.0.0.0"], "vip", "cannot be a virtual IP"),
        (&["--vip", "127.0.0.5"], "vip", "cannot be a virtual IP"),
        (&["--vip-loopback"], "vip_loopback", "needs a virtual IP"),
        (&["--vip", "10.0.0.1", "--bgp-speaker", "/usr/sbin/bird"], "bgp_config", "missing"),
        (&["--vip", "10.0.0.1", "--bgp-config", "/etc/bird.conf"], "bgp_speaker", "missing"),
        (
            &["--vip", "10.0.0.1", "--bgp-speaker", "bird", "--bgp-config", "b.conf"],
            "bgp_speaker",
            "absolute",
        ),
        (&["--bgp-socket", "/run/bird.ctl"], "bgp_socket", "needs a virtual IP"),
        (&["--vip", "10.0.0.1", "--bgp-socket", long.as_str()], "bgp_socket", "Unix socket path"),
        (&["--bgp-withdraw-grace-ms", "60001"], "bgp_withdraw_grace_ms", "out of range 0..=60000"),
    ];
    for (flags, field, words) in cases {
        let mut args = vec!["--id", "1"];
        args.extend_from_slice(flags);
        let p = problems(NodeConfig::resolve(FileConfig::default(), &cli(&args)).unwrap_err());
        assert_eq!(p.len(), 1, "{flags:?}: {p:?}");
        assert_eq!(p[0].field, *field, "{flags:?}: {p:?}");
        assert!(p[0].message.contains(words), "{flags:?}: {}", p[0].message);
    }
}

/// The required fields only (id and the TLS files, as the printed file sets them): everything else
/// takes its built-in default.
fn built_in_defaults() -> NodeConfig {
    let required = "id = 1\nca_file = \"/etc/lbfleet/ca.pem\"\ncert_file = \"/etc/lbfleet/node-1.pem\"\n\
                    key_file = \"/etc/lbfleet/node-1.key\"\n";
    NodeConfig::resolve(file(required), &Cli::default()).expect("required fields resolve")
}

#[test]
fn the_printed_default_config_is_a_valid_node_toml_holding_the_defaults() {
    let text = reference::default_config_toml();
    let parsed = NodeConfig::resolve(file(&text), &Cli::default()).expect("printed config resolves");
    assert_eq!(parsed, built_in_defaults());
}

#[test]
fn the_printed_default_config_names_every_field() {
    // Uncomment the example lines: then every field of the file is set, and the result still resolves.
    let text: String = reference::default_config_toml()
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("# ").unwrap_or(l);
            let is_field = rest.starts_with("[hooks.")
                || rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                });
            if is_field {
                format!("{rest}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let full = file(&text);
    let shown = format!("{full:?}");
    assert!(!shown.contains("None"), "a field of the file is missing from the printed config: {shown}");
    assert_eq!(full.hooks.len(), 1, "{shown}");
    let resolved = NodeConfig::resolve(full, &Cli::default()).expect("every field set resolves");
    assert_eq!(resolved.hooks.names(), BTreeSet::from(["add-web".to_string()]));
    assert_eq!(resolved.peers.len(), 3);
    assert!(resolved.front.speaker.is_some());
}

#[test]
fn the_printed_bounds_are_the_enforced_ones() {
    let text = reference::default_config_toml();
    let range = |lo: u64, hi: u64| format!("{lo}..={hi}");
    for bound in [
        range(*HEARTBEAT_MS_RANGE.start(), *HEARTBEAT_MS_RANGE.end()),
        range(*SNAPSHOT_LOGS_RANGE.start(), *SNAPSHOT_LOGS_RANGE.end()),
        range(*WRITE_TIMEOUT_MS_RANGE.start(), *WRITE_TIMEOUT_MS_RANGE.end()),
        range(*WITHDRAW_GRACE_MS_RANGE.start(), *WITHDRAW_GRACE_MS_RANGE.end()),
        format!("{}..={}", DATAPLANE_THREADS_RANGE.start(), DATAPLANE_THREADS_RANGE.end()),
        format!("{}..={}", UPSTREAM_IDLE_RANGE.start(), UPSTREAM_IDLE_RANGE.end()),
        format!("at most {MAX_ELECTION_MS}"),
        format!("1..={MAX_CONNECTIONS_CAP}"),
    ] {
        assert!(text.contains(&bound), "bound {bound:?} not stated:\n{text}");
    }
    // One past each printed bound is refused by the validator.
    for (field, value) in [
        ("heartbeat_ms", HEARTBEAT_MS_RANGE.end() + 1),
        ("snapshot_logs", SNAPSHOT_LOGS_RANGE.end() + 1),
        ("write_timeout_ms", WRITE_TIMEOUT_MS_RANGE.end() + 1),
        ("bgp_withdraw_grace_ms", WITHDRAW_GRACE_MS_RANGE.end() + 1),
    ] {
        let text = reference::default_config_toml().replacen(
            &format!("\n{field} = "),
            &format!("\n{field} = {value}\n# was "),
            1,
        );
        let err = NodeConfig::resolve(file(&text), &Cli::default()).expect_err(field);
        assert!(problems(err).iter().any(|p| p.field == field), "{field} = {value} accepted");
    }
}

#[test]
fn log_format_and_access_log_default_to_text_and_stdout() {
    let c = NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1"])).unwrap();
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.access_log, Some(AccessLogTarget::Stdout));
}

#[test]
fn log_format_and_access_log_come_from_the_file_and_the_flags_win() {
    let f = file("log_format = \"json\"\naccess_log = \"/var/log/lbfleet/access.log\"\n");
    let c = NodeConfig::resolve(f.clone(), &cli(&["--id", "1"])).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.access_log, Some(AccessLogTarget::File("/var/log/lbfleet/access.log".into())));
    let c =
        NodeConfig::resolve(f, &cli(&["--id", "1", "--log-format", "text", "--access-log", "off"])).unwrap();
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.access_log, None);
}

#[test]
fn a_bad_log_format_or_access_log_is_refused_by_name() {
    assert!(Cli::try_parse_from(["lbnode", "--log-format", "xml"]).is_err());
    let err = toml::from_str::<FileConfig>("log_format = \"xml\"\n").unwrap_err().to_string();
    assert!(err.contains("xml") && err.contains("json"), "{err}");
    let long = "a".repeat(MAX_ACCESS_LOG_PATH + 1);
    for bad in ["  ", long.as_str()] {
        let p = problems(
            NodeConfig::resolve(FileConfig::default(), &cli(&["--id", "1", "--access-log", bad]))
                .unwrap_err(),
        );
        assert!(p.iter().any(|p| p.field == "access_log"), "{bad:?}: {p:?}");
    }
}
