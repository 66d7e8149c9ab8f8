#!/usr/bin/env bash
# Install manifests: install.yaml is the concatenation of the component files, and every manifest
# passes kubernetes-validate --strict for Kubernetes 1.37.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/render-install --check
.venv/bin/kubernetes-validate --strict --quiet -k 1.37.0 manifests/*.yaml
echo "manifests: $(ls manifests/*.yaml | wc -l) files valid for Kubernetes 1.37 (strict)"
.venv/bin/kubernetes-validate --strict --quiet -k 1.37.0 manifests/addons/*.yaml
# The Grafana dashboards are JSON with a uid, a title and PromQL targets (the mesh lab runs every
# query against a real Prometheus: tests/tests/observability.rs).
for d in manifests/addons/grafana/*.json; do
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["uid"] and d["title"], "uid/title"; assert all(t["expr"] for p in d["panels"] for t in p["targets"]), "empty expr"' "$d" \
    || { echo "manifests: $d is not a valid dashboard" >&2; exit 1; }
done
echo "manifests: addons valid ($(ls manifests/addons/grafana/*.json | wc -l) dashboards)"

# The injector ConfigMap's config.yaml must be a config the webhook accepts.
bin="${CARGO_TARGET_DIR:-target}/debug/remora-webhook"
cfg=$(mktemp); rev=$(mktemp); trap 'rm -f "$cfg" "$rev"' EXIT
.venv/bin/python3 -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["config.yaml"])' manifests/injector-config.yaml > "$cfg"
echo 'apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: default}
spec: {containers: [{name: app, image: app}]}' | "$bin" inject --config "$cfg" -f - > /dev/null
echo "manifests: injector-config.yaml's config.yaml is accepted by remora-webhook"

# Another revision's install, as `remora-webhook manifest` renders it, is valid too.
"$bin" manifest -f manifests/install.yaml --revision canary > "$rev"
.venv/bin/kubernetes-validate --strict --quiet -k 1.37.0 "$rev"
echo "manifests: revision canary rendered by remora-webhook manifest is valid for Kubernetes 1.37 (strict)"
