//! The JSON Schema of the cluster config ([`RawConfig`], what `lbctl apply -f` takes), made by
//! schemars from the raw types: their doc comments are the descriptions (default and bounds), and
//! the bounds (`range`, `length`, `pattern`) are the validator's constants. `lbctl config schema`
//! prints it; `docs/cluster-config.schema.json` is a copy checked against it by a test.
//!
//! The schema is draft-07 (what VS Code, taplo and most editors read). It checks the shape and
//! each field on its own; what spans fields (a pool a listener names exists, `min_active` at most
//! `max_active`, a prime `table_size`, …) only validation does, and `lbctl apply` reports it.

use schemars::generate::SchemaSettings;
use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::Value;

use super::{Policy, RawConfig, MAX_HEADER_NAME_LEN};

/// A pool, listener or hook name: A-Z a-z 0-9 - _ . (the length is checked apart).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9._-]+$";
/// An HTTP token (RFC 9110 `tchar`s): cookie and header names.
pub const TOKEN_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// A health check path: starts with `/`, no ASCII whitespace or control characters.
pub const PATH_PATTERN: &str = "^/[^\\x00-\\x20\\x7f]*$";
/// A route's host: no ASCII whitespace and no `/`.
pub const HOST_PATTERN: &str = "^[^ \\t\\n\\f\\r/]+$";

/// The words of `HealthKind`.
pub const HEALTH_KINDS: [&str; 3] = ["http", "tcp", "none"];
/// The words of `Protocol`.
pub const PROTOCOLS: [&str; 3] = ["http", "tcp", "udp"];
/// The hash keys that take no name.
pub const PLAIN_HASH_KEYS: [&str; 4] = ["source_ip", "source_addr", "path", "flow"];
/// The words of `per` in a rate limit.
pub const RATE_KEYS: [&str; 2] = ["source_ip", "listener"];
/// The words of `scope` in a rate limit.
pub const RATE_SCOPES: [&str; 2] = ["node", "fleet"];
/// The words of a listener's `tls.mode`.
pub const TLS_MODES: [&str; 2] = ["terminate", "passthrough"];

/// The schema of the cluster config.
pub fn cluster_config_schema() -> Schema {
    let schema = SchemaSettings::draft07().into_generator().into_root_schema_for::<RawConfig>();
    let mut value = schema.to_value();
    unwrap_descriptions(&mut value);
    let mut schema = Schema::try_from(value).expect("still a schema");
    schema.insert(
        "$comment".into(),
        "Generated from lbfleet's config types: lbctl config schema > docs/cluster-config.schema.json".into(),
    );
    schema
}

/// [`cluster_config_schema`] as pretty JSON with a final newline: the text of
/// `docs/cluster-config.schema.json`.
pub fn cluster_config_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&cluster_config_schema()).expect("a schema serializes");
    text.push('\n');
    text
}

/// Doc comments are wrapped at the source's width: a description is one line per paragraph, for
/// editors to wrap.
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(text) if key == "description" => {
                        *text =
                            text.split("\n\n").map(|p| p.replace('\n', " ")).collect::<Vec<_>>().join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn words(words: &[&str]) -> Schema {
    json_schema!({ "type": "string", "enum": words })
}

pub(super) fn policy(_: &mut SchemaGenerator) -> Schema {
    words(&Policy::ALL.map(Policy::as_str))
}

pub(super) fn health_kind(_: &mut SchemaGenerator) -> Schema {
    words(&HEALTH_KINDS)
}

pub(super) fn protocol(_: &mut SchemaGenerator) -> Schema {
    words(&PROTOCOLS)
}

pub(super) fn rate_key(_: &mut SchemaGenerator) -> Schema {
    words(&RATE_KEYS)
}

pub(super) fn rate_scope(_: &mut SchemaGenerator) -> Schema {
    words(&RATE_SCOPES)
}

pub(super) fn tls_mode(_: &mut SchemaGenerator) -> Schema {
    words(&TLS_MODES)
}

pub(super) fn hash_key(_: &mut SchemaGenerator) -> Schema {
    let named = format!("^(header|cookie):{}", &TOKEN_PATTERN[1..]);
    json_schema!({
        "type": "string",
        "anyOf": [
            { "enum": PLAIN_HASH_KEYS },
            { "pattern": named, "maxLength": MAX_HEADER_NAME_LEN + "header:".len() }
        ]
    })
}

/// `[[listener.tls.cert]]` is another name of `[[listener.tls.certificates]]` (a serde alias, which
/// schemars does not list): the schema accepts both.
pub(super) fn certificates_alias(schema: &mut Schema) {
    let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else { return };
    if let Some(mut certs) = props.get("certificates").cloned() {
        if let Some(obj) = certs.as_object_mut() {
            obj.insert("description".into(), "Another name of `certificates`.".into());
        }
        props.insert("cert".into(), certs);
    }
}
