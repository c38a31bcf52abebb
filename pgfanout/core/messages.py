"""The wire messages, typed: what schemas/*.avsc describe, as the codec decodes and encodes them.

TypedDicts rather than classes: fastavro reads and writes plain dicts, so the types cost
nothing on the hot paths (a message of 20,000 changes is never copied into objects), and a
type checker still sees every field by name. A sequence field may be any sequence (the agent
and the distributor pass tuples where nothing is to be appended).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

Op = Literal["INSERT", "UPDATE", "DELETE", "TRUNCATE", "SCHEMA"]
AvroSchema = dict[str, Any]  # a schema document (JSON): schemas/*.avsc, or a table's typed row schemas
RowRecord = dict[str, Any]  # one row of a table's own Key or Row schema (format: rows), by Avro field name


class ColumnDefinition(TypedDict):
    name: str
    type: str  # format_type(): qualified where not built in, with its modifiers
    not_null: bool
    collation: str  # qualified, only where it differs from the type's default; "" otherwise
    generated: str  # a STORED generated column's expression; "" otherwise


class NamedDefinition(TypedDict):
    name: str
    definition: str  # pg_get_constraintdef() or pg_get_indexdef(), names qualified


class TableDefinition(TypedDict):
    """What a replica builds of a table (schemas/table.avsc): columns, constraints, indexes; and what the
    schema change that made this layout renamed."""

    columns: Sequence[ColumnDefinition]
    constraints: Sequence[NamedDefinition]  # PRIMARY KEY, UNIQUE, CHECK, EXCLUDE; never FOREIGN KEY
    indexes: Sequence[NamedDefinition]  # indexes that back no constraint
    renamed_columns: dict[str, str]  # new name -> old name
    dropped_columns: Sequence[str]  # what the change dropped, by name: a replica's own stay
    dropped_constraints: Sequence[str]
    dropped_indexes: Sequence[str]
    previous_schema: str  # the table's schema and name before a rename; "" otherwise
    previous_table: str
    created: bool  # by a CREATE TABLE that matched a published pattern
    dropped_table: bool  # by DROP TABLE


class TableLayout(TypedDict):
    """A table as a message describes it (schemas/table.avsc); a new layout gets a new table_id."""

    table_id: int
    schema_name: str
    table_name: str
    columns: Sequence[str]
    key_columns: Sequence[str]
    column_types: Sequence[str]  # format_type() of each column; empty from agents older than types
    missing_values: dict[str, str]  # columns added with a constant default: the value existing rows hold
    old_columns: Sequence[str]  # non-key columns whose values before UPDATE and DELETE changes carry
    definition: NotRequired[TableDefinition | None]  # from agents that follow schema changes


class Change(TypedDict):
    """One row change (schemas/change.avsc): values as PostgreSQL text, NULLs by position."""

    table: int  # a TableLayout.table_id of the same message
    op: Op
    values: Sequence[str]  # the row after INSERT and UPDATE ("" where nulls says NULL)
    nulls: Sequence[int]
    old_key: Sequence[str]  # the key before DELETE, or before an UPDATE that changed it
    old_values: NotRequired[Sequence[str]]  # old_columns' values before UPDATE and DELETE
    old_nulls: NotRequired[Sequence[int]]


class Transaction(TypedDict):
    """One source transaction, or one chunk of it (schemas/transaction.avsc)."""

    position: int
    xid: int
    chunk: int
    last_chunk: bool
    changes: Sequence[Change]


class SnapshotRequest(TypedDict):
    """A subscriber asked by `pgfanout compare` to export a snapshot of its replica at the end of a tick."""

    subscriber: str
    hold: bool  # for a repair: it waits there until released


class Generation(TypedDict):
    """One generation of a stream: the primary that published from ``first_position`` on (schemas/batch.avsc)."""

    generation: int
    first_position: int
    primary: str  # a subscriber's name; "" for the source's own database


class Batch(TypedDict):
    """A Kafka message of whole transactions (or chunks) of one tick's batch (schemas/batch.avsc)."""

    source: str
    tick_id: int
    tick_time: datetime
    batch_end: bool
    snapshot: str  # the tick's txid snapshot: what a replica holds once it applied the batch to its end
    snapshot_requests: NotRequired[Sequence[SnapshotRequest]]  # on the batch's last message
    generation: NotRequired[int]
    lineage: NotRequired[Sequence[Generation]]
    tables: Sequence[TableLayout]
    transactions: Sequence[Transaction]


class Heartbeat(TypedDict):
    """Published while a source is idle (schemas/heartbeat.avsc)."""

    source: str
    position: int
    tick_id: int
    tick_time: datetime
    snapshot: str
    snapshot_requests: NotRequired[Sequence[SnapshotRequest]]
    generation: NotRequired[int]
    lineage: NotRequired[Sequence[Generation]]


class RowChange(TypedDict):
    """A change for consumers outside pgfanout: its key and row in the table's own schemas."""

    table: str
    op: Op
    key_schema: bytes
    key: bytes | None
    old_key: bytes | None
    row_schema: bytes
    row: bytes | None


class RowTransaction(TypedDict):
    position: int
    xid: int
    chunk: int
    last_chunk: bool
    changes: Sequence[RowChange]


class RowBatch(TypedDict):
    """A Batch as a route with format: rows sends it (schemas/rowbatch.avsc)."""

    source: str
    tick_id: int
    tick_time: datetime
    batch_end: bool
    transactions: Sequence[RowTransaction]


Message = Batch | Heartbeat | RowBatch
Kind = Literal["Batch", "Heartbeat", "RowBatch"]
