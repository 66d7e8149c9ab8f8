#!/usr/bin/env bash
# Instructions per proxied request (root; `scripts/bench callgrind`, or directly
# `scripts/bench.d/callgrind.sh [PROXY_BIN]` to measure another build of remora-proxy): the
# release remora-proxy under `valgrind --tool=callgrind` (outbound capture, one worker thread,
# access log on stdout) in a fresh network namespace (loopback only, nothing leaves it), while
# `wrk -t1 -c4` sends keep-alive requests through its outbound listener to `examples/peer`
# (a fixed outbound target, so no iptables is involved). Instruction counts do not move with the
# machine's load, so two builds can be compared on a busy machine.
#
# Method: once the proxy is ready and one request came back from the peer, 2 s of warm-up, then
# the counters are zeroed (`callgrind_control -z`), wrk runs for REMORA_BENCH_SECONDS, the
# counters are dumped, an equally long idle window is dumped too and subtracted (the periodic
# rules rescan would otherwise count as request work); the difference is divided by wrk's
# completed requests. Cases: no rules (passthrough: the client's Host is the peer's address),
# one VirtualService for `reviews` (Host `reviews`), the same plus a DestinationRule
# (loadBalancer, connectionPool, outlierDetection). Inbound cases (the inbound listener, 15006,
# to the same peer; the pod's labels are `app=bench`): `in` no rules; `in+other` an
# AuthorizationPolicy of ten rules that selects another workload (`app=other`), so no policy
# selects this one; `in+authz` the same ten-rule ALLOW policy selecting this workload, the rule
# that allows the request last, so every request evaluates all ten. For the inbound cases the
# instructions spent inside the authorization decision (`http::authz::decide`, inclusive: the
# request's attributes, the evaluation, the log) are printed per request as well; it is not
# called at all when no policy selects the workload. Tracing cases (outbound, no rules, like
# `none`): `trace1` exports spans to a Zipkin collector (a second peer on 127.0.0.1:9411, answering
# every POST) with 1 % of requests sampled, Istio's default; `trace100` samples every request;
# `json` is `none` with the JSON access log (the format of measurements before the TEXT line
# became the default). A run with non-2xx answers or socket errors fails instead of printing a
# number.
#
#   PROXY_BIN               default ${CARGO_TARGET_DIR:-target}/release/remora-proxy, built first
#                           when no PROXY_BIN is given (only flags that d949c51 already had are used)
#   REMORA_BENCH_PEER       the examples/peer binary (default ${CARGO_TARGET_DIR:-target}/release/
#                           examples/peer, built when missing)
#   REMORA_BENCH_SECONDS    load window, and the idle window (default 20)
#   REMORA_BENCH_RUNS       runs per case; every run and the median are printed (default 2)
#   REMORA_BENCH_CASES      which cases, space-separated (default "none vs vs+dr"; the
#                           authorization set is "in in+other in+authz"; tracing "none trace1
#                           trace100 json")
#   REMORA_BENCH_HEADERS    more request headers for wrk, `|`-separated (e.g. curl's
#                           "User-Agent: curl/8.5.0|Accept: */*"; default none: wrk sends Host only)
#   REMORA_BENCH_KEEP       a directory to copy the callgrind dumps into (for callgrind_annotate;
#                           `.1` is the load window, `.2` the idle window)
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "bench callgrind: must run as root (creates a network namespace)" >&2
  exit 1
fi
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
bin_arg="${1:-}"
[ -z "$bin_arg" ] || bin_arg="$(abs "$bin_arg")"
peer="${REMORA_BENCH_PEER:-}"
[ -z "$peer" ] || peer="$(abs "$peer")"
keep="${REMORA_BENCH_KEEP:-}"
[ -z "$keep" ] || keep="$(abs "$keep")"
cd "$(dirname "$0")/../.."

secs="${REMORA_BENCH_SECONDS:-20}"
runs="${REMORA_BENCH_RUNS:-2}"
read -r -a cases <<<"${REMORA_BENCH_CASES:-none vs vs+dr}"
case "$secs$runs" in *[!0-9]*) echo "bench callgrind: REMORA_BENCH_SECONDS and REMORA_BENCH_RUNS are whole numbers" >&2; exit 2 ;; esac
[ "$secs" -ge 1 ] && [ "$runs" -ge 1 ] || { echo "bench callgrind: seconds and runs must be >= 1" >&2; exit 2; }

