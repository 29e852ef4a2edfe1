#!/usr/bin/env bash
# meshproxy demo: two network namespaces ("pods") joined by a veth, each with
# meshproxy's interception rules and a proxy; a plain HTTP app in the server
# pod, and a plain client in the client pod that knows nothing of the mesh.
# Needs root. Cleans up after itself, on Ctrl-C too.
#
#   make demo                 # REDIRECT mode
#   MODE=tproxy make demo     # TPROXY mode
#   DEMO_KEEP=1 make demo     # leave the mesh up (status pages) until Ctrl-C
set -euo pipefail

MODE=${MODE:-redirect}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
PROXY_UID=2102
CLIENT=mp-demo-client
SERVER=mp-demo-server
WORK=$(mktemp -d /tmp/meshproxy-demo.XXXXXX)
chmod 755 "$WORK"

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces and nftables rules)"
command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
command -v setpriv >/dev/null || die "setpriv (util-linux) is missing"
[ -x "$BIN/meshproxy" ] && [ -x "$BIN/demoapp" ] || die "run 'make build' first (or use 'make demo')"
install -m 0755 "$BIN/meshproxy" "$BIN/demoapp" "$WORK/"

pids=()
cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for ns in $CLIENT $SERVER; do
		[ -e /run/netns/$ns ] && "$WORK/meshproxy" init --netns /run/netns/$ns --mode "$MODE" --proxy-uid $PROXY_UID --remove >/dev/null 2>&1
		ip netns del $ns 2>/dev/null
		rm -rf /etc/netns/$ns
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold "1. Two pods: $CLIENT (198.18.0.1, 2001:2::1) and $SERVER (198.18.0.2, 2001:2::2)"
for ns in $CLIENT $SERVER; do
	ip netns del $ns 2>/dev/null || true
	ip netns add $ns
	ip -n $ns link set lo up
done
ip -n $CLIENT link add eth0 type veth peer name eth0 netns $SERVER
ip -n $CLIENT addr add 198.18.0.1/24 dev eth0
ip -n $CLIENT addr add 2001:2::1/64 dev eth0 nodad
ip -n $SERVER addr add 198.18.0.2/24 dev eth0
ip -n $SERVER addr add 2001:2::2/64 dev eth0 nodad
ip -n $CLIENT link set eth0 up
ip -n $SERVER link set eth0 up
# Static neighbours: a fresh veth often loses the first IPv6 neighbour
# solicitation, which would cost the first connection a 1 s SYN retransmit.
cmac=$(ip netns exec $CLIENT cat /sys/class/net/eth0/address)
smac=$(ip netns exec $SERVER cat /sys/class/net/eth0/address)
ip -n $CLIENT neigh replace 2001:2::2 lladdr "$smac" dev eth0 nud permanent
ip -n $SERVER neigh replace 2001:2::1 lladdr "$cmac" dev eth0 nud permanent
# The client pod's DNS, as in a Kubernetes pod of namespace "demo" (ip
# netns exec mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf, for
# the app and its proxy alike). The DNS server itself runs in the server pod.
mkdir -p /etc/netns/$CLIENT
printf 'nameserver 198.18.0.2\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n' >/etc/netns/$CLIENT/resolv.conf
ip netns exec $SERVER "$WORK/demoapp" dns -listen 198.18.0.2:53 \
	-record my-server-service.demo.svc.cluster.local=198.18.0.2 >"$WORK/dns.log" 2>&1 &
pids+=($!)
echo "created; veth between them; DNS in the server pod answers my-server-service.demo.svc.cluster.local"

bold "2. meshproxy init --mode $MODE (native nftables over netlink; first the dry run)"
# Port 9100 bypasses the mesh on purpose, to show the difference on the wire;
# 8443 is the identity service's.
INIT=(--mode "$MODE" --proxy-uid $PROXY_UID --outbound-ports-to-ignore 4190,4191,9100 --inbound-ports-to-ignore 4190,4191,8443,9100)
"$WORK/meshproxy" init --dry-run "${INIT[@]}" | sed 's/^/    /'
for ns in $CLIENT $SERVER; do
	"$WORK/meshproxy" init --netns /run/netns/$ns "${INIT[@]}"
done

