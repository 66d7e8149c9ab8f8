#!/usr/bin/env bash
# System calls and CPU per proxied request, one hop, remora next to HAProxy and nginx in the
# same run (root; `scripts/bench syscalls`, or `scripts/bench.d/syscalls.sh [PROXY_BIN]` for
# another build of remora-proxy). Everything runs in a fresh network namespace on loopback
# (nothing leaves it): `examples/peer` answers on 127.0.0.1:8080, each proxy listens on
# 127.0.0.1:15001 with one worker thread and keeps upstream connections alive, and
# `wrk -t1 -c16` sends keep-alive requests through it.
#
# Per proxy and run: 2 s of warm-up, then REMORA_BENCH_SECONDS of load while the proxy's CPU
# time (utime + stime from /proc) is read before and after: CPU µs per request. Then the same
# load under `strace -f -c` (which slows the proxy, so only its counts are used): system calls
# per request, in total and the largest ones. Context switches per request (voluntary and
# involuntary, summed over the process's threads from /proc/PID/task/*/status before and after
# the load window; a thread that exits in between is not counted) and the process's thread
# count under load. remora runs as the sidecar does (access log on stdout, to /dev/null here),
# HAProxy and nginx without access logs. Medians of the runs.
#
#   PROXY_BIN              default ${CARGO_TARGET_DIR:-target}/release/remora-proxy, built first
#   REMORA_BENCH_SECONDS   load window per measurement (default 10)
#   REMORA_BENCH_RUNS      runs per proxy (default 3)
#   REMORA_BENCH_PROXIES   which proxies (default "remora haproxy nginx"; missing ones are
#                          installed by scripts/setup)
#   REMORA_BENCH_ARGS      extra flags for remora-proxy run (e.g. "--work-stealing false")
#   REMORA_BENCH_THREADS   remora's worker threads (default 1, as HAProxy's and nginx's here)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "bench syscalls: must run as root (creates a network namespace)" >&2
  exit 1
fi
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
bin_arg="${1:-}"
[ -z "$bin_arg" ] || bin_arg="$(abs "$bin_arg")"
cd "$(dirname "$0")/../.."
secs="${REMORA_BENCH_SECONDS:-10}"
runs="${REMORA_BENCH_RUNS:-3}"
read -r -a proxies <<<"${REMORA_BENCH_PROXIES:-remora haproxy nginx}"
read -r -a extra_args <<<"${REMORA_BENCH_ARGS:-}"
threads_n="${REMORA_BENCH_THREADS:-1}"
case "$secs$runs$threads_n" in *[!0-9]*) echo "bench syscalls: REMORA_BENCH_SECONDS, REMORA_BENCH_RUNS and REMORA_BENCH_THREADS are whole numbers" >&2; exit 2 ;; esac
[ "$secs" -ge 1 ] && [ "$runs" -ge 1 ] || { echo "bench syscalls: seconds and runs must be >= 1" >&2; exit 2; }
for p in "${proxies[@]}"; do
  case "$p" in remora | haproxy | nginx) ;; *) echo "bench syscalls: unknown proxy '$p' (have: remora haproxy nginx)" >&2; exit 2 ;; esac
done
scripts/setup wrk strace haproxy nginx >/dev/null

target="$(abs "${CARGO_TARGET_DIR:-target}")"
if [ -z "$bin_arg" ]; then
  echo "building remora-proxy and examples/peer (release)..." >&2
  cargo build -q -p remora-proxy --release --locked --bin remora-proxy --example peer
  bin="$target/release/remora-proxy"
else
  bin="$bin_arg"
fi
peer="$target/release/examples/peer"
[ -x "$peer" ] || cargo build -q -p remora-proxy --release --locked --example peer
tck="$(getconf CLK_TCK)"

ns="rmp-sys-$$"
work="$(mktemp -d)"
chmod 755 "$work"
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ip netns add "$ns"
nsx() { ip netns exec "$ns" "$@"; }
nsx ip link set lo up
nsx timeout 7200 "$peer" http 127.0.0.1:8080 bench >/dev/null 2>&1 &
mkdir -p "$work/rules"
chmod 755 "$work/rules"

cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:15001
  default_backend b
backend b
  server s 127.0.0.1:8080
