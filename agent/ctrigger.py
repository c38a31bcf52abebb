"""The C capture trigger (agent/capture_c): when to use it, and the SQL that installs it.

The C trigger encodes each change as an Avro Change record and writes a transaction's changes to the log
as one row at commit (columns ordinal, change_count, table_ids, changes), inserted without the executor
into the table ``agent_state.current_log`` names. The PL/pgSQL triggers write one row per
change. Both kinds of row live in the same log tables; one transaction's rows are always of one kind,
because install replaces every table's trigger in one transaction, which waits for the transactions
writing those tables. The SQL it reads is agent/sql/capture_c.sql, its functions agent/sql/c_functions.sql.

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
            "server (needs postgresql-server-dev), install as a superuser, or set capture_trigger: plpgsql"
        )
    return available


def pinned_settings_function() -> sql.Composable:
    """pgfanout.pinned_settings(): every pinned setting as the [name, value, ...] pairs of pgfanout.tables.settings,
    for layouts that the ALTER TABLE event trigger makes."""
    return sql.SQL("CREATE OR REPLACE FUNCTION pgfanout.pinned_settings() RETURNS text[] LANGUAGE sql IMMUTABLE AS {}").format(
        sql.Literal(sql.SQL("SELECT {}::text[]").format(sql.Literal(settings_pairs(None))).as_string(None))
    )
