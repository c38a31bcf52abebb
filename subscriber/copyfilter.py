"""What a materialized table already holds, and so which streamed changes it must not get again.

A table copied from the source primary in snapshot S, when the agent had published up to
position P, holds every transaction at or before P and every one visible in S. A table
copied from an upstream replica at position P holds everything up to P, plus whatever
that replica's own copy held. Pure logic: the subscriber asks ``holds`` per transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgfanout.core.messages import Change, Transaction
from pgfanout.core.snapshots import Snapshot, parse_snapshot, visible


@dataclass(frozen=True)
class CopyFilter:
    start_position: int  # the copy holds every transaction at or before this position
    snapshot: Snapshot | None  # ... and every transaction visible in this snapshot

    def holds(self, position: int, xid: int) -> bool:
        return position <= self.start_position or (self.snapshot is not None and visible(xid, self.snapshot))

    def after_upstream(self, upstream_position: int) -> CopyFilter:
        """This filter for a copy of the table taken from a replica that had applied up to ``upstream_position``."""
        return CopyFilter(max(self.start_position, upstream_position), self.snapshot)

    @classmethod
    def from_row(cls, start_position: int, snapshot: str | None) -> CopyFilter:
        return cls(start_position, parse_snapshot(snapshot) if snapshot else None)

    @property
    def snapshot_text(self) -> str | None:
        return str(self.snapshot) if self.snapshot is not None else None


class CopyFilters:
    """The filters of a subscriber's tables, with a fast path for the (usual) transaction no copy holds."""

    def __init__(self, filters: dict[tuple[str, str], CopyFilter]):
        self.filters = filters
        self.max_position = max((f.start_position for f in filters.values()), default=0)
        self.max_xmax = max((f.snapshot.xmax for f in filters.values() if f.snapshot), default=0)

    def __bool__(self) -> bool:
        return bool(self.filters)

    def could_hold(self, position: int, xid: int) -> bool:
        return position <= self.max_position or xid < self.max_xmax

    def changes_to_apply(self, part: Transaction, tables: dict[int, Any]) -> list[Change]:
        """The changes of one transaction part that no copy holds yet (all of them, usually)."""
        changes = part["changes"]
        if not self.filters or not self.could_hold(part["position"], part["xid"]):
            return changes
        held: set[int] = set()
        for table_id, table in tables.items():
            copy_filter = self.filters.get((table.schema_name, table.table_name))
            if copy_filter is not None and copy_filter.holds(part["position"], part["xid"]):
                held.add(table_id)
        if not held:
            return changes
        return [change for change in changes if change["table"] not in held]