need=()
for t in valgrind callgrind_control wrk curl ip timeout; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench callgrind: missing ${need[*]}; installing wrk and valgrind (scripts/setup)" >&2
  scripts/setup wrk valgrind >/dev/null
fi

target="$(abs "${CARGO_TARGET_DIR:-target}")"
if [ -z "$bin_arg" ]; then
  echo "building remora-proxy and examples/peer (release)..." >&2
  cargo build -q -p remora-proxy --release --locked --bin remora-proxy --example peer
  bin="$target/release/remora-proxy"
else
  bin="$bin_arg"
fi
[ -n "$peer" ] || peer="$target/release/examples/peer"
if [ ! -x "$peer" ]; then
  echo "building examples/peer (release)..." >&2
  cargo build -q -p remora-proxy --release --locked --example peer
fi
for f in "$bin" "$peer"; do
  [ -x "$f" ] || { echo "bench callgrind: $f is not an executable" >&2; exit 1; }
done

ns="rmp-cg-$$"
work="$(mktemp -d)"
chmod 755 "$work"
wrappers=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  # Every process in the namespace was started by this script.
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  for p in "${wrappers[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
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
nsx timeout 7200 "$peer" http 127.0.0.1:8080 bench >/dev/null 2>"$work/peer.err" &
wrappers+=($!)
# The trace collector of the tracing cases (answers every request 200).
nsx timeout 7200 "$peer" http 127.0.0.1:9411 collector >/dev/null 2>"$work/collector.err" &
wrappers+=($!)

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
# authz APP: an ALLOW policy of ten rules for workloads labelled app=APP; only the tenth allows
# wrk's GET / (the others name other methods, paths, ports, headers, namespaces or addresses).
authz() {
  cat <<EOF
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench, namespace: default}
spec:
  selector: {matchLabels: {app: $1}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [POST, PUT], paths: [/api/*]}}]
  - to: [{operation: {paths: [/admin, /admin/*]}}]
  - to: [{operation: {methods: [DELETE]}}]
  - to: [{operation: {ports: ["9090"]}}]
  - to: [{operation: {paths: ["*.json"], methods: [GET]}}]
  - from: [{source: {namespaces: [prod, staging]}}]
  - from: [{source: {ipBlocks: [10.20.0.0/16]}}]
  - when: [{key: "request.headers[x-tenant]", values: [gold, silver]}]
  - to: [{operation: {hosts: [reviews.example.com], paths: [/reviews/*]}}]
  - to: [{operation: {methods: [GET, HEAD], paths: [/, /healthz]}}]
EOF
}
for c in "${cases[@]}"; do
  mkdir -p "$work/rules-$c"
  case "$c" in
    none) ;;
    vs) printf '%s\n' "$VS" >"$work/rules-$c/vs.yaml" ;;
    vs+dr) printf '%s\n' "$VS" >"$work/rules-$c/vs.yaml"; printf '%s\n' "$DR" >"$work/rules-$c/dr.yaml" ;;
    in) ;;
    in+other) authz other >"$work/rules-$c/authz.yaml" ;;
    in+authz) authz bench >"$work/rules-$c/authz.yaml" ;;
    trace1 | trace100 | json) ;;
    *) echo "bench callgrind: unknown case '$c' (have: none vs vs+dr in in+other in+authz trace1 trace100 json)" >&2; exit 2 ;;
  esac
  chmod -R a+rX "$work/rules-$c"
done
echo 'app="bench"' >"$work/labels"
chmod 644 "$work/labels"

for _ in $(seq 50); do
  nsx curl -fsS -m 1 -o /dev/null http://127.0.0.1:8080/ 2>/dev/null && break
  sleep 0.1
done
nsx curl -fsS -m 1 -o /dev/null http://127.0.0.1:8080/ || { echo "bench callgrind: the peer did not start: $(cat "$work/peer.err")" >&2; exit 1; }

# Sum of instructions (Ir) in one callgrind dump.
ir() { awk '/^summary:/ {print $2; exit}' "$1"; }
# valgrind's gdbserver FIFOs live in $work (not in TMPDIR, which may differ between the two).
cgctl() { nsx timeout 60 callgrind_control --vgdb-prefix="$work/vgdb" "$@" >>"$work/cgctl.log" 2>&1; }

# wrk SECONDS HOST OUT PORT: keep-alive load through the proxy's listener on PORT (15001
# outbound, 15006 inbound); fails on non-2xx/errors.
wrk_run() {
  local more=() h
  if [ -n "${REMORA_BENCH_HEADERS:-}" ]; then
    IFS='|' read -r -a hs <<<"$REMORA_BENCH_HEADERS"
    for h in "${hs[@]}"; do more+=(-H "$h"); done
  fi
  nsx timeout $(($1 + 60)) wrk -t1 -c4 -d"$1s" -H "Host: $2" "${more[@]}" "http://127.0.0.1:$4/" >"$3"
  if grep -q 'Non-2xx or 3xx responses\|Socket errors' "$3"; then
    echo "bench callgrind: wrk saw errors:" >&2
    cat "$3" >&2
    return 1
  fi
}

# measure CASE HOST RUN: appends "CASE RUN requests instructions" to $work/results.
measure() {
  local name="$1" host="$2" run="$3" out="$work/cg-$1-$3" port=15001
  local extra=(--pod-labels-file /nonexistent)
  case "$name" in
    in*) port=15006; extra=(--pod-labels-file "$work/labels" --fixed-inbound-target 127.0.0.1:8080) ;;
    trace1) extra+=(--tracing-provider zipkin --tracing-address 127.0.0.1:9411 --tracing-sampling 1) ;;
    trace100) extra+=(--tracing-provider zipkin --tracing-address 127.0.0.1:9411 --tracing-sampling 100) ;;
    json) extra+=(--access-log-encoding JSON) ;;
  esac
  mkdir -p "$out"
  # The shell writes its pid and execs env, then valgrind: that pid is the proxy under callgrind.
  # The environment is emptied so REMORA_* or Kubernetes variables of the caller do not count.
  nsx timeout -k 10 $((4 * secs + 600)) sh -c 'echo $$ >"$0"; exec "$@"' "$out/pid" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    valgrind --tool=callgrind --vgdb-prefix="$work/vgdb" --callgrind-out-file="$out/cg.%p" \
    "$bin" run --rules-dir "$work/rules-$name" "${extra[@]}" --kube-api off \
    --threads 1 --ipv6 off --drain-seconds 0 --namespace default \
    --fixed-outbound-target 127.0.0.1:8080 --access-log stdout \
    >/dev/null 2>"$out/proxy.err" &
  local wrapper=$! vpid="" body
  wrappers+=("$wrapper")
  for _ in $(seq 900); do
    vpid="$(cat "$out/pid" 2>/dev/null || true)"
    if [ -n "$vpid" ] && nsx curl -fs -m 2 -o /dev/null http://127.0.0.1:15021/healthz/ready; then break; fi
    kill -0 "$wrapper" 2>/dev/null || break
    sleep 0.2
  done
  if ! body="$(nsx curl -fsS -m 10 -H "Host: $host" "http://127.0.0.1:$port/")" || [ "$body" != bench ]; then
    echo "bench callgrind: $name: no answer from the peer through the proxy (got '${body:-}'); proxy log:" >&2
    tail -20 "$out/proxy.err" >&2
    return 1
  fi
  if grep -q 'rules.*rejected' "$out/proxy.err"; then
    echo "bench callgrind: $name: the proxy rejected the case's rules:" >&2
    grep 'rejected' "$out/proxy.err" | head -3 >&2
    return 1
  fi
  wrk_run 2 "$host" "$out/warmup.txt" "$port"
  cgctl -z "$vpid"
  wrk_run "$secs" "$host" "$out/wrk.txt" "$port"
  cgctl --dump=load "$vpid"
  sleep "$secs"
  cgctl --dump=idle "$vpid"
  kill "$vpid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$wrapper" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$vpid" 2>/dev/null || true
  wait "$wrapper" 2>/dev/null || true
  local reqs load idle
  reqs="$(awk '/requests in/ {print $1}' "$out/wrk.txt")"
  load="$(ir "$out/cg.$vpid.1" 2>/dev/null || true)"
  idle="$(ir "$out/cg.$vpid.2" 2>/dev/null || true)"
  if [ -z "$load" ] || [ -z "$idle" ] || [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
    echo "bench callgrind: $name: no measurement (load=$load idle=$idle requests=$reqs); proxy log:" >&2
    tail -20 "$out/proxy.err" >&2
    cat "$work/cgctl.log" >&2
    return 1
  fi
  if [ -n "$keep" ]; then
    mkdir -p "$keep"
    cp "$out/cg.$vpid.1" "$keep/$name-$run.1"
    cp "$out/cg.$vpid.2" "$keep/$name-$run.2"
  fi
  echo "$name run $run: $reqs requests, load $load, idle $idle, $(( (load - idle) / reqs )) instructions/request" >&2
  echo "$name $run $reqs $((load - idle))" >>"$work/results"
  case "$name" in
    in*)
      # Inclusive instructions under the authorization decision.
      local check
      check="$(callgrind_annotate --inclusive=yes --threshold=100 "$out/cg.$vpid.1" 2>/dev/null |
        awk '/remora_proxy::http::authz::decide / { gsub(",", "", $1); if ($1 + 0 > max) max = $1 + 0 } END { print max + 0 }')"
      echo "$name run $run: authorization decision $((check / reqs)) instructions/request (inclusive)" >&2
      echo "$name $run $reqs $check" >>"$work/authz"
      ;;
  esac
}

echo "binary: $bin ($("$bin" --version 2>/dev/null | head -1 || true))" >&2
for run in $(seq "$runs"); do
  for c in "${cases[@]}"; do
    case "$c" in none | in* | trace* | json) host=127.0.0.1:8080 ;; *) host=reviews ;; esac
    measure "$c" "$host" "$run"
  done
done

echo "remora-proxy instructions per proxied request (callgrind, wrk -t1 -c4 keep-alive, ${secs} s load minus ${secs} s idle, runs per case: $runs, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
echo "binary: $bin"
echo
echo "| rules | requests (each run) | instructions / request (each run) | median | spread |"
echo "|---|---|---|---|---|"
for c in "${cases[@]}"; do
  awk -v c="$c" '$1 == c {
      n++; ipr[n] = int($4 / $3); s[n] = ipr[n]
      reqs = reqs (n > 1 ? ", " : "") $3
      each = each (n > 1 ? ", " : "") ipr[n]
    }
    END {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
      med = (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
      printf "| %s | %s | %s | %d | %.1f %% |\n", c, reqs, each, med, 100 * (s[n] - s[1]) / med
    }' "$work/results"
done
if [ -s "$work/authz" ]; then
  echo
  echo "| inbound case | inside the authorization decision, instructions / request (each run) | median | share of the request (median) |"
  echo "|---|---|---|---|"
  for c in "${cases[@]}"; do
    case "$c" in in*) ;; *) continue ;; esac
    awk -v c="$c" 'FNR == NR { if ($1 == c) { m++; t[m] = int($4 / $3) } next }
      $1 == c {
        n++; ipr[n] = int($4 / $3); s[n] = ipr[n]
        each = each (n > 1 ? ", " : "") ipr[n]
      }
      END {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (s[j] < s[i]) { x = s[i]; s[i] = s[j]; s[j] = x }
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (t[j] < t[i]) { x = t[i]; t[i] = t[j]; t[j] = x }
        med = (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
        tot = (m % 2) ? t[(m + 1) / 2] : (t[m / 2] + t[m / 2 + 1]) / 2
        printf "| %s | %s | %d | %.2f %% |\n", c, each, med, tot ? 100 * med / tot : 0
      }' "$work/results" "$work/authz"
  done
fi
# The authorization targets: no selecting policy moves nothing measurable (within 1 %), ten
# rules cost at most 5 % (medians of the whole request against `in`).
med() { awk -v c="$1" '$1 == c { n++; s[n] = int($4 / $3) } END {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (s[j] < s[i]) { t = s[i]; s[i] = s[j]; s[j] = t }
    if (n) print (n % 2) ? s[(n + 1) / 2] : int((s[n / 2] + s[n / 2 + 1]) / 2) }' "$work/results"; }
base="$(med in)"
if [ -n "$base" ]; then
  for c in in+other in+authz; do
    m="$(med "$c")"
    [ -n "$m" ] || continue
    limit=5; [ "$c" = in+other ] && limit=1
    awk -v c="$c" -v m="$m" -v b="$base" -v l="$limit" 'BEGIN {
      d = 100 * (m - b) / b
      printf "target %s: at most +%d %% against no rules: %+.1f %%, %s\n", c, l, d, (d <= l ? "met" : "NOT MET") }'
  done
fi
# The tracing target: 1 % sampling costs at most 3 % against tracing off (`none`).
base="$(med none)"
m="$(med trace1)"
if [ -n "$base" ] && [ -n "$m" ]; then
  awk -v m="$m" -v b="$base" 'BEGIN {
    d = 100 * (m - b) / b
    printf "target trace1: at most +3 %% against tracing off: %+.1f %%, %s\n", d, (d <= 3 ? "met" : "NOT MET") }'
fi
