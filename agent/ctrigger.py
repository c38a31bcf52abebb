"""The C capture trigger (agent/capture_c): when to use it, and the SQL that installs it.

The C trigger encodes each change as an Avro Change record and writes a transaction's changes to the log
as one row at commit (columns ordinal, change_count, table_ids, changes), inserted without the executor
into the table ``agent_state.current_log`` names. The PL/pgSQL triggers write one row per
change. Both kinds of row live in the same log tables; one transaction's rows are always of one kind,
because install replaces every table's trigger in one transaction, which waits for the transactions
writing those tables.

A C function can only be created by a superuser, from a library installed in the server's library
directory (``make -C agent/capture_c install``), which managed PostgreSQL services do not allow: the
PL/pgSQL triggers stay the portable fallback.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from agent.typesettings import pinned
from pgfanout.core.errors import CaptureError

LIBRARY = "pgfanout_capture"
FUNCTION = "capture_packed"

# The layout the C trigger reads once per backend and table: the newest layout row of the relation, or for
# a partition, of its nearest published ancestor (agent/partitions.py).
LAYOUT_FUNCTION = """
CREATE OR REPLACE FUNCTION pgfanout.layout_of(relation oid)
RETURNS TABLE (table_id integer, columns text[], key_columns text[], old_columns text[], settings text[])
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $layout$
    SELECT t.table_id, t.columns, t.key_columns, t.old_columns, t.settings
      FROM (SELECT relation AS relid, 0::bigint AS depth
            UNION ALL SELECT a.relid, a.depth FROM pg_partition_ancestors(relation) WITH ORDINALITY a(relid, depth)) a
      JOIN pg_class c ON c.oid = a.relid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pgfanout.tables t ON t.schema_name = n.nspname AND t.table_name = c.relname
     ORDER BY a.depth, t.table_id DESC LIMIT 1
$layout$"""

# Writes a C trigger row from SQL (tests). switch_log() rewrites the log table it names, and that rewrite
# is also what tells every backend's C trigger to read agent_state.current_log again (any pg_proc change
# does), so it must stay installed even where no PL/pgSQL trigger is left to rewrite.
APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION pgfanout.append_changes(first_ordinal integer, change_count integer,
                                                   table_ids integer[], changes bytea)
RETURNS void LANGUAGE plpgsql AS $append$
BEGIN
    INSERT INTO {log} (table_id, op, ordinal, change_count, table_ids, changes)
        VALUES (0, 'P', first_ordinal, change_count, table_ids, changes);
END $append$"""


def settings_pairs(names: frozenset[str] | None) -> list[str]:
    """The settings the trigger pins, as the flat [name, value, ...] list pgfanout.tables.settings holds."""
    return [item for pair in pinned(names).items() for item in pair]


def library_installed(conn: psycopg.Connection) -> bool:
    """Whether the server's library directory holds the C trigger (superusers only can tell, and use it)."""
    if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        return False
    directory = conn.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()[0]
    return conn.execute("SELECT (pg_stat_file(%s, true)).size IS NOT NULL", (f"{directory}/{LIBRARY}.so",)).fetchone()[0]


def use_c_trigger(conn: psycopg.Connection, choice: str) -> bool:
    if choice == "plpgsql":
        return False
    available = library_installed(conn)
    if choice == "c" and not available:
        raise CaptureError(
            f"capture_trigger is c, but the library {LIBRARY} is not installed on the server, "
            "or the installing role is not a superuser: run `make -C agent/capture_c install` on the database "
            "server (needs postgresql-server-dev), install as a superuser, or set capture_trigger: plpgsql")
    return available


def function_statements(log_table: sql.Composable, c_trigger: bool) -> list[sql.Composable]:
    statements: list[sql.Composable] = [
        sql.SQL(LAYOUT_FUNCTION),
        sql.SQL("REVOKE ALL ON FUNCTION pgfanout.layout_of(oid) FROM PUBLIC"),
        sql.SQL(APPEND_FUNCTION).format(log=log_table),
        sql.SQL("REVOKE ALL ON FUNCTION pgfanout.append_changes(integer, integer, integer[], bytea) FROM PUBLIC"),
    ]
    if c_trigger:
        library = sql.Literal(f"$libdir/{LIBRARY}")
        statements += [
            sql.SQL("CREATE OR REPLACE FUNCTION pgfanout.{}() RETURNS trigger LANGUAGE c AS {}, {}").format(
                sql.Identifier(FUNCTION), library, sql.Literal("pgfanout_capture")),
            # every row of a relation as inserted into or deleted from a published table (agent/sql/partitions.sql)
            sql.SQL("CREATE OR REPLACE FUNCTION pgfanout.capture_rows(relation oid, published oid, op \"char\") "
                    "RETURNS bigint LANGUAGE c STRICT AS {}, {}").format(library, sql.Literal("pgfanout_capture_rows")),
            sql.SQL('REVOKE ALL ON FUNCTION pgfanout.capture_rows(oid, oid, "char") FROM PUBLIC'),
        ]
    return statements
