"""Where a subscriber's messages come from: its route's Kafka topic, read from just after its position."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer
from pgfanout.core.config import KafkaCluster
from pgfanout.runtime import kafka as kafkautil
from subscriber.applier import Stored
from subscriber.state import UNKNOWN_OFFSET

log = logging.getLogger(__name__)
POLL_MESSAGES = 50
# How long a poll waits for records: it returns as soon as one arrives, so waiting long costs no latency,
# and an idle subscriber wakes once a second instead of ten times.
POLL_WAIT_MS = 1000


class RouteReader:
    """A consumer of one route topic, placed after the subscriber's stored position."""

    def __init__(self, consumer: KafkaConsumer, topic: str, offset: int):
        self.consumer, self.topic = consumer, topic
        self.offset = offset  # of the last message the stored position covers (-1: none)
        self.partition = kafkautil.partition(topic)

    @classmethod
    def open(
        cls,
        cluster: KafkaCluster,
        topic: str,
        stored: Stored | None,
        applied: int,
        position_of: Callable[[bytes, int], int | None],
    ) -> RouteReader:
        """Seek past the stored offset; where it is unknown (just materialized or imported, or stored from
        another topic), past the last message holding a position at or below ``applied``."""
        consumer = kafkautil.consumer(cluster)
        try:
            tp = kafkautil.partition(topic)
            consumer.assign([tp])
            if stored is None:
                consumer.seek_to_beginning(tp)
                return cls(consumer, topic, -1)
            offset = stored.offset
            if stored.topic != topic:
                log.warning("stored position came from topic %s, now reading %s", stored.topic, topic)
                offset = UNKNOWN_OFFSET
            if offset == UNKNOWN_OFFSET:
                offset = kafkautil.offset_after_position(consumer, tp, applied, position_of) - 1
                log.info("position %d continues at %s[0]@%d", applied, topic, offset + 1)
            consumer.seek(tp, offset + 1)
            return cls(consumer, topic, offset)
        except BaseException:
            consumer.close()
            raise

    def poll(self) -> list[Any]:
        """The records that arrived (waits up to POLL_WAIT_MS for some)."""
        return self.consumer.poll(timeout_ms=POLL_WAIT_MS, max_records=POLL_MESSAGES).get(self.partition, [])

    def unread_after(self, offset: int) -> int:
        """How many messages the topic holds after ``offset``, as the last fetch saw it."""
        highwater = self.consumer.highwater(self.partition)
        return max(0, highwater - offset - 1) if highwater is not None else 0

    def close(self) -> None:
        self.consumer.close()
