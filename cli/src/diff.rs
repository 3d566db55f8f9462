//! Structural difference between two cluster configs, as `config diff` and `apply --dry-run` show it.
//! Pure.
//!
//! Both sides are the JSON the node renders of a validated config (defaults filled in), so a field
//! the operator left out and one written with its default value compare equal. Pools and listeners are
//! matched by name, backends by address, routes by what they match (`host` and `path_prefix`); every
//! other field is compared by value, nested objects field by field (`health.interval`), lists whole.
//! Secrets (inline `key_pem`) are redacted on both sides, so a changed key does not show.

use serde::Serialize;
use serde_json::{Map, Value};

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Dotted path inside the item (`health.interval`).
    pub field: String,
    /// `null` when absent on that side.
    pub old: Value,
    pub new: Value,
}

/// One pool, backend, listener or route added, removed or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub op: &'static str,
    /// `pool`, `backend`, `listener` or `route`.
    pub what: &'static str,
    /// The pool's or listener's name, the backend's address, the route's match.
    pub key: String,
    /// The pool of a backend, the listener of a route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For `changed`: each field that differs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// Every change from `old` (`None`: no config committed yet) to `new`, pools first, then listeners.
pub fn diff(old: Option<&Value>, new: &Value) -> Vec<Change> {
    let empty = Value::Object(Map::new());
    let old = old.unwrap_or(&empty);
    let mut out = Vec::new();
    items(&mut out, "pool", None, list(old, "pool"), list(new, "pool"), &|v| text(v, "name"), &["backend"]);
    for (o, n) in common(list(old, "pool"), list(new, "pool"), &|v| text(v, "name")) {
        let parent = Some(text(n, "name"));
        items(&mut out, "backend", parent, list(o, "backend"), list(n, "backend"), &|v| text(v, "addr"), &[]);
    }
    let listeners = (list(old, "listener"), list(new, "listener"));
    items(&mut out, "listener", None, listeners.0, listeners.1, &|v| text(v, "name"), &["route"]);
    for (o, n) in common(listeners.0, listeners.1, &|v| text(v, "name")) {
        let parent = Some(text(n, "name"));
        let (or, nr) = (list(o, "route"), list(n, "route"));
        items(&mut out, "route", parent.clone(), or, nr, &route_key, &[]);
        // First match wins: the same routes in another order route differently.
        let order = |rs: &[Value], other: &[Value]| -> Vec<Value> {
            let keep: Vec<String> = other.iter().map(route_key).collect();
            rs.iter().map(route_key).filter(|k| keep.contains(k)).map(Value::String).collect()
        };
        let (before, after) = (order(or, nr), order(nr, or));
        if before != after {
            out.push(Change {
                op: "changed",
                what: "listener",
                key: text(n, "name"),
                parent: None,
                fields: vec![FieldChange {
                    field: "route order".into(),
                    old: Value::Array(before),
                    new: Value::Array(after),
                }],
            });
        }
    }
    out
}

/// Added, removed and changed items of one kind; `skip` names the fields diffed as items of their own.
fn items(
    out: &mut Vec<Change>,
    what: &'static str,
    parent: Option<String>,
    old: &[Value],
    new: &[Value],
    key: &dyn Fn(&Value) -> String,
    skip: &[&str],
) {
    let old_keys: Vec<String> = old.iter().map(key).collect();
    let new_keys: Vec<String> = new.iter().map(key).collect();
    let change =
        |op, k: &str, fields| Change { op, what, key: k.to_string(), parent: parent.clone(), fields };
    for (k, o) in old_keys.iter().zip(old) {
        match new_keys.iter().position(|n| n == k) {
            None => out.push(change("removed", k, Vec::new())),
            Some(i) => {
                let mut fields = Vec::new();
                fields_of(&mut fields, "", o, &new[i], skip);
                if !fields.is_empty() {
                    out.push(change("changed", k, fields));
                }
            }
        }
    }
    for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        out.push(change("added", k, Vec::new()));
    }
}

/// Pairs of items present on both sides, in the new order.
fn common<'a>(
    old: &'a [Value],
    new: &'a [Value],
    key: &dyn Fn(&Value) -> String,
) -> Vec<(&'a Value, &'a Value)> {
    new.iter().filter_map(|n| old.iter().find(|o| key(o) == key(n)).map(|o| (o, n))).collect()
}

/// Differing fields of two values, nested objects field by field.
fn fields_of(out: &mut Vec<FieldChange>, prefix: &str, old: &Value, new: &Value, skip: &[&str]) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut names: Vec<&String> = o.keys().chain(n.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                if prefix.is_empty() && skip.contains(&name.as_str()) {
                    continue;
                }
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                let null = Value::Null;
                fields_of(out, &path, o.get(name).unwrap_or(&null), n.get(name).unwrap_or(&null), &[]);
            }
        }
        (o, n) if o != n => {
            out.push(FieldChange { field: prefix.to_string(), old: o.clone(), new: n.clone() })
        }
        _ => {}
    }
}

fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or("").to_string()
}

