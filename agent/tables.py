"""What a source publishes: its tables as the catalog describes them, checked against the routes.

Each published table gets a layout (pgfanout.tables): its columns, key, column types, the
columns whose old values UPDATE and DELETE log (row filters use them), and the session settings
that shape its values' text. Keyless tables, missing tables, unsupported types and subscriptions
that do not fit are refused at install, all at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from agent import partitions
from agent.typesettings import settings_for_columns, unsupported_reason
from pgfanout.core import names
from pgfanout.core.config import TableSubscription
from pgfanout.core.errors import CaptureError, FilterError
from pgfanout.core.rowfilter import compile_filter
from pgfanout.core.scripts import SCRIPT_COLUMNS, SCRIPT_SCHEMA, SCRIPT_TABLE, SCRIPT_TYPES
from pgfanout.core.trace import TRACE_SCHEMA, TRACE_TABLE
from pgfanout.runtime.pg import primary_key


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
    """(tables, missing): ``schema.*`` and ``schema.prefix*`` entries become the schema's tables they match,
    minus ``exclude``."""
    found: list[str] = []
    missing: list[str] = []
    for entry in tables:
        schema_name, table_name = names.parse_table(entry, wildcard=True)
        if table_name is not names.ALL_TABLES and not isinstance(table_name, names.TablePattern):
            found.append(entry)
            continue
        in_schema = [
            r[0]
            for r in conn.execute(
                """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname""",
                (schema_name,),
            )
            if table_name is names.ALL_TABLES or table_name.matches(r[0])
        ]
        if not in_schema and table_name is names.ALL_TABLES:  # a pattern may match only tables created later
            missing.append(entry)
        found += [names.qualified(schema_name, name) for name in in_schema]
    excluded = set(exclude)
    return list(dict.fromkeys(t for t in found if t not in excluded)), missing


def _unique_not_null(conn: psycopg.Connection, oid: int, columns: list[str]) -> str | None:
    """None if ``columns`` are exactly a unique, non-partial index's columns and all NOT NULL; else why not."""
    nullable = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s) AND NOT attnotnull", (oid, columns)
        )
    ]
    if nullable:
        return f"columns {', '.join(nullable)} allow NULL"
    unique = conn.execute(
        """SELECT 1 FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL
             AND i.indexprs IS NULL
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                  WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = %s""",
        (oid, sorted(columns)),
    ).fetchone()
    return None if unique else "no unique index (without a WHERE clause) on exactly those columns"


def _catalog_has(conn: psycopg.Connection, column: str) -> bool:
    """Whether pgfanout.tables (installed by an older version, maybe) has ``column``."""
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'pgfanout.tables'::regclass AND attname = %s)", (column,)
    ).fetchone()[0]


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


def describe_tables(
    conn: psycopg.Connection,
    tables: list[str],
    exclude: list[str] | None = None,
    keys: dict[str, list[str]] | None = None,
    filtered: dict[str, set[str]] | None = None,
    first_table_id: int = 1,
) -> list[PublishedTable]:
    """Read each table's columns and key from the catalog; refuse missing and keyless tables, all at once.

    ``filtered`` names per table the columns row filters use: their old values are logged too. New layouts
    get ids from ``first_table_id`` on at least (a new primary's: pgfanout.core.generations).
    """
    with catalog_search_path(conn):
        return _describe_tables(conn, tables, exclude, keys, filtered, first_table_id)


