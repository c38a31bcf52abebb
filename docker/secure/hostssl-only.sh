#!/bin/sh
# Runs once, when the postgres image makes its data directory (docker-entrypoint-initdb.d): over the
# network, TLS with scram-sha-256 only; a connection without TLS is refused.
set -eu
cat > "$PGDATA/pg_hba.conf" <<'HBA'
local     all all              scram-sha-256
hostssl   all all 0.0.0.0/0    scram-sha-256
hostssl   all all ::/0         scram-sha-256
hostnossl all all 0.0.0.0/0    reject
hostnossl all all ::/0         reject
HBA
