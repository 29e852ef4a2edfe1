#!/usr/bin/env bash
# Installs, from Debian's packages, what the tests and the demo use beyond
# Go, when it is missing: make, iproute2 (ip), util-linux (setpriv),
# systemd (systemd-analyze verifies the units; systemd need not run),
# e2fsprogs (mkfs.ext4: the CA's crash test snapshots an ext4 image),
# chromium (the status page is checked in a headless browser). Needs root
# to install; without root it only lists what is missing.
set -euo pipefail
need=()
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing ${need[*]} (run as root to install them; the tests that need them skip)" >&2
	exit 0
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
