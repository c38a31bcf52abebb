"""`pgfanout export`: a route's messages from a position on, into a log shipping file.

The file ends on a whole transaction (chunks of the last one are awaited past the
topic's end as it was when the export began), and is written under a temporary name
and renamed when complete, so a file with its final name is always whole.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pgfanout.core import shipfile
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.core.errors import ExportError, StreamGap, StreamPlace
from pgfanout.core.positions import WHOLE, last_position, mark_of
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.registry import RegistryDecoder

log = logging.getLogger(__name__)
FINISH_SECONDS = 60  # how long to wait for the rest of a transaction cut by the topic's end


def export(config: Config, stream: str, from_position: int, path: Path) -> str:
    cluster_name, topic = config.stream(stream)
    cluster = config.kafka[cluster_name]
    codec = default_codec()
    registry.load(cluster, codec)
    decoder = RegistryDecoder(codec, cluster)
    consumer = kafkautil.consumer(cluster)
    tp = kafkautil.partition(topic)

    def position_of(value: bytes, offset: int) -> int | None:
        return last_position(*decoder.decode(value, StreamPlace(topic, 0, offset)))

    try:
        start = kafkautil.offset_after_position(consumer, tp, from_position - 1, position_of)
        end = kafkautil.end_offset(consumer, topic)
        if start >= end:
            raise ExportError(f"{topic} holds nothing from position {from_position} on; nothing exported")

        def records():  # (offset, value, last position), ending on a whole transaction
            consumer.seek(tp, start)
            first = True
            whole = True
            deadline = None
            while True:
                polled = consumer.poll(timeout_ms=500, max_records=200).get(tp, [])
                for record in polled:
                    where = StreamPlace(topic, 0, record.offset)
                    kind, message = decoder.decode(record.value, where)
                    if first and kind == "Batch" and message["transactions"]:
                        found = message["transactions"][0]["position"]
                        if found > from_position:
                            raise StreamGap(
                                f"{topic} no longer holds position {from_position} (retention?): its "
                                f"first message from there, at {where}, starts at {found}",
                                at=where,
                                position=from_position,
                            )
                    first = False
                    mark = mark_of(kind, message)
                    whole = mark.chunk == WHOLE
                    yield record.offset, record.value, mark.position
                    if record.offset >= end - 1 and whole:
                        return
                if consumer.position(tp) >= end and not whole:
                    deadline = deadline or time.monotonic() + FINISH_SECONDS
                    if time.monotonic() > deadline:
                        raise ExportError(
                            f"{topic}: the transaction cut by the topic's end did not complete within "
                            f"{FINISH_SECONDS}s; nothing exported"
                        )

        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("wb") as out:
                count, last = shipfile.write(out, codec, config.origin_source(stream), stream, topic, from_position, records())
                out.flush()
                os.fsync(out.fileno())
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        consumer.close()
    return f"exported {count} messages of {topic} (positions {from_position}..{last}) to {path}"
