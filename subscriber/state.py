"""The subscriber's state in the replica database, and the locks that keep its writers apart.

- ``pgfanout_replica.position``: where each subscriber is, written in the same replica
  transaction as the changes it covers.
- ``pgfanout_replica.applied``: an audit trail of the position ranges each replica transaction applied.
- ``pgfanout_replica.skip``: transactions the operator asked to skip.
- ``pgfanout_replica.materialized``: what each copied table already holds.

One applier per subscriber holds a session advisory lock; init and a whole resync take it
too. ``resync --table`` runs beside the applier: the applier takes the shared side of a
second lock at the start of each replica transaction, the resync its exclusive side.
"""

from __future__ import annotations

import logging
import zlib

import psycopg
from psycopg import sql

from pgfanout.core.errors import PositionError
from subscriber.copyfilter import CopyFilter, CopyFilters

log = logging.getLogger(__name__)

UNKNOWN_OFFSET = -1  # the route offset of a stored position is not known yet: the subscriber looks it up
_APPLIER_LOCK = 0x7066_0001  # pg_advisory_lock's first key; the second is hashtext(subscriber)
_RESYNC_LOCK = 0x7066_0002


def applier_lock_key(subscriber: str) -> tuple[int, int]:
    return _APPLIER_LOCK, _stable_hash(subscriber)


def resync_lock_key(subscriber: str) -> tuple[int, int]:
    return _RESYNC_LOCK, _stable_hash(subscriber)


def read_copy_filters(
    conn: psycopg.Connection, subscriber: str, wait_for_resync: bool
) -> tuple[CopyFilters, tuple[int, int] | None]:
    """What the subscriber's copied tables hold, and its stored (position, generation) (None before the
    first); at the start of a replica transaction, after waiting out a running ``resync --table`` (the
    shared side of its lock, held until the transaction ends).

    The lock is taken in a statement of its own, in a READ COMMITTED transaction: a statement reads in a
    snapshot taken before it started waiting, so filters read by the statement that waited would be
    those from before the resync committed. The applier would then apply transactions the new copy
    already holds, and drop later ones by the new filters in its next transaction: rows set back.
    """
    if wait_for_resync:
        conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", resync_lock_key(subscriber))
    rows = conn.execute(  # one round trip for both: it is made at every replica transaction
        "SELECT p.position, p.generation, m.schema_name, m.table_name, m.start_position, m.snapshot "
        "FROM (SELECT) one LEFT JOIN pgfanout_replica.position p ON p.subscriber = %(s)s "
        "LEFT JOIN pgfanout_replica.materialized m ON m.subscriber = %(s)s",
        {"s": subscriber},
    ).fetchall()
    stored = (rows[0][0], rows[0][1]) if rows[0][0] is not None else None
    filters = {(s, t): CopyFilter.from_row(p, snap) for _, _, s, t, p, snap in rows if s is not None}
    return CopyFilters(filters), stored


def _stable_hash(name: str) -> int:
    value = zlib.crc32(name.encode())
    return value - 2**32 if value >= 2**31 else value


