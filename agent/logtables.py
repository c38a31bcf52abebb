"""The log tables the capture triggers write, and what of them is not published yet."""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA = "pgfanout"
LOG_TABLES = (1, 2)


def log_table(number: int) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"log_{number}")


LOG = sql.Identifier(SCHEMA, "log")  # the parent of the log tables: a query of it reads both


def unpublished(log: sql.Composable = LOG) -> sql.Composable:
    """The committed rows of ``log`` that the published tick does not cover (rows of open transactions are
    invisible to the query, and rows of rolled back ones forever): a query selecting how many changes each
    holds (a row of the C trigger holds many)."""
    # Not visible in the published tick: started at or after its xmax, or running then and ended since (as
    # agent.BATCH_ROWS); visible to this statement: started before its own snapshot's xmax. Two bounds, so
    # that the planner takes the range for the few rows it holds, not for a third of the table.
    return sql.SQL(
        "SELECT coalesce(l.change_count, 1) AS changes, l.txid "
        "FROM (SELECT snapshot, pg_snapshot_xmax(snapshot) AS xmax, ARRAY("
        "             SELECT x FROM pg_snapshot_xip(snapshot) x "
        "             WHERE pg_visible_in_snapshot(x, pg_current_snapshot())) AS ended "
        "      FROM pgfanout.tick WHERE tick_id = (SELECT published_tick FROM pgfanout.agent_state)) p, "
        "LATERAL (SELECT txid, change_count FROM {log} "
        "         WHERE txid >= p.xmax AND txid < pg_snapshot_xmax(pg_current_snapshot()) "
        "         UNION ALL SELECT txid, change_count FROM {log} WHERE txid = ANY (p.ended)) l "
        "WHERE NOT pg_visible_in_snapshot(l.txid, p.snapshot)"
    ).format(log=log)


def others_running(snapshot: str) -> str:
    """SQL: whether a transaction other than this one, the tick's, held an xid when ``snapshot`` was taken.

    A snapshot lists running transactions only below its xmax (the newest ended xid + 1): one that began
    after the newest ended one is in no list, so an empty list proves nothing. The tick's own xid, assigned
    after its snapshot, is that xmax only if no other transaction took an xid from there on."""
    return (
        f"(pg_snapshot_xmin({snapshot}) <> pg_snapshot_xmax({snapshot}) OR pg_current_xact_id() <> pg_snapshot_xmax({snapshot}))"
    )


UNPUBLISHED_CHANGES = sql.SQL("(SELECT coalesce(sum(u.changes), 0)::bigint FROM ({}) u)").format(unpublished())


def unpublished_count(conn: psycopg.Connection) -> int:
    """How many committed changes are not yet published."""
    return conn.execute(sql.SQL("SELECT {}").format(UNPUBLISHED_CHANGES)).fetchone()[0]


def current_log(conn: psycopg.Connection) -> int:
    """The log table the triggers write into (1 before anything is installed)."""
    if not conn.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = "
        "to_regclass('pgfanout.agent_state') AND attname = 'current_log')"
    ).fetchone()[0]:
        return 1
    row = conn.execute("SELECT current_log FROM pgfanout.agent_state").fetchone()
    return row[0] if row else 1