def _describe_tables(
    conn: psycopg.Connection,
    tables: list[str],
    exclude: list[str] | None,
    keys: dict[str, list[str]] | None,
    filtered: dict[str, set[str]] | None,
    first_table_id: int = 1,
) -> list[PublishedTable]:
    keys, filtered = keys or {}, filtered or {}
    tables, missing = expand(conn, tables, exclude or [])
    latest: dict[tuple[str, str], tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}  # newest layouts
    if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0]:
        query = sql.SQL(
            "SELECT table_id, schema_name, table_name, columns, key_columns, {}, {} FROM pgfanout.tables ORDER BY table_id"
        ).format(
            sql.SQL("column_types" if _catalog_has(conn, "column_types") else "columns"),
            sql.SQL("old_columns" if _catalog_has(conn, "old_columns") else "'{}'::text[]"),
        )
        latest = {(s, t): (i, (*c, *k), tuple(types), tuple(old)) for i, s, t, c, k, types, old in conn.execute(query)}
    latest = {name: layout for name, layout in latest.items() if layout[0] >= first_table_id}
    next_id = max(max((v[0] for v in latest.values()), default=0) + 1, first_table_id)
    found, keyless, bad_keys, bad_types = [], [], [], []
    for qualified in tables:
        schema_name, table_name = names.parse_table(qualified)
        row = conn.execute(
            """SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s""",
            (schema_name, table_name),
        ).fetchone()
        if row is None or row[1] not in ("r", "p"):
            missing.append(qualified)
            continue
        oid = row[0]
        described = conn.execute(
            """SELECT attname, atttypid, format_type(atttypid, atttypmod),
                      CASE WHEN atthasmissing THEN (attmissingval::text::text[])[1] END
               FROM pg_attribute WHERE attrelid = %s AND attnum > 0
               AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""",
            (oid,),
        ).fetchall()
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
        found.append(
            PublishedTable(
                table_id,
                schema_name,
                table_name,
                tuple(columns),
                tuple(key),
                settings,
                types,
                missing_values,
                old_columns,
                partitions.leaves(conn, oid) if row[1] == "p" else None,
            )
        )
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
        problems.append(
            f"columns of types that cannot be replicated: {'; '.join(bad_types)}; leave the tables out, "
            "or change those columns (to text, or to the object's name)"
        )
    if problems:
        raise CaptureError("; ".join(problems))
    return found


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


TRACE_COLUMNS = ("trace_id", "committed_at", "requested_by")
TRACE_TYPES = ("bigint", "timestamp with time zone", "text")


def own_tables(conn: psycopg.Connection, published: list[PublishedTable], first_table_id: int = 1) -> list[PublishedTable]:
    """The layouts of pgfanout.trace and pgfanout.script (agent/sql/schema.sql), which every source publishes:
    each one's id from an earlier install, else the next ones after every layout there is and every one this
    install makes."""
    own = [
        (TRACE_SCHEMA, TRACE_TABLE, TRACE_COLUMNS, TRACE_TYPES, frozenset({"DateStyle", "TimeZone"})),
        (SCRIPT_SCHEMA, SCRIPT_TABLE, SCRIPT_COLUMNS, SCRIPT_TYPES, frozenset()),
    ]
    layouts: dict[tuple[str, str, tuple[str, ...]], int] = {}  # the newest id of each (schema, table, columns)
    highest = max((t.table_id for t in published), default=first_table_id - 1)
    if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0]:
        for schema_name, table_name, columns, table_id in conn.execute(
            "SELECT schema_name, table_name, columns, max(table_id) FROM pgfanout.tables WHERE table_id >= %s GROUP BY 1, 2, 3",
            (first_table_id,),
        ):
            layouts[(schema_name, table_name, tuple(columns))] = table_id
            highest = max(highest, table_id)
    found = []
    for schema_name, table_name, columns, types, settings in own:
        table_id = layouts.get((schema_name, table_name, columns))
        if table_id is None:
            highest += 1
            table_id = highest
        found.append(PublishedTable(table_id, schema_name, table_name, columns, (columns[0],), settings, types))
    return found


def patterns(tables: list[str]) -> list[tuple[str, str]]:
    """(schema, table name prefix) of each ``schema.*`` ("" prefix) and ``schema.prefix*`` entry: what tables
    created later are published by (agent/sql/new_tables.sql)."""
    found = []
    for entry in tables:
        schema_name, table_name = names.parse_table(entry, wildcard=True)
        if table_name is names.ALL_TABLES or isinstance(table_name, names.TablePattern):
            found.append((schema_name, table_name or ""))
    return found
