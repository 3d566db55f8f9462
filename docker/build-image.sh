#!/usr/bin/env bash
# Build the lbfleet image from the binaries compiled here (no registry needed: FROM scratch).
#   docker/build-image.sh [TAG]      (default tag: lbfleet:dev)
# PROFILE=debug packs the debug binaries instead of release ones (the end-to-end docker test does).
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-lbfleet:dev}"
profile="${PROFILE:-release}"

if [ "$profile" = release ]; then
  cargo build --release --locked --workspace --bins
else
  cargo build --locked --workspace --bins
fi
bindir="target/$profile"
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp" "$root/etc/lbfleet"
for b in lbnode lbctl; do
  install -m 0755 "$bindir/$b" "$root/usr/local/bin/$b"
  # Symbols stay, debug line tables go: a smaller image.
  strip --strip-debug "$root/usr/local/bin/$b" 2>/dev/null || true
done
# The front: BIRD 2 (the BGP speaker beside each lbnode and on the router) and iproute2's `ip`, the
# binaries of this machine's Debian packages bird2 and iproute2; and Prometheus (the compose files'
# `prometheus` service), Debian's package prometheus.
system_bins="/usr/sbin/bird /usr/sbin/birdcl /usr/sbin/ip /usr/bin/prometheus"
for b in $system_bins; do
  if [ ! -x "$b" ]; then
    echo "build-image.sh: $b is missing: apt-get install -y bird2 iproute2 prometheus" >&2
    exit 1
  fi
  mkdir -p "$root$(dirname "$b")"
  cp -L "$b" "$root$b"
done
mkdir -p "$root/run/bird" "$root/etc/bird"
cp docker/front/router.conf docker/front/node.conf "$root/etc/bird/"
mkdir -p "$root/etc/prometheus"
cp docker/prometheus/compose-3.yml docker/prometheus/compose-5.yml "$root/etc/prometheus/"
# Debian's Prometheus reads its web UI's templates and assets from here.
if [ -d /usr/share/prometheus/web ]; then
  mkdir -p "$root/usr/share/prometheus"
  cp -r /usr/share/prometheus/web "$root/usr/share/prometheus/"
fi
# The dynamic loader and every shared library the binaries need, at the same paths.
libs=$(for b in "$bindir/lbnode" "$bindir/lbctl" $system_bins; do
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp docker/demo.toml "$root/etc/lbfleet/demo.toml"
printf 'root:x:0:0:root:/:/usr/local/bin/lbnode\n' > "$root/etc/passwd"
cp docker/Dockerfile "$ctx/Dockerfile"
old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
docker build -q -t "$tag" "$ctx"
new=$(docker image inspect -f '{{.Id}}' "$tag")
# The image this tag pointed at before is left without a name: remove it unless a container uses it.
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  docker image rm "$old" >/dev/null 2>&1 || true
fi
echo "built $tag"
