"""Initial materialization and resync of a subscriber's tables.

Each table is copied with COPY inside one REPEATABLE READ snapshot of the copy source
(the source primary, or an upstream replica), and lands on the replica in one replica
transaction together with a row in ``pgfanout_replica.materialized`` that says what the
copy already holds (see copyfilter). So a table is either wholly copied and recorded, or
untouched: an interrupted init leaves no half-copied table that looks complete, and the
next ``init`` copies only what is missing. The subscriber's position is written last.

Nothing here blocks writers on the primary: COPY takes only ACCESS SHARE locks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from pgfanout.core.config import Config
from pgfanout.core.errors import ApplierBusy, MaterializeError
from pgfanout.core.names import parse_table, qualified
from pgfanout.core.snapshots import parse_snapshot
from pgfanout.runtime.pg import connect, describe
from pgfanout.runtime.primaries import current_primary
from subscriber.copyfilter import CopyFilter
from subscriber.ddl import (
    PUBLISHED_TABLES,
    TableDefinition,
    after_copy,
    create_enum,
    create_table,
    missing_types,
    project,
    read_definition,
)
from subscriber.progress import CopyProgress
from subscriber.state import (
    UNKNOWN_OFFSET,
    applier_lock_key,
    ensure_state,
    protect_table,
    protected_tables,
    resync_lock_key,
)

log = logging.getLogger(__name__)
WRITE_BYTES = 1 << 20


@dataclass
class CopySource:
    """An open REPEATABLE READ transaction on the copy source, and what a copy taken in it holds."""

    conn: psycopg.Connection
    description: str
    tables: list[tuple[str, str]]
    filter_for: dict[tuple[str, str], CopyFilter]
    generation: int = 1  # of the stream the copy continues (pgfanout.core.generations)


@contextmanager
def open_primary(config: Config, source_name: str) -> Iterator[CopySource]:
    """The source's primary as copy source: the database its stream names now (after a switchover, not the
    one the configuration names as the source)."""
    primary, source = current_primary(config, source_name)
    with connect(source, "pgfanout-materialize") as conn:
        if conn.execute("SELECT to_regclass('pgfanout.agent_state')").fetchone()[0] is None:  # type: ignore[index]
            raise MaterializeError(
                f"capture is not installed on source {source_name} ({describe(source.dsn)}); "
                "run `pgfanout agent install` first, so that no change is missed after the copy"
            )
        # Read before the snapshot: every transaction published so far committed before it.
        published, generation, handed_to = conn.execute(  # type: ignore[misc]
            "SELECT next_position - 1, generation, handed_to FROM pgfanout.agent_state"
        ).fetchone()
        if generation != primary.generation or handed_to is not None:
            raise MaterializeError(
                f"{describe(source.dsn)} is not the primary of source {source_name} now (the stream is at generation "
                f"{primary.generation}, the database's capture at {generation}); a switchover or failover is under "
                "way: try again when it finished"
            )
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute("SET LOCAL search_path = pg_catalog")
        snapshot = parse_snapshot(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]
        tables = [(s, t) for s, t, _, _ in conn.execute(PUBLISHED_TABLES)]  # not pgfanout's own trace markers
        log.info(
            "copy source: source %s at %s, published up to position %d, snapshot %s",
            source_name,
            describe(source.dsn),
            published,
            snapshot,
        )
        try:
            yield CopySource(
                conn,
                f"source {source_name} ({describe(source.dsn)})",
                tables,
                {table: CopyFilter(published, snapshot) for table in tables},
                generation,
            )
        finally:
            conn.execute("ROLLBACK")


@contextmanager
def open_upstream_replica(config: Config, upstream: str, origin: str) -> Iterator[CopySource]:
    """An upstream replica as copy source, for tiers that cannot reach the primary."""
    settings = config.subscribers[upstream]
    if config.origin_source(settings.route) != origin:
        raise MaterializeError(
            f"subscriber {upstream} replicates source {config.origin_source(settings.route)}, "
            f"not {origin}; it cannot be the copy source"
        )
    with connect(settings, "pgfanout-materialize") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute("SET LOCAL search_path = pg_catalog")
        if conn.execute("SELECT to_regclass('pgfanout_replica.position')").fetchone()[0] is None:  # type: ignore[index]
            raise MaterializeError(f"subscriber {upstream} ({describe(settings.dsn)}) has no pgfanout state")
        row = conn.execute(
            "SELECT position, generation FROM pgfanout_replica.position WHERE subscriber = %s", (upstream,)
        ).fetchone()
        if row is None:
            raise MaterializeError(f"subscriber {upstream} has not applied anything yet; it cannot be the copy source")
        position, generation = row
        filters = {
            (s, t): CopyFilter.from_row(p, snap).after_upstream(position)
            for s, t, p, snap in conn.execute(
                "SELECT schema_name, table_name, start_position, snapshot FROM pgfanout_replica.materialized "
                "WHERE subscriber = %s",
                (upstream,),
            )
        }
        tables = sorted(set(filters) | {t for t, source in protected_tables(conn).items() if source == origin})
        for table in tables:
            filters.setdefault(table, CopyFilter(position, None))
        log.info("copy source: subscriber %s at %s, position %d", upstream, describe(settings.dsn), position)
        try:
            yield CopySource(
                conn, f"subscriber {upstream} ({describe(settings.dsn)}) at position {position}", tables, filters, generation
            )
        finally:
            conn.execute("ROLLBACK")


def copy_out_chunks(conn: psycopg.Connection, statement: sql.Composable) -> Iterator[tuple[int, bytes]]:
    """Run a COPY ... TO STDOUT and yield its rows gathered in chunks of about WRITE_BYTES: (rows, data).

    libpq hands COPY data over one row at a time; going through psycopg's Copy object costs
    about a microsecond per row in Python, more than the rest of the copy. So this reads
    with psycopg's documented libpq wrapper (``psycopg.pq``) directly, and passes rows on
    in large writes.
    """
    pgconn = conn.pgconn
    pgconn.send_query(statement.as_bytes(conn))
    result = pgconn.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        _drain(pgconn)
        message = result.get_error_message() if result is not None else "no result"
        raise psycopg.DatabaseError(message.strip())
    buffer, rows = bytearray(), 0
    get_copy_data = pgconn.get_copy_data
    while True:
        size, data = get_copy_data(0)
        if size < 0:
            break
        buffer += data
        rows += 1
        if len(buffer) >= WRITE_BYTES:
            yield rows, bytes(buffer)
            buffer.clear()
            rows = 0
    final = pgconn.get_result()
    _drain(pgconn)
    if size == -2 or final is None or final.status != pq.ExecStatus.COMMAND_OK:
        message = final.get_error_message() if final is not None else pgconn.get_error_message()
        raise psycopg.DatabaseError(f"COPY TO failed: {message.strip()}")
    if buffer:
        yield rows, bytes(buffer)


def _drain(pgconn: pq.abc.PGconn) -> None:
    while pgconn.get_result() is not None:
        pass


def _referenced_by_foreign_key(conn: psycopg.Connection, definition: TableDefinition) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_constraint WHERE contype = 'f' AND confrelid = %s::regclass)",
        (definition.identifier.as_string(conn),),
    ).fetchone()[0]  # type: ignore[index]


class Materializer:
    def __init__(self, config: Config, subscriber: str, copy_from: str | None = None, progress: CopyProgress | None = None):
        self.config = config
        self.subscriber = subscriber
        self.settings = config.subscribers[subscriber]
        self.origin = config.origin_source(self.settings.route)
        self.topic = config.stream(self.settings.route)[1]
        self.copy_from = copy_from if copy_from is not None else self.settings.copy_from
        if self.copy_from == subscriber:
            raise MaterializeError(f"subscriber {subscriber} cannot copy from itself")
        self.progress = progress or CopyProgress()
        self.online = False  # a resync: the replica is in service, so tables are emptied with DELETE, not TRUNCATE
        # what the subscriber's route carries of each table (columns, row filters); None: everything
        self.share = config.share_of(self.settings.route)

    def _wanted(self, table: tuple[str, str]) -> bool:
        return self.share is None or qualified(*table) in self.share

    def _definition(self, source: CopySource, table: tuple[str, str]) -> TableDefinition:
        definition = read_definition(source.conn, *table)
        return definition if self.share is None else project(definition, self.share[qualified(*table)][0])

    def _row_filter(self, definition: TableDefinition) -> sql.Composable | None:
        """The route's filters as one SQL condition, or None when it takes every row."""
        filters = [] if self.share is None else self.share[definition.qualified][1]
        if not filters:
            return None
        # regenerated from the validated parse tree, never the configured text itself
        return sql.SQL(" AND ").join(sql.SQL("({})").format(sql.SQL(f.sql())) for f in filters)

    def _source(self):  # type: ignore[no-untyped-def]
        if self.copy_from:
            return open_upstream_replica(self.config, self.copy_from, self.origin)
        return open_primary(self.config, self.origin)

    @contextmanager
    def _replica(self) -> Iterator[psycopg.Connection]:
        with connect(self.settings, "pgfanout-materialize") as conn:
            ensure_state(conn)
            conn.execute("SET session_replication_role = replica")  # the deny triggers let the applier's session write
            yield conn

    @contextmanager
    def _as_only_applier(self, conn: psycopg.Connection) -> Iterator[None]:
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", applier_lock_key(self.subscriber)).fetchone()[0]:  # type: ignore[index]
            raise ApplierBusy(
                f"subscriber {self.subscriber} is being applied to or materialized by another process; "
                "stop `pgfanout subscriber run` first (only `resync --table` works while it runs)"
            )
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", applier_lock_key(self.subscriber))

    def init(self, restart: bool = False) -> int:
        """Materialize every table, resuming an interrupted init; returns the position the stream continues after."""
        with self._replica() as replica:
            self._refuse_if_initialized(replica)
            with self._as_only_applier(replica):
                self._refuse_if_initialized(replica)
                if restart:
                    self._forget(replica)
                return self._copy_all(replica)

    def _refuse_if_initialized(self, replica: psycopg.Connection) -> None:
        row = replica.execute(
            "SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (self.subscriber,)
        ).fetchone()
        if row is not None:
            raise MaterializeError(
                f"subscriber {self.subscriber} is already initialized (at position {row[0]}); "
                f"use `pgfanout subscriber resync {self.subscriber}` to copy it again"
            )

    def resync(self) -> int:
        """Re-materialize every table: forget the position, then copy everything again."""
        self.online = True
        with self._replica() as replica, self._as_only_applier(replica):
            self._forget(replica)
            log.warning(
                "subscriber %s: position forgotten, every table is copied again; if this is interrupted, "
                "run `pgfanout subscriber init %s` to finish",
                self.subscriber,
                self.subscriber,
            )
            return self._copy_all(replica)

    def _forget(self, replica: psycopg.Connection) -> None:
        with replica.transaction():
            for table in ("position", "materialized", "applied"):
                replica.execute(
                    sql.SQL("DELETE FROM pgfanout_replica.{} WHERE subscriber = %s").format(sql.Identifier(table)),
                    (self.subscriber,),
                )

    def _copy_all(self, replica: psycopg.Connection) -> int:
        done = {
            (s, t)
            for s, t in replica.execute(
                "SELECT schema_name, table_name FROM pgfanout_replica.materialized WHERE subscriber = %s", (self.subscriber,)
            )
        }
        if done:
            log.info(
                "subscriber %s: resuming an interrupted init; already copied: %s",
                self.subscriber,
                ", ".join(qualified(s, t) for s, t in sorted(done)),
            )
        with self._source() as source:
            generation = source.generation
            todo = [t for t in source.tables if t not in done and self._wanted(t)]
            definitions = [self._definition(source, t) for t in todo]
            self._create_types(replica, definitions)
            for definition in definitions:
                table = (definition.schema_name, definition.table_name)
                with replica.transaction():
                    self._copy_table(source, replica, definition)
                    self._record(replica, table, source.filter_for[table], source.description)
        with replica.transaction():
            start = replica.execute(
                "SELECT min(start_position) FROM pgfanout_replica.materialized WHERE subscriber = %s", (self.subscriber,)
            ).fetchone()[0]  # type: ignore[index]
            if start is None:
                raise MaterializeError(f"the copy source publishes no table for subscriber {self.subscriber}")
            replica.execute(
                """INSERT INTO pgfanout_replica.position
                       (subscriber, source, position, tick_id, topic, kafka_offset, generation)
                   VALUES (%s, %s, %s, 0, %s, %s, %s)""",
                (self.subscriber, self.origin, start, self.topic, UNKNOWN_OFFSET, generation),
            )
        log.info("subscriber %s materialized; the stream continues after position %d", self.subscriber, start)
        return start

    def resync_table(self, name: str) -> int:
        """Copy one table again while the subscriber keeps running; returns the position it was copied at."""
        table = parse_table(name)
        self.online = True
        with self._replica() as replica, replica.transaction():
            # Holds the applier between two replica transactions until this copy commits (it takes the
            # shared side of this lock at the start of each one), so the position cannot move meanwhile.
            replica.execute("SELECT pg_advisory_xact_lock(%s, %s)", resync_lock_key(self.subscriber))
            row = replica.execute(
                "SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (self.subscriber,)
            ).fetchone()
            if row is None:
                raise MaterializeError(
                    f"subscriber {self.subscriber} is not initialized; run `pgfanout subscriber init {self.subscriber}`"
                )
            applied = row[0]
            with self._source() as source:
                if table not in source.filter_for or not self._wanted(table):
                    raise MaterializeError(
                        f"table {qualified(*table)} is not published to subscriber {self.subscriber} by {source.description}"
                    )
                copy_filter = source.filter_for[table]
                if self.copy_from and copy_filter.start_position < applied:
                    raise MaterializeError(
                        f"{source.description} is behind subscriber {self.subscriber} (at {applied}); wait until it has caught up"
                    )
                # Everything the subscriber applied was published before the snapshot was taken, so
                # the copy holds it; the filter makes the stream skip only what the copy holds.
                definition = self._definition(source, table)
                self._create_types(replica, [definition])
                self._copy_table(source, replica, definition)
                self._record(
                    replica, table, CopyFilter(max(applied, copy_filter.start_position), copy_filter.snapshot), source.description
                )
        return applied

    def _create_types(self, replica: psycopg.Connection, definitions: list[TableDefinition]) -> None:
        missing = missing_types(replica, definitions)
        unsupported = [t.qualified for t in missing if t.kind != "e"]
        if unsupported:
            raise MaterializeError(
                f"the replica lacks the types {', '.join(unsupported)}; create them (or the "
                "extensions that define them) on the replica first, then run this again"
            )
        with replica.transaction():
            for user_type in missing:
                schema_name = user_type.qualified.rsplit(".", 1)[0]
                replica.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.SQL(schema_name)))
                replica.execute(create_enum(user_type))
                log.info("created type %s on the replica", user_type.qualified)

    def _copy_table(self, source: CopySource, replica: psycopg.Connection, definition: TableDefinition) -> None:
        exists = replica.execute("SELECT to_regclass(%s)", (definition.identifier.as_string(replica),)).fetchone()[0]  # type: ignore[index]
        target = definition.identifier
        if exists is None:
            replica.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(definition.schema_name)))
            replica.execute(create_table(definition))
        elif self.online or _referenced_by_foreign_key(replica, definition):
            # Readers keep the old rows until the copy commits; the applier's session does not check foreign keys.
            replica.execute(sql.SQL("DELETE FROM {}").format(target))
        else:
            replica.execute(sql.SQL("TRUNCATE {}").format(target))
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in definition.copied_columns)
        row_filter = self._row_filter(definition)
        if row_filter is None and not definition.is_partitioned:
            read = sql.SQL("COPY {} ({}) TO STDOUT").format(target, columns)
        else:
            read = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(columns, target, row_filter or sql.SQL("true"))
        write = sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns)
        with self.progress.table(definition) as report:
            try:
                with replica.cursor().copy(write) as writer:
                    for rows, data in copy_out_chunks(source.conn, read):
                        writer.write(data)
                        report(rows, len(data))
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise MaterializeError(
                    f"copying {definition.qualified} from {source.description} failed: {type(exc).__name__}: {str(exc).strip()}"
                ) from exc
            if exists is None:
                for statement in after_copy(definition):
                    replica.execute(statement)
        protect_table(replica, definition.schema_name, definition.table_name, self.origin)

    def _record(self, replica: psycopg.Connection, table: tuple[str, str], copy_filter: CopyFilter, copied_from: str) -> None:
        replica.execute(
            """INSERT INTO pgfanout_replica.materialized
                   (subscriber, schema_name, table_name, start_position, snapshot, copied_from)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (subscriber, schema_name, table_name) DO UPDATE SET
                   start_position = EXCLUDED.start_position, snapshot = EXCLUDED.snapshot,
                   copied_from = EXCLUDED.copied_from, copied_at = clock_timestamp()""",
            (self.subscriber, *table, copy_filter.start_position, copy_filter.snapshot_text, copied_from),
        )
