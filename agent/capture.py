"""Installing and removing capture on the primary.

Capture is a log table in the ``pgfanout`` schema fed by one generated trigger
function per published table. The function writes each row change as an array of
the columns' text representations, with the settings that shape those texts
pinned on the function, so that the replica's input functions read them back
exactly. Functions are SECURITY DEFINER so application roles need no rights on
the pgfanout schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from agent import ctrigger, partitions
from agent.typesettings import pinned, settings_for_columns, unsupported_reason
from pgfanout.core import names
from pgfanout.core.config import Source, TableSubscription
from pgfanout.core.errors import CaptureError, FilterError
from pgfanout.core.rowfilter import compile_filter
from pgfanout.runtime.pg import primary_key

log = logging.getLogger(__name__)
SCHEMA = "pgfanout"
TRIGGER = "pgfanout_capture"
LOG_TABLES = (1, 2)

BASE_DDL = [
    "CREATE SCHEMA IF NOT EXISTS pgfanout",
    """CREATE TABLE IF NOT EXISTS pgfanout.tables (
        table_id integer PRIMARY KEY,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        columns text[] NOT NULL,
        key_columns text[] NOT NULL)""",
    # One row per layout of a table: an ALTER TABLE that changes the columns adds a row with a new id,
    # and log rows written before it keep the old one.
    "ALTER TABLE pgfanout.tables DROP CONSTRAINT IF EXISTS tables_schema_name_table_name_key",
    "ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS column_types text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS missing_values jsonb NOT NULL DEFAULT '{}'",
    "ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS old_columns text[] NOT NULL DEFAULT '{}'",
    "CREATE SEQUENCE IF NOT EXISTS pgfanout.log_seq",
    """CREATE TABLE IF NOT EXISTS pgfanout.log (
        seq bigint NOT NULL DEFAULT nextval('pgfanout.log_seq'),
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        table_id integer NOT NULL,
        op "char" NOT NULL,
        new_row text[],
        old_key text[])""",
    "ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS old_values text[]",
    "CREATE INDEX IF NOT EXISTS log_txid ON pgfanout.log (txid)",
    # Rows of the C trigger (agent/ctrigger.py): a transaction's changes, Avro-encoded, from its change number
    # `ordinal` on; op 'P', table_id 0.
    "ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS ordinal integer",
    "ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS change_count integer",
    "ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS table_ids integer[]",
    "ALTER TABLE pgfanout.log ADD COLUMN IF NOT EXISTS changes bytea",
    "ALTER TABLE pgfanout.tables ADD COLUMN IF NOT EXISTS settings text[] NOT NULL DEFAULT '{}'",
    # Triggers write into one of two tables under pgfanout.log, and the agent empties the other with TRUNCATE
    # once everything in it is published (agent/logswitch.py): consumed rows are never deleted one by one,
    # so there is nothing to vacuum and nothing a long transaction could make pile up.
    *(statement for n in LOG_TABLES for statement in (
        f"CREATE TABLE IF NOT EXISTS pgfanout.log_{n} () INHERITS (pgfanout.log)",
        f"CREATE INDEX IF NOT EXISTS log_{n}_txid ON pgfanout.log_{n} (txid)")),
    # Changes capture could not record (agent/capture_c: a missing layout, an unusable log table...), written
    # in the writer's transaction instead of failing the write; the agent stops before that transaction.
    """CREATE TABLE IF NOT EXISTS pgfanout.capture_fault (
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        relation text NOT NULL,
        reason text NOT NULL,
        noticed_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    "CREATE SEQUENCE IF NOT EXISTS pgfanout.tick_seq",
    """CREATE TABLE IF NOT EXISTS pgfanout.tick (
        tick_id bigint PRIMARY KEY,
        snapshot pg_snapshot NOT NULL,
        tick_time timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pgfanout.agent_state (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        published_tick bigint NOT NULL,
        next_position bigint NOT NULL)""",
    "ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS current_log smallint NOT NULL DEFAULT 1 "
    "CHECK (current_log IN (1, 2))",
    "ALTER TABLE pgfanout.agent_state ADD COLUMN IF NOT EXISTS log_switched_at timestamptz NOT NULL DEFAULT now()",
    # The first tick marks where capture starts: everything committed before it is not published.
    """INSERT INTO pgfanout.tick (tick_id, snapshot, tick_time)
        SELECT nextval('pgfanout.tick_seq'), pg_current_snapshot(), clock_timestamp()
        WHERE NOT EXISTS (SELECT 1 FROM pgfanout.agent_state)""",
    """INSERT INTO pgfanout.agent_state (published_tick, next_position)
        SELECT (SELECT max(tick_id) FROM pgfanout.tick), 1
        WHERE NOT EXISTS (SELECT 1 FROM pgfanout.agent_state)""",
    # rows an older version logged into pgfanout.log itself move to a log table, where TRUNCATE reaches them
    """WITH moved AS (DELETE FROM ONLY pgfanout.log RETURNING *)
        INSERT INTO pgfanout.log_1 SELECT * FROM moved""",
    # The agent switches log tables through this function, which runs as the installing role: replacing the
    # capture functions needs their owner, and the running agent should not be it. Each function keeps its
    # body and settings; only the log table it names changes (both spellings: "pgfanout"."log_1", and
    # pgfanout.log_1 as the ALTER TABLE event trigger writes it). NULL: an install holds the lock, try later.
    r"""CREATE OR REPLACE FUNCTION pgfanout.switch_log() RETURNS smallint LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $switch$
    DECLARE
        target smallint;
        fn oid;
    BEGIN
        IF NOT pg_try_advisory_xact_lock(hashtext('pgfanout.install')) THEN
            RETURN NULL;
        END IF;
        LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE NOWAIT;  -- the ALTER TABLE event trigger takes it too
        SELECT CASE current_log WHEN 1 THEN 2 ELSE 1 END INTO target FROM pgfanout.agent_state FOR UPDATE;
        FOR fn IN SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'pgfanout'::regnamespace
                    AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
                    AND (p.proname = 'append_changes'
                         OR p.oid IN (SELECT tgfoid FROM pg_trigger WHERE tgname = 'pgfanout_capture')) LOOP
            EXECUTE regexp_replace(pg_get_functiondef(fn), '"?pgfanout"?\."?log_[12]"?', 'pgfanout.log_' || target, 'g');
        END LOOP;
        UPDATE pgfanout.agent_state SET current_log = target, log_switched_at = now();
        RETURN target;
    END $switch$""",
    "REVOKE ALL ON FUNCTION pgfanout.switch_log() FROM PUBLIC",
]


