"""The schema registry: every writer schema, stored durably in a compacted Kafka topic.

Each record's key is a schema's fingerprint (hex) and its value the expanded schema as
JSON; compaction keeps one record per fingerprint forever, so a consumer can decode any
message ever written, whatever version of pgfanout wrote it. Writers register the
schemas they know before they publish; readers load the topic when they start and again
when a message names a fingerprint they do not know.
"""

from __future__ import annotations

import logging
import time

from pgfanout.core.codec import HEADER_SIZE, MAGIC, Codec
from pgfanout.core.config import KafkaCluster
from pgfanout.core.errors import KafkaUnavailable, Where
from pgfanout.runtime import kafka as kafkautil

log = logging.getLogger(__name__)
REGISTRY_TOPIC = "pgfanout.schemas"
MAX_SCHEMA_BYTES = 1024 * 1024


def register(cluster: KafkaCluster, codec: Codec) -> None:
    """Store every schema the codec knows (the current ones, their history, typed row schemas); idempotent."""
    kafkautil.ensure_topic(cluster, REGISTRY_TOPIC, MAX_SCHEMA_BYTES, compact=True)
    producer = kafkautil.producer(cluster, MAX_SCHEMA_BYTES)
    try:
        for writer in codec.all_schemas:
            producer.send(REGISTRY_TOPIC, key=writer.fingerprint.hex().encode(), value=writer.text.encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def load(cluster: KafkaCluster, codec: Codec) -> int:
    """Teach the codec every schema in the registry topic; returns how many records were read."""
    consumer = kafkautil.consumer(cluster)
    try:
        tp = kafkautil.partition(REGISTRY_TOPIC)
        if REGISTRY_TOPIC not in consumer.topics():
            return 0
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = kafkautil.end_offset(consumer, REGISTRY_TOPIC)
        read, deadline = 0, time.monotonic() + 30
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(kafkautil.where(cluster), f"could not read {REGISTRY_TOPIC} within 30 s")
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                read += 1
                if not codec.learn(record.value.decode()):
                    log.warning(
                        "schema %s in %s describes no record this version knows; ignored",
                        record.key.decode() if record.key else "?",
                        REGISTRY_TOPIC,
                    )
        return read
    finally:
        consumer.close()


class RegistryDecoder:
    """Decodes messages, loading the registry when one names a schema not known yet (a newer writer)."""

    def __init__(self, codec: Codec, cluster: KafkaCluster):
        self.codec, self.cluster = codec, cluster
        self.loaded_at = float("-inf")

    def decode(self, data: bytes, where: Where) -> tuple[str, dict]:
        if (
            data is not None
            and len(data) >= HEADER_SIZE
            and data.startswith(MAGIC)
            and not self.codec.knows(data)
            and time.monotonic() - self.loaded_at > 1.0
        ):
            self.loaded_at = time.monotonic()
            log.info("message at %s names schema %s: loading %s", where, data[len(MAGIC) : HEADER_SIZE].hex(), REGISTRY_TOPIC)
            load(self.cluster, self.codec)
        return self.codec.decode(data, where)
