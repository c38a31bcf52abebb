"""Positions and the pure decisions made on them.

Every transaction of a source gets a position one greater than the one before it.
Heartbeats repeat the last transaction's position. A ``Mark`` orders every message of a
source's stream (transactions and heartbeats alike): (tick_id, position) grows strictly
along the stream, because tick ids grow, and inside one tick's batch positions grow.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from pgfanout.errors import PositionError


class Mark(NamedTuple):
    tick_id: int
    position: int


def mark_of(record: dict) -> Mark:
    return Mark(record["tick_id"], record["position"])


class Step(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"


def next_step(stored: int, incoming: int, where: str) -> Step:
    """What a consumer does with a transaction at ``incoming`` when it has applied ``stored``.

    ``stored`` is 0 before the first transaction. A gap is never skipped.
    """
    if incoming == stored + 1:
        return Step.APPLY
    if incoming <= stored:
        return Step.DUPLICATE
    raise PositionError(
        f"gap in the stream at {where}: expected position {stored + 1}, found {incoming}; "
        f"positions {stored + 1}..{incoming - 1} are missing (deleted by retention or never delivered). "
        "Re-materialize this subscriber or find the missing messages; nothing was applied past the gap"
    )


class AgentState(NamedTuple):
    published_tick: int  # the last tick whose batch is fully published and recorded
    next_position: int  # the position the next transaction will get


class TopicTail(NamedTuple):
    tick_id: int
    position: int
    batch_end: bool


class Resume(NamedTuple):
    """What the agent does on start. ``tick_id`` is None when primary and topic agree."""

    tick_id: int | None
    publish_after: int  # publish only transactions with a position above this
    batch_complete: bool


def plan_resume(state: AgentState, tail: TopicTail | None, topic: str) -> Resume:
    """Reconcile the agent's record in the primary with what the topic really holds.

    The agent publishes a batch, then records it in the primary. A crash in between
    leaves the topic ahead of the primary, never behind; anything else means data was
    lost from the topic (or it is the wrong topic) and is refused.
    """
    last = state.next_position - 1
    if tail is None:
        if last == 0:
            return Resume(None, 0, True)
        raise PositionError(
            f"topic {topic} is empty, but the primary records positions up to {last} as published; "
            "the topic was deleted or is the wrong one. Re-create it from a backup or re-install capture"
        )
    if tail.tick_id <= state.published_tick:
        if tail.position != last:
            raise PositionError(
                f"topic {topic} ends at position {tail.position} (tick {tail.tick_id}) but the primary records "
                f"position {last} at tick {state.published_tick}; the topic lost or gained messages"
            )
        return Resume(None, last, True)
    if tail.position < last:
        raise PositionError(
            f"topic {topic} ends at position {tail.position}, behind the {last} the primary records as published"
        )
    return Resume(tail.tick_id, tail.position, tail.batch_end)