@dataclass(frozen=True)
class PublishedTable:
    table_id: int
    schema_name: str
    table_name: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    settings: frozenset[str] = frozenset()  # session settings the trigger must pin (see typesettings)
    column_types: tuple[str, ...] = ()
    missing_values: tuple[tuple[str, str], ...] = ()  # (column, text) of columns added with a constant default
    old_columns: tuple[str, ...] = ()  # non-key columns whose old values UPDATE and DELETE log (row filters use them)
    partitions: tuple[str, ...] | None = None  # a partitioned table's leaf partitions (None: not partitioned)

    @property
    def qualified(self) -> str:
        return names.qualified(self.schema_name, self.table_name)


def expand(conn: psycopg.Connection, tables: list[str], exclude: list[str]) -> tuple[list[str], list[str]]:
    """(tables, missing): ``schema.*`` entries become every table of the schema, minus ``exclude``."""
    found: list[str] = []
    missing: list[str] = []
    for entry in tables:
        schema_name, table_name = names.parse_table(entry, wildcard=True)
        if table_name is not names.ALL_TABLES:
            found.append(entry)
            continue
        in_schema = [r[0] for r in conn.execute(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname""",
            (schema_name,))]
        if not in_schema:
            missing.append(entry)
        found += [names.qualified(schema_name, name) for name in in_schema]
    excluded = set(exclude)
    return list(dict.fromkeys(t for t in found if t not in excluded)), missing


def _unique_not_null(conn: psycopg.Connection, oid: int, columns: list[str]) -> str | None:
    """None if ``columns`` are exactly a unique, non-partial index's columns and all NOT NULL; else why not."""
    nullable = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s) AND NOT attnotnull",
        (oid, columns))]
    if nullable:
        return f"columns {', '.join(nullable)} allow NULL"
    unique = conn.execute(
        """SELECT 1 FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL
             AND i.indexprs IS NULL
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                  WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = %s""",
        (oid, sorted(columns))).fetchone()
    return None if unique else "no unique index (without a WHERE clause) on exactly those columns"


