"""The subscriber loop: consume a route, apply each source transaction atomically and in order.

The position (and the route offset it came from) is written in the same replica
transaction as the changes, PgQ-style: on restart the subscriber reads it back,
seeks the route just past it, and ``next_step`` skips repeats and stops at gaps.
Consecutive small transactions are grouped into one replica transaction (as
Sybase's DSI does); a group always holds whole source transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config
from pgfanout.core.errors import ApplierBusy, PoisonMessage, StreamGap
from pgfanout.core.names import qualified
from pgfanout.core.positions import WHOLE, Progress, Step, last_position, next_step
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime import registry
from pgfanout.runtime.pg import connect
from pgfanout.runtime.registry import RegistryDecoder
from subscriber.apply import TableInfo, apply_changes, forget_staging, tables_of
from subscriber.copyfilter import CopyFilters
from subscriber.materialize import Materializer
from subscriber.state import (
    SAVE_POSITION,
    UNKNOWN_OFFSET,
    applier_lock_key,
    ensure_state,
    protect_table,
    protected_tables,
    read_copy_filters,
)

log = logging.getLogger(__name__)

class Subscriber:
    def __init__(self, config: Config, name: str):
        self.name = f"subscriber {name}"
        self.config = config
        self.subscriber = name
        self.settings = config.subscribers[name]
        cluster_name, self.topic = config.stream(self.settings.route)
        self.cluster = config.kafka[cluster_name]
        self.source = config.origin_source(self.settings.route)
        self.idle_seconds = 0.0  # poll() waits for data
        self.codec = default_codec()
        self.decoder = RegistryDecoder(self.codec, self.cluster)
        self.conn: psycopg.Connection | None = None
        self.consumer: Any = None
        self.applied = Progress(0)  # committed in the replica
        self.group = Group(Progress(0), 0, None, -1)  # applied in the open replica transaction
        self.committed_offset = -1
        self.protected: set[tuple[str, str]] = set()
        self.skips: set[int] = set()
        self.commits = 0
        self.pending: list[tuple[dict[str, Any], dict[int, TableInfo], str, str]] = []  # collected, not yet applied
        self.pending_changes = 0
        self.pending_tables: dict[int, TableInfo] = {}
        self.copy_filters = CopyFilters({})
        self.checked_layouts: set[tuple[str, str, tuple[str, ...]]] = set()

    def connect(self) -> None:
        row = self._connect_replica()
        registry.load(self.cluster, self.codec)
        self.consumer = kafkautil.consumer(self.cluster)
        tp = kafkautil.partition(self.topic)
        self.consumer.assign([tp])
        if row is None:
            self.consumer.seek_to_beginning(tp)
            offset, tick_id = -1, 0
        else:
            _, tick_id, offset, topic = row
            if topic != self.topic:
                log.warning("%s: stored position came from topic %s, now reading %s", self.name, topic, self.topic)
                offset = UNKNOWN_OFFSET
            if offset == UNKNOWN_OFFSET:  # just materialized or imported: find where the stream continues
                offset = kafkautil.offset_after_position(self.consumer, tp, self.applied.position,
                                                         self._last_position) - 1
                log.info("%s: position %d continues at %s[0]@%d", self.name, self.applied.position, self.topic,
                         offset + 1)
            self.consumer.seek(tp, offset + 1)
        self.group = Group(self.applied, tick_id, None, offset)
        self.committed_offset = offset
        log.info("%s ready: position %d, reading %s", self.name, self.applied.position, self.topic)

    def _connect_replica(self) -> tuple[int, int, int, str] | None:
        """Connect to the replica as its only applier; the stored (position, tick, offset, topic), if any."""
        self.conn = connect(self.settings, f"pgfanout-subscriber-{self.subscriber}")
        ensure_state(self.conn)
        if not self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", applier_lock_key(self.subscriber)).fetchone()[0]:
            raise ApplierBusy(f"subscriber {self.subscriber} is being applied to or materialized by another process "
                              "(another `subscriber run`, or `init`/`resync`); waiting for it to finish")
        # The applier's own changes must not fire user triggers or re-check foreign keys.
        self.conn.execute("SET session_replication_role = replica")
        row = self.conn.execute(
            "SELECT position, tick_id, kafka_offset, topic FROM pgfanout_replica.position WHERE subscriber = %s",
            (self.subscriber,)).fetchone()
        self.protected = set(protected_tables(self.conn))
        self.skips = {r[0] for r in self.conn.execute(
            "SELECT position FROM pgfanout_replica.skip WHERE subscriber = %s", (self.subscriber,))}
        self._read_copy_filters()
        self.checked_layouts.clear()  # an ALTER in a rolled-back replica transaction is gone
        self.conn.autocommit = False  # one replica transaction may span several messages and polls
        self.applied = Progress(row[0] if row else 0)
        self.group = Group(self.applied, row[1] if row else 0, None, UNKNOWN_OFFSET)
        self.pending, self.pending_changes = [], 0
        self.pending_tables.clear()
        return row

    def _last_position(self, value: bytes, offset: int) -> int | None:
        return last_position(*self.decoder.decode(value, f"{self.topic}[0]@{offset}"))

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.conn is not None:
            forget_staging(self.conn)
            self.conn.close()  # an open replica transaction is rolled back: it holds no whole group
            self.conn = None

    def work(self) -> bool:
        try:
            return self._work()
        except StreamGap as gap:
            if self.settings.on_gap != "resync":
                raise
            log.error("%s: %s", self.name, gap)
            log.warning("%s: on_gap is resync: copying every table again", self.name)
            self.close()  # gives up the applier lock and rolls back the open replica transaction
            Materializer(self.config, self.subscriber).resync()
            self.connect()
            return True

    def _work(self) -> bool:
        tp = kafkautil.partition(self.topic)
        records = self.consumer.poll(timeout_ms=100, max_records=POLL_MESSAGES).get(tp, [])
        for record in records:
            self._apply_message(record)
            if self.group.pending.chunk == WHOLE and self._group_full():
                self._commit()
        # Commit what this poll brought (heartbeats move the stored offset too), unless a chunked
        # transaction is half applied: that one stays open until its last chunk arrives.
        if self.group.pending.chunk == WHOLE and self.group.offset != self.committed_offset:
            self._commit()
        return bool(records)

    def _where(self, record: Any) -> str:
        return f"{self.topic}[0]@{record.offset}"

    def _stored_offset(self, record: Any) -> int:
        """The offset saved with the position: where the next run continues reading."""
        return int(record.offset)

    def _apply_message(self, record: Any) -> None:
        assert self.conn is not None
        where = self._where(record)
        kind, message = self.decoder.decode(record.value, where)
        if self.group.started is None:
            self.group.started = time.monotonic()
            self._read_copy_filters(wait_for_resync=True)
        if kind == "Batch":
            tables = tables_of(message)
            self._protect(tables.values(), message["source"])
            if described_differently(self.pending_tables, tables):
                self._flush()  # a table described differently than in what was collected: apply that first
            needs_columns = self._layouts_needing_columns(message["tables"], where)
            for part in message["transactions"]:
                try:
                    if next_step(self.group.pending, part["position"], part["chunk"], where) is not Step.APPLY:
                        continue
                except StreamGap as gap:
                    raise StreamGap(f"subscriber {self.subscriber}: {gap}".replace("NAME", self.subscriber)) from None
                self._advance(part)
                if part["position"] in self.skips:
                    self._skip(part, where)
                    continue
                if self.copy_filters:
                    part = dict(part, changes=self.copy_filters.changes_to_apply(part, tables))
                if needs_columns:
                    self._add_columns_for(part, needs_columns, where)
                whole = part["chunk"] == 0 and part["last_chunk"]
                if not whole:
                    self._flush()  # keep source order: what was collected goes first
                self.pending.append((part, tables, message["source"], where))
                self.pending_changes += len(part["changes"])
                self.pending_tables.update(tables)
                if not whole or self.pending_changes >= FLUSH_CHANGES:
                    self._flush()
        self.group.tick_id, self.group.source_time = message["tick_id"], message["tick_time"]
        self.group.offset = self._stored_offset(record)

    def _protect(self, tables: Iterable[TableInfo], source: str) -> None:
        """Make each replicated table read-only for everyone but the applier, the first time it is seen."""
        assert self.conn is not None
        for table in tables:
            if (table.schema_name, table.table_name) in self.protected:
                continue
            try:
                protect_table(self.conn, table.schema_name, table.table_name, source)
            except psycopg.errors.UndefinedTable:
                raise PoisonMessage(f"table {table.qualified} does not exist on subscriber {self.subscriber}; "
                                    f"create it with `pgfanout subscriber init {self.subscriber}`") from None
            self.protected.add((table.schema_name, table.table_name))

    def _layouts_needing_columns(self, layouts: list[dict[str, Any]],
                                 where: str) -> dict[int, tuple[dict[str, Any], set[str]]]:
        """The message's table layouts with columns the replica lacks (the source ran ALTER TABLE ADD COLUMN)."""
        assert self.conn is not None
        needs = {}
        for layout in layouts:
            key = (layout["schema_name"], layout["table_name"], tuple(layout["columns"]))
            if key in self.checked_layouts:
                continue
            target = sql.Identifier(layout["schema_name"], layout["table_name"])
            present = self._replica_columns(target)
            if all(column in present for column in layout["columns"]):
                self.checked_layouts.add(key)
            elif len(layout["column_types"]) != len(layout["columns"]):
                raise PoisonMessage(f"message at {where}: table {qualified(*key)} has columns "
                                    f"{[c for c in layout['columns'] if c not in present]} the replica lacks, and the "
                                    "message does not say their types (an older agent wrote it); add them by hand")
            else:
                needs[layout["table_id"]] = (layout, present)
        return needs

    def _add_columns_for(self, part: dict[str, Any], needs: dict[int, tuple[dict[str, Any], set[str]]],
                         where: str) -> None:
        """Before the first change written with a new layout: apply what came before, then add its columns."""
        assert self.conn is not None
        for table_id in dict.fromkeys(c["table"] for c in part["changes"] if c["table"] in needs):
            self._flush()  # older changes first: rows that existed get the added column's value, not NULL
            layout, present = needs.pop(table_id)
            target = sql.Identifier(layout["schema_name"], layout["table_name"])
            for index, column in enumerate(layout["columns"]):
                if column not in present:
                    self._add_column(layout, index, target, where)
            self.checked_layouts.add((layout["schema_name"], layout["table_name"], tuple(layout["columns"])))

    def _replica_columns(self, target: sql.Identifier) -> set[str]:
        assert self.conn is not None
        return {r[0] for r in self.conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (target.as_string(self.conn),))}

    def _add_column(self, layout: dict[str, Any], index: int, target: sql.Identifier, where: str) -> None:
        assert self.conn is not None
        column, type_sql = layout["columns"][index], layout["column_types"][index]
        existing_value = layout["missing_values"].get(column)
        statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(target, sql.Identifier(column), sql.SQL(type_sql))
        if existing_value is not None:
            statement = sql.SQL("{} DEFAULT {}::{}").format(statement, sql.Literal(existing_value), sql.SQL(type_sql))
        self.conn.execute("SAVEPOINT pgfanout_add_column")
        try:
            self.conn.execute(statement)
            if existing_value is not None:
                self.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(
                    target, sql.Identifier(column)))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise PoisonMessage(f"message at {where}: adding column {column} {type_sql} to {layout['schema_name']}."
                                f"{layout['table_name']} failed: {str(exc).strip()}; add it on the replica by hand "
                                "and start the subscriber again") from exc
        self.conn.execute("RELEASE SAVEPOINT pgfanout_add_column")
        log.warning("%s: added column %s %s to %s.%s, as the source did%s", self.name, column, type_sql,
                    layout["schema_name"], layout["table_name"],
                    f" (existing rows get {existing_value!r})" if existing_value is not None else "")

    def _read_copy_filters(self, wait_for_resync: bool = False) -> None:
        assert self.conn is not None
        self.copy_filters = read_copy_filters(self.conn, self.subscriber, wait_for_resync)

    def _advance(self, part: dict[str, Any]) -> None:
        if part["last_chunk"]:
            self.group.pending = Progress(part["position"])
            self.group.transactions += 1
        else:
            self.group.pending = Progress(part["position"], part["chunk"])

    def _skip(self, part: dict[str, Any], where: str) -> None:
        """Leave out a transaction the operator asked to skip; forget the request with its last chunk."""
        assert self.conn is not None
        log.warning("%s: SKIPPING the transaction at %s position %d chunk %d, as `pgfanout subscriber skip` "
                    "asked; this replica now differs from the source by that transaction",
                    self.name, where, part["position"], part["chunk"])
        if part["last_chunk"]:
            self.conn.execute("DELETE FROM pgfanout_replica.skip WHERE subscriber = %s AND position = %s",
                              (self.subscriber, part["position"]))
            self.skips.discard(part["position"])

    def _flush(self) -> None:
        """Apply what the group collected, set-based and per table; on any failure find the culprit one by one."""
        if not self.pending:
            return
        assert self.conn is not None
        pending, tables = self.pending, dict(self.pending_tables)
        self.pending, self.pending_changes = [], 0
        self.pending_tables.clear()
        with self.conn.cursor() as cur:
            self._apply_parts(cur, pending, tables)

    def _apply_parts(self, cur: psycopg.Cursor, pending: list[tuple[dict[str, Any], dict[int, TableInfo], str, str]],
                     tables: dict[int, TableInfo]) -> None:
        assert self.conn is not None
        where = pending[0][3] if len(pending) == 1 else f"{pending[0][3]}..{pending[-1][3].rsplit('@', 1)[-1]}"
        changes = [change for part, *_ in pending for change in part["changes"]]
        # Plain SAVEPOINT statements, not conn.transaction(): with no statement run yet in this group, that
        # block would be the outermost one and commit the changes without their position.
        cur.execute("SAVEPOINT pgfanout_message")
        try:
            apply_changes(cur, changes, tables, where, by_table=True)
            cur.execute("RELEASE SAVEPOINT pgfanout_message")
            return
        except psycopg.OperationalError:
            raise
        except (psycopg.Error, PoisonMessage):
            cur.execute("ROLLBACK TO SAVEPOINT pgfanout_message")  # replay in source order to name the culprit
            forget_staging(self.conn)  # staging tables created since the savepoint are gone
        for part, part_tables, source, part_where in pending:
            here = f"{part_where} position {part['position']} chunk {part['chunk']} (source {source} xid {part['xid']})"
            try:
                apply_changes(cur, part["changes"], part_tables, here)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise PoisonMessage(
                    f"transaction at {here} failed to apply, nothing of it was committed: "
                    f"{type(exc).__name__}: {str(exc).strip()}. To go on without it, run "
                    f"`pgfanout subscriber skip {self.subscriber} --position {part['position']}`") from exc
        raise PoisonMessage(f"the transactions of the messages at {where} failed together but not one by one; "
                            "stop and inspect the replica")

    def _group_full(self) -> bool:
        started = self.group.started or time.monotonic()
        return (self.group.transactions >= self.settings.group_max_transactions
                or time.monotonic() - started >= self.settings.group_max_ms / 1000)

    def _commit(self) -> None:
        assert self.conn is not None
        self._flush()
        group = self.group
        if group.pending.position > self.applied.position:
            self.conn.execute(
                "INSERT INTO pgfanout_replica.applied (subscriber, first_position, last_position, kafka_offset) "
                "VALUES (%s, %s, %s, %s)", (self.subscriber, self.applied.position + 1, group.pending.position, group.offset))
            self.commits += 1
            if self.commits % 1000 == 0:
                self.conn.execute("DELETE FROM pgfanout_replica.applied WHERE subscriber = %s "
                                  "AND committed_at < clock_timestamp() - interval '7 days'", (self.subscriber,))
        self.conn.execute(SAVE_POSITION, {"subscriber": self.subscriber, "source": self.source,
                                          "position": group.pending.position, "tick_id": group.tick_id,
                                          "topic": self.topic, "offset": group.offset, "source_time": group.source_time})
        self.conn.commit()
        if group.transactions:
            log.debug("%s: committed %d transactions up to position %d", self.name, group.transactions,
                      group.pending.position)
        self.applied = group.pending
        self.committed_offset = group.offset
        self.group = Group(group.pending, group.tick_id, group.source_time, group.offset)


POLL_MESSAGES = 50
FLUSH_CHANGES = 20_000  # collected changes applied at the latest at this many, to bound memory


def described_differently(collected: dict[int, TableInfo], tables: dict[int, TableInfo]) -> bool:
    """Whether a message describes a table id otherwise than what the group collected so far."""
    return any(collected.get(table_id, info) != info for table_id, info in tables.items())


@dataclass
class Group:
    """What the open replica transaction holds beyond the committed position."""

    pending: Progress
    tick_id: int
    source_time: datetime | None
    offset: int
    transactions: int = 0
    started: float | None = None
