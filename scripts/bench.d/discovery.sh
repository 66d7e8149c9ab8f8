#!/usr/bin/env bash
# Discovery benchmarks (run via `scripts/bench discovery`); REMORA_BENCH_DISCOVERY picks them:
#
#   served (default)  discovery at scale (tests/src/discovery_bench.rs, `remora-lab
#     bench-discovery`): the recorded API serving a generated cluster of
#     $REMORA_BENCH_NAMESPACES namespaces, $REMORA_BENCH_SERVICES Services (one EndpointSlice
#     each) and $REMORA_BENCH_PODS pods; the release `remora-webhook serve --discovery on`
#     watching it and serving $REMORA_BENCH_SUBSCRIBERS simulated subscribers (one run per
#     number: the API server's requests, watches and bytes, control-plane CPU and RSS, bytes per
#     subscriber, EndpointSlice change → every subscriber p50/p99); then
#     $REMORA_BENCH_PROXIES real release proxies per mode (Sidecar scoped to 10 Services), each
#     with its workload certificate from the control plane's CA as an installed sidecar:
#     discovery from the control plane, from the API (watch per sidecar), none: their VmRSS,
#     RssAnon and PSS (discovery's share: a mode's median minus the identity-only median) and
#     the API requests and watches of the direct ones, extrapolated to N. Prints the targets met
#     or NOT MET. Everything on 127.0.0.1; the open-files limit is raised for 1,000 subscribers.
#   direct  remora-proxy's own Kubernetes discovery memory (below).
#   all     both.
#
#   served: REMORA_BENCH_NAMESPACES (100), REMORA_BENCH_SERVICES (2000), REMORA_BENCH_PODS
#           (10000), REMORA_BENCH_SUBSCRIBERS (100,1000), REMORA_BENCH_CHANGES (20),
#           REMORA_BENCH_PROXIES (3), REMORA_BENCH_CONNECTING (100 subscribers connecting at a
#           time; 0: all at once, a reconnect storm), REMORA_BENCH_CHURN_SECS (0: no churn;
#           else slice and pod changes at REMORA_BENCH_CHURN_RATE, 20 a second, for that long),
#           REMORA_BENCH_CA_MAX_CONNECTIONS (the control plane's --ca-max-connections, default
#           1024: raise it for more than 1,000 subscribers), REMORA_BENCH_PROXIES_ONLY (1: only
#           the real proxies, no simulated subscribers)
#
# direct: memory of remora-proxy's Kubernetes discovery: the release
# proxy watches a recorded API (tests/src/bin/kube-api-fixture.rs) serving one namespace of
# $REMORA_BENCH_SERVICES Services × $REMORA_BENCH_ENDPOINTS endpoints (one EndpointSlice per
# Service, two ports each, pod metadata for subsets; lists paged by 500 as an API server pages
# them), then the same proxy with the API off. Both run in a fresh network namespace (loopback
# only, nothing leaves it). Reports VmRSS/VmHWM after the index is built, the time to build it,
# and the difference. Target: RSS ≤ 40 MiB with 1,000 × 10.
#
#   REMORA_BENCH_SERVICES   default 1000
#   REMORA_BENCH_ENDPOINTS  default 10
#   REMORA_BENCH_RUNS       runs per case, the median is reported (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
mode="${REMORA_BENCH_DISCOVERY:-served}"
case "$mode" in
  served | direct | all) ;;
  *)
    echo "bench discovery: REMORA_BENCH_DISCOVERY=$mode: expected served, direct or all" >&2
    exit 2
    ;;
esac

served() {
  echo "building remora-webhook, remora-proxy and remora-lab (release)..." >&2
  cargo build -q --release --locked -p remora-webhook --bin remora-webhook \
    -p remora-proxy --bin remora-proxy -p remora-e2e --bin remora-lab
  # 1,000 subscribers: 1,000 connections in the simulator and as many in the control plane.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    echo "bench discovery: the open-files limit is $(ulimit -n) and cannot be raised to 4096" >&2
    exit 1
  fi
  # Its children get SIGKILL when it dies; it is stopped on exit and bounded to 30 minutes.
  timeout --kill-after=30 1800 "$target/release/remora-lab" --bin-dir "$target/release" \
    bench-discovery \
    --namespaces "${REMORA_BENCH_NAMESPACES:-100}" \
    --services "${REMORA_BENCH_SERVICES:-2000}" \
    --pods "${REMORA_BENCH_PODS:-10000}" \
    --subscribers "${REMORA_BENCH_SUBSCRIBERS:-100,1000}" \
    --changes "${REMORA_BENCH_CHANGES:-20}" \
    --proxies "${REMORA_BENCH_PROXIES:-3}" \
    --connecting "${REMORA_BENCH_CONNECTING:-100}" \
    --churn-secs "${REMORA_BENCH_CHURN_SECS:-0}" \
    --churn-rate "${REMORA_BENCH_CHURN_RATE:-20}" \
    ${REMORA_BENCH_CA_MAX_CONNECTIONS:+--ca-max-connections "$REMORA_BENCH_CA_MAX_CONNECTIONS"} \
    $([ "${REMORA_BENCH_PROXIES_ONLY:-0}" = 1 ] && echo --proxies-only) &
  lab=$!
  trap 'kill "$lab" 2>/dev/null || true' EXIT
  wait "$lab"
  trap - EXIT
}

