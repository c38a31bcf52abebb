#!/usr/bin/env bash
# Builds the C capture trigger (agent/capture_c) for the newest local PostgreSQL (the one the local stack
# runs) and installs it into that server's library directory; installs the build packages when missing.
# `pgfanout agent install` then uses it (capture_trigger: auto). Without it capture falls back to PL/pgSQL,
# so a machine where it cannot be built or installed gets a note, not a failure (the tests of the C
# trigger then fail, naming the library).
set -euo pipefail
cd "$(dirname "$0")/.."

initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -t/ -k5 -n | tail -1)
[ -n "$initdb" ] || { echo "no PostgreSQL server found; run scripts/install-deps.sh first" >&2; exit 1; }
version=$(basename "$(dirname "$(dirname "$initdb")")")
pg_config=/usr/lib/postgresql/$version/bin/pg_config

missing=()
[ -f "/usr/include/postgresql/$version/server/postgres.h" ] || missing+=("postgresql-server-dev-$version")
command -v gcc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  . scripts/apt-install.sh
  apt_install "${missing[@]}" || { echo "note: the C capture trigger is not built; capture falls back to PL/pgSQL" >&2; exit 0; }
fi

make -s -C agent/capture_c PG_CONFIG="$pg_config" with_llvm=no
target="$($pg_config --pkglibdir)/pgfanout_capture.so"
if ! cmp -s agent/capture_c/pgfanout_capture.so "$target"; then
  if [ -w "$(dirname "$target")" ]; then
    make -s -C agent/capture_c PG_CONFIG="$pg_config" with_llvm=no install
  else
    echo "note: the C capture trigger is not installed (capture falls back to PL/pgSQL); to install it: sudo make -C agent/capture_c PG_CONFIG=$pg_config with_llvm=no install" >&2
    exit 0
  fi
fi
