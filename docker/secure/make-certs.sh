#!/bin/sh
# Makes, once, the certificates of docker-compose.yml's servers in $CERTS_DIR (the certs volume): a CA made
# for this deployment, and one server certificate whose names are every server's service name. Clients verify
# against ca.crt (Kafka's hostname check, libpq's sslmode=verify-full). Bring your own by filling the volume
# with the same files instead.
set -eu
CERTS_DIR=${CERTS_DIR:-/certs}
HOSTS=${CERT_HOSTS:-kafka kafka-region primary replica1 replica2 branch localhost}
POSTGRES_UID=${POSTGRES_UID:-999}   # the postgres image's server user: it must own its key
KAFKA_UID=${KAFKA_UID:-1000}        # the apache/kafka image's appuser

if [ -f "$CERTS_DIR/ca.crt" ] && [ -f "$CERTS_DIR/kafka/keystore.pem" ] && [ -f "$CERTS_DIR/postgres/server.key" ]; then
    echo "certificates already in $CERTS_DIR"
    exit 0
fi
umask 077
mkdir -p "$CERTS_DIR/kafka" "$CERTS_DIR/postgres"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

names=""
for host in $HOSTS; do names="${names:+$names,}DNS:$host"; done
names="$names,IP:127.0.0.1"

openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 825 \
    -subj "/CN=pgfanout deployment CA" -keyout "$work/ca.key" -out "$CERTS_DIR/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=pgfanout servers" \
    -keyout "$work/server.key" -out "$work/server.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$names" > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$CERTS_DIR/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -CAserial "$work/ca.srl" -days 825 -extfile "$work/ext" -out "$CERTS_DIR/server.crt"
openssl pkcs8 -topk8 -nocrypt -in "$work/server.key" -out "$work/server.pk8"

cp "$work/server.pk8" "$CERTS_DIR/postgres/server.key"
cat "$work/server.pk8" "$CERTS_DIR/server.crt" > "$CERTS_DIR/kafka/keystore.pem"
chown -R "$POSTGRES_UID:$POSTGRES_UID" "$CERTS_DIR/postgres"
chown -R "$KAFKA_UID:$KAFKA_UID" "$CERTS_DIR/kafka"
chmod 644 "$CERTS_DIR/ca.crt" "$CERTS_DIR/server.crt"
chmod 755 "$CERTS_DIR" "$CERTS_DIR/kafka" "$CERTS_DIR/postgres"
echo "certificates for $HOSTS made in $CERTS_DIR"
