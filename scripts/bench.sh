#!/usr/bin/env bash
# meshproxy benchmarks, side by side with the usual peers, in one run on one
# machine: two network namespaces ("pods": client 198.18.0.1, server
# 198.18.0.2, one veth) and, between the client and the server apps, each of
#
#   direct          no proxy (ports the interception rules ignore)
#   meshproxy       meshproxy pair, plaintext (REDIRECT, or MODE=tproxy)
#   meshproxy-mtls  meshproxy pair with mutual TLS (--identity-dir)
#   haproxy-tcp     HAProxy pair, mode tcp (client-side 127.0.0.1 -> server-side -> app)
#   haproxy-http    HAProxy pair, mode http
#   stunnel         stunnel pair, TLS 1.3 both ways, P-256 certs from `meshproxy ca issue`
#   go-relay        a pair of scripts/bench/gorelay: a goroutine per direction
#                   moving bytes, nothing else: the simplest proxy on Go's
#                   runtime, a baseline for what the runtime costs here
#                   apart from anything meshproxy does
#
# Every pair has the same two-hop shape: a proxy in the client pod, one in the
# server pod, the app on 127.0.0.1 behind it. HAProxy runs nbthread 2, as
# meshproxy runs GOMAXPROCS=2 on this 2-core box (PROCS); stunnel has a thread per
# connection. Figures: iperf3 throughput (1 and 8 streams), HTTP/1.1
# keep-alive with wrk (fixed concurrency) and with scripts/bench/loadgen (a
# fixed rate, open loop: see "The fixed-rate latency" below), new
# connections per second (scripts/bench/connrate),
# RSS idle and with HOLD_CONNS idle connections (scripts/bench/holdconns),
# CPU seconds per GB moved. Results: docs/bench.md, docs/bench.json,
# docs/bench-latency.svg (written by scripts/bench/report), the table also
# printed.
#
# wrk's requests/s and the fixed-rate latency (RATE req/s, CONCURRENCY
# connections, 1 s warm-up then LOAD_SECONDS measured) are noisy on a
# small shared box: one stall of a few ms anywhere (another process, a GC,
# the kernel) moves a 5 s run's p99, and one setup's wrk requests/s moved
# by up to 1.8x between back-to-back runs. So both run last, in ROUNDS
# rounds per setup, interleaved (round r goes through the setups starting
# at the r-th, each pair started afresh; in each, the fixed rate, then
# wrk with a 1 s warm-up), and the report takes the median over the rounds
# of each figure (requests/s, each percentile, CPU per request): a setup's
# figure is then what most of its rounds saw, and slow drift on the
# machine hits every setup alike (raw results: wrk-N.json, cpuwrk-N.json,
# rate-N.json; the report's notes give every round's requests/s). The
# other figures are measured once per setup, before the rounds. loadgen
# keeps its own part small (it writes each request from its timer
# thread, 1 ns timer slack, GOGC 2000; httpserver runs GOGC 2000 too).
# Each loadgen run also records its own scheduling lateness, the time
# requests waited inside loadgen, the CPU pressure (/proc/pressure/cpu)
# and its own GC cycles over the measured period, and (through meshproxy)
# the client-side proxy's meshproxy_pool_* counters, so new upstream
# connections (TLS handshakes) inside it show (raw results: rate-N.json;
# the report's notes give the lateness and pressure per setup: a noise
# gauge).
#
# meshproxy runs with its defaults: the report says whether its HTTP went
# through the HTTP-aware path (the client proxy counted requests in
# meshproxy_requests_total over a setup's first round) or was forwarded
# as opaque TCP.
#
# Needs root; installs iperf3, stunnel4, haproxy and wrk from Debian when
# absent. Settings (environment):
#   SECONDS_PER_RUN  iperf3 run length (default 5)
#   LOAD_SECONDS     wrk, loadgen and connrate run length (default 5)
#   RATE             loadgen's fixed rate, requests/s (default 1000)
#   ROUNDS           rounds per setup, each a fixed-rate and a wrk run
#                    (default 3; medians reported)
#   LATENCY_ONLY=1   only the fixed-rate runs of the rounds (no memory,
#                    iperf3, wrk, connrate figures: those read n/a): the
#                    quickest A/B of the fixed-rate latency
#   MESHPROXY        the meshproxy binary to measure (default bin/meshproxy;
#                    another build, for an A/B of two runs)
#   BENCH_GCTRACE=1  GODEBUG=gctrace=1 for meshproxy, httpserver and
#                    loadgen (their logs: keep them with BENCH_KEEP=1)
#   CONCURRENCY      wrk connections (default 32; 2 threads)
#   HOLD_CONNS       idle connections for the memory figure (default 9000:
#                    a process may open 20,000 files here and a proxy holds
#                    two per connection)
#   MODE             meshproxy interception: redirect (default) or tproxy
#   PROCS            threads of each proxy: meshproxy GOMAXPROCS and HAProxy
#                    nbthread (default 2, the cores of this box)
#   BENCH_OUT        where the results go (default docs/ of the checkout)
#   BENCH_GO=1       also run go test -bench Forward ./proxy/ first
#   BENCH_KEEP=1     keep the raw results and the logs (printed: where)
#   BENCH_ONLY       run only these setups (space-separated keys from the list
#                    above, e.g. "direct meshproxy haproxy-tcp"; default all);
#                    a subset writes to BENCH_OUT or a new directory in /tmp,
#                    never over docs/
#   BENCH_PODS       prefix of the two namespaces' names (default mp-bench),
#                    so that two runs on one machine do not collide (their
#                    figures disturb each other: compare only within a run)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
T=${SECONDS_PER_RUN:-5}
D=${LOAD_SECONDS:-5}
RATE=${RATE:-1000}
ROUNDS=${ROUNDS:-3}
GCTRACE=${BENCH_GCTRACE:-}
[ "$GCTRACE" = 1 ] || GCTRACE=
CONC=${CONCURRENCY:-32}
HOLD=${HOLD_CONNS:-9000}
HOLD_SECONDS=5
MODE=${MODE:-redirect}
PROCS=${PROCS:-2}
for v in SECONDS_PER_RUN=$T LOAD_SECONDS=$D RATE=$RATE ROUNDS=$ROUNDS CONCURRENCY=$CONC HOLD_CONNS=$HOLD PROCS=$PROCS; do
	[[ ${v#*=} =~ ^[1-9][0-9]*$ ]] || {
		echo "bench: ${v%%=*} is '${v#*=}'; it must be a whole number above 0"
		exit 2
	}
done
ALL="direct meshproxy meshproxy-mtls haproxy-tcp haproxy-http stunnel go-relay"
for k in ${BENCH_ONLY:-}; do
	[[ " $ALL " == *" $k "* ]] || {
		echo "bench: BENCH_ONLY names '$k'; the setups are: $ALL"
		exit 2
	}
done
# A subset never overwrites the published full table in docs/.
if [ -n "${BENCH_ONLY:-}" ] && [ -z "${BENCH_OUT:-}" ]; then
	BENCH_OUT=$(mktemp -d /tmp/meshproxy-bench-subset.XXXXXX)
	echo "bench: a subset (BENCH_ONLY): results go to $BENCH_OUT"
fi
OUT=${BENCH_OUT:-$ROOT/docs}
PROXY_UID=2102
PODS=${BENCH_PODS:-mp-bench}
CLIENT=$PODS-client
SERVER=$PODS-server
ONLY=" ${BENCH_ONLY:-$ALL} "
C_IP=198.18.0.1
S_IP=198.18.0.2
# Ports: 5201/8080 are captured (through meshproxy); 5202/8082 are ignored by
# the rules (direct, and the peers' backends on 127.0.0.1); 15443-15446 are
# the peers' own pod-to-pod ports (15447-15448: the Go relay's), ignored too.
IGNORE=5202,8082,15443,15444,15445,15446,15447,15448

case $MODE in redirect | tproxy) ;; *)
	echo "bench: MODE must be redirect or tproxy, not '$MODE'"
	exit 2
	;;