bold "3. A certificate authority in the box, and its identity service (in the server pod, :8443)"
"$WORK/meshproxy" ca init --dir "$WORK/ca"
cp "$WORK/ca/anchor.pem" "$WORK/anchor.pem"
ip netns exec $SERVER "$WORK/meshproxy" identity serve --dir "$WORK/ca" --listen 198.18.0.2:8443 >"$WORK/identity.log" 2>&1 &
pids+=($!)
for ns in $CLIENT $SERVER; do
	role=${ns#mp-demo-}
	# A join token bound to exactly this pod's identity; the proxy makes its
	# key in memory and sends only a CSR with it.
	"$WORK/meshproxy" ca token --dir "$WORK/ca" --identity "spiffe://cluster.local/ns/demo/sa/$role" >"$WORK/$role.token"
	chown $PROXY_UID "$WORK/$role.token"
	chmod 600 "$WORK/$role.token"
	echo "join token for spiffe://cluster.local/ns/demo/sa/$role written"
done

bold "4. A proxy in each pod, as UID $PROXY_UID, each getting its certificate from the identity service"
caps=()
[ "$MODE" = tproxy ] && caps=(--inh-caps=+net_admin --ambient-caps=+net_admin)
for ns in $CLIENT $SERVER; do
	role=${ns#mp-demo-}
	ip netns exec $ns setpriv --reuid=$PROXY_UID --regid=$PROXY_UID --clear-groups "${caps[@]}" \
		"$WORK/meshproxy" run --mode "$MODE" --log-level debug \
		--identity "spiffe://cluster.local/ns/demo/sa/$role" --identity-addr 198.18.0.2:8443 \
		--identity-token-file "$WORK/$role.token" --trust-anchors "$WORK/anchor.pem" >"$WORK/$ns.log" 2>&1 &
	pids+=($!)
done
for ns in $CLIENT $SERVER; do
	for _ in $(seq 100); do
		ip netns exec $ns "$WORK/demoapp" get http://127.0.0.1:4191/ready >/dev/null 2>&1 && break
		sleep 0.1
	done
	echo "$ns: proxy ready ($(grep -o 'startup=[^ ]*' "$WORK/$ns.log" | head -1)); its certificate (from /debug/state):"
	ip netns exec $ns "$WORK/demoapp" get http://127.0.0.1:4191/debug/state |
		sed -n '/"certificate"/,/}/p' | grep -E '"(identity|serial|not_after)"' | sed 's/^ */      /'
done

bold "5. A plain HTTP app in the server pod on :8080 (and on :9100, which bypasses the mesh)"
for port in 8080 9100; do
	ip netns exec $SERVER "$WORK/demoapp" serve -listen "[::]:$port" -name server >>"$WORK/app.log" 2>&1 &
	pids+=($!)
done
sleep 0.3

bold "6. The client calls http://my-server-service:8080 and http://[2001:2::2]:8080 (it knows nothing of the mesh)"
ip netns exec $CLIENT "$WORK/demoapp" get http://my-server-service:8080/hello | sed 's/^/    /'
ip netns exec $CLIENT "$WORK/demoapp" get 'http://[2001:2::2]:8080/hello-v6' | sed 's/^/    /'
echo "(the app saw its callers on loopback: the server pod's proxy delivered them, with the caller's identity)"
echo "the client proxy resolved the name itself and balanced over its endpoints (from /debug/state):"
ip netns exec $CLIENT "$WORK/demoapp" get http://127.0.0.1:4191/debug/state |
	sed -n '/"services"/,$p' | grep -E '"(service|addr|state|ewma_ms)"' | sed 's/^ */      /'

bold "7. On the wire: a secret sent through the mesh, then the same through the bypassed port 9100"
for port in 8080 9100; do
	secret="top-secret-$port-$RANDOM"
	ip netns exec $SERVER "$WORK/demoapp" sniff -i eth0 -marker "$secret" -for 1.5s >"$WORK/sniff.out" &
	sniffer=$!
	sleep 0.3
	ip netns exec $CLIENT "$WORK/demoapp" get -d "$secret" "http://198.18.0.2:$port/post" >/dev/null
	wait $sniffer
	printf '    port %s: ' $port
	tail -1 "$WORK/sniff.out"
done

bold "8. What the proxies saw (original destinations recovered from the kernel)"
sleep 0.2
grep -h "connection closed" "$WORK/$CLIENT.log" "$WORK/$SERVER.log" | sed 's/^/    /' || true

bold "9. Metrics: connections by TLS state and peer identity, certificate expiry"
for ns in $CLIENT $SERVER; do
	echo "  $ns:"
	ip netns exec $ns "$WORK/demoapp" get http://127.0.0.1:4191/metrics |
		grep -E '^meshproxy_(tcp_open_total|requests_total|identity_cert_expiration_timestamp_seconds|inbound_authz_allow_total|balancer_endpoints)' |
		grep -v ' 0$' | sed 's/^/    /'
done

bold "10. The status page"
echo "  each proxy serves it on its admin port, e.g. from the client pod:"
echo "    ip netns exec $CLIENT curl -s http://127.0.0.1:4191/"
ip netns exec $CLIENT "$WORK/demoapp" get http://127.0.0.1:4191/ | grep -o '<title>[^<]*</title>' | sed 's/^/    /'
if [ -n "${DEMO_KEEP:-}" ]; then
	echo "  DEMO_KEEP is set: the mesh stays up until Ctrl-C"
	while true; do sleep 3600; done
fi

bold "11. Clean up"
echo "removing rules and namespaces"
