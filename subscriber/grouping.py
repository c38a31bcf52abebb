"""Pure decisions of the subscriber: what to do with each transaction part, when to apply what was
collected, and when the replica transaction commits.

Consecutive small source transactions are grouped into one replica transaction (as Sybase's DSI
does); a group always holds whole source transactions, so it commits only where no transaction
is half applied. The position of the group's last transaction is written in the same replica
transaction as its changes.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgfanout.core.errors import Where
from pgfanout.core.messages import Transaction
from pgfanout.core.positions import WHOLE, Progress, Step, next_step

FLUSH_CHANGES = 20_000  # collected changes are applied at the latest at this many, to bound memory


@dataclass
class Group:
    """What the open replica transaction holds beyond the committed position."""

    pending: Progress  # applied up to here in the open replica transaction
    tick_id: int
    source_time: datetime | None
    offset: int  # the stream offset stored with the position: where the next run continues
    visible: str | None = None  # the snapshot of the last tick whose batch it applied to the end
    transactions: int = 0
    changes: int = 0
    started: float | None = None  # monotonic seconds when its first message arrived

    def advance(self, part: Transaction) -> None:
        """Count a part in: a last chunk completes its transaction."""
        if part["last_chunk"]:
            self.pending = Progress(part["position"])
            self.transactions += 1
        else:
            self.pending = Progress(part["position"], part["chunk"])

    @property
    def whole(self) -> bool:
        """Whether no transaction is half applied: only then may the replica transaction commit."""
        return self.pending.chunk == WHOLE

    def successor(self) -> Group:
        """The group that follows this one once it committed."""
        return Group(self.pending, self.tick_id, self.source_time, self.offset)


class Action(enum.Enum):
    APPLY = "apply"
    SKIP = "skip"  # the operator asked (`pgfanout subscriber skip`)
    DUPLICATE = "duplicate"  # at or below the position already applied


def action_for(applied: Progress, part: Transaction, skips: Collection[int], where: Where) -> Action:
    """What to do with a part after ``applied``; a gap or a broken transaction raises (positions.next_step)."""
    if next_step(applied, part["position"], part["chunk"], where) is Step.DUPLICATE:
        return Action.DUPLICATE
    return Action.SKIP if part["position"] in skips else Action.APPLY


def is_whole(part: Transaction) -> bool:
    """Whether a part is a whole transaction, not one chunk of a larger one."""
    return part["chunk"] == 0 and part["last_chunk"]


def apply_now(part: Transaction, collected_changes: int) -> bool:
    """Whether what was collected must be applied after this part: a chunk is applied at once (a
    chunked transaction is applied in source order, chunk by chunk), and memory is bounded."""
    return not is_whole(part) or collected_changes >= FLUSH_CHANGES


def group_full(group: Group, now: float, max_transactions: int, max_seconds: float) -> bool:
    started = group.started if group.started is not None else now
    return group.transactions >= max_transactions or now - started >= max_seconds


def commit_due(group: Group, committed_offset: int) -> bool:
    """After a poll: commit what it brought (heartbeats move the stored offset too), unless a chunked
    transaction is half applied, which stays open until its last chunk arrives."""
    return group.whole and group.offset != committed_offset


def described_differently(collected: dict[int, Any], tables: dict[int, Any]) -> bool:
    """Whether a message describes a table id otherwise than what the group collected so far."""
    return any(collected.get(table_id, info) != info for table_id, info in tables.items())
