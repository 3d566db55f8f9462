#!/usr/bin/env bash
# Requests through one node (README, "Measured"): a local 3-node cluster with 3 demo backends from the
# lbctl and lbnode in BIN_DIR, node 1 restarted with --dataplane-threads 1, then `wrk -t1 -c64 -d5s
# --latency` RUNS times against node 1's HTTP listener (127.0.0.11:8080) and TCP listener (:8081).
# Prints each run and the medians of each path (req/s, p99, CPU time node 1 spent per request), one line
# per path:   <label> http median_rps=... p99_ms=... node_cpu_us_per_req=...
# Bounded: RUNS (default 3) runs of 5 s per path, loopback only. PATHS="http" measures HTTP alone.
#
# usage: bench/requests.sh BIN_DIR [LABEL]        (BIN_DIR holds release builds of lbctl and lbnode)
# needs: wrk (Debian package `wrk`), curl
set -euo pipefail
bin=$(cd "${1:?usage: bench/requests.sh BIN_DIR [LABEL]}" && pwd)
label=${2:-$(basename "$bin")}
runs=${RUNS:-3}
dir=$(mktemp -d /tmp/lbfleet-bench.XXXXXX)

cleanup() {
  if [ -f "$dir/node-1.bench.pid" ]; then kill "$(cat "$dir/node-1.bench.pid")" 2>/dev/null || true; fi
  "$bin/lbctl" local down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"

"$bin/lbctl" local up --nodes 3 --backends 3 --dir "$dir" >/dev/null
if [ -f "$dir/lbctl.env" ]; then . "$dir/lbctl.env"; fi

restart_node1_single_thread "$dir" 127.0.0.11
wait_for 30 curl -sf http://127.0.0.11:8080/
wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.11/8081"

# CPU time node 1 has used so far, in clock ticks (user + system).
node_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$dir/node-1.bench.pid")/stat"; }
hz=$(getconf CLK_TCK)

# One wrk run: prints "<req/s> <p99 in ms> <node CPU µs per request>".
one() {
  local out rps p99 before after reqs
  before=$(node_ticks)
  out=$(wrk -t1 -c64 -d5s --latency "$1")
  after=$(node_ticks)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v=v/1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99 $(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
}

for path in ${PATHS:-http tcp}; do
  case $path in
    http) url=http://127.0.0.11:8080/ ;;
    tcp) url=http://127.0.0.11:8081/ ;;
  esac
  results=()
  for i in $(seq 1 "$runs"); do
    r=$(one "$url")
    echo "$label $path run $i: req/s p99_ms node_cpu_us_per_req = $r"
    results+=("$r")
  done
  rps=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | median)
  p99=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | median)
  cpu=$(printf '%s\n' "${results[@]}" | awk '{print $3}' | median)
  echo "$label $path median_rps=$rps p99_ms=$p99 node_cpu_us_per_req=$cpu"
done
