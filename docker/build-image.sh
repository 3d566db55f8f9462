#!/usr/bin/env bash
# Build the lbfleet image from the binaries compiled here (no registry needed: FROM scratch).
#   docker/build-image.sh [TAG]      (default tag: lbfleet:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-lbfleet:dev}"

cargo build --release --locked --bins -p lbfleet-node -p lbfleet-cli
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp" "$root/etc/lbfleet"
for b in lbnode lbctl; do
  install -m 0755 "target/release/$b" "$root/usr/local/bin/$b"
done
# The dynamic loader and every shared library the binaries need, at the same paths.
for lib in $(ldd target/release/lbnode target/release/lbctl | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp docker/demo.toml "$root/etc/lbfleet/demo.toml"
printf 'root:x:0:0:root:/:/usr/local/bin/lbnode\n' > "$root/etc/passwd"
cp docker/Dockerfile "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx"
echo "built $tag"