def _catalog_has(conn: psycopg.Connection, column: str) -> bool:
    """Whether pgfanout.tables (installed by an older version, maybe) has ``column``."""
    return conn.execute("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'pgfanout.tables'::regclass "
                        "AND attname = %s)", (column,)).fetchone()[0]


@contextmanager
def catalog_search_path(conn: psycopg.Connection) -> Iterator[None]:
    """format_type() qualifies a type name only when it is not on the search path: describe types under the
    same path as the ALTER TABLE event trigger (pg_catalog only), or it would see every user-defined type
    as changed (``mood`` against ``public.mood``) and refuse the ALTER."""
    saved = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', 'pg_catalog, pg_temp', false)")
    try:
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:  # a failed one reverts it
            conn.execute("SELECT set_config('search_path', %s, false)", (saved,))


def describe_tables(conn: psycopg.Connection, tables: list[str], exclude: list[str] | None = None,
                    keys: dict[str, list[str]] | None = None,
                    filtered: dict[str, set[str]] | None = None) -> list[PublishedTable]:
    """Read each table's columns and key from the catalog; refuse missing and keyless tables, all at once.

    ``filtered`` names per table the columns row filters use: their old values are logged too.
    """
    with catalog_search_path(conn):
        return _describe_tables(conn, tables, exclude, keys, filtered)


def _describe_tables(conn: psycopg.Connection, tables: list[str], exclude: list[str] | None,
                     keys: dict[str, list[str]] | None, filtered: dict[str, set[str]] | None) -> list[PublishedTable]:
    keys, filtered = keys or {}, filtered or {}
    tables, missing = expand(conn, tables, exclude or [])
    latest: dict[tuple[str, str], tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}  # newest layouts
    if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0]:
        query = sql.SQL("SELECT table_id, schema_name, table_name, columns, key_columns, {}, {} FROM pgfanout.tables "
                        "ORDER BY table_id").format(
            sql.SQL("column_types" if _catalog_has(conn, "column_types") else "columns"),
            sql.SQL("old_columns" if _catalog_has(conn, "old_columns") else "'{}'::text[]"))
        latest = {(s, t): (i, (*c, *k), tuple(types), tuple(old))
                  for i, s, t, c, k, types, old in conn.execute(query)}
    next_id = max((v[0] for v in latest.values()), default=0) + 1
    found, keyless, bad_keys, bad_types = [], [], [], []
    for qualified in tables:
        schema_name, table_name = names.parse_table(qualified)
        row = conn.execute(
            """SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s""", (schema_name, table_name)).fetchone()
        if row is None or row[1] not in ("r", "p"):
            missing.append(qualified)
            continue
        oid = row[0]
        described = conn.execute(
            """SELECT attname, atttypid, format_type(atttypid, atttypmod),
                      CASE WHEN atthasmissing THEN (attmissingval::text::text[])[1] END
               FROM pg_attribute WHERE attrelid = %s AND attnum > 0
               AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""", (oid,)).fetchall()
        columns = [r[0] for r in described]
        for name, type_oid, type_text, _ in described:
            reason = unsupported_reason(conn, type_oid)
            if reason:
                bad_types.append(f"{qualified}.{names.quote(name)} ({type_text}; {reason})")
        key = primary_key(conn, oid)
        if qualified in keys:
            reason = _unique_not_null(conn, oid, keys[qualified])
            if reason or any(c not in columns for c in keys[qualified]):
                bad_keys.append(f"{qualified} ({reason or 'a key column is not a column of the table'})")
                continue
            key = keys[qualified]
        if not key:
            keyless.append(qualified)
            continue
        types = tuple(r[2] for r in described)
        old_columns = tuple(c for c in columns if c in filtered.get(qualified, ()) and c not in key)
        previous = latest.get((schema_name, table_name))
        if previous is not None and previous[1:] == ((*columns, *key), types, old_columns):
            table_id = previous[0]
        else:
            table_id, next_id = next_id, next_id + 1  # a new table, or a new layout of it
        settings = settings_for_columns(conn, [r[1] for r in described])
        missing_values = tuple((r[0], r[3]) for r in described if r[3] is not None)
        found.append(PublishedTable(table_id, schema_name, table_name, tuple(columns), tuple(key), settings, types,
                                    missing_values, old_columns, partitions.leaves(conn, oid) if row[1] == "p" else None))
    problems = partitions.problems(conn, [t.qualified for t in found])
    if missing:
        problems.append(f"tables not found on the primary: {', '.join(missing)}")
    if keyless:
        problems.append(
            f"tables without a primary key cannot be replicated (a row must be identifiable): {', '.join(keyless)}; "
            "add a primary key, name a unique NOT NULL key under the source's keys, or leave them out"
        )
    if bad_keys:
        problems.append(f"configured keys that cannot identify rows: {'; '.join(bad_keys)}")
    if bad_types:
        problems.append(f"columns of types that cannot be replicated: {'; '.join(bad_types)}; leave the tables out, "
                        "or change those columns (to text, or to the object's name)")
    if problems:
        raise CaptureError("; ".join(problems))
    return found


