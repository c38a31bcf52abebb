"""Trace markers at the subscriber (pgfanout.core.trace): taken out of the changes applied as rows, and
recorded with every hop's stamp in the replica transaction that applies them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg

from pgfanout.core.messages import TableLayout, Transaction
from pgfanout.core.trace import COMMITTED, Stamp, hops, is_trace
from pgfanout.runtime.metrics import TRACE_HOP_SECONDS, TRACE_SECONDS


class Marker(NamedTuple):
    trace_id: int
    committed_at: str  # the primary's text of its commit time
    position: int
    stamps: list[Stamp]  # the hops' stamps between the commit and the apply


def trace_ids(layouts: Iterable[TableLayout]) -> set[int]:
    return {t["table_id"] for t in layouts if is_trace(t["schema_name"], t["table_name"])}


def take_markers(part: Transaction, ids: set[int], stamps: list[Stamp]) -> tuple[Transaction, list[Marker]]:
    """The part without its trace changes, and the markers they inserted."""
    markers = [
        Marker(int(c["values"][0]), c["values"][1], part["position"], stamps)
        for c in part["changes"]
        if c["table"] in ids and c["op"] == "INSERT"
    ]
    changes = [c for c in part["changes"] if c["table"] not in ids]
    return {**part, "changes": changes}, markers


def full_stamps(committed_at: datetime, stamps: Sequence[Sequence[object]], applied_by: str, applied_at: datetime) -> list[Stamp]:
    """Every stamp of a recorded marker, from its commit on the primary to its commit on the replica."""
    between = [Stamp(str(event), float(at)) for event, at in stamps]  # type: ignore[arg-type]
    return [Stamp(COMMITTED, committed_at.timestamp()), *between, Stamp(applied_by, applied_at.timestamp())]


def record(conn: psycopg.Connection, subscriber: str, source: str, markers: list[Marker]) -> list[Stamp]:
    """Write the markers in the open replica transaction (just before it commits); the last one's stamps."""
    applied_by = f"applied by subscriber {subscriber}"
    last: list[Stamp] = []
    for marker in markers:
        row = conn.execute(
            "INSERT INTO pgfanout_replica.trace (subscriber, trace_id, source, position, committed_at, stamps) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (subscriber, trace_id) DO NOTHING "
            "RETURNING committed_at, stamps, applied_at",
            (
                subscriber,
                marker.trace_id,
                source,
                marker.position,
                marker.committed_at,
                json.dumps([[s.event, s.at] for s in marker.stamps]),
            ),
        ).fetchone()
        if row is not None:
            last = full_stamps(row[0], row[1], applied_by, row[2])
    if last:
        for hop in hops(last):
            TRACE_HOP_SECONDS.labels(subscriber, hop.name).set(hop.seconds)
        TRACE_SECONDS.labels(subscriber).set(last[-1].at - last[0].at)
    return last


def last_recorded(conn: psycopg.Connection, subscriber: str) -> tuple[int, list[Stamp]] | None:
    """(trace id, stamps) of the last marker a subscriber recorded, or None."""
    row = conn.execute(
        "SELECT trace_id, committed_at, stamps, applied_at FROM pgfanout_replica.trace WHERE subscriber = %s "
        "ORDER BY applied_at DESC, trace_id DESC LIMIT 1",
        (subscriber,),
    ).fetchone()
    if row is None:
        return None
    return row[0], full_stamps(row[1], row[2], f"applied by subscriber {subscriber}", row[3])
