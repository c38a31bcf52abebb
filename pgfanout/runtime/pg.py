"""PostgreSQL connection helpers: libpq conventions, pinned session settings, clear errors."""

from __future__ import annotations

import logging

import psycopg
import psycopg.conninfo
from psycopg import sql

from pgfanout.core.config import Database, secret
from pgfanout.core.errors import PostgresUnavailable

log = logging.getLogger(__name__)

# Where the C capture trigger wakes an idle agent at commit (agent/wake.py); anything that wants the agent
# to tick now, like a compare's snapshot request, may notify it too.
AGENT_WAKE_CHANNEL = "pgfanout_commit"

# Text representations of values depend on these; capture and apply pin the same ones.
SESSION_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
}


def primary_key(conn: psycopg.Connection, relation: int | str) -> list[str]:
    """A table's primary key columns in key order; ``relation`` is an oid or a quoted qualified name."""
    return [
        r[0]
        for r in conn.execute(
            """SELECT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = %s::regclass AND i.indisprimary
           ORDER BY array_position(i.indkey::int2[], a.attnum)""",
            (relation,),
        )
    ]


def describe(dsn: str) -> str:
    """host:port/dbname of a connection string, never its credentials."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    host = parts.get("host") or parts.get("hostaddr") or "(default host)"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or '(default db)'}"


def connect(db: Database, application_name: str) -> psycopg.Connection:
    """An autocommit connection: every unit of work is an explicit ``conn.transaction()`` block."""
    kwargs: dict[str, object] = {"application_name": application_name, "autocommit": True}
    password = secret(db.password_env)
    if password is not None:
        kwargs["password"] = password
    if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(db.dsn):
        kwargs["connect_timeout"] = 5
    try:
        conn = psycopg.connect(db.dsn, **kwargs)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PostgresUnavailable(describe(db.dsn), reason) from exc
    # pgfanout takes a lock, then reads what its holder committed, in a later statement: that needs a
    # snapshot per statement, whatever the server's or the database's default. REPEATABLE READ is only
    # ever asked for explicitly (copies). A database that is not the primary defaults to read-only sessions
    # (so that libpq's target_session_attrs=read-write passes it over); pgfanout's own write there.
    settings = {**SESSION_SETTINGS, "default_transaction_isolation": "read committed", "default_transaction_read_only": "off"}
    conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings.items()
            )
        )
    )
    return conn
