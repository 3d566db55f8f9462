#!/usr/bin/env bash
# The project's test command (README.md): unit, property and end-to-end tests of the whole workspace.
# End-to-end tests start real lbnode processes on 127.0.<n>.1x; they build the binaries they need.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
