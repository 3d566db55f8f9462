#!/usr/bin/env bash
# The project's test command (README.md): unit, property and end-to-end tests of the whole workspace.
# End-to-end tests start real lbnode processes on 127.0.<n>.1x; they build the binaries they need.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build the binaries first with the same command the end-to-end tests use to find them (one feature set,
# so nothing is compiled twice), then run every test.
cargo build --workspace --bins --locked
# The harness (lbfleet_tests::bin) then uses these binaries instead of asking cargo again.
export LBFLEET_TEST_BINS_BUILT=1
exec cargo test --workspace --locked "$@"
