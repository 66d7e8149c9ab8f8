#!/usr/bin/env bash
# Benchmark of remora-init (run as root via `scripts/bench init`): wall time of installing the
# default sidecar capture for IPv4 + IPv6 in a fresh network namespace, median of N runs, next
# to the same rules installed one `iptables` command at a time, in the same run.
#
#   REMORA_BENCH_RUNS   number of runs per method (default 11)
#   REMORA_BENCH_MODE   iptables backend: nft (default) or legacy
#
# Methods (each run in its own fresh namespace, timed around the command only):
#   remora-init          the real binary end to end with --iptables-mode forced (reading the
#                        current state, both restores, reading back and checking the result)
#   ..., auto backend    the same with backend detection (4 more save calls), as in a pod
#   restore only         the two `iptables-restore --noflush` calls with remora-init's text
#   one command per rule the same rules as separate `iptables`/`ip6tables` invocations
# Touches nothing outside the namespaces it creates (named rmi-bench-<pid>-<n>).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "bench init: must run as root (creates network namespaces)" >&2
  exit 1
fi
runs="${REMORA_BENCH_RUNS:-11}"
mode="${REMORA_BENCH_MODE:-nft}"
case "$mode" in nft|legacy) ;; *) echo "bench init: REMORA_BENCH_MODE must be nft or legacy" >&2; exit 2 ;; esac

echo "building remora-init (release)..." >&2
cargo build -q -p remora-init --release --locked
bin="$PWD/target/release/remora-init"
args=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020 --ipv6 on --iptables-mode "$mode")

work="$(mktemp -d)"
created=()
cleanup() {
  for ns in "${created[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
n=0
fresh_ns() { # sets $NS (no subshell, so the counter and the cleanup list persist)
  n=$((n + 1))
  NS="rmi-bench-$$-$n"
  ip netns add "$NS"
  created+=("$NS")
  ip -n "$NS" link set lo up
}
now_ns() { date +%s%N; }

# The restore text per family, from a dry run.
fresh_ns; ns="$NS"
ip netns exec "$ns" "$bin" "${args[@]}" --dry-run > "$work/dry.txt"
awk '/^--- IPv4 restore text/{f=1;next} /^--- end ---/{f=0} f' "$work/dry.txt" > "$work/v4.txt"
awk '/^--- IPv6 restore text/{f=1;next} /^--- end ---/{f=0} f' "$work/dry.txt" > "$work/v6.txt"
rules4=$(grep -c '^-[AI] ' "$work/v4.txt")
rules6=$(grep -c '^-[AI] ' "$work/v6.txt")

# The same rules as individual commands (chains created with -N, rules with -A/-I).
to_commands() { # $1 = iptables|ip6tables, $2 = restore text
  while IFS= read -r line; do
    case "$line" in
      :*) printf '%s-%s -t nat -N %s\n' "$1" "$mode" "$(echo "${line#:}" | cut -d' ' -f1)" ;;
      -A*|-I*) printf '%s-%s -t nat %s\n' "$1" "$mode" "$line" ;;
    esac
  done < "$2"
}
{ to_commands iptables "$work/v4.txt"; to_commands ip6tables "$work/v6.txt"; } > "$work/commands.sh"
commands=$(wc -l < "$work/commands.sh")

declare -A times
measure() { # $1 = method name; rest = command run inside the namespace $ns
  local name="$1"; shift
  local t0 t1
  t0=$(now_ns)
  "$@" > /dev/null
  t1=$(now_ns)
  times[$name]+="$(( (t1 - t0) / 1000 )) "
}
dump() { # $1 = namespace: both families' nat tables without comments/counters
  for f in iptables ip6tables; do
    ip netns exec "$1" "$f-$mode-save" -t nat | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'
  done
}
for i in $(seq "$runs"); do
  fresh_ns; ns1="$NS"; fresh_ns; ns2="$NS"; fresh_ns; ns3="$NS"; fresh_ns; ns4="$NS"
  # Rotate the order so no method always runs first.
  case $((i % 4)) in
    0) order="1 2 3 4" ;; 1) order="2 3 4 1" ;; 2) order="3 4 1 2" ;; *) order="4 1 2 3" ;;
  esac
  for k in $order; do
    case $k in
      1) ns="$ns1"; measure "remora-init" ip netns exec "$ns" "$bin" "${args[@]}" ;;
      2) ns="$ns2"; measure "restore only" ip netns exec "$ns" sh -c \
           "iptables-$mode-restore --noflush < '$work/v4.txt' && ip6tables-$mode-restore --noflush < '$work/v6.txt'" ;;
      3) ns="$ns3"; measure "one command per rule" ip netns exec "$ns" bash -e "$work/commands.sh" ;;
      4) ns="$ns4"; measure "remora-init, auto backend" ip netns exec "$ns" "$bin" "${args[@]}" --iptables-mode auto ;;
    esac
  done
  # Sanity: the three methods installed exactly the same tables.
  if [ "$(dump "$ns1")" != "$(dump "$ns2")" ] || [ "$(dump "$ns1")" != "$(dump "$ns3")" ] \
     || { [ "$mode" = nft ] && [ "$(dump "$ns1")" != "$(dump "$ns4")" ]; }; then
    echo "bench init: the methods installed different rules:" >&2
    diff <(dump "$ns1") <(dump "$ns3") >&2 || true
    exit 1
  fi
  for c in "$ns1" "$ns2" "$ns3" "$ns4"; do ip netns del "$c"; done
done

stats() { # microsecond samples -> "median min max" in ms
  tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
    printf "%.1f %.1f %.1f", m/1000, a[1]/1000, a[NR]/1000 }'
}
echo
echo "remora-init apply, default sidecar flags, IPv4 + IPv6 (nat: $rules4 + $rules6 rules), backend $mode, $runs runs each, $(uname -r)"
echo
echo "| method | median ms | min ms | max ms | processes |"
echo "|---|---:|---:|---:|---:|"
for m in "remora-init" "remora-init, auto backend" "restore only" "one command per rule"; do
  read -r med min max <<< "$(echo "${times[$m]}" | stats)"
  case "$m" in
    remora-init) procs="7 (itself; 2 saves before, 2 restores, 2 saves after)" ;;
    "remora-init, auto backend") procs="9 (itself; 4 saves to detect the backend, reused as the current state; 2 restores, 2 saves after)" ;;
    "restore only") procs=2 ;;
    *) procs="$commands" ;;
  esac
  echo "| $m | $med | $min | $max | $procs |"
done