STATE_DDL = [
    "CREATE SCHEMA IF NOT EXISTS pgfanout_replica",
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.position (
        subscriber text PRIMARY KEY,
        source text NOT NULL,
        position bigint NOT NULL,
        tick_id bigint NOT NULL,
        topic text NOT NULL,
        kafka_offset bigint NOT NULL,
        source_time timestamptz,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    # The txid snapshot of the last tick whose batch the subscriber applied to its end: every primary transaction
    # visible in it is applied here (read-your-writes, below).
    "ALTER TABLE pgfanout_replica.position ADD COLUMN IF NOT EXISTS visible text",
    # The generation of the stream (pgfanout.core.generations) the position is of: a switchover or failover
    # starts a new one, and `pgfanout switchover`/`failover` set it here for the databases whose role changes.
    "ALTER TABLE pgfanout_replica.position ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1",
    # Read-your-writes: an application that wrote on the primary takes its transaction's id there
    # (SELECT pg_current_xact_id(), before COMMIT) as a token; a replica has it once it applied the position
    # that carried it, rows filtered out by its route or not. `source` names the source where a replica
    # database applies several.
    """CREATE OR REPLACE FUNCTION pgfanout_replica.has(token text, source text DEFAULT NULL) RETURNS boolean
        LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
        SELECT coalesce(bool_and(p.visible <> '' AND pg_visible_in_snapshot(token::xid8, p.visible::pg_snapshot)), false)
          FROM pgfanout_replica.position p WHERE has.source IS NULL OR p.source = has.source
    $$""",
    # Waits until the replica has the token (true), or `timeout` seconds passed (false). Call it outside a
    # REPEATABLE READ transaction: each look takes a new snapshot.
    """CREATE OR REPLACE FUNCTION pgfanout_replica.wait_for(token text, timeout double precision,
                                                            source text DEFAULT NULL) RETURNS boolean
        LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    DECLARE
        deadline timestamptz := clock_timestamp() + make_interval(secs => timeout);
    BEGIN
        LOOP
            IF pgfanout_replica.has(token, source) THEN
                RETURN true;
            END IF;
            IF clock_timestamp() >= deadline THEN
                RETURN false;
            END IF;
            PERFORM pg_sleep(0.002);
        END LOOP;
    END $$""",
    "GRANT USAGE ON SCHEMA pgfanout_replica TO PUBLIC",
    "GRANT EXECUTE ON FUNCTION pgfanout_replica.has(text, text), pgfanout_replica.wait_for(text, double precision, text) "
    "TO PUBLIC",
    "GRANT SELECT (subscriber, source, position, visible) ON pgfanout_replica.position TO PUBLIC",
    # An audit trail: the range of positions each replica transaction applied. Consecutive rows must
    # join up exactly; a gap or an overlap would mean a lost or doubled transaction.
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.applied (
        subscriber text NOT NULL,
        first_position bigint NOT NULL,
        last_position bigint NOT NULL,
        kafka_offset bigint NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (subscriber, first_position))""",
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.skip (
        subscriber text NOT NULL,
        position bigint NOT NULL,
        requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (subscriber, position))""",
    # What each materialized table's copy already holds (see copyfilter): the stream skips it for that table.
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.materialized (
        subscriber text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        start_position bigint NOT NULL,
        snapshot text,
        copied_from text NOT NULL,
        copied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (subscriber, schema_name, table_name))""",
    # Why a subscriber stopped on a fatal error (a poison message, a gap...), for `pgfanout status`; its row
    # goes when it starts again.
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.stopped (
        subscriber text PRIMARY KEY,
        error text NOT NULL,
        position bigint,
        topic text,
        kafka_offset bigint,
        stopped_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    # A snapshot of the replica exported at the end of a tick for `pgfanout compare` (subscriber.compare): the
    # subscriber writes it there, the compare marks it imported (and, for a repair, released).
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.snapshot_request (
        subscriber text NOT NULL,
        tick_id bigint NOT NULL,
        exported text NOT NULL,
        position bigint NOT NULL,
        hold boolean NOT NULL,
        imported boolean NOT NULL DEFAULT false,
        released boolean NOT NULL DEFAULT false,
        exported_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (subscriber, tick_id))""",
    # What `pgfanout repair` changed, and at which position.
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.repaired (
        subscriber text NOT NULL,
        table_name text NOT NULL,
        position bigint NOT NULL,
        rows bigint NOT NULL,
        repaired_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    # Trace markers (pgfanout.core.trace) this subscriber applied: every hop's stamp, from the commit on the
    # primary (its clock) to the commit here (this server's clock), written in the replica transaction that
    # applied the marker.
    """CREATE TABLE IF NOT EXISTS pgfanout_replica.trace (
        subscriber text NOT NULL,
        trace_id bigint NOT NULL,
        source text NOT NULL,
        position bigint NOT NULL,
        committed_at timestamptz NOT NULL,
        stamps jsonb NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (subscriber, trace_id))""",
    # Replicated tables refuse writes from anyone but the applier. The applier runs with
    # session_replication_role = replica, in which ordinary triggers like this one do not fire.
    """CREATE OR REPLACE FUNCTION pgfanout_replica.deny_writes() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RAISE EXCEPTION 'table %.% is a pgfanout replica of source %: only the pgfanout applier writes to it',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'write on the source primary; the change will be replicated here';
    END $$""",
]
DENY_TRIGGER = "pgfanout_replica_deny_writes"

SAVE_POSITION = """
INSERT INTO pgfanout_replica.position AS p
    (subscriber, source, position, tick_id, topic, kafka_offset, source_time, visible, generation, applied_at)
VALUES (%(subscriber)s, %(source)s, %(position)s, %(tick_id)s, %(topic)s, %(offset)s, %(source_time)s, %(visible)s,
        %(generation)s, clock_timestamp())
ON CONFLICT (subscriber) DO UPDATE SET position = EXCLUDED.position, tick_id = EXCLUDED.tick_id,
    generation = EXCLUDED.generation,
    topic = EXCLUDED.topic, kafka_offset = EXCLUDED.kafka_offset, source_time = EXCLUDED.source_time,
    visible = coalesce(EXCLUDED.visible, p.visible), applied_at = EXCLUDED.applied_at
"""


def request_skip(conn: psycopg.Connection, subscriber: str, position: int) -> int:
    """Record the operator's request to skip one transaction; returns the position applied so far."""
    ensure_state(conn)
    with conn.transaction():
        row = conn.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)).fetchone()
        applied = row[0] if row else 0
        if position <= applied:
            raise PositionError(
                f"subscriber {subscriber} has already applied position {position} (it is at {applied}); nothing to skip"
            )
        conn.execute(
            "INSERT INTO pgfanout_replica.skip (subscriber, position) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (subscriber, position),
        )
    log.warning(
        "subscriber %s will SKIP the transaction at position %d when it reaches it (now at %d)", subscriber, position, applied
    )
    return applied


