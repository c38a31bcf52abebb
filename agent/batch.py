"""Pure logic: turning a batch's log rows into transactions, chunks and messages.

The rows of one batch arrive ordered by (the transaction's largest log sequence
number, sequence number); see docs/ordering.md for why that order replays every
write-write dependency correctly. Everything here streams: memory holds at most one
message's worth of changes, whatever the size of a transaction or a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from pgfanout.core.codec import SplicedTransaction
from pgfanout.core.messages import Change, Transaction

OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE", "S": "SCHEMA"}
T = TypeVar("T")


class LogRow(NamedTuple):
    """A row of the batch query. The hot path reads plain tuples of this shape by index."""

    xid: int
    table_id: int
    op: str
    new_row: list[str | None] | None
    old_key: list[str] | None
    size: int  # a deterministic estimate of the change's encoded size, computed by the batch query
    null_positions: list[int] | None  # 1-based positions of NULL values (new_row has '' there)
    old_values: list[str] | None = None  # old values of the table's old_columns, for UPDATE and DELETE
    old_null_positions: list[int] | None = None
    change_count: int | None = None  # rows of the C trigger: how many encoded changes...
    table_ids: list[int] | None = None  # ...of which tables...
    changes: bytes | None = None  # ...back to back, Avro-encoded (schemas/change.avsc)


XID, TABLE_ID, OP, NEW_ROW, OLD_KEY, SIZE, NULLS, OLD_VALUES, OLD_NULLS, CHANGE_COUNT, TABLE_IDS, CHANGES = range(12)
Unpack = Callable[[bytes], Iterable[tuple[Change, int]]]  # encoded changes -> (change, encoded size)


def stream_rows(largest_row: int, max_rows: int, max_bytes: int) -> int:
    """Rows per piece of the batch stream: as many as ``max_bytes`` holds of the batch's largest row, at most
    ``max_rows``, at least one. libpq holds a whole piece: 10,000 rows of 1 MB each would be 10 GB."""
    return max(1, min(max_rows, max_bytes // max(largest_row, 1)))


def change_of(row: tuple) -> Change:
    """The wire form of a change: the trigger already stored what it needs (see schemas/change.avsc)."""
    nulls = row[NULLS]
    change = {
        "table": row[TABLE_ID],
        "op": OPS[row[OP]],
        "values": row[NEW_ROW] or (),
        "nulls": [p - 1 for p in nulls] if nulls else (),
        "old_key": row[OLD_KEY] or (),
    }
    old_values = row[OLD_VALUES]
    if old_values:
        old_nulls = row[OLD_NULLS]
        change["old_values"] = old_values
        change["old_nulls"] = [p - 1 for p in old_nulls] if old_nulls else ()
    return change


class Part:
    """A whole transaction, or one chunk of it: encoded changes (blocks) or decoded ones, never both.

    A plain class rather than a dataclass: the agent makes one per transaction, and a dataclass's
    generated __init__ with default factories cost more than the rest of the transaction's handling.
    """

    __slots__ = ("position", "xid", "chunk", "last_chunk", "changes", "blocks", "count", "size", "tables")

    def __init__(self, position: int, xid: int, chunk: int) -> None:
        self.position = position
        self.xid = xid
        self.chunk = chunk
        self.last_chunk = False
        self.changes: list[Change] = []
        self.blocks: list[tuple[int, bytes]] = []  # encoded changes: (count, bytes)
        self.count = 0
        self.size = 0
        self.tables: set[int] = set()

    def record(self) -> Transaction | SplicedTransaction:
        """The part as a Transaction record for pgfanout.core.codec.encode_batch."""
        if self.blocks:
            return SplicedTransaction(self.position, self.xid, self.chunk, self.last_chunk, self.blocks)
        return {
            "position": self.position,
            "xid": self.xid,
            "chunk": self.chunk,
            "last_chunk": self.last_chunk,
            "changes": self.changes,
        }


def split_transactions(
    rows: Iterable[tuple], first_position: int, max_changes: int, max_bytes: int, unpack: Unpack | None = None
) -> Iterator[Part]:
    """Parts of each transaction (rows shaped like LogRow), numbered from ``first_position``, in row order.

    A chunk is closed when one more change would pass ``max_changes`` or ``max_bytes``. A row of the C
    trigger (many encoded changes) is kept whole unless it alone passes ``max_bytes``, or it would share a
    part with changes of the other kind; then ``unpack`` decodes it into its changes.
    """
    part: Part | None = None
    position = first_position - 1
    for row in rows:
        if part is None or row[XID] != part.xid:
            if part is not None:
                part.last_chunk = True
                yield part
            position += 1
            part = Part(position, row[XID], 0)
        encoded = row[CHANGES] if len(row) > CHANGES else None
        if encoded is not None and not part.changes and row[SIZE] <= max_bytes:
            # the common case, kept whole: the trigger's encoding goes out as it is (the loop below, unrolled)
            count, size = row[CHANGE_COUNT], row[SIZE]
            if part.count and (part.count + count > max_changes or part.size + size > max_bytes):
                yield part
                part = Part(position, row[XID], part.chunk + 1)
            part.blocks.append((count, encoded))
            part.tables.update(row[TABLE_IDS])
            part.count += count
            part.size += size
            continue
        # a row of the other kind, or encoded changes too large to stay whole or sharing a part with those
        items = _unpacked(unpack, encoded) if encoded is not None else ((change_of(row), row[SIZE]),)
        for change, size in items:
            if part.count and (part.count + 1 > max_changes or part.size + size > max_bytes):
                yield part
                part = Part(position, row[XID], part.chunk + 1)
            if part.blocks:  # changes of the other kind first: this part becomes decoded changes
                part.changes = [c for _, data in part.blocks for c, _ in _unpacked(unpack, data)]
                part.blocks = []
            part.changes.append(change)
            part.tables.add(change["table"])
            part.count += 1
            part.size += size
    if part is not None:
        part.last_chunk = True
        yield part


def _unpacked(unpack: Unpack | None, encoded: bytes) -> Iterable[tuple[Change, int]]:
    if unpack is None:
        raise ValueError("rows of encoded changes need an unpack function")
    return unpack(encoded)


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
