"""Log shipping files: a route's messages in an Avro object container file, for sites without Kafka.

The container holds the route's Kafka messages exactly as the topic holds them (each a
pgfanout frame naming its writer schema), so import applies them with the subscriber's
own code and position rules. The header's metadata carries every envelope schema the
exporting codec knows, so an importer older or newer than the exporter can still read
them. The last record is a trailer: the message count, the positions covered and a
SHA-256 over every message. A file is verified whole (trailer present, count and digest
right, fastavro's sync markers intact) before anything of it is applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro

from pgfanout.core.codec import Codec
from pgfanout.core.errors import ShipFileError
from pgfanout.core.messages import Message

FORMAT = "pgfanout-ship-1"
SCHEMA = fastavro.parse_schema(
    [
        {
            "type": "record",
            "name": "ShippedMessage",
            "namespace": "pgfanout.ship",
            "fields": [
                {"name": "offset", "type": "long", "doc": "the message's offset in the route topic"},
                {"name": "value", "type": "bytes", "doc": "the message as the topic holds it"},
            ],
        },
        {
            "type": "record",
            "name": "Trailer",
            "namespace": "pgfanout.ship",
            "fields": [
                {"name": "messages", "type": "long"},
                {"name": "first_position", "type": "long"},
                {"name": "last_position", "type": "long"},
                {"name": "sha256", "type": {"type": "fixed", "name": "Sha256", "size": 32}},
            ],
        },
    ]
)


@dataclass(frozen=True)
class Shipment:
    path: Path
    source: str
    route: str
    topic: str
    messages: int
    first_position: int
    last_position: int


def write(
    out: BinaryIO,
    codec: Codec,
    source: str,
    route: str,
    topic: str,
    first_position: int,
    messages: Iterable[tuple[int, bytes, int]],
) -> tuple[int, int]:
    """Write (offset, value, last position) messages; returns (count, last position)."""
    digest = hashlib.sha256()
    state = {"count": 0, "last": first_position - 1}

    def records() -> Iterator[tuple[str, Message]]:
        for offset, value, last_position in messages:
            digest.update(len(value).to_bytes(8, "big"))
            digest.update(value)
            state["count"] += 1
            state["last"] = max(state["last"], last_position)
            yield "pgfanout.ship.ShippedMessage", {"offset": offset, "value": value}
        yield (
            "pgfanout.ship.Trailer",
            {
                "messages": state["count"],
                "first_position": first_position,
                "last_position": state["last"],
                "sha256": digest.digest(),
            },
        )

    metadata = {
        "pgfanout.format": FORMAT,
        "pgfanout.source": source,
        "pgfanout.route": route,
        "pgfanout.topic": topic,
        "pgfanout.schemas": json.dumps([w.text for w in codec.all_schemas]),
    }
    fastavro.writer(out, SCHEMA, records(), codec="deflate", metadata=metadata, sync_interval=1 << 20)
    return state["count"], state["last"]


def _reader(handle: BinaryIO, path: Path) -> Any:
    try:
        reader = fastavro.reader(handle, SCHEMA, return_record_name=True)
    except Exception as exc:  # fastavro raises assorted errors on a damaged header
        raise ShipFileError(f"{path} is not a pgfanout shipping file (bad Avro header: {exc}); nothing was applied") from exc
    if reader.metadata.get("pgfanout.format") != FORMAT:
        raise ShipFileError(f"{path} is an Avro file but not a pgfanout shipping file ({FORMAT}); nothing was applied")
    return reader


def verify(path: Path, codec: Codec) -> Shipment:
    """Read the whole file once; refuse it if anything is missing or damaged. Learns the schemas it carries."""
    digest = hashlib.sha256()
    count, trailer = 0, None
    try:
        with path.open("rb") as handle:
            reader = _reader(handle, path)
            for name, record in reader:
                if trailer is not None:
                    raise ShipFileError(f"{path} has records after its trailer; it is damaged, nothing was applied")
                if name.endswith("Trailer"):
                    trailer = record
                    continue
                digest.update(len(record["value"]).to_bytes(8, "big"))
                digest.update(record["value"])
                count += 1
            metadata = reader.metadata
    except ShipFileError:
        raise
    except OSError as exc:
        raise ShipFileError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # a damaged block: fastavro reports bad sync markers, zlib errors, short reads
        raise ShipFileError(
            f"{path} is damaged after {count} messages ({type(exc).__name__}: {exc}); nothing was applied; export it again"
        ) from exc
    if trailer is None:
        raise ShipFileError(
            f"{path} is truncated: it ends after {count} messages without its trailer; "
            "nothing was applied; copy or export it again"
        )
    if trailer["messages"] != count or trailer["sha256"] != digest.digest():
        raise ShipFileError(
            f"{path} is damaged: its trailer promises {trailer['messages']} messages with another "
            f"checksum than the {count} it holds; nothing was applied"
        )
    try:  # the header is not under the trailer's checksum: a damaged one shows here
        for schema_text in json.loads(metadata.get("pgfanout.schemas", "[]")):
            codec.learn(schema_text)
        return Shipment(
            path,
            metadata["pgfanout.source"],
            metadata["pgfanout.route"],
            metadata["pgfanout.topic"],
            count,
            trailer["first_position"],
            trailer["last_position"],
        )
    except Exception as exc:  # bad JSON, a schema fastavro cannot parse, a missing name
        raise ShipFileError(
            f"{path} has a damaged header ({type(exc).__name__}: {exc}); nothing was applied; export it again"
        ) from exc


def messages(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, value) of a verified file's messages, in order."""
    with path.open("rb") as handle:
        for name, record in _reader(handle, path):
            if name.endswith("ShippedMessage"):
                yield record["offset"], record["value"]