direct() {
if [ "$(id -u)" != 0 ]; then
  echo "bench discovery: must run as root (creates a network namespace)" >&2
  exit 1
fi
services="${REMORA_BENCH_SERVICES:-1000}"
endpoints="${REMORA_BENCH_ENDPOINTS:-10}"
runs="${REMORA_BENCH_RUNS:-3}"

echo "building remora-proxy (release) and kube-api-fixture..." >&2
cargo build -q -p remora-proxy --release --locked --bin remora-proxy
cargo build -q -p remora-e2e --locked --bin kube-api-fixture
bin="$target/release/remora-proxy"
fixture="$target/debug/kube-api-fixture"

ns="rmp-disc-$$"
work="$(mktemp -d)"
chmod 755 "$work"
mkdir -p "$work/rules"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
nsx() { ip netns exec "$ns" "$@"; }
nsx ip link set lo up

nsx "$fixture" --services "$services" --endpoints "$endpoints" --namespace bench >"$work/api.out" 2>"$work/api.err" &
pids+=($!)
url=""
for _ in $(seq 100); do
  url="$(awk '/^url / {print $2}' "$work/api.out" 2>/dev/null || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "bench discovery: kube-api-fixture did not start: $(cat "$work/api.err")" >&2; exit 1; }

kib() { awk -v k="$1" "/^$1:/ {print \$2}" "/proc/$2/status"; }

# One proxy run: prints "rss_kib hwm_kib sync_ms".
run_proxy() {
  local api="$1" start pid sync_ms=0 dump
  start="$(date +%s%N)"
  nsx "$bin" run --kube-api "$api" --namespace bench --rules-dir "$work/rules" \
    --pod-labels-file /nonexistent --threads 2 --ipv6 off --access-log off \
    --inbound-source-fallback --allow-root >/dev/null 2>"$work/proxy.err" &
  local wrapper=$!
  pids+=("$wrapper")
  # Polls the metrics, not /config_dump: the dump now serializes the index (up to 5,000
  # endpoints), and building it on every poll would be measured as the proxy's peak.
  for _ in $(seq 600); do
    if dump="$(nsx curl -fs http://127.0.0.1:15020/stats/prometheus 2>/dev/null)"; then
      if [ "$api" = off ]; then break; fi
      if grep -qx "remora_discovery_services $services" <<<"$dump" &&
        grep -qx "remora_discovery_endpoints $((services * endpoints * 2))" <<<"$dump"; then
        sync_ms=$(( ($(date +%s%N) - start) / 1000000 ))
        break
      fi
    fi
    sleep 0.1
  done
  sleep 2.5 # the proxy returns freed pages to the kernel within a second of the last rebuild
  pid="$(pgrep -P "$wrapper" | head -1 || true)"
  [ -n "$pid" ] || pid="$wrapper"
  echo "$(kib VmRSS "$pid") $(kib VmHWM "$pid") $sync_ms"
  # `ip netns exec` forks: stop the proxy itself, then reap the wrapper.
  kill "$pid" 2>/dev/null || true
  wait "$wrapper" 2>/dev/null || true
}

median() { sort -n | sed -n "$(( (runs + 1) / 2 ))p"; }
on=(); off=()
for _ in $(seq "$runs"); do on+=("$(run_proxy "$url")"); off+=("$(run_proxy off)"); done
col() { local i="$1"; shift; printf '%s\n' "$@" | awk -v i="$i" '{print $i}' | median; }
on_rss="$(col 1 "${on[@]}")"; on_hwm="$(col 2 "${on[@]}")"; on_sync="$(col 3 "${on[@]}")"
off_rss="$(col 1 "${off[@]}")"; off_hwm="$(col 2 "${off[@]}")"
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
echo "remora-proxy discovery: ${services} services x ${endpoints} endpoints (2 ports each: $((services * endpoints * 2)) endpoint entries, $((services * endpoints)) pods), ${runs} runs (median), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "  API on : RSS $(mib "$on_rss") MiB, peak (VmHWM) $(mib "$on_hwm") MiB, index complete after ${on_sync} ms from start"
echo "  API off: RSS $(mib "$off_rss") MiB, peak (VmHWM) $(mib "$off_hwm") MiB"
echo "  discovery costs $(mib $((on_rss - off_rss))) MiB RSS ($(awk -v a="$on_rss" -v b="$off_rss" 'BEGIN {printf "%.2f", a / b}')x); target RSS <= 40 MiB: $([ "$on_rss" -le $((40 * 1024)) ] && echo met || echo MISSED)"
}

case "$mode" in
  served) served ;;
  direct) direct ;;
  all)
    served
    direct
    ;;
esac
