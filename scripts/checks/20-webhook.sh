#!/usr/bin/env bash
# Schema check of injection: every Pod and workload that `remora-webhook inject` produces from
# Istio's injection corpus ($REMORA_SHARED/anchors/istio/inject/) and from our Bookinfo-style
# samples (webhook/testdata/samples/) must pass `kubernetes-validate --strict` for Kubernetes 1.37.
# Inputs that only exist to be denied (Istio's three bad-annotation cases, our bad-*.yaml) are
# skipped here; webhook/tests/server.rs checks their denials.
set -euo pipefail
cd "$(dirname "$0")/../.."
REMORA_SHARED="${REMORA_SHARED:-$(cd .. && pwd)/shared}"
corpus="$REMORA_SHARED/anchors/istio/inject"
if [ ! -d "$corpus" ]; then
  # Same rule as the Rust tests (corpus/src/lib.rs): skip with one line, fail where required.
  msg="Istio corpus not found at $corpus; it is Istio's own testdata (github.com/istio/istio at commit 86c9f01fd735), see docs/testing.md"
  if [ "${REMORA_REQUIRE_CORPUS:-}" = 1 ]; then
    echo "20-webhook: FAILED: $msg (REMORA_REQUIRE_CORPUS=1: the corpus is required here; set REMORA_SHARED)" >&2
    exit 1
  fi
  echo "SKIPPED 20-webhook (Istio's injection inputs): $msg" >&2
  corpus=""
fi
validate=.venv/bin/kubernetes-validate
[ -x "$validate" ] || scripts/setup
cargo build -q -p remora-webhook --locked
bin="${CARGO_TARGET_DIR:-target}/debug/remora-webhook"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

inputs=()
for f in ${corpus:+"$corpus"/*.yaml}; do
  # Error-only cases have no golden output: Istio expects injection to fail.
  [ -e "$f.injected" ] || { echo "20-webhook: skip (error-only) $(basename "$f")"; continue; }
  inputs+=("$f")
done
for f in webhook/testdata/samples/*.yaml; do
  case "$(basename "$f")" in bad-*) echo "20-webhook: skip (error-only) $(basename "$f")"; continue;; esac
  inputs+=("$f")
done

n=0
for f in "${inputs[@]}"; do
  name="$(basename "$(dirname "$f")")-$(basename "$f")"
  if ! "$bin" inject -f "$f" > "$out/$name" 2> "$out/$name.err"; then
    echo "20-webhook: inject failed for $f:" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
  n=$((n + 1))
done

# One validator run over all outputs (it starts slowly). A document it cannot check (e.g. no
# metadata.name) is reported without failing the run, so treat that as a failure here.
rc=0
report="$("$validate" --strict --kubernetes-version 1.37 "$out"/*.yaml 2>&1)" || rc=$?
if [ "$rc" != 0 ] || grep -qE 'ERROR|could not be validated' <<<"$report"; then
  grep -E 'ERROR|could not be validated' <<<"$report" >&2 || echo "$report" >&2
  echo "20-webhook: injected output does not validate against Kubernetes 1.37 (strict)" >&2
  exit 1
fi
passed="$(grep -c 'passed for resource' <<<"$report" || true)"
echo "20-webhook: $passed objects in $n injected files validate against Kubernetes 1.37 (strict)"
