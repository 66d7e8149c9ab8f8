#!/usr/bin/env bash
# Install manifests: install.yaml is the concatenation of the component files, and every manifest
# passes kubernetes-validate --strict for Kubernetes 1.37.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/render-install --check
.venv/bin/kubernetes-validate --strict --quiet -k 1.37.0 manifests/*.yaml
echo "manifests: $(ls manifests/*.yaml | wc -l) files valid for Kubernetes 1.37 (strict)"

# The injector ConfigMap's config.yaml must be a config the webhook accepts.
cfg=$(mktemp); trap 'rm -f "$cfg"' EXIT
.venv/bin/python3 -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["config.yaml"])' manifests/injector-config.yaml > "$cfg"
echo 'apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: default}
spec: {containers: [{name: app, image: app}]}' | target/debug/remora-webhook inject --config "$cfg" -f - > /dev/null
echo "manifests: injector-config.yaml's config.yaml is accepted by remora-webhook"
