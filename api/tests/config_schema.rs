//! The JSON Schema of the cluster config: the checked-in copy is the generated one, the example of
//! every policy in `docs/examples/` passes validation and the schema, and the schema's bounds are the
//! validator's (a value at a bound passes both, one past it fails both).

use std::path::{Path, PathBuf};

use lbfleet_api::config::{parse, schema, Format, Policy};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn validator() -> jsonschema::Validator {
    let schema = serde_json::to_value(schema::cluster_config_schema()).expect("schema as JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn checked_in_schema_is_the_generated_one() {
    let path = repo().join("docs/cluster-config.schema.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == schema::cluster_config_schema_json(),
        "{} is not the schema the config types generate; regenerate it with\n  \
         cargo run --bin lbctl -- config schema > docs/cluster-config.schema.json",
        path.display()
    );
}

#[test]
fn every_policy_has_an_example_that_validates_and_matches_the_schema() {
    let v = validator();
    let dir = repo().join("docs/examples");
    let mut covered = 0;
    for policy in Policy::ALL {
        let path = dir.join(format!("{policy}.toml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let config = parse(&text, Format::Toml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            config.pool.iter().any(|p| p.policy == policy),
            "{} has no pool with policy {policy}",
            path.display()
        );
        let doc: Value = toml::from_str(&text).expect("TOML");
        let errors = schema_errors(&v, &doc);
        assert!(errors.is_empty(), "{} does not match the schema: {errors:#?}", path.display());
        covered += 1;
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, covered, "docs/examples holds a file that is not a policy's example");
}

/// The schema refuses what the validator refuses: an example with a field made wrong.
#[test]
fn a_broken_example_fails_the_schema() {
    let v = validator();
    let text = std::fs::read_to_string(repo().join("docs/examples/maglev.toml")).unwrap();
    let broken = text.replace("weight = 2 ", "weight = 2000 ");
    assert_ne!(broken, text);
    let doc: Value = toml::from_str(&broken).unwrap();
    assert!(!schema_errors(&v, &doc).is_empty());
    assert!(parse(&broken, Format::Toml).is_err());
}

/// A valid config with fields of its pool and its listener replaced.
fn with(pool: Value, listener: Value) -> Value {
    let mut base = json!({
        "pool": [{ "name": "web", "policy": "maglev",
                   "backend": [{ "addr": "10.0.0.1:80" }, { "addr": "10.0.0.2:80" }] }],
        "listener": [{ "name": "web", "protocol": "http", "port": 8080, "pool": "web" }]
    });
    for (key, extra) in [("pool", pool), ("listener", listener)] {
        let table = base[key][0].as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            table.insert(k.clone(), v.clone());
        }
    }
    base
}

fn pool(fields: Value) -> Value {
    with(fields, json!({}))
}

fn listener(fields: Value) -> Value {
    with(json!({}), fields)
}

#[test]
fn the_schema_and_the_validator_agree_on_each_bound() {
    let v = validator();
    let backend = |weight: i64| json!({ "backend": [{ "addr": "10.0.0.1:80", "weight": weight }] });
    let rate = |r: Value| json!({ "admission": { "rate_limit": r } });
    let cert = json!([{ "cert_file": "/etc/lbfleet/a.pem", "key_file": "/etc/lbfleet/a.key" }]);
    // (what, config, accepted by both)
    let cases = [
        ("table_size at its maximum (a prime)", pool(json!({ "table_size": 16_777_213 })), true),
        ("table_size above its maximum", pool(json!({ "table_size": 16_777_214 })), false),
        ("table_size below its minimum", pool(json!({ "table_size": 97 })), false),
        ("weight 1000", pool(backend(1000)), true),
        ("weight 1001", pool(backend(1001)), false),
        ("weight 0", pool(backend(0)), false),
        ("rise 100", pool(json!({ "health": { "rise": 100 } })), true),
        ("rise 101", pool(json!({ "health": { "rise": 101 } })), false),
        ("expect_status [100, 599]", pool(json!({ "health": { "expect_status": [100, 599] } })), true),
        ("expect_status [99, 200]", pool(json!({ "health": { "expect_status": [99, 200] } })), false),
        ("health path without /", pool(json!({ "health": { "path": "health" } })), false),
        ("health kind unknown", pool(json!({ "health": { "kind": "icmp" } })), false),
        ("max_ejection_percent 101", pool(json!({ "outlier": { "max_ejection_percent": 101 } })), false),
        ("policy unknown", pool(json!({ "policy": "fastest" })), false),
        ("hash_key header", pool(json!({ "hash_key": "header:x-user" })), true),
        ("hash_key header without a name", pool(json!({ "hash_key": "header:" })), false),
        ("hash_key unknown", pool(json!({ "hash_key": "client" })), false),
        ("pool name with a space", with(json!({ "name": "my web" }), json!({ "pool": "my web" })), false),
        (
            "pool name of 65 bytes",
            with(json!({ "name": "a".repeat(65) }), json!({ "pool": "a".repeat(65) })),
            false,
        ),
        ("sticky_cookie not a token", pool(json!({ "sticky_cookie": "a b" })), false),
        ("max_connections_per_backend 0", pool(json!({ "max_connections_per_backend": 0 })), false),
        ("an unknown pool field", pool(json!({ "colour": "blue" })), false),
        ("port 65535", listener(json!({ "port": 65535 })), true),
        ("port 0", listener(json!({ "port": 0 })), false),
        ("port 65536", listener(json!({ "port": 65536 })), false),
        ("protocol unknown", listener(json!({ "protocol": "quic" })), false),
        ("max_headers 1000", listener(json!({ "limits": { "max_headers": 1000 } })), true),
        ("max_headers 1001", listener(json!({ "limits": { "max_headers": 1001 } })), false),
        ("max_request_head 1023", listener(json!({ "limits": { "max_request_head": 1023 } })), false),
        ("rate 1000000", listener(rate(json!({ "rate": 1_000_000 }))), true),
        ("rate 0", listener(rate(json!({ "rate": 0 }))), false),
        ("rate per unknown", listener(rate(json!({ "rate": 5, "per": "user" }))), false),
        (
            "route path_prefix without /",
            listener(json!({ "route": [{ "path_prefix": "v1", "pool": "web" }] })),
            false,
        ),
        (
            "accept_proxy_protocol with no source",
            listener(json!({ "accept_proxy_protocol": { "from": [] } })),
            false,
        ),
        ("tls written as [[listener.tls.cert]]", listener(json!({ "tls": { "cert": cert } })), true),
        ("tls mode unknown", listener(json!({ "tls": { "mode": "mirror" } })), false),
    ];
    for (what, doc, accepted) in cases {
        let by_schema = schema_errors(&v, &doc);
        let by_validator = parse(&doc.to_string(), Format::Json);
        assert_eq!(by_schema.is_empty(), accepted, "{what}: the schema says {by_schema:?}");
        assert_eq!(by_validator.is_ok(), accepted, "{what}: the validator says {by_validator:?}");
    }
}

/// The numbers a description states are the schema's bounds (which are the validator's constants):
/// every field with a `minimum` and `maximum` says `MIN..=MAX` in its description.
#[test]
fn each_description_states_the_bounds_the_schema_enforces() {
    let schema = serde_json::to_value(schema::cluster_config_schema()).unwrap();
    let mut checked = 0;
    for (name, def) in schema["definitions"].as_object().expect("definitions") {
        for (field, prop) in def["properties"].as_object().into_iter().flatten() {
            let (Some(min), Some(max)) = (prop["minimum"].as_u64(), prop["maximum"].as_u64()) else {
                continue;
            };
            let text = prop["description"].as_str().unwrap_or_default();
            assert!(
                text.contains(&format!("{min}..={max}")),
                "{name}.{field}: the schema says {min}..={max}, the description {text:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} bounded fields found");
}
