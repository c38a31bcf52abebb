#!/usr/bin/env bash
# Installs Debian's Chromium for the test that opens `pgfanout web` in a real headless browser. Optional:
# where it cannot be installed, that test is skipped with the reason, and nothing else needs it.
set -euo pipefail
[ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null && exit 0
. "$(dirname "$0")/apt-install.sh"
apt_install chromium || echo "note: Chromium is not installed; the web page test will be skipped" >&2
