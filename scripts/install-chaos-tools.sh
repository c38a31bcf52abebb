#!/usr/bin/env bash
# Installs nftables, with which the chaos run (bench/chaos) cuts the link to a Kafka cluster on loopback.
# Without it the run injects no network cut, says so, and its test fails for want of that kind of fault.
set -euo pipefail
command -v nft >/dev/null && exit 0
. "$(dirname "$0")/apt-install.sh"
apt_install nftables || echo "note: nftables is not installed; the chaos run cannot cut links" >&2
