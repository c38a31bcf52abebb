"""The replica side of a subscriber: its one applier session, the open replica transaction, its position.

Whatever brings the messages (a Kafka route, a log shipping file), the applier takes them one by
one: each part is applied, skipped as the operator asked, or passed over as a duplicate
(subscriber.grouping), collected into the open replica transaction and applied set-based per
table; the position (with the stream offset it came from) is written in the same replica
transaction as the changes, PgQ-style. A transaction that cannot be applied is found one by one
and named, and nothing of it is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import psycopg

from pgfanout.core.config import Config
from pgfanout.core.errors import ApplierBusy, PoisonMessage, PositionError, StreamGap, StreamPlace, TransientError, Where
from pgfanout.core.generations import describe_positions, kept_by_later, lineage_of, lost_positions, primary_of
from pgfanout.core.messages import Batch, Message, Transaction
from pgfanout.core.positions import Progress
from pgfanout.core.scripts import script_ids
from pgfanout.core.trace import Stamp, stamps_of
from pgfanout.runtime.metrics import SubscriberMetrics
from pgfanout.runtime.pg import connect
from subscriber import exporter
from subscriber.apply import TableInfo, apply_changes, forget_staging, tables_of
from subscriber.columns import NewColumns, tables_to_extend
from subscriber.copyfilter import CopyFilters
from subscriber.grouping import Action, Group, action_for, apply_now, described_differently, group_full, is_whole
from subscriber.schema import SchemaChanges, comes_later
from subscriber.state import (
    SAVE_POSITION,
    UNKNOWN_OFFSET,
    applier_lock_key,
    ensure_state,
    new_generation,
    protect_table,
    protected_tables,
    read_copy_filters,
)
from subscriber.traces import Marker, take_markers, trace_ids
from subscriber.traces import record as record_markers

log = logging.getLogger(__name__)


class Stored(NamedTuple):
    """The position row of a subscriber, as the replica holds it."""

    position: int
    tick_id: int
    offset: int
    topic: str
    generation: int = 1


class Collected(NamedTuple):
    part: Transaction
    tables: dict[int, TableInfo]
    source: str
    where: Where


class ReplicaSession:
    """One subscriber's applier, connected: ``open()`` it, feed it with ``take()``, ``commit()``, ``close()``."""

    def __init__(self, config: Config, subscriber: str, conn: psycopg.Connection, stored: Stored | None):
        self.subscriber, self.label = subscriber, f"subscriber {subscriber}"
        self.config, self.settings = config, config.subscribers[subscriber]
        self.source = config.origin_source(self.settings.route)
        self.topic = config.stream(self.settings.route)[1]
        self.conn = conn
        self.stored = stored
        self.applied = Progress(stored.position if stored else 0)  # committed in the replica
        self.group = Group(self.applied, stored.tick_id if stored else 0, None, UNKNOWN_OFFSET)
        self.generation = stored.generation if stored else 1  # of the stream (pgfanout.core.generations)
        self.committed_generation = self.generation
        self.own: dict[int, bool] = {}  # per generation: whether this replica's database was its primary
        self.committed_offset = UNKNOWN_OFFSET
        self.protected = set(protected_tables(conn))
        self.skips = {
            r[0] for r in conn.execute("SELECT position FROM pgfanout_replica.skip WHERE subscriber = %s", (subscriber,))
        }
        self.columns = NewColumns(conn, self.label)
        self.schema = SchemaChanges(conn, subscriber, self.label, self.settings.on_drop)
        self.scripted: int | None = None  # a `pgfanout ddl` transaction whose later chunks are left out
        self.copy_filters = CopyFilters({})
        self.read_copy_filters()
        self.collected: list[Collected] = []
        self.collected_changes = 0
        self.collected_tables: dict[int, TableInfo] = {}
        self.commits = 0
        self.metrics = SubscriberMetrics(subscriber, self.topic)
        self.markers: list[Marker] = []  # trace markers of the open replica transaction
        self.serves_snapshots = True  # for `pgfanout compare` (import does not)
        self.exporter = exporter.Exporter(self.settings, subscriber)
        self.received_by = f"received by subscriber {subscriber}"
        conn.autocommit = False  # one replica transaction may span several messages and polls

    @classmethod
    def open(cls, config: Config, subscriber: str) -> ReplicaSession:
        """Connect to the replica as the subscriber's only applier."""
        conn = connect(config.subscribers[subscriber], f"pgfanout-subscriber-{subscriber}")
        try:
            ensure_state(conn)
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", applier_lock_key(subscriber)).fetchone()[0]:
                raise ApplierBusy(
                    f"subscriber {subscriber} is being applied to or materialized by another process "
                    "(another `subscriber run`, or `init`/`resync`); waiting for it to finish"
                )
            # The applier's own changes must not fire user triggers or re-check foreign keys.
            conn.execute("SET session_replication_role = replica")
            conn.execute(
                "SELECT set_config('synchronous_commit', %s, false)", (config.subscribers[subscriber].synchronous_commit,)
            )
            conn.execute("DELETE FROM pgfanout_replica.stopped WHERE subscriber = %s", (subscriber,))
            row = conn.execute(
                "SELECT position, tick_id, kafka_offset, topic, generation FROM pgfanout_replica.position WHERE subscriber = %s",
                (subscriber,),
            ).fetchone()
            return cls(config, subscriber, conn, Stored(*row) if row else None)
        except BaseException:
            conn.close()
            raise

    def start_at(self, offset: int) -> None:
        """The stream offset the position was read at (where the next run goes on if nothing comes)."""
        self.group.offset = self.committed_offset = offset

    def close(self) -> None:
        self.exporter.close()
        forget_staging(self.conn)
        self.conn.close()  # an open replica transaction is rolled back: it holds no whole group

    def read_copy_filters(self, wait_for_resync: bool = False) -> tuple[int, int] | None:
        """Read what the copied tables hold; returns the stored (position, generation)."""
        self.copy_filters, stored = read_copy_filters(self.conn, self.subscriber, wait_for_resync)
        return stored

    # -- taking messages -------------------------------------------------------------

    def take(
        self, kind: str, message: Message, where: Where, stored_offset: int, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        """Apply (or collect) what a message holds beyond the applied position; ``headers``: its record's."""
        generation = message.get("generation", 1)
        if generation != self.generation and not self._follow_generation(kind, message, generation, where):
            return
        if self.group.started is None:
            self.group.started = time.monotonic()
            self._check_position_row(self.read_copy_filters(wait_for_resync=True))
        if kind == "Batch" and self._is_own(message, generation):
            self._pass_own(message, where)  # type: ignore[arg-type]
        elif kind == "Batch":
            self._take_batch(message, where, headers)  # type: ignore[arg-type]
            if message["transactions"]:  # type: ignore[typeddict-item]
                self.metrics.seen(message["transactions"][-1]["position"])  # type: ignore[typeddict-item]
        elif kind == "Heartbeat":
            self.metrics.seen(message["position"])  # type: ignore[typeddict-item]
        self.group.tick_id, self.group.source_time = message["tick_id"], message["tick_time"]
        if (kind == "Heartbeat" or message.get("batch_end")) and message.get("snapshot"):
            self.group.visible = message["snapshot"]  # type: ignore[typeddict-item]
        self.group.offset = stored_offset
        asked = [r for r in message.get("snapshot_requests") or () if r["subscriber"] == self.subscriber]
        if asked and self.serves_snapshots and self.group.whole:  # a compare's tick ends here
            self.commit()
            self.exporter.serve(self.conn, message["tick_id"], self.applied.position, hold=any(r["hold"] for r in asked))

    # -- generations (docs/switchover.md) ----------------------------------------------

    def _follow_generation(self, kind: str, message: Message, generation: int, where: Where) -> bool:
        """A message of another generation than the subscriber's: whether to take it.

        A later generation is followed, unless this replica applied positions it does not hold (a failover's
        loss window): then it stops. A message of an earlier one beyond the applied position was published
        by a deposed primary: it is left out, and logged.
        """
        lineage = lineage_of(message)
        if generation > self.generation:
            lost = lost_positions(self.generation, self.group.pending.position, lineage, generation)
            if lost:
                primary = primary_of(lineage, generation) or "the source's database"
                raise PositionError(
                    f"subscriber {self.subscriber} applied positions {describe_positions(lost)} of generation "
                    f"{self.generation}, which generation {generation} (primary {primary}) "
                    "does not hold: they were lost in a failover, and this replica differs from the new primary by them. "
                    f"Copy it again: `pgfanout subscriber resync {self.subscriber}`",
                    at=where,
                    position=lost[0],
                )
            self.flush()
            new_generation(self.conn, self.subscriber, generation, self.group.pending.position)
            self.read_copy_filters()
            log.info("%s: generation %d from %s on", self.label, generation, where)
            self.generation = generation
            return True
        last = message["position"] if kind == "Heartbeat" else (message["transactions"] or [{"position": 0}])[-1]["position"]  # type: ignore[typeddict-item]
        if last <= self.group.pending.position:
            return True  # positions it holds already: duplicates
        log.error(
            "%s: left out the message at %s: positions up to %d of generation %d, published by a primary that "
            "generation %d replaced%s",
            self.label,
            where,
            last,
            generation,
            self.generation,
            f" from position {kept + 1} on" if (kept := kept_by_later(lineage, generation)) is not None else "",
        )
        return False

    def _is_own(self, message: Message, generation: int) -> bool:
        """Whether this replica's database was the primary that published the message's generation."""
        if generation not in self.own:
            primary = primary_of(lineage_of(message), generation)
            self.own[generation] = primary is not None and self.config.primary_name(self.source, primary) == self.subscriber
        return self.own[generation]

    def _pass_own(self, message: Batch, where: Where) -> None:
        """The transactions this database published itself as the primary: the position moves past them."""
        for part in message["transactions"]:
            if action_for(self.group.pending, part, set(), where) is not Action.DUPLICATE:
                self.group.advance(part)

    def _check_position_row(self, row: tuple[int, int] | None) -> None:
        """`pgfanout switchover` or `failover` changed this subscriber's position row (its database changed
        roles) while it ran: it starts again from there."""
        if row is not None and (row[1] != self.committed_generation or row[0] != self.applied.position):
            raise TransientError(
                f"{self.label}: its position was moved to {row[0]} of generation {row[1]} (a switchover or failover); "
                "reading the route again from there"
            )

    def _take_batch(self, message: Batch, where: Where, headers: Sequence[tuple[str, bytes]] | None) -> None:
        markers, scripts = trace_ids(message["tables"]), script_ids(message["tables"])
        tables = tables_of(message)
        if markers or scripts:  # trace markers are recorded and scripts run, not applied as rows
            tables = {table_id: info for table_id, info in tables.items() if table_id not in markers | scripts}
            stamps = [*stamps_of(headers), Stamp(self.received_by, time.time())]
        renaming = {(t["schema_name"], t["table_name"]) for t in message["tables"] if comes_later(t)}  # protected then
        self._protect([t for t in tables.values() if (t.schema_name, t.table_name) not in renaming], message["source"])
        if described_differently(self.collected_tables, tables):
            self.flush()  # a table described differently than in what was collected: apply that first
        needs = self.columns.needed([t for t in message["tables"] if t["table_id"] not in markers | scripts], where)
        for part in message["transactions"]:
            try:
                action = action_for(self.group.pending, part, self.skips, where)
            except StreamGap as gap:
                raise StreamGap(
                    f"subscriber {self.subscriber}: {gap}".replace("NAME", self.subscriber), at=where, position=gap.position
                ) from None
            if action is Action.DUPLICATE:
                continue
            self.group.advance(part)
            if action is Action.SKIP:
                self._skip(part, where)
                continue
            if markers:
                part, found = take_markers(part, markers, stamps)
                self.markers += found
            if part["position"] == self.scripted or any(c["table"] in scripts for c in part["changes"]):
                self.flush()  # a `pgfanout ddl` transaction: its script stands for its changes, every chunk's
                self._run_script(part, scripts, where)
                continue
            if self.copy_filters:
                part = dict(part, changes=self.copy_filters.changes_to_apply(part, tables))  # type: ignore[assignment]
            for table_id in tables_to_extend(part, needs):
                self.flush()  # older changes first: rows that existed get the added column's value, not NULL
                self.columns.add(*needs.pop(table_id), where)
            if any(change["op"] == "SCHEMA" for change in part["changes"]):
                self.flush()  # what was collected goes first, with the layouts it was written with
                self._apply_in_order(part, tables, message, where)
                self.group.changes += len(part["changes"])
                continue
            if not is_whole(part):
                self.flush()  # keep source order: what was collected goes first
            self.collected.append(Collected(part, tables, message["source"], where))
            self.collected_changes += len(part["changes"])
            self.group.changes += len(part["changes"])
            self.collected_tables.update(tables)
            if apply_now(part, self.collected_changes):
                self.flush()

    def _apply_in_order(self, part: Transaction, tables: dict[int, TableInfo], message: Batch, where: Where) -> None:
        """A part with schema changes, applied at once in its own order: rows, the schema change, rows."""
        layouts = {t["table_id"]: t for t in message["tables"]}
        rows: list = []
        with self.conn.cursor() as cur:
            for change in [*part["changes"], None]:
                if change is not None and change["op"] != "SCHEMA":
                    rows.append(change)
                    continue
                if rows:
                    self._apply_part(cur, dict(part, changes=rows), tables, message["source"], where)  # type: ignore[arg-type]
                    rows = []
                if change is not None and self.schema.apply(layouts[change["table"]], where, part["position"]):
                    self._protect([tables[change["table"]]], message["source"])  # created, or renamed
                    self.read_copy_filters()

    def _run_script(self, part: Transaction, scripts: set[int], where: Where) -> None:
        for change in part["changes"]:
            if change["table"] in scripts and change["op"] == "INSERT":
                self.schema.run_script(change["values"], where, part["position"])
                self.read_copy_filters()  # the script may have created or renamed tables
        self.scripted = None if part["last_chunk"] else part["position"]

    def _protect(self, tables: Iterable[TableInfo], source: str) -> None:
        """Make each replicated table read-only for everyone but the applier, the first time it is seen."""
        for table in tables:
            if (table.schema_name, table.table_name) in self.protected:
                continue
            try:
                protect_table(self.conn, table.schema_name, table.table_name, source)
            except psycopg.errors.UndefinedTable:
                raise PoisonMessage(
                    f"table {table.qualified} does not exist on subscriber {self.subscriber}; "
                    f"create it with `pgfanout subscriber init {self.subscriber}`"
                ) from None
            self.protected.add((table.schema_name, table.table_name))

    def _skip(self, part: Transaction, where: Where) -> None:
        """Leave out a transaction the operator asked to skip; forget the request with its last chunk."""
        log.warning(
            "%s: SKIPPING the transaction at %s position %d chunk %d, as `pgfanout subscriber skip` "
            "asked; this replica now differs from the source by that transaction",
            self.label,
            where,
            part["position"],
            part["chunk"],
        )
        if part["last_chunk"]:
            self.conn.execute(
                "DELETE FROM pgfanout_replica.skip WHERE subscriber = %s AND position = %s", (self.subscriber, part["position"])
            )
            self.skips.discard(part["position"])

    # -- applying and committing -----------------------------------------------------

    def flush(self) -> None:
        """Apply what the group collected, set-based and per table; on any failure find the culprit one by one."""
        if not self.collected:
            return
        collected, tables = self.collected, dict(self.collected_tables)
        self.collected, self.collected_changes = [], 0
        self.collected_tables.clear()
        with self.conn.cursor() as cur:
            self._apply(cur, collected, tables)

    def _apply(self, cur: psycopg.Cursor, collected: list[Collected], tables: dict[int, TableInfo]) -> None:
        first, last = collected[0].where, collected[-1].where
        where = first if len(collected) == 1 else f"{first}..{last.offset if isinstance(last, StreamPlace) else last}"
        changes = [change for item in collected for change in item.part["changes"]]
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
        for part, part_tables, source, part_where in collected:
            self._apply_part(cur, part, part_tables, source, part_where)
        raise PoisonMessage(
            f"the transactions of the messages at {where} failed together but not one by one; stop and inspect the replica",
            at=collected[0].where,
        )

    def _apply_part(
        self, cur: psycopg.Cursor, part: Transaction, tables: dict[int, TableInfo], source: str, where: Where
    ) -> None:
        """One part's changes in source order; a failure names the transaction and how to go on without it."""
        here = f"{where} position {part['position']} chunk {part['chunk']} (source {source} xid {part['xid']})"
        try:
            apply_changes(cur, list(part["changes"]), tables, here)
        except PoisonMessage as exc:
            exc.locate(where, part["position"])
            raise
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise PoisonMessage(
                f"transaction at {here} failed to apply, nothing of it was committed: "
                f"{type(exc).__name__}: {str(exc).strip()}. To go on without it, run "
                f"`pgfanout subscriber skip {self.subscriber} --position {part['position']}`",
                at=where,
                position=part["position"],
            ) from exc

    def group_full(self) -> bool:
        return group_full(self.group, time.monotonic(), self.settings.group_max_transactions, self.settings.group_max_ms / 1000)

    def commit(self) -> None:
        """Apply what is collected and commit it with its position, in one replica transaction."""
        self.flush()
        group = self.group
        if group.pending.position > self.applied.position:
            self.conn.execute(
                "INSERT INTO pgfanout_replica.applied (subscriber, first_position, last_position, kafka_offset) "
                "VALUES (%s, %s, %s, %s)",
                (self.subscriber, self.applied.position + 1, group.pending.position, group.offset),
            )
            self.commits += 1
            if self.commits % 1000 == 0:
                self.conn.execute(
                    "DELETE FROM pgfanout_replica.applied WHERE subscriber = %s "
                    "AND committed_at < clock_timestamp() - interval '7 days'",
                    (self.subscriber,),
                )
        if self.markers:
            record_markers(self.conn, self.subscriber, self.source, self.markers)
            self.markers = []
        self.conn.execute(
            SAVE_POSITION,
            {
                "subscriber": self.subscriber,
                "source": self.source,
                "position": group.pending.position,
                "tick_id": group.tick_id,
                "topic": self.topic,
                "offset": group.offset,
                "source_time": group.source_time,
                "visible": group.visible,
                "generation": self.generation,
            },
        )
        self.conn.commit()
        if group.transactions:
            log.debug("%s: committed %d transactions up to position %d", self.label, group.transactions, group.pending.position)
        self.applied = group.pending
        self.committed_generation = self.generation
        self.committed_offset = group.offset
        self.metrics.committed(
            group.pending.position,
            group.source_time.timestamp() if group.source_time else None,
            group.transactions,
            group.changes,
            time.monotonic() - group.started if group.started is not None else 0.0,
        )
        self.group = group.successor()
