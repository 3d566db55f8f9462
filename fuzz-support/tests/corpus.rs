//! Replays every committed input of the fuzz targets (`fuzz/corpus/<target>/` and the regression
//! inputs in `fuzz/regressions/<target>/`) through the check the target runs, on the stable
//! toolchain. A missing or empty corpus fails: a target without one would test nothing here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("a readable directory entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut inputs = files(&corpus);
    assert!(
        !inputs.is_empty(),
        "the corpus of fuzz target {target} ({}) is missing or empty",
        corpus.display()
    );
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err().then(|| path.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} inputs of {target} fail: {failed:#?}", failed.len(), inputs.len());
}

fn check_of(target: &str) -> fn(&[u8]) {
    let found = lbfleet_fuzz_support::TARGETS.iter().find(|(name, _)| *name == target);
    found.unwrap_or_else(|| panic!("no check for fuzz target {target}")).1
}

#[test]
fn config_corpus_replays() {
    replay("config", check_of("config"));
}

#[test]
fn raft_messages_corpus_replays() {
    replay("raft_messages", check_of("raft_messages"));
}

#[test]
fn apply_corpus_replays() {
    replay("apply", check_of("apply"));
}

#[test]
fn proxy_protocol_corpus_replays() {
    replay("proxy_protocol", check_of("proxy_protocol"));
}

#[test]
fn http_headers_corpus_replays() {
    replay("http_headers", check_of("http_headers"));
}

/// A fuzz target added under `fuzz/fuzz_targets/` without a check here (or the reverse) fails.
#[test]
fn every_fuzz_target_has_a_check_and_a_replay() {
    let mut targets: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect();
    targets.sort();
    let mut checks: Vec<String> = lbfleet_fuzz_support::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    checks.sort();
    assert_eq!(targets, checks);
}