def _array(record: str, columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::pg_catalog.text[]").format(
        sql.SQL(", ").join(sql.SQL("{}.{}::pg_catalog.text").format(sql.SQL(record), sql.Identifier(c))
                           for c in columns))


# Every name in the body is schema-qualified (types, operators, the log), so the function needs no pinned
# search_path: a SET clause costs each call a settings save and restore and a search path recomputation,
# about 15% of the trigger's cost, and pgbench's hot rows stay locked while triggers run. A key change is
# told by the keys' text (key columns are NOT NULL), which needs no type's equality operator from the
# caller's search_path; a key whose text changes but whose value compares equal is logged as changed,
# which the replica applies alike.
BODY = """
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO {log} (table_id, op, new_row) VALUES ({tid}, 'I', {new_row});
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        INSERT INTO {log} (table_id, op, new_row, old_key, old_values) VALUES ({tid}, 'U', {new_row},
            CASE WHEN {old_key} OPERATOR(pg_catalog.<>) {new_key} THEN {old_key} END, {old_values});
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO {log} (table_id, op, old_key, old_values) VALUES ({tid}, 'D', {old_key}, {old_values});
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        INSERT INTO {log} (table_id, op) VALUES ({tid}, 'T');
    END IF;
    RETURN NULL;
END
"""
FUNCTION = ("CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            "{settings} AS {body}")


def _settings_clause(settings: frozenset[str] | None) -> sql.Composable:
    return sql.SQL(" ").join(
        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in pinned(settings).items())


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
        "SELECT coalesce(l.change_count, 1) AS changes "
        "FROM (SELECT snapshot, pg_snapshot_xmax(snapshot) AS xmax, ARRAY("
        "             SELECT x FROM pg_snapshot_xip(snapshot) x "
        "             WHERE pg_visible_in_snapshot(x, pg_current_snapshot())) AS ended "
        "      FROM pgfanout.tick WHERE tick_id = (SELECT published_tick FROM pgfanout.agent_state)) p, "
        "LATERAL (SELECT txid, change_count FROM {log} "
        "         WHERE txid >= p.xmax AND txid < pg_snapshot_xmax(pg_current_snapshot()) "
        "         UNION ALL SELECT txid, change_count FROM {log} WHERE txid = ANY (p.ended)) l "
        "WHERE NOT pg_visible_in_snapshot(l.txid, p.snapshot)").format(log=log)


UNPUBLISHED_CHANGES = sql.SQL("(SELECT coalesce(sum(u.changes), 0)::bigint FROM ({}) u)").format(unpublished())


def unpublished_count(conn: psycopg.Connection) -> int:
    """How many committed changes are not yet published."""
    return conn.execute(sql.SQL("SELECT {}").format(UNPUBLISHED_CHANGES)).fetchone()[0]


def current_log(conn: psycopg.Connection) -> int:
    """The log table the triggers write into (1 before anything is installed)."""
    if not conn.execute("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = "
                        "to_regclass('pgfanout.agent_state') AND attname = 'current_log')").fetchone()[0]:
        return 1
    row = conn.execute("SELECT current_log FROM pgfanout.agent_state").fetchone()
    return row[0] if row else 1


def trigger_function(table: PublishedTable, log_number: int) -> sql.Composable:
    function = sql.Identifier(SCHEMA, f"capture_{table.table_id}")
    body = sql.SQL(BODY).format(
        log=log_table(log_number), tid=sql.Literal(table.table_id), new_row=_array("NEW", table.columns),
        old_key=_array("OLD", table.key_columns),
        new_key=_array("NEW", table.key_columns),
        old_values=_array("OLD", table.old_columns) if table.old_columns else sql.SQL("NULL"))
    return sql.SQL(FUNCTION).format(function=function, settings=_settings_clause(table.settings),
                                    body=sql.Literal(body.as_string()))


