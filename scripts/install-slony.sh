#!/usr/bin/env bash
# Installs Slony-I 2.2 from Debian's packages for the peer benchmark (bench/peers), for the PostgreSQL
# major version the local stack runs. Never fails: without it the benchmark runs without Slony-I and says why.
set -uo pipefail
cd "$(dirname "$0")/.."

initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -t/ -k5 -n | tail -1)
[ -n "$initdb" ] || exit 0
version=$(basename "$(dirname "$(dirname "$initdb")")")
if command -v slonik >/dev/null && ls "/usr/lib/postgresql/$version/lib/"slony1_funcs*.so >/dev/null 2>&1; then
  exit 0
fi
. scripts/apt-install.sh
apt_install slony1-2-bin "postgresql-$version-slony1-2" \
  || echo "note: Slony-I is not installed; the peer benchmark runs without it" >&2
exit 0
