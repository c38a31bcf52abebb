"""Which database is a source's primary now: the one its stream's last message names (docs/switchover.md)."""

from __future__ import annotations

import kafka.errors

from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config, Database
from pgfanout.core.errors import FatalError, KafkaUnavailable
from pgfanout.core.generations import Generation, Lineage, current, lineage_of
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime.registry import RegistryDecoder


def stream_lineage(config: Config, source: str) -> Lineage:
    """The generations of a source's stream, as its last message states them (none before the first)."""
    cluster_name, topic = config.stream(source)
    cluster = config.kafka[cluster_name]
    try:
        last = kafkautil.last_message(cluster, topic, RegistryDecoder(default_codec(), cluster).decode)
    except kafka.errors.KafkaError as exc:
        raise KafkaUnavailable(kafkautil.where(cluster), f"reading the last message of {topic}: {exc}") from exc
    return lineage_of(last[1]) if last else ()


def current_primary(config: Config, source: str) -> tuple[Generation, Database]:
    """The current generation of ``source`` and the database that is its primary."""
    primary = current(stream_lineage(config, source))
    database = config.primary_database(source, primary.primary)
    if database is None:
        raise FatalError(
            f"the primary of source {source} (generation {primary.generation}) is subscriber {primary.primary}, "
            "which this configuration does not name; use the configuration that does"
        )
    return primary, database