EOF
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:8080; keepalive 64; }
  server {
    listen 127.0.0.1:15001;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF

# start NAME: the proxy in the namespace; prints the pid of the process that serves (nginx: its
# worker).
start() {
  case "$1" in
    remora)
      nsx env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$bin" run --rules-dir "$work/rules" \
        --pod-labels-file /nonexistent --kube-api off --threads "$threads_n" --ipv6 off --drain-seconds 0 \
        --namespace default --fixed-outbound-target 127.0.0.1:8080 --access-log stdout \
        ${extra_args[@]+"${extra_args[@]}"} >/dev/null 2>"$work/remora.err" &
      ;;
    haproxy) nsx haproxy -f "$work/haproxy.cfg" >/dev/null 2>"$work/haproxy.err" & ;;
    nginx) nsx nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>"$work/nginx.err" & ;;
  esac
  local i
  for i in $(seq 100); do
    if nsx curl -fs -m 1 -o /dev/null -H "Host: 127.0.0.1:8080" http://127.0.0.1:15001/; then break; fi
    sleep 0.1
  done
  case "$1" in
    remora) pgrep -f "^$bin run --rules-dir $work/rules" | head -1 ;;
    haproxy) pgrep -f "^haproxy -f $work/haproxy.cfg" | head -1 ;;
    nginx) pgrep -P "$(cat "$work/nginx.pid")" | head -1 ;;
  esac
}
stop() {
  local p
  for p in $(ip netns pids "$ns"); do
    grep -q "bench" "/proc/$p/cmdline" 2>/dev/null && continue # the peer
    kill "$p" 2>/dev/null || true
  done
  sleep 0.5
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Context switches of all the process's threads: "voluntary involuntary".
ctxt() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'
}
threads() { ls "/proc/$1/task" | wc -l; }
load() {
  nsx timeout $(($1 + 30)) wrk -t1 -c16 -d"$1s" -H "Host: 127.0.0.1:8080" http://127.0.0.1:15001/ >"$2"
  if grep -q 'Non-2xx or 3xx responses\|Socket errors' "$2"; then
    echo "bench syscalls: wrk saw errors:" >&2
    cat "$2" >&2
    return 1
  fi
  awk '/requests in/ {print $1}' "$2"
}

: >"$work/results"
for run in $(seq "$runs"); do
  for p in "${proxies[@]}"; do
    pid="$(start "$p")"
    [ -n "$pid" ] || { echo "bench syscalls: $p did not start: $(tail -3 "$work/$p.err" 2>/dev/null)" >&2; exit 1; }
    load 2 "$work/warm.txt" >/dev/null
    c0="$(cpu "$pid")"
    read -r v0 n0 <<<"$(ctxt "$pid")"
    reqs="$(load "$secs" "$work/wrk.txt")"
    c1="$(cpu "$pid")"
    read -r v1 n1 <<<"$(ctxt "$pid")"
    nthreads="$(threads "$pid")"
    timeout $((secs + 60)) strace -f -c -o "$work/strace.txt" -p "$pid" 2>/dev/null &
    sp=$!
    sleep 0.5
    sreqs="$(load "$secs" "$work/wrk-strace.txt")"
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    calls="$(awk '$NF == "total" {print $4}' "$work/strace.txt")"
    top="$(awk -v r="$sreqs" 'NR > 2 && $4 ~ /^[0-9]+$/ && $NF != "total" && $4 / r >= 0.1 {printf "%s %.2f\n", $NF, $4 / r}' "$work/strace.txt" | sort -k2 -rn | head -6 | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}')"
    awk -v p="$p" -v run="$run" -v r="$reqs" -v c=$((c1 - c0)) -v h="$tck" -v s="$sreqs" -v k="$calls" -v top="$top" \
      -v vol=$((v1 - v0)) -v inv=$((n1 - n0)) -v th="$nthreads" \
      'BEGIN { printf "%s\t%d\t%d\t%.1f\t%.2f\t%s\t%.3f\t%.3f\t%d\n", p, run, r, c / h / r * 1e6, k / s, top, vol / r, inv / r, th }' >>"$work/results"
    tail -1 "$work/results" | awk -F'\t' '{printf "%s run %s: %s requests, %s us CPU/request, %s syscalls/request (%s), context switches/request %s voluntary %s involuntary, %s threads\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' >&2
    stop
  done
done

echo "One proxy hop, loopback, wrk -t1 -c16 keep-alive, ${secs} s per measurement, runs: $runs, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg) at the end; remora: $threads_n worker thread(s) ${extra_args[*]+${extra_args[*]}}"
echo "remora: $bin"
echo
echo "| proxy | requests/s (each run) | CPU µs / request (each run) | median | syscalls / request (median) | largest, per request (last run) | context switches / request, voluntary + involuntary (median) | threads |"
echo "|---|---|---|---|---|---|---|---|"
for p in "${proxies[@]}"; do
  awk -F'\t' -v p="$p" -v secs="$secs" '$1 == p {
      n++; u[n] = $4; sc[n] = $5; top = $6; vo[n] = $7; iv[n] = $8; th = $9
      rps = rps (n > 1 ? ", " : "") int($3 / secs); each = each (n > 1 ? ", " : "") $4
    }
    END {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) {
        if (u[j] < u[i]) { t = u[i]; u[i] = u[j]; u[j] = t }
        if (sc[j] < sc[i]) { t = sc[i]; sc[i] = sc[j]; sc[j] = t }
        if (vo[j] < vo[i]) { t = vo[i]; vo[i] = vo[j]; vo[j] = t }
        if (iv[j] < iv[i]) { t = iv[i]; iv[i] = iv[j]; iv[j] = t }
      }
      m = (n + 1) / 2; m = int(m)
      printf "| %s | %s | %s | %.1f | %.2f | %s | %.3f + %.3f | %d |\n", p, rps, each, u[m], sc[m], top, vo[m], iv[m], th
    }' "$work/results"
done
