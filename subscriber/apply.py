"""Applying a transaction's changes to the replica.

Planning is pure: consecutive changes to the same table with the same operation
become one run, applied with one pipelined executemany; order inside and across
runs is the source's order. Values are PostgreSQL text representations sent
untyped, so each column's own input function parses them.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql

from pgfanout.core.errors import PoisonMessage, Where
from pgfanout.core.messages import Batch, Change
from pgfanout.core.names import qualified


@dataclass(frozen=True)
class TableInfo:
    schema_name: str
    table_name: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    key_indexes: tuple[int, ...]

    @property
    def qualified(self) -> str:
        return qualified(self.schema_name, self.table_name)


@lru_cache(maxsize=4096)
def table_info(schema_name: str, table_name: str, columns: tuple[str, ...], key_columns: tuple[str, ...]) -> TableInfo:
    try:
        indexes = tuple(columns.index(k) for k in key_columns)
    except ValueError:
        raise PoisonMessage(
            f"table {qualified(schema_name, table_name)}: key columns {key_columns} are not all among its columns"
        ) from None
    return TableInfo(schema_name, table_name, columns, key_columns, indexes)


def tables_of(message: Batch) -> dict[int, TableInfo]:
    return {
        t["table_id"]: table_info(t["schema_name"], t["table_name"], tuple(t["columns"]), tuple(t["key_columns"]))
        for t in message["tables"]
    }


@dataclass(frozen=True)
class RunShape:
    table: TableInfo
    op: str


@dataclass
class Run:
    shape: RunShape
    params: list[tuple[Any, ...]]


def params_of(change: Change, table: TableInfo, where: Where) -> tuple[Any, ...]:
    op, values, old_key = change["op"], change["values"], change["old_key"]
    if change["nulls"]:
        values = list(values)
        for index in change["nulls"]:
            values[index] = None
    if op in ("INSERT", "UPDATE"):
        if len(values) != len(table.columns):
            raise PoisonMessage(
                f"change at {where}: {op} on {table.qualified} carries "
                f"{len(values) or 'no'} values for {len(table.columns)} columns",
                at=where,
            )
        if op == "INSERT":
            return tuple(values)
        key = old_key or [values[i] for i in table.key_indexes]
        return (*values, *key)
    if op == "DELETE":
        if len(old_key) != len(table.key_columns):
            raise PoisonMessage(f"change at {where}: DELETE on {table.qualified} lacks its key", at=where)
        return tuple(old_key)
    return ()


def plan(changes: Iterable[Change], tables: dict[int, TableInfo], where: Where) -> Iterator[Run]:
    current: Run | None = None
    current_key: tuple[int, str] | None = None
    for change in changes:
        key = (change["table"], change["op"])
        if key == current_key and key[1] != "TRUNCATE":
            current.params.append(params_of(change, current.shape.table, where))  # type: ignore[union-attr]
            continue
        table = tables.get(change["table"])
        if table is None:
            raise PoisonMessage(
                f"change at {where} refers to table {change['table']}, which its message does not describe", at=where
            )
        if current is not None:
            yield current
        current, current_key = Run(RunShape(table, change["op"]), [params_of(change, table, where)]), key
    if current is not None:
        yield current


def plan_by_table(changes: Iterable[Change], tables: dict[int, TableInfo], where: Where) -> list[Run]:
    """Runs for many transactions' changes applied in one replica transaction, grouped per table.

    The applier runs with session_replication_role = replica: no foreign-key checks and no user triggers,
    so changes to different tables commute. Each table's own changes keep their order (unique keys are
    per table), which is all that the final state depends on.
    """
    buckets: dict[int, list[Change]] = {}
    for change in changes:
        buckets.setdefault(change["table"], []).append(change)
    return [run for bucket in buckets.values() for run in plan(bucket, tables, where)]


@lru_cache(maxsize=4096)
def statement(shape: RunShape) -> sql.Composed:
    table = shape.table
    target = sql.Identifier(table.schema_name, table.table_name)
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.key_columns)
    if shape.op == "INSERT":
        return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, table.columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(table.columns)),
        )
    if shape.op == "UPDATE":
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(
            target, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.columns), where
        )
    if shape.op == "DELETE":
        return sql.SQL("DELETE FROM {} WHERE {}").format(target, where)
    return sql.SQL("TRUNCATE {}").format(target)


def truncate(cur: psycopg.Cursor, table: TableInfo) -> None:
    """TRUNCATE, or where a replica's own foreign key refers to the table (which TRUNCATE refuses even for the
    applier), a DELETE of every row: the applier's role does not check foreign keys."""
    target = sql.Identifier(table.schema_name, table.table_name)
    referenced = cur.execute(
        "SELECT EXISTS (SELECT FROM pg_constraint WHERE confrelid = %s::regclass AND contype = 'f')",
        (target.as_string(cur),),
    ).fetchone()[0]  # type: ignore[index]
    cur.execute(sql.SQL("DELETE FROM {}" if referenced else "TRUNCATE {}").format(target))


