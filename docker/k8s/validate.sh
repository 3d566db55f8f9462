#!/usr/bin/env bash
# Validate the Kubernetes manifests of docker/k8s against the Kubernetes API schemas
# (kubernetes-validate, in a venv; the schemas ship with the package, nothing is fetched at run time).
#   docker/k8s/validate.sh [FILE.yaml ...]     (default: docker/k8s/*.yaml)
# KUBERNETES_VERSION picks the schemas (default 1.31); VENV where the venv lives.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${VENV:-$here/../../target/k8s-validate-venv}"
version="${KUBERNETES_VERSION:-1.31}"

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "validate.sh: python3 -m venv failed: install python3-venv (apt-get install -y python3-venv)" >&2
    exit 1
  fi
  "$venv/bin/pip" install -q 'kubernetes-validate>=1.31'
fi

if [ $# -eq 0 ]; then
  set -- "$here"/*.yaml
fi
# --strict: a field the schema does not know (a typo) is an error, not a warning.
"$venv/bin/kubernetes-validate" --strict -k "$version" "$@"
