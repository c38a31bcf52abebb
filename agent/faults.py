"""Capture faults: changes the capture trigger could not record, and the agent's stop before them.

Where capture's own state keeps it from recording a change (a table without a layout, a layout that
no longer fits the table, a key column holding NULL, a log table this library cannot use), the C
trigger lets the write go on and records a fault in pgfanout.capture_fault, in the writer's
transaction (agent/capture_c). The agent checks every batch: a batch holding a faulty transaction is
not published, and the agent stops naming it. The operator repairs capture, accepts the faults (the
transactions then go out without the changes that were not recorded) and copies the named tables
again on the subscribers.
"""

from __future__ import annotations

from typing import NamedTuple

import psycopg

# Faults of the transactions a batch (the ticks prev..cur) holds: their count, in the same round trip as
# the batch's other facts (agent.agent.LARGEST_ROW_QUERY), and then their details.
IN_BATCH = """FROM pgfanout.capture_fault f, pgfanout.tick c, pgfanout.tick p
WHERE c.tick_id = %(cur)s AND p.tick_id = %(prev)s
  AND pg_visible_in_snapshot(f.txid, c.snapshot) AND NOT pg_visible_in_snapshot(f.txid, p.snapshot)"""
COUNT_IN_BATCH = f"(SELECT count(*) {IN_BATCH})"


class Fault(NamedTuple):
    txid: int
    relation: str
    reason: str


def in_batch(conn: psycopg.Connection, prev: int, cur: int) -> list[Fault]:
    rows = conn.execute(
        f"SELECT f.txid::text::bigint, f.relation, f.reason {IN_BATCH} ORDER BY 1, 2", {"prev": prev, "cur": cur}
    ).fetchall()
    return [Fault(*row) for row in rows]


def listing(conn: psycopg.Connection) -> list[Fault]:
    return [
        Fault(*row)
        for row in conn.execute("SELECT txid::text::bigint, relation, reason FROM pgfanout.capture_fault ORDER BY 1, 2")
    ]


def accept(conn: psycopg.Connection) -> list[Fault]:
    """Forget every recorded fault (the agent then publishes those transactions as recorded)."""
    with conn.transaction():
        return [
            Fault(*row)
            for row in conn.execute("DELETE FROM pgfanout.capture_fault RETURNING txid::text::bigint, relation, reason")
        ]