def follow_ddl_statements() -> list[sql.Composable]:
    """Event triggers that keep capture in step with ALTER TABLE on published tables (superuser only).

    A changed column list gets a new layout row and the capture function is rewritten, in the ALTER's
    own transaction, so no change is ever logged with the wrong columns. Rewrites (ALTER COLUMN TYPE,
    ADD COLUMN with a volatile default) are refused: the rows they rewrite fire no trigger.
    """
    # format() templates: the function (%1$s name, %2$L body), and its body (%1$s table id, %2$s new row,
    # %3$s/%4$s old and new key, %5$s old values, %6$s the log table); the same text trigger_function() writes,
    # every setting pinned.
    function_template = sql.SQL(FUNCTION).format(
        function=sql.SQL("%1$s"), settings=_settings_clause(None), body=sql.SQL("%2$L")).as_string(None)
    body_template = BODY.format(tid="%1$s", new_row="%2$s", old_key="%3$s", new_key="%4$s", old_values="%5$s",
                                log="%6$s")
    follow = f"""
CREATE OR REPLACE FUNCTION pgfanout.follow_alter_table() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp {_settings_clause(None).as_string()} AS $follow$
DECLARE
    command record; layout record; new_id integer; cols text[]; types text[]; missing jsonb; fn regproc; olds text[];
    target_log text;
BEGIN
    FOR command IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                   WHERE classid = 'pg_class'::regclass LOOP
        SELECT t.* INTO layout FROM pgfanout.tables t JOIN pg_class c ON c.relname = t.table_name
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = t.schema_name
            WHERE c.oid = command.objid ORDER BY t.table_id DESC LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        SELECT array_agg(attname::text ORDER BY attnum), array_agg(format_type(atttypid, atttypmod) ORDER BY attnum),
               coalesce(jsonb_object_agg(attname, (attmissingval::text::text[])[1]) FILTER (WHERE atthasmissing), '{{}}')
          INTO cols, types, missing
          FROM pg_attribute WHERE attrelid = command.objid AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
        CONTINUE WHEN cols = layout.columns AND types = layout.column_types;
        IF NOT layout.key_columns <@ cols THEN
            RAISE EXCEPTION 'pgfanout: %.% is published and this would change its key columns (%)',
                layout.schema_name, layout.table_name, layout.key_columns
                USING HINT = 'run pgfanout agent uninstall/install around such a change, and resync the subscribers';
        END IF;
        IF EXISTS (SELECT FROM unnest(layout.columns, layout.column_types) o(c, t)
                   JOIN unnest(cols, types) n(c, t) ON n.c = o.c WHERE n.t <> o.t)
           AND cardinality(layout.column_types) > 0 THEN
            RAISE EXCEPTION 'pgfanout: %.% is published; changing a column''s type is not followed by the replicas',
                layout.schema_name, layout.table_name
                USING HINT = 'uninstall capture for the table, alter it, install again and resync the subscribers';
        END IF;
        IF NOT layout.columns <@ cols AND NOT cols <@ layout.columns THEN
            RAISE EXCEPTION 'pgfanout: %.% is published; renaming a column (or dropping and adding in one statement) '
                'cannot be told from a new column on the replicas', layout.schema_name, layout.table_name
                USING HINT = 'add and drop columns in separate statements; a rename needs a resync of the subscribers';
        END IF;
        LOCK TABLE pgfanout.tables IN EXCLUSIVE MODE;  -- the agent switching log tables takes it too
        SELECT max(table_id) + 1 INTO new_id FROM pgfanout.tables;
        SELECT format('pgfanout.%I', 'log_' || current_log) INTO target_log FROM pgfanout.agent_state;
        olds := ARRAY(SELECT c FROM unnest(layout.old_columns) c WHERE c = ANY (cols));
        INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types, missing_values,
                                     old_columns, settings)
            VALUES (new_id, layout.schema_name, layout.table_name, cols, layout.key_columns, types, missing, olds,
                    {sql.Literal(ctrigger.settings_pairs(None)).as_string(None)}::text[]);
        SELECT tgfoid INTO fn FROM pg_trigger WHERE tgrelid = command.objid AND tgname = {sql.Literal(TRIGGER).as_string(None)};
        -- the C trigger reads the new layout row itself (its cache follows the table's relcache)
        IF (SELECT l.lanname <> 'c' FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = fn) THEN
        EXECUTE format({sql.Literal(function_template).as_string(None)}, fn::text,
            format({sql.Literal(body_template).as_string(None)}, new_id, pgfanout.text_array_sql('NEW', cols),
                   pgfanout.text_array_sql('OLD', layout.key_columns), pgfanout.text_array_sql('NEW', layout.key_columns),
                   pgfanout.text_array_sql('OLD', olds), target_log));
        END IF;
        RAISE NOTICE 'pgfanout: %.% now published with columns %', layout.schema_name, layout.table_name, cols;
    END LOOP;
END $follow$"""
    refuse = """
CREATE OR REPLACE FUNCTION pgfanout.refuse_rewrite() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $refuse$
DECLARE
    target record;
BEGIN
    SELECT n.nspname, c.relname INTO target FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = pg_event_trigger_table_rewrite_oid()
          AND EXISTS (SELECT FROM pgfanout.tables t WHERE t.schema_name = n.nspname AND t.table_name = c.relname);
    IF FOUND THEN
        RAISE EXCEPTION 'pgfanout: %.% is published and this ALTER would rewrite every row without firing triggers '
            '(ALTER COLUMN TYPE, or ADD COLUMN with a volatile default), so replicas would differ', target.nspname, target.relname
            USING HINT = 'add the column without a volatile default and fill it with UPDATEs; to change a type, '
                         'uninstall capture for the table, alter it, install again and resync the subscribers';
    END IF;
END $refuse$"""
    return [sql.SQL(follow), sql.SQL(refuse),
            sql.SQL("DROP EVENT TRIGGER IF EXISTS pgfanout_follow_alter_table"),
            sql.SQL("CREATE EVENT TRIGGER pgfanout_follow_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
                    "EXECUTE FUNCTION pgfanout.follow_alter_table()"),
            sql.SQL("DROP EVENT TRIGGER IF EXISTS pgfanout_refuse_rewrite"),
            sql.SQL("CREATE EVENT TRIGGER pgfanout_refuse_rewrite ON table_rewrite "
                    "EXECUTE FUNCTION pgfanout.refuse_rewrite()")]


