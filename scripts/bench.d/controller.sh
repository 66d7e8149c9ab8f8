#!/usr/bin/env bash
# The rules controller at scale (run via `scripts/bench controller`): the release
# `remora-webhook serve --rules-controller on` against the lab's API stand-in on 127.0.0.1 with
# $REMORA_BENCH_NAMESPACES meshed namespaces × $REMORA_BENCH_OBJECTS Istio objects each (see
# tests/src/controller_bench.rs). Reports the first full write, the time from an object change
# to its ConfigMap write (target ≤ 1 s at 1,000 × 10), a mesh-wide change, CPU and memory.
#
#   REMORA_BENCH_NAMESPACES  default 1000
#   REMORA_BENCH_OBJECTS     default 10
#   REMORA_BENCH_RUNS        runs (each prints its row), default 3
set -euo pipefail
cd "$(dirname "$0")/../.."
namespaces="${REMORA_BENCH_NAMESPACES:-1000}"
objects="${REMORA_BENCH_OBJECTS:-10}"
runs="${REMORA_BENCH_RUNS:-3}"
echo "building remora-webhook and remora-lab (release)..." >&2
cargo build -q --release --locked -p remora-webhook --bin remora-webhook
cargo build -q --release --locked -p remora-e2e --bin remora-lab
for i in $(seq "$runs"); do
  echo "run $i of $runs" >&2
  out="$(target/release/remora-lab bench-controller --namespaces "$namespaces" --objects "$objects")"
  if [ "$i" = 1 ]; then echo "$out"; else echo "$out" | tail -n 1; fi
done
