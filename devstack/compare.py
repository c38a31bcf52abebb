"""Per-table row counts and content checksums, to prove a replica equals its source."""

from __future__ import annotations

from typing import NamedTuple

import psycopg
from psycopg import sql

from pgfanout.runtime.pg import primary_key


class Digest(NamedTuple):
    rows: int
    checksum: str


def table_digest(conn: psycopg.Connection, schema_name: str, table_name: str, key_columns: list[str]) -> Digest:
    """Count and an md5 over every row's text in key order (session settings pinned by pg.connect)."""
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) FROM {table} t").format(
        order=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_columns),
        table=sql.Identifier(schema_name, table_name),
    )
    with conn.transaction():
        rows, checksum = conn.execute(query).fetchone()
    return Digest(rows, checksum)


def primary_keys(conn: psycopg.Connection, schema_name: str, table_name: str) -> list[str]:
    with conn.transaction():
        return primary_key(conn, sql.Identifier(schema_name, table_name).as_string(conn))