def table_statements(table: PublishedTable, log_number: int, c_trigger: bool = False) -> list[sql.Composable]:
    target = sql.Identifier(table.schema_name, table.table_name)
    function = sql.Identifier(SCHEMA, ctrigger.FUNCTION if c_trigger else f"capture_{table.table_id}")
    return [
        sql.SQL(
            "INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types, "
            "missing_values, old_columns, settings) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}::text[]) "
            "ON CONFLICT (table_id) DO NOTHING"
        ).format(sql.Literal(table.table_id), sql.Literal(table.schema_name), sql.Literal(table.table_name),
                 sql.Literal(list(table.columns)), sql.Literal(list(table.key_columns)),
                 sql.Literal(list(table.column_types)), sql.Literal(json.dumps(dict(table.missing_values))),
                 sql.Literal(list(table.old_columns)), sql.Literal(ctrigger.settings_pairs(table.settings))),
        *([] if c_trigger else [trigger_function(table, log_number)]),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER), target),
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()")
        .format(sql.Identifier(TRIGGER), target, function),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER + "_truncate"), target),
        sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()")
        .format(sql.Identifier(TRIGGER + "_truncate"), target, function),
    ]


Subscriptions = dict[str, dict[str, TableSubscription]]  # route -> table -> what the route takes of it


def filtered_columns(subscriptions: Subscriptions) -> dict[str, set[str]]:
    """Per table, every column a row filter of some route uses."""
    used: dict[str, set[str]] = {}
    for tables in subscriptions.values():
        for table, subscription in tables.items():
            row_filter = subscription.row_filter()
            if row_filter is not None:
                used.setdefault(table, set()).update(row_filter.columns)
    return used


