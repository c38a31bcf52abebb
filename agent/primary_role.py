"""The primary role of a database: stopping its writes, handing the role over, taking it (docs/switchover.md).

- ``stop_writes``: a guard trigger on every published table (and leaf partition) refuses writes with a
  message naming the new primary, and new sessions default to read-only, so that libpq's
  ``target_session_attrs=read-write`` passes this database over.
- ``hand_over``: records in the old primary that another database holds the role: no agent publishes from
  here again (the agent checks it at every tick and when it connects). That record, and the stream's
  generation, are the fence.
- ``take_role``: installs capture in a database that becomes the primary, its state continuing the stream:
  its next position after the last one it holds, its ticks after the stream's last, its generation.
"""

from __future__ import annotations

import logging
import time
import zlib

import psycopg
from psycopg import sql

from agent import capture, logtables
from pgfanout.core.config import Source
from pgfanout.core.errors import TransientError
from pgfanout.core.generations import first_table_id
from pgfanout.core.scripts import is_own

log = logging.getLogger(__name__)

GUARD_TRIGGER = "pgfanout_guard"
_AGENT_LOCK = 0x7066_0003  # pg_advisory_lock's first key; the second is a hash of the source's name

REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION pgfanout.refuse_writes() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '%.% does not accept writes: %', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'read_only_sql_transaction',
              HINT = 'write on the primary; with libpq, list every candidate host and set target_session_attrs=read-write';
END $$"""

PUBLISHED_RELATIONS = """
SELECT DISTINCT n.nspname, c.relname FROM (
    SELECT to_regclass(format('%I.%I', schema_name, table_name)) AS oid FROM pgfanout.tables
    UNION SELECT leaf::regclass FROM pgfanout.partition) r
JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1, 2"""


class PrimaryMoved(TransientError):
    """The agent's database handed the primary role over: the agent follows it to the new primary."""


def agent_lock_key(source: str) -> tuple[int, int]:
    value = zlib.crc32(source.encode())
    return _AGENT_LOCK, value - 2**32 if value >= 2**31 else value


def published_relations(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every published table that exists, and each leaf partition of a published partitioned table."""
    return [(s, t) for s, t in conn.execute(PUBLISHED_RELATIONS).fetchall() if not is_own(s, t)]


def set_read_only_default(conn: psycopg.Connection, read_only: bool) -> None:
    """New sessions of this database start read-only (or not): what libpq's target_session_attrs reads."""
    dbname = conn.execute("SELECT current_database()").fetchone()[0]
    action = "SET default_transaction_read_only = on" if read_only else "RESET default_transaction_read_only"
    conn.execute(sql.SQL("ALTER DATABASE {} {}").format(sql.Identifier(dbname), sql.SQL(action)))


def stop_writes(conn: psycopg.Connection, reason: str, attempts: int = 20, mark: bool = True) -> int:
    """Guard every published table against writes, in one transaction; returns its transaction id.

    Creating a trigger waits for the writers of the table to finish, so every write committed before the
    guard is in the log, and none comes after. A deadlock with a writer, or a lock not granted within a
    second, rolls the guard back and it tries again: it must not queue every writer behind it for long.
    """
    for attempt in range(attempts):
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '1s'")
                conn.execute(REFUSE_FUNCTION)
                for schema_name, table_name in published_relations(conn):
                    target = sql.Identifier(schema_name, table_name)
                    for events, name in (
                        ("INSERT OR UPDATE OR DELETE", GUARD_TRIGGER),
                        ("TRUNCATE", GUARD_TRIGGER + "_truncate"),
                    ):
                        conn.execute(
                            sql.SQL(
                                "CREATE OR REPLACE TRIGGER {} BEFORE {} ON {} FOR EACH STATEMENT "
                                "EXECUTE FUNCTION pgfanout.refuse_writes({})"
                            ).format(sql.Identifier(name), sql.SQL(events), target, sql.Literal(reason))
                        )
                set_read_only_default(conn, True)
                if mark:  # a marker in the stream where writes stopped; it also makes the agent tick at once
                    conn.execute("INSERT INTO pgfanout.trace DEFAULT VALUES")
                return conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable) as exc:
            log.info("guarding the published tables: %s; trying again (attempt %d)", type(exc).__name__, attempt + 1)
    raise TransientError(f"could not guard the published tables in {attempts} attempts: writers kept them locked")


def remove_guard(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for schema_name, table_name in published_relations(conn):
            target = sql.Identifier(schema_name, table_name)
            for name in (GUARD_TRIGGER, GUARD_TRIGGER + "_truncate"):
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), target))


def published_through(conn: psycopg.Connection, xid: int) -> int | None:
    """The last position published, once the agent published a tick in which transaction ``xid`` had
    committed (so every transaction committed before it too); None before that."""
    visible, last = conn.execute(
        "SELECT pg_visible_in_snapshot(%s::text::xid8, t.snapshot), s.next_position - 1 "
        "FROM pgfanout.agent_state s JOIN pgfanout.tick t ON t.tick_id = s.published_tick",
        (xid,),
    ).fetchone()
    return last if visible else None


def hand_over(conn: psycopg.Connection, to: str) -> None:
    """Record that ``to`` holds the role: an agent connected here sees it at its next tick and leaves, and
    none publishes from here again."""
    conn.execute("UPDATE pgfanout.agent_state SET handed_to = %s", (to,))


def take_agent_lock(conn: psycopg.Connection, source: str, timeout: float) -> bool:
    """The agent lock of ``source`` in this database, held by this session until it ends (an agent holds it
    while it is connected); False if an agent still held it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if conn.execute("SELECT pg_try_advisory_lock(%s, %s)", agent_lock_key(source)).fetchone()[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def unpublished_transactions(conn: psycopg.Connection) -> list[int]:
    """The transactions committed here that the agent never published (a deposed primary's loss)."""
    return [
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT DISTINCT u.txid::text::bigint FROM ({}) u ORDER BY 1").format(logtables.unpublished())
        )
    ]


def take_role(
    conn: psycopg.Connection,
    settings: Source,
    subscriptions: capture.Subscriptions,
    generation: int,
    kept_position: int,
    tick_id: int,
) -> str:
    """Make this database the primary of ``generation``, continuing after ``kept_position`` at tick
    ``tick_id``, in one transaction; returns the first tick's snapshot. Capture left from an earlier
    generation here is removed first: its layouts and log belong to that generation."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgfanout.install'))")
        if capture.installed(conn):
            capture.uninstall(conn)
        plan = capture.plan_install(conn, settings, subscriptions, first_table_id(generation))
        for statement in plan.statements:
            conn.execute(statement)
        conn.execute("DELETE FROM pgfanout.tick")
        snapshot = conn.execute(
            "INSERT INTO pgfanout.tick (tick_id, snapshot, tick_time) VALUES (%s, pg_current_snapshot(), clock_timestamp()) "
            "RETURNING snapshot::text",
            (tick_id,),
        ).fetchone()[0]
        conn.execute("SELECT setval('pgfanout.tick_seq', %s)", (tick_id,))
        conn.execute(
            "UPDATE pgfanout.agent_state SET published_tick = %s, next_position = %s, generation = %s, handed_to = NULL",
            (tick_id, kept_position + 1, generation),
        )
    for note in plan.notes:
        log.info("%s", note)
    return snapshot
