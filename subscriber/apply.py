"""Applying a transaction's changes to the replica.

Planning is pure: consecutive changes to the same table with the same operation
and columns become one run, applied with one pipelined executemany; order inside
and across runs is the source's order. Values are PostgreSQL text representations
sent untyped, so each column's own input function parses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql

from pgfanout.errors import PoisonMessage


@dataclass(frozen=True)
class RunShape:
    schema_name: str
    table_name: str
    op: str
    columns: tuple[str, ...]  # row columns for INSERT/UPDATE
    key_columns: tuple[str, ...]  # columns identifying the row for UPDATE/DELETE


@dataclass
class Run:
    shape: RunShape
    params: list[tuple[Any, ...]]


def shape_of(change: dict[str, Any]) -> RunShape:
    op = change["op"]
    row = change["row"] or {}
    where = change["old_key"] or change["key"]
    return RunShape(change["schema_name"], change["table_name"], op, tuple(row), tuple(where) if op != "INSERT" else ())


def params_of(change: dict[str, Any], shape: RunShape) -> tuple[Any, ...]:
    row = change["row"] or {}
    where = change["old_key"] or change["key"]
    return tuple(row[c] for c in shape.columns) + tuple(where[c] for c in shape.key_columns)


def plan(changes: Iterable[dict[str, Any]]) -> Iterator[Run]:
    current: Run | None = None
    for change in changes:
        shape = shape_of(change)
        if current is not None and current.shape == shape and shape.op != "TRUNCATE":
            current.params.append(params_of(change, shape))
            continue
        if current is not None:
            yield current
        current = Run(shape, [params_of(change, shape)])
    if current is not None:
        yield current


@lru_cache(maxsize=4096)
def statement(shape: RunShape) -> sql.Composed:
    table = sql.Identifier(shape.schema_name, shape.table_name)
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in shape.key_columns)
    if shape.op == "INSERT":
        return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table, sql.SQL(", ").join(map(sql.Identifier, shape.columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(shape.columns)))
    if shape.op == "UPDATE":
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(
            table, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in shape.columns), where)
    if shape.op == "DELETE":
        return sql.SQL("DELETE FROM {} WHERE {}").format(table, where)
    return sql.SQL("TRUNCATE {}").format(table)


def apply_changes(cur: psycopg.Cursor, changes: list[dict[str, Any]], where: str) -> int:
    """Apply one transaction's changes inside the caller's transaction; returns rows changed.

    An UPDATE or DELETE that finds no row means the replica has diverged from the
    source: refuse, rather than silently drift further.
    """
    total = 0
    for run in plan(changes):
        query = statement(run.shape)
        if run.shape.op == "TRUNCATE":
            cur.execute(query)
            continue
        cur.executemany(query, run.params)
        if run.shape.op != "INSERT" and cur.rowcount != len(run.params):
            raise PoisonMessage(
                f"transaction at {where}: {run.shape.op} on {run.shape.schema_name}.{run.shape.table_name} "
                f"found {cur.rowcount} of {len(run.params)} rows; the replica has diverged from the source. "
                "Re-materialize it (`pgfanout subscriber resync`)"
            )
        total += len(run.params)
    return total
