"""Pure logic: turning a batch's log rows into transactions, chunks and messages.

The rows of one batch arrive ordered by (the transaction's largest log sequence
number, sequence number); see docs/ordering.md for why that order replays every
write-write dependency correctly. Everything here streams: memory holds at most one
message's worth of changes, whatever the size of a transaction or a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from pgfanout.positions import Progress

OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE"}
T = TypeVar("T")


class LogRow(NamedTuple):
    xid: int
    seq: int
    schema_name: str
    table_name: str
    columns: list[str]
    key_columns: list[str]
    op: str
    new_row: list[str | None] | None
    old_key: list[str] | None


def change_of(row: LogRow) -> dict[str, Any]:
    op = OPS[row.op]
    change: dict[str, Any] = {"schema_name": row.schema_name, "table_name": row.table_name, "op": op,
                              "key": {}, "old_key": None, "row": None}
    if op in ("INSERT", "UPDATE"):
        values = dict(zip(row.columns, row.new_row or (), strict=True))
        change["row"] = values
        change["key"] = {k: values[k] for k in row.key_columns}
        if row.old_key is not None:
            change["old_key"] = dict(zip(row.key_columns, row.old_key, strict=True))
    elif op == "DELETE":
        change["key"] = dict(zip(row.key_columns, row.old_key or (), strict=True))
    return change


def size_of(row: LogRow) -> int:
    """A deterministic estimate of a change's encoded size (recomputing a batch must cut it the same way)."""
    values = row.new_row or row.old_key or ()
    return 48 + len(row.table_name) + sum(len(c) + len(v or "") + 2 for c, v in zip(row.columns, values, strict=False))


@dataclass
class Part:
    """A whole transaction, or one chunk of it."""

    position: int
    xid: int
    chunk: int
    last_chunk: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0

    @property
    def progress(self) -> Progress:
        return Progress(self.position) if self.last_chunk else Progress(self.position, self.chunk)

    def record(self) -> dict[str, Any]:
        return {"position": self.position, "xid": self.xid, "chunk": self.chunk, "last_chunk": self.last_chunk,
                "changes": self.changes}


def split_transactions(rows: Iterable[LogRow], first_position: int, max_changes: int, max_bytes: int) -> Iterator[Part]:
    """Parts of each transaction, numbered from ``first_position``, in row order.

    A chunk is closed when one more change would pass ``max_changes`` or ``max_bytes``.
    """
    part: Part | None = None
    position = first_position - 1
    for row in rows:
        if part is None or row.xid != part.xid:
            if part is not None:
                part.last_chunk = True
                yield part
            position += 1
            part = Part(position, row.xid, 0)
        size = size_of(row)
        if part.changes and (len(part.changes) >= max_changes or part.size + size > max_bytes):
            yield part
            part = Part(position, row.xid, part.chunk + 1)
        part.changes.append(change_of(row))
        part.size += size
    if part is not None:
        part.last_chunk = True
        yield part


def pack(parts: Iterable[Part], max_bytes: int) -> Iterator[list[Part]]:
    """Consecutive parts grouped into messages of at most ``max_bytes`` (estimated)."""
    package: list[Part] = []
    size = 0
    for part in parts:
        if package and size + part.size > max_bytes:
            yield package
            package, size = [], 0
        package.append(part)
        size += part.size
    if package:
        yield package


def with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the last one, looking one item ahead."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True
