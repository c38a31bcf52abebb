"""Columns the source added (ALTER TABLE ADD COLUMN) that the replica lacks.

A message describes each table with its columns and their types. A layout naming columns the
replica lacks gets them added, in the replica transaction that applies the first change written
with it, after everything collected before it (rows that existed get the value PostgreSQL gave
them on the source, its "missing value", not NULL).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from pgfanout.core.errors import PoisonMessage, Where
from pgfanout.core.messages import TableLayout, Transaction
from pgfanout.core.names import qualified

log = logging.getLogger(__name__)
Needs = dict[int, tuple[TableLayout, set[str]]]  # table id -> (its layout, the columns the replica has)


def tables_to_extend(part: Transaction, needs: Needs) -> list[int]:
    """The table ids of a part's changes that need columns, in the order they first appear."""
    return list(dict.fromkeys(c["table"] for c in part["changes"] if c["table"] in needs))


class NewColumns:
    def __init__(self, conn: psycopg.Connection, label: str):
        self.conn = conn
        self.label = label
        self.checked: set[tuple[str, str, tuple[str, ...]]] = set()  # layouts the replica has every column of

    def needed(self, layouts: Sequence[TableLayout], where: Where) -> Needs:
        """The layouts of a message with columns the replica lacks."""
        needs = {}
        for layout in layouts:
            if layout.get("definition"):
                continue  # an agent that follows schema changes: SCHEMA changes alter the table (subscriber.schema)
            key = (layout["schema_name"], layout["table_name"], tuple(layout["columns"]))
            if key in self.checked:
                continue
            present = self._replica_columns(layout)
            if all(column in present for column in layout["columns"]):
                self.checked.add(key)
            elif len(layout["column_types"]) != len(layout["columns"]):
                raise PoisonMessage(
                    f"message at {where}: table {qualified(*key[:2])} has columns "
                    f"{[c for c in layout['columns'] if c not in present]} the replica lacks, and the "
                    "message does not say their types (an older agent wrote it); add them by hand",
                    at=where,
                )
            else:
                needs[layout["table_id"]] = (layout, present)
        return needs

    def add(self, layout: TableLayout, present: set[str], where: Where) -> None:
        for index, column in enumerate(layout["columns"]):
            if column not in present:
                self._add_column(layout, index, where)
        self.checked.add((layout["schema_name"], layout["table_name"], tuple(layout["columns"])))

    def _replica_columns(self, layout: TableLayout) -> set[str]:
        target = sql.Identifier(layout["schema_name"], layout["table_name"])
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (target.as_string(self.conn),),
            )
        }

    def _add_column(self, layout: TableLayout, index: int, where: Where) -> None:
        target = sql.Identifier(layout["schema_name"], layout["table_name"])
        table = qualified(layout["schema_name"], layout["table_name"])
        column, type_sql = layout["columns"][index], layout["column_types"][index]
        existing_value = layout["missing_values"].get(column)
        statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(target, sql.Identifier(column), sql.SQL(type_sql))
        if existing_value is not None:
            statement = sql.SQL("{} DEFAULT {}::{}").format(statement, sql.Literal(existing_value), sql.SQL(type_sql))
        self.conn.execute("SAVEPOINT pgfanout_add_column")
        try:
            self.conn.execute(statement)
            if existing_value is not None:
                self.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(target, sql.Identifier(column)))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise PoisonMessage(
                f"message at {where}: adding column {column} {type_sql} to {table} failed: "
                f"{str(exc).strip()}; add it on the replica by hand and start the subscriber "
                "again",
                at=where,
            ) from exc
        self.conn.execute("RELEASE SAVEPOINT pgfanout_add_column")
        log.warning(
            "%s: added column %s %s to %s, as the source did%s",
            self.label,
            column,
            type_sql,
            table,
            f" (existing rows get {existing_value!r})" if existing_value is not None else "",
        )