COPY_MIN_ROWS = 64  # below this, pipelined statements are as fast as COPY and its merge


# Staging tables created, per connection; weak keys, so a new connection never inherits a dead one's set.
_staged: weakref.WeakKeyDictionary[psycopg.Connection, set[str]] = weakref.WeakKeyDictionary()


def forget_staging(conn: psycopg.Connection) -> None:
    """Temp tables created since a rolled-back savepoint (or on a closed connection) are gone."""
    _staged.pop(conn, None)


def stage_name(table: TableInfo, kind: str) -> sql.Identifier:
    digest = hashlib.md5(f"{table.qualified}/{kind}".encode()).hexdigest()[:16]
    return sql.Identifier(f"pgfanout_stage_{digest}")


def _stage(cur: psycopg.Cursor, table: TableInfo, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> sql.Identifier:
    """COPY rows into an empty temp table shaped like ``columns`` of the target; returns its name."""
    target = sql.Identifier(table.schema_name, table.table_name)
    stage = stage_name(table, ",".join(columns))
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    staged = _staged.setdefault(cur.connection, set())
    if stage.as_string() not in staged:
        cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(stage, cols, target))
        staged.add(stage.as_string())
    cur.execute(sql.SQL("TRUNCATE {}").format(stage))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols)) as copy:
        for row in rows:
            copy.write_row(row)
    return stage


def _key_match(table: TableInfo, left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), sql.Identifier(k), sql.Identifier(right), sql.Identifier(k))
        for k in table.key_columns
    )


def copy_run(cur: psycopg.Cursor, run: Run) -> int | None:
    """Apply a large run with COPY (and one set-based statement); None when this run cannot go that way.

    Returns how many rows the last command must have touched (the rows copied, or the distinct keys
    merged), for the divergence check against ``cur.rowcount``.
    """
    table, op = run.shape.table, run.shape.op
    target = sql.Identifier(table.schema_name, table.table_name)
    width = len(table.columns)
    if op == "INSERT":
        cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols)) as copy:
            for row in run.params:
                copy.write_row(row)
        return len(run.params)
    if op == "UPDATE":
        latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for params in run.params:
            row, key = params[:width], params[width:]
            if tuple(row[i] for i in table.key_indexes) != key:
                return None  # a key change: it must be applied row by row, in order
            latest[key] = row  # full row images: the last one is the row's final state
        stage = _stage(cur, table, table.columns, latest.values())
        # a table made of key columns only still gets its rows matched, for the divergence check
        changed = [c for c in table.columns if c not in table.key_columns] or list(table.key_columns)
        assignments = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in changed)
        cur.execute(
            sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE {}").format(target, assignments, stage, _key_match(table, "t", "s"))
        )
        return len(latest)
    if op == "DELETE":
        keys = list(dict.fromkeys(run.params))
        stage = _stage(cur, table, table.key_columns, keys)
        cur.execute(sql.SQL("DELETE FROM {} AS t USING {} AS s WHERE {}").format(target, stage, _key_match(table, "t", "s")))
        return len(keys)
    return None


def apply_changes(
    cur: psycopg.Cursor, changes: list[Change], tables: dict[int, TableInfo], where: Where, by_table: bool = False
) -> int:
    """Apply changes inside the caller's transaction; returns rows changed.

    ``by_table`` applies many transactions' changes grouped per table (see plan_by_table). An UPDATE or
    DELETE that finds no row means the replica has diverged from the source: refuse, rather than
    silently drift further.
    """
    total = 0
    for run in (plan_by_table if by_table else plan)(changes, tables, where):
        query = statement(run.shape)
        if run.shape.op == "TRUNCATE":
            truncate(cur, run.shape.table)
            continue
        expected = copy_run(cur, run) if len(run.params) >= COPY_MIN_ROWS else None
        if expected is not None:
            if cur.rowcount != expected:
                raise PoisonMessage(
                    f"transaction at {where}: {run.shape.op} on {run.shape.table.qualified} found {cur.rowcount} of "
                    f"{expected} rows; the replica has diverged from the source. Re-materialize it "
                    "(`pgfanout subscriber resync`)",
                    at=where,
                )
            total += len(run.params)
            continue
        if len(run.params) == 1:
            cur.execute(query, run.params[0])  # one row: a plain round trip is cheaper than a pipeline
        else:
            cur.executemany(query, run.params)
        if run.shape.op != "INSERT" and cur.rowcount != len(run.params):
            raise PoisonMessage(
                f"transaction at {where}: {run.shape.op} on {run.shape.table.qualified} "
                f"found {cur.rowcount} of {len(run.params)} rows; the replica has diverged from the source. "
                "Re-materialize it (`pgfanout subscriber resync`)",
                at=where,
            )
        total += len(run.params)
    return total
