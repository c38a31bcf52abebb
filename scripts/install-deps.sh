#!/usr/bin/env bash
# Installs what pgfanout needs from Debian's packages when it is missing:
# a PostgreSQL server (15 or newer), Java 17 and Maven (to fetch and run Kafka).
set -euo pipefail

missing=()
have_postgres() {
  for initdb in /usr/lib/postgresql/*/bin/initdb; do
    [ -x "$initdb" ] || continue
    v=$(basename "$(dirname "$(dirname "$initdb")")")
    [ "$v" -ge 15 ] 2>/dev/null && return 0
  done
  return 1
}
have_postgres || missing+=(postgresql postgresql-contrib)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "pgfanout needs Python 3.11 or newer" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
. "$(dirname "$0")/apt-install.sh"
apt_install "${missing[@]}"
