#!/usr/bin/env bash
# Data-plane benchmark in the mesh lab (run as root via `scripts/bench lab`): the same fixed-rate
# load (1,000 req/s, 16 connections, 1 KiB responses, 30 s, latency corrected for coordinated
# omission, oha) and a saturation load (64 connections) from a client pod to a server pod:
# direct, through nginx and through HAProxy (one reverse-proxy hop in the server pod, same worker
# count as remora-proxy; plain, and terminating TLS), through one remora inbound hop, through the
# remora ingress gateway (plain, and terminating TLS) and through the remora sidecar pair.
# Then the webhook and init benches. Each figure is the median of LAB_BENCH_RUNS runs with its
# spread; per proxy also CPU µs, system calls (perf) and context switches per request. Writes the
# report, with the machine, date and load, into docs/benchmarks.md between its "scripts/bench lab"
# markers (the rest of the file, measured by other means, is kept). Bounded: runs x 9 paths x
# (2 + 2 x duration) s of load, plus the other two benches.
#
#   LAB_BENCH_SECONDS   seconds per load run (default 30)
#   LAB_BENCH_RUNS      runs per path (default 3)
#   LAB_BENCH_PATHS     only these paths, comma-separated (see `remora-lab bench --help`)
#   LAB_BENCH_OTHERS    0 to skip the webhook and init benches (default 1)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "bench lab: must run as root (the lab creates network namespaces)" >&2
  exit 1
fi
scripts/setup nginx haproxy linux-perf
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null 2>&1; then
  echo "bench lab: installing oha (cargo install oha --locked)" >&2
  cargo install oha --locked
fi
echo "bench lab: building release binaries" >&2
cargo build -q --release --locked -p remora-webhook -p remora-init -p remora-proxy -p remora-e2e --bins

secs="${LAB_BENCH_SECONDS:-30}"
load="$(cut -d' ' -f1-3 /proc/loadavg)"
out="$(mktemp)"
others="$(mktemp)"
trap 'rm -f "$out" "$others"' EXIT
target/release/remora-lab bench --duration "$secs" --runs "${LAB_BENCH_RUNS:-3}" \
  ${LAB_BENCH_PATHS:+--paths "$LAB_BENCH_PATHS"} --oha "$(command -v oha)" --out "$out"

if [ "${LAB_BENCH_OTHERS:-1}" != 0 ]; then
  { echo "### Webhook (scripts/bench webhook)"; echo; echo '```'; bash scripts/bench.d/webhook.sh 2>&1 | tail -n 40; echo '```'; echo;
    echo "### Init (scripts/bench init)"; echo; echo '```'; bash scripts/bench.d/init.sh 2>&1 | tail -n 40; echo '```'; } > "$others" || true
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
mem="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
section="$(mktemp)"
trap 'rm -f "$out" "$others" "$section"' EXIT
{
  echo "<!-- scripts/bench lab: start (written by scripts/bench lab; edits here are replaced) -->"
  echo
  echo "Latest run of \`scripts/bench lab\` (the mesh lab; see docs/lab.md)."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: ${cpu:-unknown CPU}, $(nproc) CPUs, ${mem}, $(uname -sr)"
  echo "- Load average when the lab run started: ${load} (other work on the machine shares the CPUs)"
  echo "- Versions: $(oha --version 2>/dev/null | head -1), $(nginx -v 2>&1 | head -1), $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3), remora $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "## Data plane: client pod → server pod"
  echo
  cat "$out"
  echo
  echo "Targets: per hop, CPU per request ≤ the best peer's, saturation ≥ the best peer's and added"
  echo "p99 ≤ the best peer's + 0.05 ms; the sidecar pair (mutual TLS) adds ≤ 0.25 ms p99 at 1,000"
  echo "req/s; RSS ≤ 15 MiB idle and ≤ 30 MiB under load per proxy; system calls per request ≤"
  echo "HAProxy's + 1. All processes share the same cores (client, proxies and server), so"
  echo "saturation numbers are relative, not absolute."
  echo
  if [ -s "$others" ]; then
    echo "## Control plane and capture"
    echo
    cat "$others"
    echo
  fi
  echo "<!-- scripts/bench lab: end -->"
} > "$section"
doc=docs/benchmarks.md
python3 - "$doc" "$section" <<'PY'
import sys
doc, section = sys.argv[1], open(sys.argv[2]).read()
try:
    old = open(doc).read()
except FileNotFoundError:
    old = "# Benchmarks\n\n"
start, end = "<!-- scripts/bench lab: start", "<!-- scripts/bench lab: end -->"
if start in old and end in old:
    i, j = old.index(start), old.index(end) + len(end) + 1
    new = old[:i] + section + old[j:]
else:
    head, _, rest = old.partition("\n\n")
    new = head + "\n\n" + section + "\n" + rest
open(doc, "w").write(new)
PY
echo "bench lab: report written to docs/benchmarks.md" >&2
cat "$section"
