//! The layering of `lbfleet-node`, checked from its own sources (README, "Architecture").
//!
//! Top-level modules form layers that import only downward:
//! entry points (`node`, `cluster`, `admin`) → I/O (`proxy`, `health`, `leader`, `load`, `traffic`, `raft`, `front`) →
//! pure balancing (`balance`) → the model (`lbfleet_api`). `config`, `channels`, `net`, `shutdown`,
//! `accept` and `limits` are leaves anyone may use; modules of one layer may import each other. These tests fail on an import cycle between top-level modules, on a
//! layer imported upward, on `balance` importing anything of the crate but itself, and on any module
//! outside `raft` naming the storage crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ENTRY: &[&str] = &["node", "cluster", "admin"];
const IO: &[&str] = &["proxy", "health", "leader", "load", "traffic", "raft", "front"];
const PURE: &[&str] = &["balance"];
const LEAVES: &[&str] =
    &["config", "channels", "net", "shutdown", "tls", "auth", "accept", "limits", "observed"];

fn layer(module: &str) -> usize {
    if ENTRY.contains(&module) {
        3
    } else if IO.contains(&module) {
        2
    } else if PURE.contains(&module) {
        1
    } else if LEAVES.contains(&module) {
        0
    } else {
        panic!("module `{module}` is in no layer: add it to node/tests/layers.rs and README's Architecture")
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// The non-test code of a file: test modules and test files are left out (tests may reach across).
fn code(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name == "tests.rs" || path.components().any(|c| c.as_os_str() == "tests") {
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    // Comments may name any module; only code counts.
    let code: Vec<&str> = text[..end].lines().map(|l| l.split("//").next().unwrap_or("")).collect();
    Some(code.join("\n"))
}

/// Top-level modules named as `crate::NAME` in `text`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        if i > 0 && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b'_') {
            continue; // part of a longer name such as `some_crate::`
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let name: String =
                    part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// module → modules it imports, and module → files naming the storage crate.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut storage = Vec::new();
    for f in files {
        let (Some(module), Some(text)) = (module_of(&f), code(&f)) else { continue };
        if module != "raft" && text.contains("lbfleet_raft_store") {
            storage.push(f.display().to_string());
        }
        let refs = crate_refs(&text);
        let e = edges.entry(module.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != module));
    }
    (edges, storage)
}

#[test]
fn every_module_is_in_a_layer_and_imports_only_downward() {
    let (edges, _) = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            let (lf, lt) = (layer(from), layer(to));
            // Within a layer imports are allowed (cycles are checked below); across layers, down only.
            let ok = lt <= lf;
            if !ok {
                wrong.push(format!("{from} (layer {lf}) imports {to} (layer {lt})"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let (edges, _) = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let start = path.iter().position(|p| p == m).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn balance_imports_nothing_of_the_crate_but_itself() {
    let (edges, _) = graph();
    let out = edges.get("balance").cloned().unwrap_or_default();
    assert!(out.is_empty(), "balance imports {out:?}; it may import only the model (lbfleet_api)");
}

#[test]
fn only_the_raft_runtime_names_the_storage_crate() {
    let (_, storage) = graph();
    assert!(storage.is_empty(), "files outside node/src/raft naming lbfleet_raft_store: {storage:?}");
}

#[test]
fn the_checker_sees_imports_it_must_see() {
    let refs = crate_refs("use crate::balance::{Routing, X};\nuse crate::{net, shutdown::Shutdown};\n");
    assert_eq!(refs, BTreeSet::from(["balance".to_string(), "net".to_string(), "shutdown".to_string()]));
    let (edges, _) = graph();
    assert!(edges["proxy"].contains("balance"), "{edges:?}");
    assert!(edges["node"].contains("raft"), "{edges:?}");
}