def ensure_state(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgfanout_replica.state'))")
        exists = conn.execute("SELECT to_regnamespace('pgfanout_replica') IS NOT NULL").fetchone()[0]  # type: ignore[index]
        for statement in STATE_DDL:
            if exists and statement.startswith("CREATE SCHEMA"):
                continue  # an applier without CREATE on the database, in a schema made for it (`pgfanout roles`)
            conn.execute(statement)


def protected_tables(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    """Every table a deny trigger protects, with the source it replicates (the trigger's argument)."""
    return {
        (s, t): bytes(args).split(b"\0")[0].decode()
        for s, t, args in conn.execute(
            """SELECT n.nspname, c.relname, g.tgargs FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE g.tgname = %s""",
            (DENY_TRIGGER,),
        )
    }


def unprotect_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Let everyone write to every replicated table again (this replica becomes the primary)."""
    tables = sorted(protected_tables(conn))
    for schema_name, table_name in tables:
        for name in (DENY_TRIGGER, DENY_TRIGGER + "_truncate"):
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), sql.Identifier(schema_name, table_name))
            )
    return tables


def new_generation(conn: psycopg.Connection, subscriber: str, generation: int, position: int) -> None:
    """The subscriber goes on in ``generation`` after ``position``: what its copies hold by the snapshot of an
    earlier primary no longer tells anything (transaction ids are the new primary's now); everything they
    held is at or before ``position``."""
    conn.execute(
        "UPDATE pgfanout_replica.materialized SET snapshot = NULL, start_position = greatest(start_position, %s) "
        "WHERE subscriber = %s AND snapshot IS NOT NULL",
        (position, subscriber),
    )


def protect_table(conn: psycopg.Connection, schema_name: str, table_name: str, source: str) -> None:
    """Make a replicated table read-only for everyone but the applier."""
    target = sql.Identifier(schema_name, table_name)
    for events, name in (("INSERT OR UPDATE OR DELETE", DENY_TRIGGER), ("TRUNCATE", DENY_TRIGGER + "_truncate")):
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {} BEFORE {} ON {} FOR EACH STATEMENT "
                "EXECUTE FUNCTION pgfanout_replica.deny_writes({})"
            ).format(sql.Identifier(name), sql.SQL(events), target, sql.Literal(source))
        )
