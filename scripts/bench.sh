#!/usr/bin/env bash
# meshproxy benchmarks: throughput through the proxies against a direct
# connection, measured in the same run on the same machine.
#
#   1. go test -bench Forward ./proxy/  (one proxied hop on loopback vs direct)
#   2. iperf3 between two namespaces: direct, and through a client proxy and a
#      server proxy (REDIRECT and TPROXY), single stream and 8 streams.
#   3. The same with mutual TLS between the proxies, against a pair of
#      stunnel processes doing the same job (TLS 1.3, ECDSA P-256 both ways).
#
# Needs root for parts 2 and 3 (installs iperf3 and stunnel4 from Debian when
# absent).
# SECONDS_PER_RUN (default 5) sets each iperf3 run's length.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
T=${SECONDS_PER_RUN:-5}
PROXY_UID=2102
CLIENT=mp-bench-client
SERVER=mp-bench-server

echo "== go test -bench Forward ./proxy/ (loopback, one proxied hop vs direct)"
(cd "$ROOT" && go test -run '^$' -bench 'Forward' -benchtime 3s ./proxy/)

[ "$(id -u)" = 0 ] || { echo "bench: skipping the namespace benchmarks: needs root"; exit 0; }
pkgs=()
command -v iperf3 >/dev/null || pkgs+=(iperf3)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || pkgs+=(stunnel4)
if [ ${#pkgs[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null; fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
[ -x "$BIN/meshproxy" ] || { echo "bench: run make build first (or use make bench)"; exit 1; }
WORK=$(mktemp -d /tmp/meshproxy-bench.XXXXXX)
chmod 755 "$WORK"
install -m 0755 "$BIN/meshproxy" "$WORK/"

pids=()
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for ns in $CLIENT $SERVER; do ip netns del $ns 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setup() {
	local mode=$1 mtls=${2:-}
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null || true
	pids=()
	for ns in $CLIENT $SERVER; do
		ip netns del $ns 2>/dev/null || true
		ip netns add $ns
		ip -n $ns link set lo up
	done
	ip -n $CLIENT link add eth0 type veth peer name eth0 netns $SERVER
	ip -n $CLIENT addr add 198.18.0.1/24 dev eth0
	ip -n $SERVER addr add 198.18.0.2/24 dev eth0
	ip -n $CLIENT link set eth0 up
	ip -n $SERVER link set eth0 up
	local caps=()
	[ "$mode" = tproxy ] && caps=(--inh-caps=+net_admin --ambient-caps=+net_admin)
	for ns in $CLIENT $SERVER; do
		# Port 5202 bypasses the proxies: the direct baseline on the same link.
		"$WORK/meshproxy" init --netns /run/netns/$ns --mode "$mode" --proxy-uid $PROXY_UID \
			--outbound-ports-to-ignore 5202,15443 --inbound-ports-to-ignore 4190,4191,5202,15443 >/dev/null
		local mesh=()
		[ -n "$mtls" ] && mesh=(--identity-dir "$WORK/ca" --identity "spiffe://cluster.local/ns/bench/sa/$ns")
		ip netns exec $ns setpriv --reuid=$PROXY_UID --regid=$PROXY_UID --clear-groups "${caps[@]}" \
			"$WORK/meshproxy" run --mode "$mode" --log-level warn --ipv6=false "${mesh[@]}" >"$WORK/$ns.log" 2>&1 &
		pids+=($!)
	done
	for port in 5201 5202 5203; do
		ip netns exec $SERVER iperf3 -s -p $port >/dev/null 2>&1 &
		pids+=($!)
	done
	sleep 1
}

# gbits PORT STREAMS [HOST]: receiver throughput in Gbit/s.
gbits() {
	ip netns exec $CLIENT iperf3 -c "${3:-198.18.0.2}" -p "$1" -P "$2" -t "$T" -f g |
		awk '/receiver/ {v=$(NF-2)} END {print v}'
}

# A CA for the mTLS runs, readable by the proxy UID, and leaf certificates
# from it for stunnel, so both do the same cryptography.
"$WORK/meshproxy" ca init --dir "$WORK/ca" >/dev/null
"$WORK/meshproxy" ca issue --dir "$WORK/ca" --identity spiffe://cluster.local/ns/bench/sa/stunnel-client --out "$WORK/st-client" >/dev/null
"$WORK/meshproxy" ca issue --dir "$WORK/ca" --identity spiffe://cluster.local/ns/bench/sa/stunnel-server --out "$WORK/st-server" >/dev/null
chown -R $PROXY_UID:$PROXY_UID "$WORK/ca"

# stunnel_pair: a client stunnel in the client pod (127.0.0.1:15201 -> TLS to
# 198.18.0.2:15443) and a server stunnel in the server pod (15443 -> iperf3 on
# 127.0.0.1:5203), mutual TLS 1.3 with the CA above.
stunnel_pair() {
	for side in client server; do
		local ns=$CLIENT accept=127.0.0.1:15201 connect=198.18.0.2:15443 mode="client = yes"
		if [ $side = server ]; then ns=$SERVER accept=198.18.0.2:15443 connect=127.0.0.1:5203 mode="client = no"; fi
		cat >"$WORK/stunnel-$side.conf" <<CONF
foreground = yes
pid =
debug = 3
[bench]
$mode
accept = $accept
connect = $connect
cert = $WORK/st-$side.crt
key = $WORK/st-$side.key
CAfile = $WORK/ca/anchor.pem
verifyChain = yes
sslVersionMin = TLSv1.3
CONF
		ip netns exec $ns "$STUNNEL" "$WORK/stunnel-$side.conf" >"$WORK/stunnel-$side.log" 2>&1 &
		pids+=($!)
	done
	sleep 1
}

printf '\n== iperf3 between namespaces, %ss per run\n' "$T"
printf '| mode | streams | direct Gbit/s | through 2 proxies Gbit/s | ratio |\n|---|---|---|---|---|\n'
for mode in redirect tproxy; do
	setup "$mode"
	for streams in 1 8; do
		d=$(gbits 5202 "$streams")
		p=$(gbits 5201 "$streams")
		r=$(awk -v p="$p" -v d="$d" 'BEGIN { if (d > 0) printf "%.2f", p / d; else print "n/a" }')
		printf '| %s | %s | %s | %s | %s |\n' "$mode" "$streams" "$d" "$p" "$r"
	done
done

printf '\n== mutual TLS between two namespaces, %ss per run (redirect mode)\n' "$T"
printf '| streams | direct Gbit/s | meshproxy mTLS pair Gbit/s | stunnel pair Gbit/s | meshproxy / stunnel |\n|---|---|---|---|---|\n'
setup redirect mtls
stunnel_pair
for streams in 1 8; do
	d=$(gbits 5202 "$streams")
	m=$(gbits 5203 "$streams")
	s=$(gbits 15201 "$streams" 127.0.0.1)
	r=$(awk -v m="$m" -v s="$s" 'BEGIN { if (s > 0) printf "%.2f", m / s; else print "n/a" }')
	printf '| %s | %s | %s | %s | %s |\n' "$streams" "$d" "$m" "$s" "$r"
done
