#!/usr/bin/env bash
# Minimize fuzz/corpus/TARGET to the fewest inputs that keep its coverage edges, at most MAX files:
# a libFuzzer merge on edges only, then a greedy cover over each input's own edges (largest gain
# first, the greedy prefix when MAX cuts it). seed-* inputs are kept. Needs a built target
# (`cargo +nightly fuzz build -O TARGET`). Usage: fuzz/minimize.sh TARGET [MAX]
set -euo pipefail
cd "$(dirname "$0")"
target=$1 max=${2:-600}
bin=target/x86_64-unknown-linux-gnu/release/$target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/merged" "$work/ctl"
"$bin" -merge=1 -use_counters=0 -use_value_profile=0 "$work/merged" "corpus/$target" 2>/dev/null
for f in "$work/merged"/*; do
  one=$(mktemp -d -p "$work") out=$(mktemp -d -p "$work")
  cp "$f" "$one/"
  "$bin" -merge=1 -use_counters=0 -use_value_profile=0 -merge_control_file="$work/ctl/$(basename "$f")" \
    "$out" "$one" >/dev/null 2>&1
  rm -rf "$one" "$out"
done
python3 - "$work" "corpus/$target" "$max" <<'PY'
import os, shutil, sys
work, corpus, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
cov = {}
for name in os.listdir(f"{work}/ctl"):
    for line in open(f"{work}/ctl/{name}"):
        p = line.split()
        if p and p[0] == "COV":
            cov[name] = set(map(int, p[2:]))
covered, chosen = set(), []
while cov and len(chosen) < limit:
    best = max(cov, key=lambda n: (len(cov[n] - covered), -os.path.getsize(f"{work}/merged/{n}")))
    if not cov[best] - covered:
        break
    covered |= cov.pop(best)
    chosen.append(best)
total = set().union(covered, *cov.values())
for name in os.listdir(corpus):
    if not name.startswith("seed-"):
        os.remove(f"{corpus}/{name}")
for name in chosen:
    shutil.copy(f"{work}/merged/{name}", corpus)
print(f"{corpus}: {len(chosen)} inputs (and the seeds) keep {len(covered)} of {len(total)} edges")
PY
