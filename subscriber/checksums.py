"""The SQL of `pgfanout compare`: key ranges of a table, a range's checksum, a range's rows.

A row is compared by its text: every compared column cast to text, with the session settings that shape
a value's text pinned alike on both servers (pgfanout.runtime.pg.SESSION_SETTINGS). Ranges are ranges
of the first key column's values, in its type's order, with bounds given as text literals that each
server reads as that type: a range is an index range scan of the primary key on both sides. Rows are
listed in the order of their keys' texts in the C collation on both sides, which is also Python's order
of those strings (subscriber.diff.merge relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from subscriber.diff import KeyRange


def _texts(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)


def _where(key: str, bounds: KeyRange, filters: Sequence[str]) -> sql.Composable:
    """The range's bounds, and the route's row filters (PostgreSQL SQL regenerated from their parse trees)."""
    low, high = bounds
    parts = [sql.SQL("({})").format(sql.SQL(f)) for f in filters]
    if low is not None:
        parts.append(sql.SQL("{} >= {}").format(sql.Identifier(key), sql.Literal(low)))
    if high is not None:
        parts.append(sql.SQL("{} < {}").format(sql.Identifier(key), sql.Literal(high)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def sampled_bounds(table: sql.Identifier, key: str) -> sql.Composable:
    """The first key column's values at %(fractions)s of a sample of %(percent)s of the table's pages."""
    return sql.SQL(
        "SELECT percentile_disc(%(fractions)s::float8[]) WITHIN GROUP (ORDER BY {key})::text[] "
        "FROM {table} TABLESAMPLE SYSTEM (%(percent)s)"
    ).format(key=sql.Identifier(key), table=table)


def bounds_within(table: sql.Identifier, key: str, bounds: KeyRange) -> sql.Composable:
    """The first key column's values at %(fractions)s of the rows of a range (on the primary, to split it)."""
    return sql.SQL(
        "SELECT percentile_disc(%(fractions)s::float8[]) WITHIN GROUP (ORDER BY {key})::text[] FROM {table} WHERE {where}"
    ).format(key=sql.Identifier(key), table=table, where=_where(key, bounds, ()))


def checksum(table: sql.Identifier, key: str, columns: Sequence[str], filters: Sequence[str], bounds: KeyRange) -> sql.Composable:
    """A range's row count and the xor of a 64-bit hash of each row's text. Rows are unique by key on both
    sides, so different sets of rows give a different xor but for a 2^-64 chance."""
    return sql.SQL(
        "SELECT count(*), coalesce(bit_xor(hashtextextended(ROW({columns})::text, 0)), 0) FROM {table} WHERE {where}"
    ).format(columns=sql.SQL(", ").join(map(sql.Identifier, columns)), table=table, where=_where(key, bounds, filters))


def rows(
    table: sql.Identifier, keys: Sequence[str], columns: Sequence[str], filters: Sequence[str], bounds: KeyRange
) -> sql.Composable:
    """The keys' and columns' texts of a range's rows, in the order of the keys' texts (C collation)."""
    return sql.SQL("SELECT {keys}, {columns} FROM {table} WHERE {where} ORDER BY {order}").format(
        keys=_texts(keys),
        columns=_texts(columns),
        table=table,
        where=_where(keys[0], bounds, filters),
        order=sql.SQL(", ").join(sql.SQL('{}::text COLLATE "C"').format(sql.Identifier(k)) for k in keys),
    )


def keyed_rows(table: sql.Identifier, keys: Sequence[str], columns: Sequence[str], filters: Sequence[str]) -> sql.Composable:
    """The same texts for the rows whose keys' texts are in %(keys)s (a jsonb array of text arrays)."""
    match = sql.SQL(
        "ARRAY[{}] IN (SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements(%(keys)s::jsonb) k)"
    ).format(_texts(keys))
    return sql.SQL("SELECT {keys}, {columns} FROM {table} WHERE {where} AND {match} ORDER BY {order}").format(
        keys=_texts(keys),
        columns=_texts(columns),
        table=table,
        where=_where(keys[0], (None, None), filters),
        match=match,
        order=sql.SQL(", ").join(sql.SQL('{}::text COLLATE "C"').format(sql.Identifier(k)) for k in keys),
    )


# How a column's values sort: its collation as each server defines it (the database's for the default
# collation). Key ranges are cut by the primary's order and read by the replica's: they must agree.
KEY_COLLATION = """
SELECT CASE
    WHEN a.attcollation = 0 THEN '{}'::jsonb
    WHEN a.attcollation = (SELECT oid FROM pg_collation WHERE collname = 'default' AND collnamespace = 'pg_catalog'::regnamespace)
        THEN (SELECT jsonb_object_agg(key, value) FROM pg_database d, jsonb_each(to_jsonb(d))
              WHERE d.datname = current_database()
              AND key IN ('datcollate', 'datctype', 'datlocprovider', 'daticulocale', 'datlocale', 'daticurules'))
    ELSE (SELECT jsonb_object_agg(key, value) FROM pg_collation c, jsonb_each(to_jsonb(c))
          WHERE c.oid = a.attcollation
          AND key IN ('collprovider', 'collcollate', 'collctype', 'colliculocale', 'colllocale', 'collicurules',
                      'collisdeterministic'))
    END
FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attname = %s
"""
