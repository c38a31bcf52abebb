"""Ticks taken with a snapshot `pgfanout compare` asked for (subscriber/compare.py, docs/compare.md).

A compare opens a REPEATABLE READ transaction on the primary and writes its snapshot into
pgfanout.snapshot_request. The agent's next tick then uses that snapshot instead of a new one, provided
it is later than the last tick: every transaction visible in the last tick must be visible in it, so
the batch between the two is every transaction that became visible in between, and the order of ticks
stays a valid serial order. Otherwise the request is refused and the compare asks again with a newer
snapshot. The batch's last message (or a heartbeat) names the subscriber, which exports a snapshot of
its replica once it applied that batch: both sides then see exactly the same transactions.
"""

from __future__ import annotations

import psycopg

from agent.logtables import others_running
from pgfanout.core.messages import SnapshotRequest

PENDING = "EXISTS (SELECT 1 FROM pgfanout.snapshot_request WHERE tick_id IS NULL AND refused IS NULL)"

# The oldest pending request, and whether its snapshot S is later than the last tick P: xmax(P) <= xmax(S),
# and no transaction S sees as running is visible in P (what P sees below its xmax, S then sees too).
# The tick takes S if so, a new snapshot if not; the request is answered in the same statement.
REQUESTED_TICK = """
WITH request AS (
    SELECT r.request_id, r.snapshot,
           pg_snapshot_xmax(p.snapshot) <= pg_snapshot_xmax(r.snapshot)
           AND NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(r.snapshot) x WHERE pg_visible_in_snapshot(x, p.snapshot))
             AS later
    FROM pgfanout.snapshot_request r JOIN pgfanout.tick p ON p.tick_id = %(published)s
    WHERE r.tick_id IS NULL AND r.refused IS NULL
    ORDER BY r.request_id LIMIT 1),
tick AS (
    INSERT INTO pgfanout.tick (tick_id, snapshot, tick_time)
    VALUES (nextval('pgfanout.tick_seq'),
            coalesce((SELECT snapshot FROM request WHERE later), pg_current_snapshot()),
            clock_timestamp())
    RETURNING tick_id, tick_time, snapshot),
answered AS (
    UPDATE pgfanout.snapshot_request r
    SET tick_id = CASE WHEN q.later THEN t.tick_id END,
        refused = CASE WHEN q.later THEN NULL ELSE clock_timestamp() END
    FROM request q, tick t WHERE r.request_id = q.request_id
    RETURNING r.subscriber, r.hold, q.later)
SELECT t.tick_id, t.tick_time, t.snapshot::text, {running},
       coalesce((SELECT array_agg(ARRAY[a.subscriber, a.hold::text]) FROM answered a WHERE a.later), '{}')
FROM tick t
""".replace("{running}", others_running("t.snapshot"))  # the same test as a tick taken anew

# Requests answered more than a day ago are of no use to anyone.
FORGET_OLD = "DELETE FROM pgfanout.snapshot_request WHERE requested_at < clock_timestamp() - interval '1 day'"


def requests_of(pairs: list[list[str]]) -> tuple[SnapshotRequest, ...]:
    return tuple({"subscriber": subscriber, "hold": hold == "true"} for subscriber, hold in pairs)


def requested_at(conn: psycopg.Connection, tick_id: int) -> tuple[SnapshotRequest, ...]:
    """The requests a tick taken earlier answered (a batch published again after a restart)."""
    rows = conn.execute(
        "SELECT subscriber, hold::text FROM pgfanout.snapshot_request WHERE tick_id = %s ORDER BY request_id", (tick_id,)
    ).fetchall()
    return requests_of([list(r) for r in rows])
