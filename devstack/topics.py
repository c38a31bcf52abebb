"""Reading a whole source or route topic, for the tests and the chaos run's checker."""

from __future__ import annotations

import time

from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.runtime import kafka as kafkautil


def read_topic(config: Config, stream: str) -> list[tuple[int, str, dict]]:
    """Every message of a source's or route's topic: (offset, kind, record)."""
    topic = config.stream(stream)[1]
    return [(offset, *default_codec().decode(value, f"{topic}@{offset}")) for offset, value in read_raw(config, stream)]


def read_raw(config: Config, stream: str) -> list[tuple[int, bytes]]:
    """Every message of a source's or route's topic as the broker holds it: (offset, bytes)."""
    cluster_name, topic = config.stream(stream)
    consumer = kafkautil.consumer(config.kafka[cluster_name])
    try:
        tp = kafkautil.partition(topic)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = kafkautil.end_offset(consumer, topic)
        messages: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 300
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} to its end offset {end} within 300 s")
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                messages.append((record.offset, record.value))
        return messages
    finally:
        consumer.close()


def transactions(messages: list[tuple[int, str, dict]]) -> list[dict]:
    """Every transaction part of a stream, in order, with its message's tick."""
    return [dict(part, tick_id=m["tick_id"]) for _, kind, m in messages if kind == "Batch" for part in m["transactions"]]


def transaction_positions(messages: list[tuple[int, str, dict]]) -> list[int]:
    """Positions of whole transactions (their last chunks), in stream order."""
    return [part["position"] for part in transactions(messages) if part["last_chunk"]]
