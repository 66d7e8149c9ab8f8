#!/usr/bin/env bash
# Instructions per proxied request (run as root via `scripts/bench callgrind`): the release
# remora-proxy under `valgrind --tool=callgrind`, one worker thread, access log on stdout, in a
# fresh network namespace (nothing leaves it), `wrk -t1 -c4` keep-alive requests through its
# outbound listener to `examples/peer` (a fixed outbound target, so no iptables is involved).
# Instruction counts do not move with the machine's load, so two builds can be compared on a
# busy machine: set REMORA_BENCH_BIN to another build of remora-proxy to measure it instead.
#
# Method: once the proxy is ready, 2 s of warm-up, then the counters are zeroed
# (`callgrind_control -z`), wrk runs for REMORA_BENCH_SECONDS (default 20), the counters are
# dumped, an equally long idle window is dumped too and subtracted (the periodic rules rescan
# would otherwise count as request work). Cases: no rules (passthrough), one VirtualService,
# the same plus a DestinationRule (loadBalancer, connectionPool, outlierDetection).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "bench callgrind: must run as root (creates a network namespace)" >&2
  exit 1
fi
scripts/setup wrk valgrind >/dev/null
secs="${REMORA_BENCH_SECONDS:-20}"

echo "building remora-proxy and examples/peer (release)..." >&2
cargo build -q -p remora-proxy --release --locked --bin remora-proxy --example peer
bin="${REMORA_BENCH_BIN:-$PWD/target/release/remora-proxy}"
peer="$PWD/target/release/examples/peer"

ns="rmp-cg-$$"
work="$(mktemp -d)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
nsx() { ip netns exec "$ns" "$@"; }
nsx ip link set lo up
nsx "$peer" http 127.0.0.1:8080 bench >/dev/null 2>&1 &
pids+=($!)

VS='apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: all
    route:
    - destination: {host: reviews}'
DR='apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 100}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}'

# Sum of instructions (Ir) in a callgrind output file.
ir() { awk '/^summary:/ {print $2}' "$1"; }

# measure NAME HOST: prints "NAME requests instructions/request"
measure() {
  local name="$1" host="$2" out="$work/cg-$1"
  mkdir -p "$out"
  nsx valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
    "$bin" run --rules-dir "$work/rules" --pod-labels-file /nonexistent --threads 1 --ipv6 off \
    --namespace default --fixed-outbound-target 127.0.0.1:8080 --access-log stdout \
    >/dev/null 2>"$out/proxy.err" &
  local vpid=$!
  pids+=("$vpid")
  for _ in $(seq 600); do
    if nsx curl -fs -o /dev/null http://127.0.0.1:15021/healthz/ready; then break; fi
    sleep 0.2
  done
  nsx wrk -t1 -c4 -d2s -H "Host: $host" http://127.0.0.1:15001/ >/dev/null
  nsx callgrind_control -z >/dev/null
  local reqs
  reqs="$(nsx wrk -t1 -c4 -d"${secs}s" -H "Host: $host" http://127.0.0.1:15001/ | awk '/requests in/ {print $1}')"
  nsx callgrind_control -d load >/dev/null
  sleep "$secs"
  nsx callgrind_control -d idle >/dev/null
  kill "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  local load idle
  load="$(ir "$(ls "$out"/cg.*.* | grep -m1 '\.1$' || true)")"
  idle="$(ir "$(ls "$out"/cg.*.* | grep -m1 '\.2$' || true)")"
  if [ -z "$load" ] || [ -z "$idle" ] || [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
    echo "bench callgrind: $name: no measurement (load=$load idle=$idle requests=$reqs); proxy log:" >&2
    tail -5 "$out/proxy.err" >&2
    return 1
  fi
  echo "$name $reqs $(( (load - idle) / reqs ))"
}

mkdir -p "$work/rules"
chmod 755 "$work/rules"
results=()
results+=("$(measure none 127.0.0.1:8080)")
printf '%s\n' "$VS" >"$work/rules/vs.yaml"
results+=("$(measure vs reviews)")
printf '%s\n' "$DR" >"$work/rules/dr.yaml"
results+=("$(measure vs+dr reviews)")

echo "remora-proxy instructions per request (callgrind, wrk -t1 -c4, ${secs}s, idle window subtracted), binary $bin"
printf '%-8s %-10s %s\n' rules requests instructions/request
for r in "${results[@]}"; do
  # shellcheck disable=SC2086
  printf '%-8s %-10s %s\n' $r
done
