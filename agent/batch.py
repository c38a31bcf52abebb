"""Pure logic: turning a batch's log rows into whole transactions, and positions into messages.

The rows of one batch arrive ordered by (the transaction's largest log sequence
number, sequence number); see docs/ordering.md for why that order replays every
write-write dependency correctly. Grouping consecutive rows by xid then yields
each transaction whole, in a valid serial order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE"}


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


def group_transactions(rows: Iterable[LogRow]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(xid, changes) per transaction, for rows already ordered with each transaction's rows together."""
    xid: int | None = None
    changes: list[dict[str, Any]] = []
    seen: set[int] = set()
    for row in rows:
        if row.xid != xid:
            if xid is not None:
                yield xid, changes
            if row.xid in seen:
                raise ValueError(f"rows of transaction {row.xid} are not contiguous in the batch")
            seen.add(row.xid)
            xid, changes = row.xid, []
        changes.append(change_of(row))
    if xid is not None:
        yield xid, changes


def transaction_records(
    source: str, tick_id: int, tick_time: datetime, first_position: int,
    transactions: list[tuple[int, list[dict[str, Any]]]], publish_after: int,
) -> list[dict[str, Any]]:
    """Number a batch's transactions from ``first_position``; leave out those already published."""
    records = []
    last = len(transactions) - 1
    for index, (xid, changes) in enumerate(transactions):
        position = first_position + index
        if position <= publish_after:
            continue
        records.append({"source": source, "position": position, "xid": xid, "tick_id": tick_id,
                        "tick_time": tick_time, "batch_end": index == last, "changes": changes})
    return records
