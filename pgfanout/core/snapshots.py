"""Transaction snapshots (PostgreSQL's ``pg_snapshot``) and the visibility of a transaction in one.

A replica materialized from a copy taken in snapshot S already holds every transaction
visible in S; afterwards it applies from the stream only the transactions S does not
see, as Slony-I and Londiste do. Transaction ids are 64-bit (``xid8``), so they never
wrap around and a snapshot stays meaningful forever.
"""

from __future__ import annotations

from typing import NamedTuple


class Snapshot(NamedTuple):
    xmin: int  # every transaction below it had finished when the snapshot was taken
    xmax: int  # no transaction at or above it had started
    in_progress: frozenset[int]  # between xmin and xmax, still running

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.in_progress))}"


def parse_snapshot(text: str) -> Snapshot:
    """Parse PostgreSQL's text form ``xmin:xmax:xip,xip,...``."""
    try:
        xmin_text, xmax_text, xip_text = text.split(":")
        xmin, xmax = int(xmin_text), int(xmax_text)
        in_progress = frozenset(int(x) for x in xip_text.split(",") if x)
    except ValueError:
        raise ValueError(f"not a transaction snapshot: {text!r}") from None
    if xmin > xmax or any(not xmin <= x < xmax for x in in_progress):
        raise ValueError(f"inconsistent transaction snapshot: {text!r}")
    return Snapshot(xmin, xmax, in_progress)


def visible(xid: int, snapshot: Snapshot) -> bool:
    """Whether a transaction that committed was already committed when ``snapshot`` was taken.

    Only meaningful for committed transactions, which is all the stream carries.
    """
    if xid < snapshot.xmin:
        return True
    if xid >= snapshot.xmax:
        return False
    return xid not in snapshot.in_progress
