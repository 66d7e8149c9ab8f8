#!/usr/bin/env bash
# Admission webhook throughput and latency: reviews/s at saturation and p50/p99 at a fixed
# 1000 reviews/s over TLS keep-alive, for a typical Deployment pod (release build, 127.0.0.1).
# Targets: p99 <= 2 ms at 1000/s; >= 5000 reviews/s. Bounded: about 20 s of load in total.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release --locked -p remora-webhook --bin remora-webhook --example loadgen --example review_cost
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (the numbers below share them)"
target/release/examples/loadgen \
  --server-bin target/release/remora-webhook \
  --connections "${WEBHOOK_BENCH_CONNECTIONS:-8}" \
  --saturation-seconds "${WEBHOOK_BENCH_SATURATION_SECONDS:-5}" \
  --rate "${WEBHOOK_BENCH_RATE:-1000}" \
  --rate-seconds "${WEBHOOK_BENCH_RATE_SECONDS:-10}"
echo
echo "| pure CPU cost | threads | per review | throughput |"
echo "|---|---|---|---|"
target/release/examples/review_cost
