"""Routes with ``format: rows``: each change's key and row typed by its table's own Avro schemas.

Pure logic, like routing.py: a Batch (already cut to the route's share by its RouteFilter, if
it has a subscription) becomes a RowBatch with the same transactions in the same order. The
schemas of each table layout are generated once (pgfanout/core/rows.py); the ones new to this
process are handed to the caller, which registers them before the message is sent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fastavro

from distributor.routing import RouteFilter
from pgfanout.core.errors import RouteError, Where
from pgfanout.core.messages import Batch, Change, RowBatch, RowChange, RowRecord, TableLayout
from pgfanout.core.names import qualified
from pgfanout.core.rows import TableSchemas, schema_text, table_schemas
from pgfanout.core.scripts import is_own


class _Layout:
    def __init__(self, table: TableLayout):
        self.name = qualified(table["schema_name"], table["table_name"])
        self.schemas: TableSchemas = table_schemas(table)
        self.key_writer = fastavro.parse_schema(self.schemas.key)
        self.row_writer = fastavro.parse_schema(self.schemas.row)

    def row(self, values: Sequence[str], nulls: Sequence[int]) -> RowRecord:
        null_set = set(nulls)
        convert, names = self.schemas.converters, self.schemas.field_names
        return {names[i]: None if i in null_set else convert[i](value) for i, value in enumerate(values)}

    def key_of_row(self, row: RowRecord) -> RowRecord:
        names = self.schemas.field_names
        return {names[i]: row[names[i]] for i in self.schemas.key_positions}

    def key(self, texts: Sequence[str]) -> RowRecord:
        convert, names = self.schemas.converters, self.schemas.field_names
        return {names[i]: convert[i](text) for i, text in zip(self.schemas.key_positions, texts, strict=True)}


def _encode(writer: Any, record: RowRecord) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    return buffer.getvalue()


class RowsRoute:
    """What a ``format: rows`` route receives: its share of each batch, as a RowBatch."""

    kind = "RowBatch"

    def __init__(self, route: str, share: RouteFilter | None):
        self.route, self.share = route, share
        self.layouts: dict[int, _Layout] = {}
        self.learned: list[tuple[str, str]] = []  # (fingerprint hex, schema text) made since the last take

    def _layout(self, table: TableLayout, where: Where) -> _Layout:
        table_id = table["table_id"]
        if table_id not in self.layouts:
            try:
                layout = _Layout(table)
            except Exception as exc:  # fastavro refusing a generated schema: a bug, named with its table
                raise RouteError(
                    f"route {self.route}: no Avro schema for table layout {table_id} at {where}: {exc}", at=where
                ) from exc
            self.layouts[table_id] = layout
            for schema, key in (
                (layout.schemas.key, layout.schemas.key_fingerprint),
                (layout.schemas.row, layout.schemas.row_fingerprint),
            ):
                self.learned.append((key.hex(), schema_text(schema)))
        return self.layouts[table_id]

    def take_learned(self) -> list[tuple[str, str]]:
        learned, self.learned = self.learned, []
        return learned

    def batch(self, message: Batch, where: Where) -> RowBatch:
        if self.share is not None:
            message = self.share.batch(message, where)
        # trace markers and scripts are pgfanout's own: consumers outside it get none
        layouts = {
            t["table_id"]: self._layout(t, where) for t in message["tables"] if not is_own(t["schema_name"], t["table_name"])
        }
        return {
            "source": message["source"],
            "tick_id": message["tick_id"],
            "tick_time": message["tick_time"],
            "batch_end": message["batch_end"],
            "transactions": [
                {
                    "position": t["position"],
                    "xid": t["xid"],
                    "chunk": t["chunk"],
                    "last_chunk": t["last_chunk"],
                    # a schema change reaches these consumers as its table's new row schemas, on the changes after it
                    "changes": [
                        self._change(layouts[c["table"]], c)
                        for c in t["changes"]
                        if c["table"] in layouts and c["op"] != "SCHEMA"
                    ],
                }
                for t in message["transactions"]
            ],
        }

    @staticmethod
    def _change(layout: _Layout, change: Change) -> RowChange:
        op = change["op"]
        row = key = old_key = None
        if op in ("INSERT", "UPDATE"):
            values = layout.row(change["values"], change["nulls"])
            row = _encode(layout.row_writer, values)
            key = _encode(layout.key_writer, layout.key_of_row(values))
            if op == "UPDATE" and change["old_key"]:
                old_key = _encode(layout.key_writer, layout.key(change["old_key"]))
        elif op == "DELETE":
            key = _encode(layout.key_writer, layout.key(change["old_key"]))
        return {
            "table": layout.name,
            "op": op,
            "key_schema": layout.schemas.key_fingerprint,
            "key": key,
            "old_key": old_key,
            "row_schema": layout.schemas.row_fingerprint,
            "row": row,
        }
