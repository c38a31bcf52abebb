#!/bin/bash
# Starts one KRaft broker+controller with SASL/SCRAM-SHA-512 over TLS for docker-compose.yml.
#
# The broker's settings come from KAFKA_* variables, named as the apache/kafka image names them
# (KAFKA_LISTENERS -> listeners; "_" -> ".", "__" -> "_", "___" -> "-"). The SCRAM user is created at
# format time (KIP-900); its password comes from $PGFANOUT_KAFKA_PASSWORD and reaches the storage tool
# through a java @file, never through a command line that every process can read.
set -euo pipefail

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
KAFKA_LIBS=${KAFKA_LIBS:-$KAFKA_HOME/libs}
STATE=${KAFKA_STATE_DIR:-/var/lib/kafka}
SCRAM_USER=${PGFANOUT_KAFKA_USER:-pgfanout}
: "${PGFANOUT_KAFKA_PASSWORD:?set PGFANOUT_KAFKA_PASSWORD}"

umask 077
mkdir -p "$STATE/data"
conf="$STATE/server.properties"

property_name() {  # KAFKA_SASL__SSL_X -> sasl_ssl.x (the image's convention)
    local name=${1#KAFKA_}
    name=${name//___/-}
    name=${name//__/@}
    name=${name//_/.}
    name=${name//@/_}
    printf '%s' "${name,,}"
}

quoted() {  # one argument of a java @file
    local value=${1//\\/\\\\}
    printf '"%s"\n' "${value//\"/\\\"}"
}

{
    printf 'log.dirs=%s\n' "$STATE/data"
    while IFS='=' read -r name value; do
        case $name in
            KAFKA_HOME | KAFKA_LIBS | KAFKA_STATE_DIR | KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_CLUSTER_ID) ;;
            KAFKA_*) printf '%s=%s\n' "$(property_name "$name")" "$value" ;;
        esac
    done < <(env)
    printf 'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' \
        "$SCRAM_USER" "$PGFANOUT_KAFKA_PASSWORD"
} > "$conf"

# what the healthcheck and an operator's kafka tools connect with
{
    printf 'security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n'
    printf 'ssl.truststore.type=PEM\nssl.truststore.location=%s\n' "$KAFKA_SSL_TRUSTSTORE_LOCATION"
    printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' \
        "$SCRAM_USER" "$PGFANOUT_KAFKA_PASSWORD"
} > "$STATE/client.properties"

if [ ! -f "$STATE/data/meta.properties" ]; then
    args="$STATE/format.args"
    {
        quoted kafka.tools.StorageTool
        quoted format
        quoted --cluster-id
        quoted "${KAFKA_CLUSTER_ID:-$(java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid)}"
        quoted --config
        quoted "$conf"
        quoted --add-scram
        quoted "SCRAM-SHA-512=[name=$SCRAM_USER,password=$PGFANOUT_KAFKA_PASSWORD]"
    } > "$args"
    java -cp "$KAFKA_LIBS/*" "@$args"
    rm -f "$args"
fi

logging=()
if [ -f "$KAFKA_HOME/config/log4j2.yaml" ]; then
    logging=("-Dlog4j2.configurationFile=$KAFKA_HOME/config/log4j2.yaml")
fi
# shellcheck disable=SC2086 # the heap options are several words
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} -Djava.awt.headless=true "-Dkafka.logs.dir=$STATE" "${logging[@]}" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$conf"
