"""The SQL of `pgfanout compare`: bucket summaries of a table's share, and the rows of chosen buckets.

A row is compared by its text: every compared column cast to text, with the session settings that
shape a value's text pinned alike on both servers (pgfanout.runtime.pg.SESSION_SETTINGS). Keys are
compared by their columns' texts too, in the C collation's order on both sides, which is also
Python's order of those strings (subscriber.diff.merge relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

MIN_BUCKETS, MAX_BUCKETS, ROWS_PER_BUCKET = 64, 65_536, 1_000


def bucket_count(estimated_rows: int) -> int:
    """A power of two near a thousand rows per bucket, between 64 and 65,536."""
    buckets = MIN_BUCKETS
    while buckets < MAX_BUCKETS and buckets * ROWS_PER_BUCKET < estimated_rows:
        buckets *= 2
    return buckets


def _row(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def _where(filters: Sequence[str]) -> sql.Composable:
    """The route's row filters (already PostgreSQL SQL, regenerated from their parse trees)."""
    if not filters:
        return sql.SQL("true")
    return sql.SQL(" AND ").join(sql.SQL("({})").format(sql.SQL(f)) for f in filters)


def _bucket(keys: Sequence[str], buckets: int) -> sql.Composable:
    return sql.SQL("(hashtext({}) & {})").format(_row(keys), sql.Literal(buckets - 1))


def summary(
    table: sql.Identifier, keys: Sequence[str], columns: Sequence[str], filters: Sequence[str], buckets: int
) -> sql.Composable:
    """bucket, rows, sum of one hash of the rows' texts, xor of another: one scan of the table."""
    return sql.SQL(
        "SELECT {bucket} AS bucket, count(*), coalesce(sum(hashtext(r)::bigint), 0), "
        "coalesce(bit_xor(hashtextextended(r, 7)), 0) "
        "FROM (SELECT {row} AS r, {keys} FROM {table} WHERE {where}) s GROUP BY 1"
    ).format(
        bucket=_bucket(keys, buckets),
        row=_row(columns),
        table=table,
        where=_where(filters),
        keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
    )


def rows(
    table: sql.Identifier, keys: Sequence[str], columns: Sequence[str], filters: Sequence[str], buckets: int
) -> sql.Composable:
    """The keys' and columns' texts of the rows in the buckets %(buckets)s, in key order (C collation)."""
    return sql.SQL(
        "SELECT {keys}, {columns} FROM {table} WHERE {where} AND {bucket} = ANY (%(buckets)s::integer[]) ORDER BY {order}"
    ).format(
        keys=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in keys),
        columns=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        table=table,
        where=_where(filters),
        bucket=_bucket(keys, buckets),
        order=sql.SQL(", ").join(sql.SQL('{}::text COLLATE "C"').format(sql.Identifier(k)) for k in keys),
    )


def keyed_rows(table: sql.Identifier, keys: Sequence[str], columns: Sequence[str], filters: Sequence[str]) -> sql.Composable:
    """The same texts for the rows whose keys' texts are in %(keys)s (a jsonb array of text arrays)."""
    match = sql.SQL(
        "ARRAY[{}] IN (SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements(%(keys)s::jsonb) k)"
    ).format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in keys))
    return sql.SQL("SELECT {keys}, {columns} FROM {table} WHERE {where} AND {match} ORDER BY {order}").format(
        keys=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in keys),
        columns=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        table=table,
        where=_where(filters),
        match=match,
        order=sql.SQL(", ").join(sql.SQL('{}::text COLLATE "C"').format(sql.Identifier(k)) for k in keys),
    )
