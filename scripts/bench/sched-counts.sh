#!/usr/bin/env bash
# sched-counts.sh: what each proxy of one bench setup costs per HTTP
# request in system calls, context switches and CPU, counted by perf
# during a wrk run (an A/B tool: the system call counts per request
# hardly move between runs on a shared box; task-clock per request moves
# with requests/s, so compare builds over several interleaved runs).
#
#   scripts/bench/sched-counts.sh [KEY] [BINARY]
#
# KEY is a bench setup (default meshproxy-mtls; see scripts/bench.sh);
# BINARY the meshproxy build to measure (default bin/meshproxy). It runs
# scripts/bench.sh for that one setup with a 15 s wrk run, attaches
# `perf stat` to the setup's proxy processes for 6 s of it, and prints,
# per proxy, each count divided by the requests wrk completed in those
# 6 s (task-clock in ms per request), and per namespace the TCP segments
# sent and received per request (/proc/net/snmp: every socket in it,
# loopback hops counted once each way, pure ACKs included). Needs root and perf (Debian:
# linux-perf); holds /tmp/bench.lock as other bench runs do.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KEY=${1:-meshproxy-mtls}
BIN=${2:-$ROOT/bin/meshproxy}
command -v perf >/dev/null || {
	echo "sched-counts: needs perf (Debian: apt-get install linux-perf; Ubuntu: linux-tools-\$(uname -r))"
	exit 2
}
[ -x "$BIN" ] || {
	echo "sched-counts: $BIN is missing: run make build first (or name a binary)"
	exit 2
}
case $KEY in
meshproxy*) PROC=meshproxy ;;
haproxy*) PROC=haproxy ;;
go-relay) PROC=gorelay ;;
stunnel) PROC=stunnel4 ;;
*)
	echo "sched-counts: '$KEY' has no proxy to count"
	exit 2
	;;
esac
OUT=$(mktemp -d /tmp/sched-counts.XXXXXX)
EVENTS=context-switches,cpu-migrations,task-clock
for s in read write recvfrom recvmsg sendto futex nanosleep epoll_wait epoll_pwait sched_yield; do
	EVENTS+=,syscalls:sys_enter_$s
done

flock /tmp/bench.lock env MESHPROXY="$BIN" LOAD_SECONDS=15 SECONDS_PER_RUN=1 HOLD_CONNS=100 ROUNDS=1 RATE=200 \
	BENCH_ONLY="$KEY" BENCH_PODS=sc BENCH_OUT="$OUT/bench" bash "$ROOT/scripts/bench.sh" >"$OUT/bench.log" 2>&1 &
bench=$!
# The measured wrk run (the warm-up runs 1 s): 3 s into it, count for 6 s.
for _ in $(seq 1500); do
	pgrep -f "wrk -c [0-9]+ -t 2 -d 15s" >/dev/null && break
	kill -0 $bench 2>/dev/null || break
	sleep 0.2
done
sleep 3
pids=()
declare -A side
for p in $(pgrep -x "$PROC" || true); do
	ns=$(ip netns identify "$p" 2>/dev/null || true)
	case "$ns" in sc-*) pids+=("$p") side[$p]=${ns#sc-} ;; esac
done
[ ${#pids[@]} -gt 0 ] || {
	echo "sched-counts: no $PROC process in the bench namespaces (log: $OUT/bench.log)"
	wait $bench || true
	exit 1
}
# tcpsegs NS: the namespace's TCP InSegs and OutSegs so far.
tcpsegs() {
	ip netns exec "$1" awk '$1 == "Tcp:" && $2 ~ /^[0-9]/ {print $11, $12}' /proc/net/snmp
}
for ns in sc-client sc-server; do tcpsegs $ns >"$OUT/segs0-$ns"; done
for p in "${pids[@]}"; do
	perf stat -x, -e "$EVENTS" -p "$p" -- sleep 6 2>"$OUT/stat-$p.csv" &
done
sleep 6
for ns in sc-client sc-server; do tcpsegs $ns >"$OUT/segs1-$ns"; done
wait $bench || true
# wrk's requests/s over the whole run stands for the 6 s counted.
rps=$(awk -F'|' '/wrk -c [0-9]+ -t 2: requests\/s/ {for (i = 3; i <= NF; i++) if ($i ~ /^ *[0-9.]+ *$/) {print $i + 0; exit}}' "$OUT/bench/bench.md")
[ -n "$rps" ] || {
	echo "sched-counts: wrk gave no requests/s (log: $OUT/bench.log)"
	exit 1
}
echo "$KEY: wrk $rps req/s; per request, per proxy process:"
for p in "${pids[@]}"; do
	awk -F, -v rps="$rps" -v who="${side[$p]} $p" '$1 ~ /^[0-9.]+$/ {
		name = $3; sub("syscalls:sys_enter_", "", name)
		printf "  %-14s %-18s %8.3f\n", who, name, $1 / (rps * 6)
	}' "$OUT/stat-$p.csv"
done
echo "per request, per namespace (TCP segments in, out):"
for ns in sc-client sc-server; do
	read -r in0 out0 <"$OUT/segs0-$ns"
	read -r in1 out1 <"$OUT/segs1-$ns"
	awk -v rps="$rps" -v ns="${ns#sc-}" -v i=$((in1 - in0)) -v o=$((out1 - out0)) \
		'BEGIN { printf "  %-14s %-18s %8.3f\n  %-14s %-18s %8.3f\n", ns, "tcp-in-segs", i / (rps * 6), ns, "tcp-out-segs", o / (rps * 6) }'
done
echo "raw: $OUT"