esac

if [ "${BENCH_GO:-}" = 1 ]; then
	echo "== go test -bench Forward ./proxy/ (loopback, one proxied hop vs direct)"
	(cd "$ROOT" && go test -run '^$' -bench 'Forward' -benchtime 3s ./proxy/)
fi

[ "$(id -u)" = 0 ] || {
	echo "bench: needs root (network namespaces, nftables): run it as root, e.g. sudo make bench"
	exit 1
}
[ -x "${MESHPROXY:-$BIN/meshproxy}" ] || {
	echo "bench: ${MESHPROXY:-$BIN/meshproxy} is missing: run make build first (or use make bench)"
	exit 1
}
pkgs=()
command -v iperf3 >/dev/null || pkgs+=(iperf3)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || pkgs+=(stunnel4)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || pkgs+=(haproxy)
command -v wrk >/dev/null || pkgs+=(wrk)
command -v curl >/dev/null || pkgs+=(curl)
command -v ip >/dev/null || pkgs+=(iproute2)
command -v setpriv >/dev/null || pkgs+=(util-linux)
if [ ${#pkgs[@]} -gt 0 ]; then
	echo "bench: installing ${pkgs[*]} from Debian"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

WORK=$(mktemp -d /tmp/meshproxy-bench.XXXXXX)
chmod 755 "$WORK"
RES=$WORK/results
mkdir -p "$RES"
install -m 0755 "${MESHPROXY:-$BIN/meshproxy}" "$WORK/meshproxy"
echo "bench: building the helper programs"
for p in httpserver loadgen connrate holdconns report gorelay; do
	(cd "$ROOT" && go build -o "$WORK/$p" "./scripts/bench/$p")
done

apps=()    # app servers, for the whole run
proxies=() # the pair being measured
cleanup() {
	set +e
	for p in "${proxies[@]}" "${apps[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	# Anything else still running in the pods was started by this script.
	for ns in $CLIENT $SERVER; do
		for p in $(ip netns pids $ns 2>/dev/null); do kill "$p" 2>/dev/null; done
		ip netns del $ns 2>/dev/null
	done
	if [ "${BENCH_KEEP:-}" = 1 ]; then echo "bench: raw results and logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# inns NS CMD...: run a command inside a pod, in the foreground. (Background
# commands use ip netns exec directly so that $! is the process itself, not
# a subshell: the figures read its /proc entries and kill it by that PID.)
inns() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# --- the pods, the rules and the apps (once) ---
for ns in $CLIENT $SERVER; do
	ip netns del $ns 2>/dev/null || true
	ip netns add $ns
	ip -n $ns link set lo up
	# Many short connections (connrate) and 9,000 held ones: a wide port
	# range, and TIME_WAIT ports reused for new outgoing connections; but
	# never the ports the proxies and apps listen on (a pair restarted
	# for a fixed-rate round after connrate found 127.0.0.1:4140 taken
	# by a client socket's source port).
	inns $ns sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 \
		net.ipv4.ip_local_reserved_ports="4140,4143,4190,4191,5201,5202,8080,8082,15201,15443-15448,18080,25201,28080,35201,38080"
done
ip -n $CLIENT link add eth0 type veth peer name eth0 netns $SERVER
ip -n $CLIENT addr add $C_IP/24 dev eth0
ip -n $SERVER addr add $S_IP/24 dev eth0
ip -n $CLIENT link set eth0 up
ip -n $SERVER link set eth0 up
for ns in $CLIENT $SERVER; do
	"$WORK/meshproxy" init --netns /run/netns/$ns --mode "$MODE" --proxy-uid $PROXY_UID --ipv6=false \
		--outbound-ports-to-ignore $IGNORE --inbound-ports-to-ignore 4190,4191,$IGNORE >/dev/null
done
for port in 5201 5202; do
	ip netns exec $SERVER iperf3 -s -p $port >/dev/null 2>&1 &
	apps+=($!)
done
ip netns exec $SERVER env ${GCTRACE:+GODEBUG=gctrace=1} "$WORK/httpserver" -listen 0.0.0.0:8080,0.0.0.0:8082 >"$WORK/httpserver.log" 2>&1 &
apps+=($!)

# A CA for meshproxy's mTLS, readable by the proxy UID, and leaf
# certificates from it for stunnel, so both do the same cryptography.
"$WORK/meshproxy" ca init --dir "$WORK/ca" >/dev/null
for side in client server; do
	"$WORK/meshproxy" ca issue --dir "$WORK/ca" --identity spiffe://cluster.local/ns/bench/sa/stunnel-$side --out "$WORK/st-$side" >/dev/null
done
chown -R $PROXY_UID:$PROXY_UID "$WORK/ca"

# wait_port NS HOST PORT: until something accepts there (at most 10 s).
wait_port() {
	for _ in $(seq 100); do
		inns "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench: nothing listens on $2:$3 in $1 after 10 s" >&2
	return 1
}
wait_port $SERVER 127.0.0.1 8080
wait_port $SERVER 127.0.0.1 5201
wait_port $SERVER 127.0.0.1 5202

stop_proxies() {
	for p in "${proxies[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${proxies[@]}"; do wait "$p" 2>/dev/null || true; done
	proxies=()
}

# start_meshproxy [mtls]: the meshproxy pair, as the exempt UID.
start_meshproxy() {
	local caps=() mesh=()
	[ "$MODE" = tproxy ] && caps=(--inh-caps=+net_admin --ambient-caps=+net_admin)
	for ns in $CLIENT $SERVER; do
		# One log per pod for the whole run (fixed-rate rounds restart
		# the pair), each start marked.
		echo "== meshproxy ${1:-plaintext} started $(date -u +%T.%N)" >>"$WORK/meshproxy-$ns.log"
		[ -n "${1:-}" ] && mesh=(--identity-dir "$WORK/ca" --identity "spiffe://cluster.local/ns/bench/sa/$ns")
		ip netns exec $ns setpriv --reuid=$PROXY_UID --regid=$PROXY_UID --clear-groups "${caps[@]}" \
			env GOMAXPROCS=$PROCS ${GCTRACE:+GODEBUG=gctrace=1} "$WORK/meshproxy" run --mode "$MODE" --log-level warn --ipv6=false --shutdown-grace 1s "${mesh[@]}" \
			>>"$WORK/meshproxy-$ns.log" 2>&1 &
		proxies+=($!)
	done
	for ns in $CLIENT $SERVER; do
		for _ in $(seq 100); do
			inns $ns curl -fs -o /dev/null http://127.0.0.1:4191/ready && continue 2
			sleep 0.1
		done
		echo "bench: meshproxy in $ns not ready after 10 s:" >&2
		tail -n 20 "$WORK/meshproxy-$ns.log" >&2
		return 1
	done
}

# start_haproxy tcp|http: the HAProxy pair. nbthread $PROCS to match
# meshproxy's GOMAXPROCS; maxconn sized for HOLD_CONNS.
start_haproxy() {
	local mode=$1
	for side in client server; do
		local ns=$CLIENT conf=$WORK/haproxy-$side.cfg
		[ $side = server ] && ns=$SERVER
		cat >"$conf" <<CONF
global
	nbthread $PROCS
	maxconn $((HOLD + 200))
defaults
	mode $mode
	maxconn $((HOLD + 200))
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-keep-alive 60s
CONF
		if [ $side = client ]; then
			[ "$mode" = tcp ] && printf 'listen iperf\n\tbind 127.0.0.1:25201\n\tserver s %s:15444\n' $S_IP >>"$conf"
			printf 'listen web\n\tbind 127.0.0.1:28080\n\tserver s %s:15445\n' $S_IP >>"$conf"
		else
			[ "$mode" = tcp ] && printf 'listen iperf\n\tbind %s:15444\n\tserver s 127.0.0.1:5202\n' $S_IP >>"$conf"
			printf 'listen web\n\tbind %s:15445\n\tserver s 127.0.0.1:8082\n' $S_IP >>"$conf"
		fi
		ip netns exec $ns "$HAPROXY" -db -f "$conf" >"$WORK/haproxy-$side.log" 2>&1 &
		proxies+=($!)
	done
	wait_port $SERVER $S_IP 15445
	wait_port $CLIENT 127.0.0.1 28080
}

# start_stunnel: the stunnel pair, mutual TLS 1.3 with the CA above, one
# service for iperf3 and one for HTTP.
start_stunnel() {
	for side in client server; do
		local ns=$CLIENT mode="client = yes" conf=$WORK/stunnel-$side.conf
		[ $side = server ] && ns=$SERVER mode="client = no"
		cat >"$conf" <<CONF
foreground = yes
pid =
debug = 3
$mode
cert = $WORK/st-$side.crt
key = $WORK/st-$side.key
CAfile = $WORK/ca/anchor.pem
verifyChain = yes
sslVersionMin = TLSv1.3
CONF
		if [ $side = client ]; then
			printf '[iperf]\naccept = 127.0.0.1:15201\nconnect = %s:15443\n' $S_IP >>"$conf"
			printf '[web]\naccept = 127.0.0.1:18080\nconnect = %s:15446\n' $S_IP >>"$conf"
		else
			printf '[iperf]\naccept = %s:15443\nconnect = 127.0.0.1:5202\n' $S_IP >>"$conf"
			printf '[web]\naccept = %s:15446\nconnect = 127.0.0.1:8082\n' $S_IP >>"$conf"
		fi
		ip netns exec $ns "$STUNNEL" "$conf" >"$WORK/stunnel-$side.log" 2>&1 &
		proxies+=($!)
	done
	wait_port $SERVER $S_IP 15446
	wait_port $CLIENT 127.0.0.1 18080
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# cpu_ticks PID...: user+system clock ticks of the processes (all threads).
cpu_ticks() {
	local sum=0 p
	for p in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
	echo $sum
}
# ctx_switches PID...: the context switches, voluntary and not, of every
# thread of the processes.
ctx_switches() {
	local p
	for p in "$@"; do cat /proc/$p/task/*/status 2>/dev/null; done |
		awk '/^(non)?voluntary_ctxt_switches:/ {s += $2} END {print s + 0}'
}
# jlist A B...: a JSON array of numbers.
jlist() {
	local IFS=,
	echo "[$*]"
}

# measure KEY IPERF_ADDR HTTP_ADDR: the figures measured once per setup
# (memory, iperf3, new connections/s; wrk and the fixed rate are in the
# rounds), from the client pod, with the current pair in proxies (empty:
# direct). An empty IPERF_ADDR skips iperf3 (HTTP-only setups).
measure() {
	local key=$1 ip=$2 web=$3 dir=$RES/$1
	mkdir -p "$dir"
	echo "bench: $key"
	if [ ${#proxies[@]} -gt 0 ]; then
		for p in "${proxies[@]}"; do
			[ -d /proc/$p ] || {
				echo "bench: a $key process ($p) exited; its log:" >&2
				tail -n 20 "$WORK"/*.log >&2
				return 1
			}
			cat /proc/$p/comm >>"$dir/processes"
		done
		sleep 1
		local idle=() loaded=()
		for p in "${proxies[@]}"; do idle+=($(rss_kb $p)); done
		ip netns exec $CLIENT timeout $((HOLD_SECONDS + 90)) "$WORK/holdconns" -addr "$web" -n "$HOLD" -hold ${HOLD_SECONDS}s \
			>"$dir/hold.out" 2>"$dir/hold.err" &
		local holder=$!
		for _ in $(seq 600); do
			grep -q '^ready' "$dir/hold.out" 2>/dev/null && break
			[ -d /proc/$holder ] || break
			sleep 0.1
		done
		sleep 1
		for p in "${proxies[@]}"; do loaded+=($(rss_kb $p)); done
		wait $holder || true
		local held
		held=$(awk '/^ready/ {print $2}' "$dir/hold.out")
		printf '{"idle_kb":%s,"loaded_kb":%s,"asked":%s,"held":%s}\n' \
			"$(jlist "${idle[@]}")" "$(jlist "${loaded[@]}")" "$HOLD" "${held:-0}" >"$dir/mem.json"
		sleep 1
	fi
	if [ -n "$ip" ]; then
		local streams before after
		for streams in 1 8; do
			[ ${#proxies[@]} -gt 0 ] && before=$(cpu_ticks "${proxies[@]}")
			inns $CLIENT timeout $((T + 30)) iperf3 -c "${ip%:*}" -p "${ip##*:}" -P $streams -t "$T" -J \
				>"$dir/iperf$streams.json" || echo "bench: iperf3 $key -P $streams failed" >&2
			if [ ${#proxies[@]} -gt 0 ]; then
				after=$(cpu_ticks "${proxies[@]}")
				printf '{"ticks":%s,"clk_tck":%s}\n' $((after - before)) "$(getconf CLK_TCK)" >"$dir/cpu$streams.json"
			fi
		done
	fi
	inns $CLIENT timeout $((D + 30)) "$WORK/connrate" -addr "$web" -duration "${D}s" -workers 8 \
		>"$dir/connrate.json" || echo "bench: connrate $key failed" >&2
}

# start_gorelay: the Go relay pair (scripts/bench/gorelay), the simplest
# Go proxy: a goroutine per direction moving bytes, nothing else.
# GOMAXPROCS $PROCS as meshproxy.
start_gorelay() {
	ip netns exec $CLIENT env GOMAXPROCS=$PROCS "$WORK/gorelay" \
		-pairs 127.0.0.1:35201=$S_IP:15447,127.0.0.1:38080=$S_IP:15448 >"$WORK/gorelay-client.log" 2>&1 &
	proxies+=($!)
	ip netns exec $SERVER env GOMAXPROCS=$PROCS "$WORK/gorelay" \
		-pairs $S_IP:15447=127.0.0.1:5202,$S_IP:15448=127.0.0.1:8082 >"$WORK/gorelay-server.log" 2>&1 &
	proxies+=($!)
	wait_port $SERVER $S_IP 15448
	wait_port $CLIENT 127.0.0.1 38080
}

# wanted KEY: whether BENCH_ONLY includes this setup.
wanted() { [[ $ONLY == *" $1 "* ]]; }

# start_setup KEY: start KEY's pair (nothing for direct).
start_setup() {
	case $1 in
	direct) ;;
	meshproxy) start_meshproxy ;;
	meshproxy-mtls) start_meshproxy mtls ;;
	haproxy-tcp) start_haproxy tcp ;;
	haproxy-http) start_haproxy http ;;
	stunnel) start_stunnel ;;
	go-relay) start_gorelay ;;
	esac
}

# addrs KEY: "IPERF_ADDR HTTP_ADDR" of a setup (IPERF_ADDR "-": none).
addrs() {
	case $1 in
	direct) echo "$S_IP:5202 $S_IP:8082" ;;
	meshproxy | meshproxy-mtls) echo "$S_IP:5201 $S_IP:8080" ;;
	haproxy-tcp) echo "127.0.0.1:25201 127.0.0.1:28080" ;;
	haproxy-http) echo "- 127.0.0.1:28080" ;;
	stunnel) echo "127.0.0.1:15201 127.0.0.1:18080" ;;
	go-relay) echo "127.0.0.1:35201 127.0.0.1:38080" ;;
	esac
}

# wrk_round KEY ROUND: one wrk run against KEY's pair (started), after a
# 1 s warm-up, with the proxies' CPU ticks and context switches over the
# measured run: wrk-ROUND.json (and wrk's own output, wrk-ROUND.out) and
# cpuwrk-ROUND.json.
wrk_round() {
	local key=$1 round=$2 dir=$RES/$1 web before after cbefore cafter
	web=$(addrs "$key")
	web=${web#* }
	inns $CLIENT timeout 20 wrk -c "$CONC" -t 2 -d 1s "http://$web/" >/dev/null ||
		echo "bench: wrk warm-up $key (round $round) failed" >&2
	if [ ${#proxies[@]} -gt 0 ]; then
		before=$(cpu_ticks "${proxies[@]}")
		cbefore=$(ctx_switches "${proxies[@]}")
	fi
	inns $CLIENT timeout $((D + 30)) wrk -c "$CONC" -t 2 -d "${D}s" --latency -s "$ROOT/scripts/bench/wrk-report.lua" "http://$web/" \
		>"$dir/wrk-$round.out" || echo "bench: wrk $key (round $round) failed" >&2
	if [ ${#proxies[@]} -gt 0 ]; then
		after=$(cpu_ticks "${proxies[@]}")
		cafter=$(ctx_switches "${proxies[@]}")
		# stunnel's threads (one per connection) end with wrk's
		# connections, and their switches with them: no count there.
		local ctx=""
		if [ "$key" != stunnel ]; then ctx=",\"ctxsw\":$((cafter - cbefore))"; fi
		printf '{"ticks":%s,"clk_tck":%s%s}\n' $((after - before)) "$(getconf CLK_TCK)" "$ctx" >"$dir/cpuwrk-$round.json"
	fi
	grep '^{' "$dir/wrk-$round.out" | tail -1 >"$dir/wrk-$round.json" || true
	# No summary line (wrk failed): no round, rather than an unreadable file.
	[ -s "$dir/wrk-$round.json" ] || rm -f "$dir/wrk-$round.json" "$dir/cpuwrk-$round.json"
}

# http_path KEY: through meshproxy, once per setup (the first round that
# ran), which path carried the HTTP: the HTTP-aware one counts the
# requests in meshproxy_requests_total of the client-side proxy (started
# afresh for the round, so the count is that round's).
http_path() {
	local dir=$RES/$1 reqs
	[[ $1 == meshproxy* ]] && [ ! -e "$dir/http.json" ] || return 0
	reqs=$(inns $CLIENT curl -fs http://127.0.0.1:4191/metrics | awk '/^meshproxy_requests_total/ {s += $NF} END {print s + 0}') || true
	printf '{"requests_total":%s}\n' "${reqs:-0}" >"$dir/http.json"
}

# fixed_rate KEY ROUND: one loadgen run against KEY's pair (started).
# Through meshproxy it also reads the client-side proxy's pool counters
# just before and after the measured period (new upstream connections,
# so TLS handshakes, inside it).
fixed_rate() {
	local key=$1 round=$2 web scrape=()
	web=$(addrs "$key")
	web=${web#* }
	[[ $key == meshproxy* ]] && scrape=(-scrape http://127.0.0.1:4191/metrics)
	inns $CLIENT env ${GCTRACE:+GODEBUG=gctrace=1} timeout $((D + 30)) "$WORK/loadgen" -addr "$web" -rate "$RATE" -duration "${D}s" \
		-conns "$CONC" "${scrape[@]}" >"$RES/$key/rate-$round.json" 2>"$WORK/loadgen-$key-$round.log" ||
		echo "bench: loadgen $key (round $round) failed" >&2
}

started=$(date +%s)
keys=()
for k in $ALL; do wanted $k && keys+=($k); done
if [ "${LATENCY_ONLY:-}" != 1 ]; then
	for k in "${keys[@]}"; do
		start_setup $k
		read -r ip web <<<"$(addrs $k)"
		[ "$ip" = - ] && ip=
		measure $k "$ip" "$web"
		stop_proxies
	done
fi
# The rounds: ROUNDS of each setup, interleaved (round r starts at the
# r-th setup), each with its pair freshly started: the fixed rate first
# (on the fresh pair, as before wrk joined the rounds, so its figures
# compare with older runs'), then wrk (unless LATENCY_ONLY); the report
# takes the median of each figure over the rounds.
for r in $(seq "$ROUNDS"); do
	n=${#keys[@]}
	for i in $(seq 0 $((n - 1))); do
		k=${keys[$(((i + r - 1) % n))]}
		mkdir -p "$RES/$k"
		echo "bench: round $r: $k"
		if ! start_setup $k; then
			echo "bench: $k did not start for round $r: that round is missing" >&2
			stop_proxies
			continue
		fi
		fixed_rate $k $r
		[ "${LATENCY_ONLY:-}" = 1 ] || wrk_round $k $r
		http_path $k
		stop_proxies
	done
done

cat >"$RES/settings.json" <<JSON
{"iperf_seconds":$T,"load_seconds":$D,"rate":$RATE,"rate_rounds":$ROUNDS,"concurrency":$CONC,"hold_conns":$HOLD,
 "hold_seconds":$HOLD_SECONDS,"mode":"$MODE","procs":$PROCS,"connrate_workers":8,
 "meshproxy_version":"$("$WORK/meshproxy" version 2>/dev/null | head -1)",
 "haproxy_version":"$("$HAPROXY" -v | awk 'NR==1 {print $3}')",
 "stunnel_version":"$("$STUNNEL" -version 2>&1 | awk '/^stunnel/ {print $2; exit}')",
 "iperf3_version":"$(iperf3 --version | awk 'NR==1 {print $2}')",
 "wrk_version":"$(wrk -v 2>&1 | awk 'NR==1 {print $2}')",
 "elapsed_s":$(($(date +%s) - started))}
JSON
mkdir -p "$OUT"
"$WORK/report" -results "$RES" -md "$OUT/bench.md" -json "$OUT/bench.json" -svg "$OUT/bench-latency.svg"
