"""Generations of a stream: which database published which positions as the primary.

A switchover or failover moves the primary role to another database and starts a new generation.
The new primary goes on from the last position it holds: after a switchover that is the last
position published, after a failover it may be earlier, and the old generation's positions past it
are lost (the loss window). Every message carries its generation and the stream's lineage (each
generation's number, first position and primary), so that any consumer can tell

- a message of an older generation that holds positions a later generation published again: it is
  dropped, loudly (``superseded``);
- a subscriber that applied such positions before the change: it differs from the new primary and
  must be copied again (``lost_positions``);
- a subscriber whose own database is the primary of a generation: those transactions are its own.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pgfanout.core.messages import Message

GENERATION_HEADER = "pgfanout-generation"
TABLE_IDS_PER_GENERATION = 1 << 20  # layouts of generation g get ids from (g - 1) * this + 1


class Generation(NamedTuple):
    generation: int
    first_position: int
    primary: str  # the subscriber whose database is the primary; "" for the source's own database


Lineage = tuple[Generation, ...]


def lineage_of(message: Message) -> Lineage:
    entries = message.get("lineage") or ()  # type: ignore[union-attr]
    return tuple(Generation(e["generation"], e["first_position"], e["primary"]) for e in entries)


def generation_of(message: Message) -> int:
    return message.get("generation", 1)  # type: ignore[return-value]


def as_records(lineage: Lineage) -> list[dict]:
    return [entry._asdict() for entry in lineage]


def first_lineage(primary: str) -> Lineage:
    return (Generation(1, 1, primary),)


def current(lineage: Lineage) -> Generation:
    """The latest generation; a stream without lineage (older agents) is in generation 1."""
    return lineage[-1] if lineage else Generation(1, 1, "")


def extended(lineage: Lineage, kept_position: int, primary: str) -> Lineage:
    """The lineage with a new generation whose primary holds every position up to ``kept_position``."""
    base = lineage or first_lineage("")
    return (*base, Generation(base[-1].generation + 1, kept_position + 1, primary))


def kept_by_later(lineage: Lineage, generation: int) -> int | None:
    """The last position of ``generation`` that the generations after it hold; None while it is the latest."""
    later = [entry.first_position - 1 for entry in lineage if entry.generation > generation]
    return min(later) if later else None


def superseded(lineage: Lineage, generation: int, first_position: int) -> bool:
    """Whether a message of ``generation`` starting at ``first_position`` holds only positions that a later
    generation published again (a deposed primary's, or a failover's loss window)."""
    kept = kept_by_later(lineage, generation)
    return kept is not None and first_position > kept


def lost_positions(applied_generation: int, applied_position: int, lineage: Lineage, generation: int) -> range:
    """The positions a consumer at ``applied_position`` of ``applied_generation`` applied that ``generation``
    does not hold (empty when it lost none)."""
    kept = min(
        (e.first_position - 1 for e in lineage if applied_generation < e.generation <= generation), default=applied_position
    )
    return range(kept + 1, applied_position + 1)


def primary_of(lineage: Lineage, generation: int) -> str | None:
    for entry in lineage:
        if entry.generation == generation:
            return entry.primary
    return None


def first_table_id(generation: int) -> int:
    """Where a generation's table layout ids start: above every id an earlier primary could have given, so
    that a distributor or subscriber never takes one layout for another."""
    return (max(generation, 1) - 1) * TABLE_IDS_PER_GENERATION + 1


def generation_header(generation: int) -> list[tuple[str, bytes]]:
    return [(GENERATION_HEADER, str(generation).encode())]


def generation_from_headers(headers: Sequence[tuple[str, bytes]] | None) -> int:
    """The generation a record's header states; 1 for records without one (written before generations)."""
    for key, value in headers or ():
        if key == GENERATION_HEADER:
            return int(value.decode())
    return 1


def describe_positions(positions: Sequence[int]) -> str:
    """Positions as ranges: "96..100, 104"."""
    ranges: list[list[int]] = []
    for position in sorted(positions):
        if ranges and position == ranges[-1][1] + 1:
            ranges[-1][1] = position
        else:
            ranges.append([position, position])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in ranges)
