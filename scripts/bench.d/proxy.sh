#!/usr/bin/env bash
# Benchmark of remora-proxy's data plane (run as root via `scripts/bench proxy`): HTTP/1.1
# keep-alive throughput and latency through the real capture path, next to the same peer dialed
# directly, in a fresh network namespace (nothing leaves it). Reports the proxy's memory too.
#
#   REMORA_BENCH_RUNS      runs per case, the median is reported (default 3)
#   REMORA_BENCH_SECONDS   seconds per run (default 5)
#   REMORA_BENCH_CONNS     concurrent connections (default "16 64")
#
# Set-up: `examples/peer http 127.0.0.1:8080` answers a short body; the proxy runs as uid 1337 on
# the default ports with `--threads 2`; iptables REDIRECTs the client's (root's) connections to
# 127.0.0.1:8080 to 15001, exactly as the init program does for a pod. wrk is the client.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "bench proxy: must run as root (creates a network namespace)" >&2
  exit 1
fi
scripts/setup wrk >/dev/null
runs="${REMORA_BENCH_RUNS:-3}"
secs="${REMORA_BENCH_SECONDS:-5}"
conns="${REMORA_BENCH_CONNS:-16 64}"

echo "building remora-proxy and examples/peer (release)..." >&2
cargo build -q -p remora-proxy --release --locked --bin remora-proxy --example peer
bin="$PWD/target/release/remora-proxy"
peer="$PWD/target/release/examples/peer"

ns="rmp-bench-$$"
work="$(mktemp -d)"
chmod 755 "$work"
mkdir -p "$work/rules"
chmod 755 "$work/rules"
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

nsx "$peer" http 127.0.0.1:8080 bench >/dev/null 2>&1 &
pids+=($!)

# wrk's median of $runs: prints "req/s p50 p99"
measure() {
  local c="$1" url="$2" out all=()
  for _ in $(seq "$runs"); do
    out="$(nsx wrk -t2 -c"$c" -d"${secs}s" --latency "$url")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    errs="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")"
    [ -z "$errs" ] || echo "  warning: $errs" >&2
    all+=("$rps $p50 $p99")
  done
  printf '%s\n' "${all[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p"
}

sleep 0.3
declare -A direct
for c in $conns; do direct[$c]="$(measure "$c" http://127.0.0.1:8080/)"; done

# Capture (as the init program renders it, reduced to this one port).
nsx iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN
nsx iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 8080 -j REDIRECT --to-ports 15001
nsx setpriv --reuid=1337 --regid=1337 --clear-groups "$bin" run --rules-dir "$work/rules" \
  --pod-labels-file /nonexistent --threads 2 --ipv6 off --access-log "${REMORA_BENCH_ACCESS_LOG:-off}" \
  >/dev/null 2>"$work/proxy.err" &
pids+=($!)
for _ in $(seq 100); do
  if nsx curl -fs -o /dev/null http://127.0.0.1:15021/healthz/ready; then break; fi
  sleep 0.1
done
# `ip netns exec` forks; its child (setpriv exec'd into the proxy) is the proxy.
proxy_pid="$(pgrep -P "${pids[-1]}" | head -1)"
rss_idle="$(awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status" 2>/dev/null || echo '?')"
declare -A proxied
for c in $conns; do proxied[$c]="$(measure "$c" http://127.0.0.1:8080/)"; done
hwm="$(awk '/VmHWM/ {print $2}' "/proc/$proxy_pid/status" 2>/dev/null || echo '?')"

echo "remora-proxy HTTP/1.1 keep-alive, wrk -t2, ${secs}s x ${runs} runs (median), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-6s %-28s %-28s\n' conns "direct (req/s p50 p99)" "through proxy (req/s p50 p99)"
for c in $conns; do printf '%-6s %-28s %-28s\n' "$c" "${direct[$c]}" "${proxied[$c]}"; done
echo "proxy memory: RSS idle ${rss_idle} kB, peak ${hwm} kB"
