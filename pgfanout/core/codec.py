"""The wire codec: Avro bodies behind a small header that names the writer schema.

Frame: ``b"PF"`` + format version ``1`` + 8-byte schema fingerprint + Avro binary body.
The fingerprint is the first 8 bytes of SHA-256 over the fully expanded schema JSON
(sorted keys). Avro's own CRC-64 fingerprint of the parsing canonical form is not used
because that form drops logical types and defaults, so two different schemas could
share one fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import fastavro

from pgfanout.core.errors import PoisonMessage, Where
from pgfanout.core.messages import AvroSchema, Batch, Change, Message

MAGIC = b"PF\x01"
HEADER_SIZE = len(MAGIC) + 8
ENVELOPES = ("table", "change", "transaction", "batch", "heartbeat", "rowbatch")  # in dependency order


def schema_dir() -> Path:
    override = os.environ.get("PGFANOUT_SCHEMAS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "schemas"


def _expand(node: Any, named: dict[str, AvroSchema]) -> Any:
    """Replace references to schemas defined in other files by their definitions."""
    if isinstance(node, str):
        return named.get(node, node)
    if isinstance(node, list):
        return [_expand(item, named) for item in node]
    if isinstance(node, dict):
        return {key: _expand(value, named) for key, value in node.items()}
    return node


def fingerprint(schema: AvroSchema) -> bytes:
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()[:8]


@dataclass(frozen=True)
class WriterSchema:
    name: str  # the record's short name: "Transaction", "Heartbeat"
    fingerprint: bytes
    parsed: Any
    reader: Any = None  # for an older schema: the current one, which fastavro resolves it to
    text: str = ""  # the expanded schema as JSON, as it is stored in the registry topic


class Codec:
    def __init__(self, directory: Path | None = None):
        directory = directory or schema_dir()
        named: dict[str, AvroSchema] = {}
        self._by_name: dict[str, WriterSchema] = {}
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        self.row_schemas: dict[bytes, AvroSchema] = {}
        for stem in ENVELOPES:
            raw = json.loads((directory / f"{stem}.avsc").read_text())
            full = _expand(raw, named)
            named[f"{full['namespace']}.{full['name']}"] = full
            writer = WriterSchema(
                full["name"], fingerprint(full), fastavro.parse_schema(full), text=json.dumps(full, sort_keys=True)
            )
            self._by_name[writer.name] = writer
            self._by_fingerprint[writer.fingerprint] = writer
        for path in sorted((directory / "history").glob("*.avsc")):
            self.learn(path.read_text())

    @property
    def all_schemas(self) -> list[WriterSchema]:
        """Every schema this codec knows: the current ones, the older versions it learned, and the typed
        row schemas of format: rows routes (which are stored and shipped, not read, by pgfanout)."""
        rows = [WriterSchema(s["name"], key, None, text=json.dumps(s, sort_keys=True)) for key, s in self.row_schemas.items()]
        return [*self._by_fingerprint.values(), *rows]

    @property
    def schema_count(self) -> int:
        """How many schemas all_schemas holds, without building it: it only grows."""
        return len(self._by_fingerprint) + len(self.row_schemas)

    def learn(self, schema_text: str) -> bool:
        """Make an older (or another writer's) version of an envelope readable, or keep a table's typed row
        schema; False if it names no record this version knows."""
        full = json.loads(schema_text)
        if str(full.get("namespace", "")).startswith("pgfanout.rows."):
            self.row_schemas[fingerprint(full)] = full  # a table's Key or Row schema, for format: rows routes
            return True
        current = self._by_name.get(full.get("name", ""))
        if current is None:
            return False
        key = fingerprint(full)
        if key not in self._by_fingerprint:
            self._by_fingerprint[key] = WriterSchema(
                current.name, key, fastavro.parse_schema(full), current.parsed, json.dumps(full, sort_keys=True)
            )
        return True

    def parsed(self, name: str) -> Any:
        """The current parsed schema of a record (also the nested ones: Change, Transaction, Table)."""
        return self._by_name[name].parsed

    def knows(self, data: bytes) -> bool:
        return bytes(data[len(MAGIC) : HEADER_SIZE]) in self._by_fingerprint

    def encode(self, kind: str, record: Message) -> bytes:
        writer = self._by_name[kind]
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(writer.fingerprint)
        fastavro.schemaless_writer(buffer, writer.parsed, record)
        return buffer.getvalue()

    def decode(self, data: bytes, where: Where) -> tuple[str, Message]:
        """(kind, record); ``where`` names the message in any error (topic, partition, offset)."""
        if data is None or len(data) < HEADER_SIZE or not data.startswith(MAGIC):
            raise PoisonMessage(
                f"message at {where} is not a pgfanout message (bad header); stop and inspect the topic", at=where
            )
        writer = self._by_fingerprint.get(bytes(data[len(MAGIC) : HEADER_SIZE]))
        if writer is None:
            raise PoisonMessage(
                f"message at {where} names unknown schema {data[len(MAGIC) : HEADER_SIZE].hex()}, which is not in "
                "the schema registry topic either; it was written by a foreign writer, or the registry lost it",
                at=where,
            )
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buffer, writer.parsed, writer.reader)
        except Exception as exc:  # fastavro raises assorted types on corrupt input
            raise PoisonMessage(f"message at {where} cannot be decoded as {writer.name}: {exc!r}", at=where) from exc
        if buffer.tell() != len(data):
            raise PoisonMessage(
                f"message at {where} has {len(data) - buffer.tell()} trailing bytes after its {writer.name}", at=where
            )
        return writer.name, record


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def avro_long(value: int) -> bytes:
    """Avro's encoding of an int or long: zigzag, then base-128 varint. Called several times per transaction
    on the agent's hot path, so the common lengths are unrolled."""
    zigzag = (value << 1) ^ (value >> 63)
    if zigzag < 0x80:
        return _ONE_BYTE[zigzag]
    if zigzag < 0x4000:
        return bytes((zigzag & 0x7F | 0x80, zigzag >> 7))
    if zigzag < 0x200000:
        return bytes((zigzag & 0x7F | 0x80, zigzag >> 7 & 0x7F | 0x80, zigzag >> 14))
    out = bytearray()
    while zigzag > 0x7F:
        out.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


class SplicedTransaction(NamedTuple):
    """A Transaction record whose changes the C capture trigger already encoded, Change records back to
    back: (count, bytes) blocks, which become the blocks of its changes array as they are."""

    position: int
    xid: int
    chunk: int
    last_chunk: bool
    blocks: list[tuple[int, bytes]]


def encode_batch(codec: Codec, record: Batch) -> bytes:
    """A Batch message whose transactions are Transaction records (dicts, encoded by fastavro) or
    SplicedTransactions (their changes spliced in, not re-encoded)."""
    transactions = record["transactions"]
    if not any(type(t) is SplicedTransaction for t in transactions):
        return codec.encode("Batch", record)
    head = codec.encode("Batch", {**record, "transactions": []})
    assert head[-1] == 0  # an empty array, and transactions is Batch's last field (as changes is Transaction's)
    out = [head[:-1], avro_long(len(transactions))]
    append = out.append
    for transaction in transactions:
        if type(transaction) is not SplicedTransaction:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, codec.parsed("Transaction"), transaction)
            append(buffer.getvalue())
            continue
        position, xid, chunk, last_chunk, blocks = transaction
        append(avro_long(position))
        append(avro_long(xid))
        append(avro_long(chunk))
        append(b"\x01" if last_chunk else b"\x00")
        for count, data in blocks:
            append(avro_long(count))
            append(data)
        append(b"\x00")
    append(b"\x00")
    return b"".join(out)


def decode_changes(codec: Codec, data: bytes) -> Iterator[tuple[Change, int]]:
    """Each Change record of back-to-back encoded changes, with its encoded size."""
    buffer = io.BytesIO(data)
    schema = codec.parsed("Change")
    while buffer.tell() < len(data):
        start = buffer.tell()
        change = fastavro.schemaless_reader(buffer, schema, None)
        yield change, buffer.tell() - start


@cache
def default_codec() -> Codec:
    return Codec()