def subscription_problems(tables: list[PublishedTable], subscriptions: Subscriptions) -> list[str]:
    """Route subscriptions checked against the published tables: tables, columns, keys, filter types."""
    by_name = {t.qualified: t for t in tables}
    problems = []
    for route, wanted in sorted(subscriptions.items()):
        for name, subscription in wanted.items():
            table = by_name.get(name)
            if table is None:
                problems.append(f"routes.{route}.tables.{name}: not a table published by the source")
                continue
            unknown = [c for c in subscription.columns or () if c not in table.columns]
            if unknown:
                problems.append(f"routes.{route}.tables.{name}.columns: no such columns: {', '.join(unknown)}")
            lacking_key = [c for c in table.key_columns if subscription.columns and c not in subscription.columns]
            if lacking_key:
                problems.append(f"routes.{route}.tables.{name}.columns: must include the key ({', '.join(lacking_key)})")
            row_filter = subscription.row_filter()
            if row_filter is not None:
                try:
                    compile_filter(row_filter, table.columns, table.column_types)
                except FilterError as exc:
                    problems.append(f"routes.{route}.tables.{name}.where: {exc}")
    return problems


@dataclass(frozen=True)
class InstallPlan:
    statements: list[sql.Composable]
    notes: list[str]  # what install does beyond the obvious, for the operator


def plan_install(conn: psycopg.Connection, source: Source, subscriptions: Subscriptions | None = None) -> InstallPlan:
    statements: list[sql.Composable] = [sql.SQL(s) for s in BASE_DDL]
    subscriptions = subscriptions or {}
    tables = describe_tables(conn, source.tables, source.exclude, source.keys, filtered_columns(subscriptions))
    problems = subscription_problems(tables, subscriptions)
    if problems:
        raise CaptureError("the routes' subscriptions do not fit the published tables: " + "; ".join(problems))
    log_number = current_log(conn)
    c_trigger = ctrigger.use_c_trigger(conn, source.capture_trigger)
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    statements += ctrigger.function_statements(log_table(log_number), c_trigger)
    for table in tables:
        statements += table_statements(table, log_number, c_trigger)
    partitioned = [t for t in tables if t.partitions is not None]
    statements += partitions.install_statements([t.qualified for t in partitioned], superuser)
    notes = [line for t in partitioned for line in partitions.plan_lines(t.qualified, t.partitions or (), superuser)]
    if superuser:
        statements += follow_ddl_statements()
    else:
        notes.append("not a superuser: no event triggers, so ALTER TABLE on published tables is not followed; "
                     "run `pgfanout agent install` again after each one")
    return InstallPlan(statements, notes)


def install_statements(conn: psycopg.Connection, source: Source,
                       subscriptions: Subscriptions | None = None) -> list[sql.Composable]:
    return plan_install(conn, source, subscriptions).statements


def render(conn: psycopg.Connection, plan: InstallPlan) -> str:
    """The plan as an SQL script: its notes as comments, then its statements."""
    notes = "".join(f"-- {line}\n" for line in plan.notes)
    return notes + ("\n" if notes else "") + "".join(s.as_string(conn).strip() + ";\n\n" for s in plan.statements)


def install(conn: psycopg.Connection, source: Source, subscriptions: Subscriptions | None = None) -> list[str]:
    """Install capture in one transaction; running it again changes nothing. Returns the plan's notes."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgfanout.install'))")
        plan = plan_install(conn, source, subscriptions)
        for statement in plan.statements:
            conn.execute(statement)
    for note in plan.notes:
        log.info("%s", note)
    log.info("capture installed")
    return plan.notes


def agent_grants(role: str) -> list[sql.Composable]:
    """What a role running the agent, not the installer, needs (docs: README, Privileges)."""
    who = sql.Identifier(role)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT TRUNCATE ON {} TO {}").format(sql.SQL(", ").join(log_table(n) for n in LOG_TABLES), who),
        sql.SQL("GRANT EXECUTE ON FUNCTION pgfanout.switch_log() TO {}").format(who),
    ]


def uninstall(conn: psycopg.Connection) -> None:
    """Remove triggers, functions and the pgfanout schema; user tables and their rows stay as they are."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0] is None:
            log.info("capture is not installed; nothing to remove")
            return
        for schema_name, table_name in conn.execute("SELECT schema_name, table_name FROM pgfanout.tables").fetchall():
            if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema_name, table_name).as_string(conn),)).fetchone()[0]:
                target = sql.Identifier(schema_name, table_name)
                for trigger in (TRIGGER, TRIGGER + "_truncate"):
                    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
        conn.execute("DROP SCHEMA pgfanout CASCADE")
    log.info("capture removed")


def installed(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('pgfanout.agent_state') IS NOT NULL").fetchone()[0]