/// What a route matches: `host=H path_prefix=P`, `*` for a part it does not restrict.
fn route_key(r: &Value) -> String {
    let part = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("*").to_string();
    format!("host={} path_prefix={}", part("host"), part("path_prefix"))
}

/// The changes for people: one line per item (`+` added, `-` removed, `~` changed), then one indented
/// line per changed field.
pub fn diff_text(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no changes\n".to_string();
    }
    let mut out = String::new();
    for c in changes {
        let sign = match c.op {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        };
        let item = match c.what {
            "pool" | "listener" => format!("{} \"{}\"", c.what, c.key),
            "backend" => format!("backend {} in pool \"{}\"", c.key, c.parent.as_deref().unwrap_or("")),
            _ => format!("route {} in listener \"{}\"", c.key, c.parent.as_deref().unwrap_or("")),
        };
        out.push_str(&format!("{sign} {item}\n"));
        for f in &c.fields {
            out.push_str(&format!("    {}: {} -> {}\n", f.field, shown(&f.old), shown(&f.new)));
        }
    }
    let n = changes.len();
    out.push_str(&format!("{n} change{}\n", if n == 1 { "" } else { "s" }));
    out
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(none)".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::config::{parse, Format};

    fn cfg(text: &str) -> Value {
        serde_json::from_str(&parse(text, Format::Toml).unwrap().to_json()).unwrap()
    }

    const BASE: &str = r#"
[[pool]]
name = "web"
policy = "maglev"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  [pool.health]
  kind = "http"
[[pool]]
name = "old"
  [[pool.backend]]
  addr = "127.0.0.1:9101"
[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
  [[listener.route]]
  path_prefix = "/api"
  pool = "web"
  [[listener.route]]
  host = "a.example"
  pool = "old"
"#;

    #[test]
    fn the_same_config_has_no_changes() {
        let a = cfg(BASE);
        assert!(diff(Some(&a), &a).is_empty());
        assert_eq!(diff_text(&[]), "no changes\n");
    }

    #[test]
    fn defaults_written_out_are_no_change() {
        let explicit = BASE.replace("policy = \"maglev\"", "policy = \"maglev\"\ntable_size = 65537");
        assert!(diff(Some(&cfg(BASE)), &cfg(&explicit)).is_empty());
    }

    #[test]
    fn pools_backends_listeners_and_routes_added_removed_changed() {
        let new = BASE
            .replace(
                "name = \"old\"\n  [[pool.backend]]\n  addr = \"127.0.0.1:9101\"",
                "name = \"api\"\n  [[pool.backend]]\n  addr = \"127.0.0.1:9201\"",
            )
            .replace(
                "addr = \"127.0.0.1:9002\"",
                "addr = \"127.0.0.1:9002\"\n  weight = 5\n  [[pool.backend]]\n  addr = \"127.0.0.1:9003\"",
            )
            .replace("  [[pool.backend]]\n  addr = \"127.0.0.1:9001\"\n", "")
            .replace("kind = \"http\"", "kind = \"http\"\n  interval = \"5s\"")
            .replace("pool = \"old\"", "pool = \"api\"")
            .replace("port = 8080", "port = 8081");
        let changes = diff(Some(&cfg(BASE)), &cfg(&new));
        let text = diff_text(&changes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "~ pool \"web\"",
                "    health.interval: \"1s\" -> \"5s\"",
                "- pool \"old\"",
                "+ pool \"api\"",
                "- backend 127.0.0.1:9001 in pool \"web\"",
                "~ backend 127.0.0.1:9002 in pool \"web\"",
                "    weight: 1 -> 5",
                "+ backend 127.0.0.1:9003 in pool \"web\"",
                "~ listener \"web\"",
                "    port: 8080 -> 8081",
                "~ route host=a.example path_prefix=* in listener \"web\"",
                "    pool: \"old\" -> \"api\"",
                "8 changes",
            ],
            "{text}"
        );
        let v = serde_json::to_value(&changes).unwrap();
        assert_eq!(v[0]["op"], "changed");
        assert_eq!(v[0]["fields"][0]["field"], "health.interval");
        assert_eq!(v[4]["what"], "backend");
        assert_eq!(v[4]["parent"], "web");
        assert!(v[1].get("fields").is_none() && v[1].get("parent").is_none());
    }

    #[test]
    fn reordered_routes_are_a_change() {
        let a = BASE;
        let b = BASE.replace(
            "  [[listener.route]]\n  path_prefix = \"/api\"\n  pool = \"web\"\n  [[listener.route]]\n  host = \"a.example\"\n  pool = \"old\"\n",
            "  [[listener.route]]\n  host = \"a.example\"\n  pool = \"old\"\n  [[listener.route]]\n  path_prefix = \"/api\"\n  pool = \"web\"\n",
        );
        let changes = diff(Some(&cfg(a)), &cfg(&b));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].fields[0].field, "route order");
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let changes = diff(None, &cfg(BASE));
        let ops: Vec<(&str, &str)> = changes.iter().map(|c| (c.op, c.what)).collect();
        assert_eq!(ops, [("added", "pool"), ("added", "pool"), ("added", "listener")]);
    }
}
