"""Positions and the pure decisions made on them.

Every transaction of a source gets a position one greater than the one before it.
A transaction too large for one message is split into chunks 0, 1, ... of the same
position. A part of the stream is identified by (position, chunk); progress "up to
and including the whole transaction p" is written ``Progress(p, WHOLE)``.

A ``Mark`` orders the messages of a source's stream: (tick_id, position, chunk) of the
last part a message holds grows strictly along the stream, because tick ids grow, and
inside one tick's batch positions and chunks grow. Heartbeats repeat the last position
with a new tick id.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from pgfanout.core.errors import PositionError, StreamGap, Where
from pgfanout.core.messages import Message

WHOLE = 2**31 - 1  # stands for "every chunk of the transaction"


class Progress(NamedTuple):
    position: int
    chunk: int = WHOLE


class Mark(NamedTuple):
    tick_id: int
    position: int
    chunk: int


def part_mark(tick_id: int, position: int, chunk: int, last_chunk: bool) -> Mark:
    """The mark of a message ending with chunk ``chunk`` of transaction ``position``."""
    return Mark(tick_id, position, WHOLE if last_chunk else chunk)


def mark_of(kind: str, message: Message) -> Mark:
    if kind == "Heartbeat" or not message["transactions"]:
        return Mark(message["tick_id"], message.get("position", 0), WHOLE)
    last = message["transactions"][-1]
    return part_mark(message["tick_id"], last["position"], last["chunk"], last["last_chunk"])


def last_position(kind: str, message: Message) -> int | None:
    """The last position a message holds (a heartbeat: the last one published before it); None if none."""
    if kind == "Heartbeat":
        return message["position"]
    return message["transactions"][-1]["position"] if message["transactions"] else None


MARK_HEADER = "pgfanout-mark"


def mark_header(mark: Mark) -> list[tuple[str, bytes]]:
    """The Kafka record header that repeats a message's mark, so forwarding needs no decoding."""
    return [(MARK_HEADER, f"{mark.tick_id},{mark.position},{mark.chunk}".encode())]


def mark_from_headers(headers: list[tuple[str, bytes]] | None) -> Mark | None:
    """The mark a record's header states, or None (messages written before the header existed)."""
    for key, value in headers or ():
        if key == MARK_HEADER:
            tick_id, position, chunk = (int(part) for part in value.decode().split(","))
            return Mark(tick_id, position, chunk)
    return None


class Step(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"


def next_step(applied: Progress, position: int, chunk: int, where: Where) -> Step:
    """What a consumer does with part (position, chunk) when it has applied up to ``applied``.

    ``applied`` is Progress(0) before the first transaction. A gap is never skipped.
    """
    if (position, chunk) <= applied:
        return Step.DUPLICATE
    whole = applied.chunk == WHOLE
    expected = Progress(applied.position + 1, 0) if whole else Progress(applied.position, applied.chunk + 1)
    if (position, chunk) == expected:
        return Step.APPLY
    if position > expected.position:
        raise StreamGap(
            f"gap in the stream at {where}: expected position {expected.position}, found {position}; "
            f"positions {expected.position}..{position - 1} are missing (deleted by retention or never delivered). "
            "Nothing was applied past the gap. Re-materialize with `pgfanout subscriber resync NAME` "
            "(or set on_gap: resync), or find the missing messages",
            at=where,
            position=expected.position,
        )
    raise PositionError(
        f"broken transaction at {where}: expected chunk {expected.chunk} of position {expected.position}, "
        f"found chunk {chunk} of position {position}; nothing of that transaction was committed",
        at=where,
        position=position,
    )


class AgentState(NamedTuple):
    published_tick: int  # the last tick whose batch is fully published and recorded
    next_position: int  # the position the next transaction will get
    generation: int = 1  # the stream's generation this database publishes (pgfanout.core.generations)


class TopicTail(NamedTuple):
    tick_id: int
    position: int
    chunk: int  # WHOLE when the last part was a transaction's last chunk
    batch_end: bool
    generation: int = 1


class Resume(NamedTuple):
    """What the agent does on start. ``tick_id`` is None when primary and topic agree."""

    tick_id: int | None
    after: Progress  # publish only parts after this
    batch_complete: bool


def plan_resume(state: AgentState, tail: TopicTail | None, topic: str) -> Resume:
    """Reconcile the agent's record in the primary with what the topic really holds.

    The agent publishes a batch, then records it in the primary. A crash in between
    leaves the topic ahead of the primary, never behind; anything else means data was
    lost from the topic (or it is the wrong topic) and is refused.
    """
    last = state.next_position - 1
    if tail is not None and tail.generation > state.generation:
        raise PositionError(
            f"topic {topic} is at generation {tail.generation}, and this database published generation "
            f"{state.generation}: another database holds the primary role now, and this one must not publish"
        )
    if tail is not None and tail.generation < state.generation:
        raise PositionError(
            f"this database was made the primary of generation {state.generation}, but topic {topic} does not "
            f"start that generation (its last message is of generation {tail.generation}): the switchover or "
            "failover did not finish; run it again"
        )
    if tail is None:
        if last == 0:
            return Resume(None, Progress(0), True)
        raise PositionError(
            f"topic {topic} is empty, but the primary records positions up to {last} as published; "
            "the topic was deleted or is the wrong one. Re-create it from a backup or re-install capture"
        )
    if tail.tick_id <= state.published_tick:
        if tail.position != last or tail.chunk != WHOLE:
            raise PositionError(
                f"topic {topic} ends at position {tail.position} (tick {tail.tick_id}) but the primary records "
                f"position {last} at tick {state.published_tick}; the topic lost or gained messages"
            )
        return Resume(None, Progress(last), True)
    if tail.position < last:
        raise PositionError(f"topic {topic} ends at position {tail.position}, behind the {last} the primary records as published")
    return Resume(tail.tick_id, Progress(tail.position, tail.chunk), tail.batch_end)
